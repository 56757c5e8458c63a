"""Dense video captioning metrics on ActivityNet Captions: SODA_c, and CIDEr / METEOR over tIoU.

Definitions are those of ``metrics.md`` (the densevid convention and Fujita et al., ECCV 2020);
the code is written from those definitions.

**CIDEr and METEOR** (:func:`densevid_scores`). For each tIoU threshold τ in {0.3, 0.5, 0.7, 0.9}
and each ground-truth video, every predicted event is paired with every reference caption of the
video (from *all* reference sets, pooled as the densevid code does) whose segment IoU is >= τ; a
prediction that matches nothing is paired with the nonsense reference :data:`NONSENSE`. METEOR
(the corpus score of the video's pairs) and CIDEr-D (mean over the video's pairs, document
frequencies from that video's pairs) come from pycocoevalcap, per video; videos are averaged,
then the four thresholds, ×100.

**SODA_c** (:func:`soda_c`). Per video and reference set, predictions and references are sorted
by start time, ``S[i][j] = IoU(pred_i, ref_j) × METEOR(pred_i, ref_j)``, and the order-preserving
one-to-one assignment maximising the sum of S is found by :func:`order_preserving_assignment`
(an iterative weighted-LCS dynamic programme: no recursion, any number of events). Precision =
sum / #pred, recall = sum / #ref, F1 per video; with several reference sets (val_1, val_2) the
better F1 counts. SODA_c = mean F1 over videos, ×100.

**Videos without predictions** (no answer, or an answer with no parsable event) score 0 in every
metric and stay in the averages; they are counted as ``videos_without_prediction``. Predictions
for videos absent from the references are ignored and counted.

Captions are tokenised once per evaluation with the Stanford PTB tokenizer that ships in
pycocoevalcap (lower-cased, pycocoevalcap's punctuation list removed, non-ASCII characters
replaced by spaces as densevid does). METEOR runs in a Java process: create one
:class:`CocoCaptionScorer` per run and close it at the end (about 5-8 s to start the JVM).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from pite.eval.grounding import segment_iou

TIOUS = (0.3, 0.5, 0.7, 0.9)
NONSENSE = "abc123!@#"
"""The reference a prediction is scored against when it overlaps no reference caption enough."""

Event = tuple[float, float, str]
"""``(start_s, end_s, sentence)``."""


class CaptionScorer(Protocol):
    """What the metrics need from a caption scorer (tests pass a pure-Python stand-in)."""

    def tokenize(self, sentences: Sequence[str]) -> list[str]:
        """Tokenised copies of ``sentences``, same order."""

    def meteor(self, pairs: Sequence[tuple[str, str]]) -> tuple[float, list[float]]:
        """``(corpus score, per-pair scores)`` of tokenised ``(hypothesis, reference)`` pairs."""

    def cider(self, pairs: Sequence[tuple[str, str]]) -> float:
        """CIDEr-D of tokenised ``(hypothesis, reference)`` pairs, IDF from these pairs."""


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("METEOR and the PTB tokenizer need Java, and no 'java' is on PATH; "
                           "install a JRE (e.g. apt-get install openjdk-17-jre-headless)")
    return java


def _ascii(text: str) -> str:
    return "".join(c if ord(c) < 128 else " " for c in text)


class CocoCaptionScorer:
    """pycocoevalcap's METEOR 1.5 (one JVM for the scorer's lifetime) and CIDEr-D, plus PTB tokens.

    Use as a context manager, or call :meth:`close`, so the METEOR process ends with the run.
    """

    def __init__(self) -> None:
        self._meteor = None

    def tokenize(self, sentences: Sequence[str]) -> list[str]:
        from pycocoevalcap.tokenizer import ptbtokenizer

        if not sentences:
            return []
        lines = [" ".join(_ascii(s).split()) for s in sentences]
        jar = os.path.join(os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
        cmd = [_require_java(), "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        done = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, check=False)
        out = done.stdout.split("\n")
        if done.returncode != 0 or len(out) < len(lines):
            raise RuntimeError(f"PTB tokenizer failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        drop = set(ptbtokenizer.PUNCTUATIONS)
        return [" ".join(w for w in line.rstrip().split(" ") if w and w not in drop) for line in out[: len(lines)]]

    def meteor(self, pairs: Sequence[tuple[str, str]]) -> tuple[float, list[float]]:
        if not pairs:
            return 0.0, []
        if self._meteor is None:
            _require_java()
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        gts = {k: [ref] for k, (_, ref) in enumerate(pairs)}
        res = {k: [hyp] for k, (hyp, _) in enumerate(pairs)}
        score, scores = self._meteor.compute_score(gts, res)
        return float(score), [float(s) for s in scores]

    def cider(self, pairs: Sequence[tuple[str, str]]) -> float:
        from pycocoevalcap.cider.cider import Cider

        if not pairs:
            return 0.0
        gts = {k: [ref] for k, (_, ref) in enumerate(pairs)}
        res = {k: [hyp] for k, (hyp, _) in enumerate(pairs)}
        score, _ = Cider().compute_score(gts, res)
        return float(score)

    def close(self) -> None:
        """Stop the METEOR Java process (a later :meth:`meteor` call starts a new one)."""
        meteor, self._meteor = self._meteor, None
        if meteor is not None:
            with meteor.lock:
                meteor.meteor_p.stdin.close()
                meteor.meteor_p.kill()
                meteor.meteor_p.wait()

    def __enter__(self) -> "CocoCaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- SODA_c ----------------------------------------------------------------------------------

def order_preserving_assignment(scores: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Maximum-weight order-preserving one-to-one matching of rows to columns.

    Pairs ``(i1, j1), (i2, j2)`` of the matching satisfy ``i1 < i2 <=> j1 < j2`` (no crossing),
    like a longest common subsequence with weights. Iterative dynamic programme, one numpy pass
    per row: ``D[i][j] = max(D[i-1][j], D[i][j-1], D[i-1][j-1] + S[i-1][j-1])``.

    Args:
        scores: float (n, m), non-negative.
    Returns:
        ``(best total, matched pairs (i, j) in increasing order)``; pairs with score 0 are left out.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D (n, m) array, got shape {scores.shape}")
    if np.any(scores < 0) or not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite and non-negative")
    n, m = scores.shape
    table = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        candidates = np.maximum(table[i - 1, 1:], table[i - 1, :-1] + scores[i - 1])
        table[i, 1:] = np.maximum.accumulate(candidates)
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        if table[i, j] == table[i - 1, j]:
            i -= 1
        elif table[i, j] == table[i, j - 1]:
            j -= 1
        else:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return float(table[n, m]), pairs[::-1]


def _sorted_events(events: Sequence[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e[0], e[1]))


def soda_video_f1(preds: Sequence[Event], refs: Sequence[Event], scorer: CaptionScorer,
                  tokens: Mapping[str, str]) -> float:
    """SODA_c F1 (0..1) of one video against one reference set; ``tokens`` maps sentence -> tokens."""
    if not preds or not refs:
        return 0.0
    preds, refs = _sorted_events(preds), _sorted_events(refs)
    iou = np.array([[segment_iou(p[:2], r[:2]) for r in refs] for p in preds])
    overlap = list(zip(*np.nonzero(iou > 0)))
    meteor = np.zeros_like(iou)
    if overlap:
        _, per_pair = scorer.meteor([(tokens[preds[i][2]], tokens[refs[j][2]]) for i, j in overlap])
        for (i, j), value in zip(overlap, per_pair):
            meteor[i, j] = value
    total, _ = order_preserving_assignment(iou * meteor)
    precision, recall = total / len(preds), total / len(refs)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def soda_c(predictions: Mapping[str, Sequence[Event]], reference_sets: Sequence[Mapping[str, Sequence[Event]]],
           scorer: CaptionScorer, tokens: Mapping[str, str] | None = None) -> tuple[float, dict[str, float]]:
    """SODA_c ×100 over the ground-truth videos, and the F1 (×100) of each video.

    The better reference set counts per video; videos without predictions score 0.
    """
    tokens = tokens if tokens is not None else _tokenize_all(predictions, reference_sets, scorer)
    per_video = {}
    for vid in _reference_videos(reference_sets):
        preds = predictions.get(vid) or []
        per_video[vid] = 100.0 * max(soda_video_f1(preds, refs[vid], scorer, tokens)
                                     for refs in reference_sets if vid in refs)
    mean = float(np.mean(list(per_video.values()))) if per_video else 0.0
    return mean, per_video


# --- CIDEr / METEOR over tIoU ----------------------------------------------------------------

def _reference_videos(reference_sets: Sequence[Mapping[str, Sequence[Event]]]) -> list[str]:
    return list(dict.fromkeys(vid for refs in reference_sets for vid in refs))


def _tokenize_all(predictions, reference_sets, scorer: CaptionScorer) -> dict[str, str]:
    sentences = {NONSENSE}
    for events in [*predictions.values(), *(e for refs in reference_sets for e in refs.values())]:
        sentences.update(e[2] for e in events)
    ordered = sorted(sentences)
    return dict(zip(ordered, scorer.tokenize(ordered)))


def densevid_pairs(preds: Sequence[Event], ref_lists: Sequence[Sequence[Event]], tiou: float) -> list[tuple[str, str]]:
    """``(prediction, reference)`` sentence pairs of one video at threshold ``tiou``.

    Each prediction is paired with every reference (of any set in ``ref_lists``) with IoU >= tiou,
    or with :data:`NONSENSE` when there is none.
    """
    pairs = []
    for start, end, sentence in preds:
        matched = [r[2] for refs in ref_lists for r in refs if segment_iou((start, end), r[:2]) >= tiou]
        pairs.extend((sentence, ref) for ref in (matched or [NONSENSE]))
    return pairs


def densevid_scores(predictions: Mapping[str, Sequence[Event]], reference_sets: Sequence[Mapping[str, Sequence[Event]]],
                    scorer: CaptionScorer, tokens: Mapping[str, str] | None = None,
                    tious: Sequence[float] = TIOUS) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """METEOR and CIDEr ×100 averaged over videos and thresholds, and per video and threshold.

    Returns:
        ``(metrics, per_video)``: metrics has ``METEOR``, ``CIDEr`` and ``METEOR@τ``/``CIDEr@τ``;
        per_video maps video id -> the same keys per τ (×100).
    """
    tokens = tokens if tokens is not None else _tokenize_all(predictions, reference_sets, scorer)
    videos = _reference_videos(reference_sets)
    per_video: dict[str, dict[str, float]] = {vid: {} for vid in videos}
    metrics: dict[str, float] = {}
    for tiou in tious:
        for vid in videos:
            ref_lists = [refs[vid] for refs in reference_sets if vid in refs]
            pairs = densevid_pairs(predictions.get(vid) or [], ref_lists, tiou)
            tokenised = [(tokens[h], tokens[r]) for h, r in pairs]
            per_video[vid][f"METEOR@{tiou:g}"] = 100.0 * scorer.meteor(tokenised)[0] if pairs else 0.0
            per_video[vid][f"CIDEr@{tiou:g}"] = 100.0 * scorer.cider(tokenised) if pairs else 0.0
        for name in ("METEOR", "CIDEr"):
            key = f"{name}@{tiou:g}"
            metrics[key] = float(np.mean([per_video[v][key] for v in videos])) if videos else 0.0
    means = {name: float(np.mean([metrics[f"{name}@{t:g}"] for t in tious])) if tious else 0.0
             for name in ("CIDEr", "METEOR")}
    return {**means, **metrics}, per_video


def evaluate_dense_captioning(predictions: Mapping[str, Sequence[Event]],
                              reference_sets: Sequence[Mapping[str, Sequence[Event]]],
                              scorer: CaptionScorer, tious: Sequence[float] = TIOUS) -> tuple[dict, list[dict], dict]:
    """SODA_c, CIDEr and METEOR (×100) of parsed predictions against one or more reference sets.

    Args:
        predictions: video id -> predicted events ``(start_s, end_s, sentence)``; missing or empty
            lists are videos without prediction (score 0, counted).
        reference_sets: one mapping per reference file (val_1, val_2), video id -> events.
        scorer: :class:`CocoCaptionScorer` (or a stand-in with the same methods).
    Returns:
        ``(metrics, per-video rows, counts)``.
    """
    if not reference_sets:
        raise ValueError("dense captioning needs at least one reference set")
    tokens = _tokenize_all(predictions, reference_sets, scorer)
    videos = _reference_videos(reference_sets)
    metrics, per_tiou = densevid_scores(predictions, reference_sets, scorer, tokens, tious)
    soda, soda_per_video = soda_c(predictions, reference_sets, scorer, tokens)
    metrics = {"SODA_c": soda, **metrics}
    rows = [{"video_id": vid, "events_predicted": len(predictions.get(vid) or []),
             "SODA_c": soda_per_video[vid], **per_tiou[vid]} for vid in videos]
    known = set(videos)
    counts = {
        "videos": len(videos),
        "videos_without_prediction": sum(not predictions.get(vid) for vid in videos),
        "predicted_events": sum(len(predictions.get(vid) or []) for vid in videos),
        "predictions_for_unknown_videos": sum(vid not in known for vid in predictions),
    }
    return metrics, rows, counts
