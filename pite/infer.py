"""Inference: ``pite chat`` (one video; one question or an interactive session) and ``pite infer`` (JSONL batch).

A :class:`Predictor` holds a checkpoint (:func:`pite.checkpoints.load_pite_checkpoint`) and a feature source
(``--features``: a store, videos are its ids; else CLIP on video files, ``--clip``). Prompts use the training
template (``render_prompt``, Vicuna v1); a question without ``<video>`` gets ``"<video>\\n"`` in front, and the
``<video>`` tokens become T video ids (T = feature frames). Greedy decoding over left-padded batches, stop at EOS.

``--show-trajectories``: per phrase of an answer, the trajectory head's (P, N, 2) averaged over its generated tokens
(training targets every token of a phrase). Phrases: lowest noun phrases (``pite.nounphrases``, ``--parser``),
else each word but function words and numbers (a crude stand-in); chars map to tokens by decoded prefix lengths.

``pite infer``: rows ``{"id"?, "video_id" (or "video"), "question"}`` (files relative to the input's folder) ->
``{id, video, question, answer[, phrases]}`` appended to ``--output`` per batch (fsynced); a rerun keeps complete
lines, cuts a torn tail and answers the rest. ``pite eval`` calls :meth:`Predictor.predict_fn`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pite.cli import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PhraseFinder = Callable[[list[str]], list[list[tuple[str, int, int]]]]
FUNCTION_WORDS = frozenset(
    "a an the and or but of to from in on at by for with into onto over under then while during after before is are "
    "was were be been being am do does did has have had it its this that these those there here he she they we you i "
    "his her their our your him them us me who which what when where as up down out off".split())


class StoreFeatures:
    """Video id -> float16 (T, D) from a :class:`pite.feature_store.FeatureStore` (``--features``)."""

    def __init__(self, root: str | Path):
        from pite.feature_store import FeatureStore

        try:
            self.store = FeatureStore(root)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(str(err)) from err

    def check(self, videos: list[str]) -> None:
        """UserError naming the first of ``videos`` that has no features."""
        missing = [v for v in videos if v not in self.store]
        if missing:
            raise UserError(f"video {missing[0]!r} has no features in {self.store.root} ({len(missing)} of "
                            f"{len(videos)} missing; {len(self.store)} stored); extract them with `pite features`")

    def get(self, video: str) -> np.ndarray:
        self.check([video])
        return self.store.get(video)


class VideoFeatures:
    """Video file -> CLIP features computed now (:class:`pite.features.ClipFeatureExtractor`); remembers the last."""

    def __init__(self, clip: str, device: str = "auto", root: str | Path | None = None):
        from pite.features import ClipFeatureExtractor, ClipSettings

        self.extractor = ClipFeatureExtractor(ClipSettings(model=clip, device=device))
        self.root, self._last = Path(root or "."), ("", None)

    def get(self, video: str) -> np.ndarray:
        from pite.features import FeatureInputError, FeatureItem

        path = self.root / Path(video).expanduser()  # an absolute path stays as it is
        if self._last[0] != str(path):
            if not path.is_file():
                raise UserError(f"video file {path} does not exist")
            try:
                self._last = (str(path), self.extractor(FeatureItem(str(path), str(path))))
            except FeatureInputError as err:
                raise UserError(f"cannot read {path}: {err}") from err
        return self._last[1]


def encode_prompt(question: str, tokenizer, settings, video_token_id: int, frames: int) -> list[int]:
    """Token ids of the inference prompt with the ``<video>`` tokens replaced by ``frames`` video ids."""
    from training.data.conversation import VIDEO_PLACEHOLDER, render_prompt, tokenize

    if VIDEO_PLACEHOLDER not in question:
        question = f"{VIDEO_PLACEHOLDER}\n{question}"
    if question.count(VIDEO_PLACEHOLDER) != 1:
        raise UserError(f"a question may hold one {VIDEO_PLACEHOLDER}, got: {question!r}")
    text = render_prompt(question, tokenizer, settings)
    [(ids, offsets)] = tokenize([text], tokenizer, settings.template == "vicuna_v1")
    lo, hi = text.index(VIDEO_PLACEHOLDER), text.index(VIDEO_PLACEHOLDER) + len(VIDEO_PLACEHOLDER)
    video = [i for i, (s, e) in enumerate(offsets) if s < hi and e > lo]
    if not video or text[offsets[video[0]][0]:offsets[video[-1]][1]].strip() != VIDEO_PLACEHOLDER:
        raise ValueError(f"the tokenizer joins {VIDEO_PLACEHOLDER} with the text around it in {text!r}")
    return ids[:video[0]] + [video_token_id] * frames + ids[video[-1] + 1:]


def word_phrases(answers: list[str]) -> list[list[tuple[str, int, int]]]:
    """Every word that is not a function word or a number, as ``(text, start, end)`` (the no-parser stand-in)."""
    return [[(m.group(), m.start(), m.end()) for m in re.finditer(r"[A-Za-z][\w'-]*", text)
             if m.group().lower() not in FUNCTION_WORDS] for text in answers]


def noun_phrase_finder(parser: str) -> PhraseFinder:
    """Lowest-level noun phrases by a SuPar parser (``pite.nounphrases``)."""
    from pite.nounphrases import NounPhraseExtractor, NounPhraseSettings

    extractor = NounPhraseExtractor(NounPhraseSettings(parser=parser))
    return lambda answers: [[(p.text, p.char_start, p.char_end) for p in found]
                            for found in extractor.extract(answers)]


def token_spans(tokenizer, tokens: list[int]) -> list[tuple[int, int]]:
    """Character span of each token in ``decode(tokens)``, from the lengths of the decoded prefixes."""
    lengths = (len(tokenizer.decode(tokens[:i + 1], skip_special_tokens=True)) for i in range(len(tokens)))
    ends = list(accumulate(lengths, max))
    return list(zip([0] + ends[:-1], ends))


@dataclass
class Phrase:
    """A phrase of an answer: characters ``[char_start, char_end)``, its generated tokens, and the trajectory
    head's output (P, N, 2) averaged over them (normalised (x, y) per trajectory and frame)."""

    text: str
    char_start: int
    char_end: int
    tokens: list[int]
    trajectory: np.ndarray

    def to_dict(self) -> dict:
        return {"text": self.text, "char_start": self.char_start, "char_end": self.char_end,
                "trajectory": np.round(self.trajectory.astype(np.float64), 4).tolist()}


@dataclass
class Answer:
    text: str
    phrases: list[Phrase] = field(default_factory=list)


class Predictor:
    """Greedy answers of a PiTe model about videos.

    Args:
        model, tokenizer, info: from :func:`pite.checkpoints.load_pite_checkpoint` (``info`` optional).
        features: a source with ``get(video) -> (T, D)`` (:class:`StoreFeatures`, :class:`VideoFeatures`).
        conversation: the prompt template (``ConversationSettings``; default Vicuna v1 as in training).
        max_new_tokens, batch_size: generation limits; phrases: finds answer phrases (default :func:`word_phrases`).
    """

    def __init__(self, model, tokenizer, features, *, conversation=None, max_new_tokens: int = 256,
                 batch_size: int = 8, phrases: PhraseFinder | None = None, info=None):
        from training.data.conversation import ConversationSettings

        self.model, self.tokenizer, self.features = model.eval(), tokenizer, features
        self.conversation = conversation or ConversationSettings()
        self.max_new_tokens, self.batch_size = int(max_new_tokens), max(1, int(batch_size))
        self.phrases = phrases or word_phrases
        self.device, self.info = next(model.parameters()).device, info

    @classmethod
    def from_checkpoint(cls, checkpoint: str, features, *, base: str | None = None, trust_pickle: bool = False,
                        device: str = "auto", dtype: str = "auto", **kwargs) -> "Predictor":
        from pite.checkpoints import load_pite_checkpoint
        from pite.features import resolve_device

        try:
            where = resolve_device(device)
        except RuntimeError as err:
            raise UserError(str(err)) from err
        dtype = ("bf16" if where.type == "cuda" else "fp32") if dtype == "auto" else dtype
        model, tokenizer, info = load_pite_checkpoint(checkpoint, base, trust_pickle, where, DTYPES[dtype])
        return cls(model, tokenizer, features, info=info, **kwargs)

    def _video(self, video: str) -> np.ndarray:
        frames = np.asarray(self.features.get(video))
        expected = self.model.adapter.in_features
        if frames.ndim != 2 or frames.shape[1] != expected:
            raise UserError(f"features of {video!r} have shape {frames.shape}; the checkpoint's adapter reads "
                            f"(frames, {expected}) (features of another CLIP model?)")
        return frames

    def answer(self, requests: list[tuple[str, str]], trajectories: bool = False) -> list[Answer]:
        """``(video, question)`` pairs -> answers, in order, ``batch_size`` at a time."""
        n = self.batch_size
        return [a for i in range(0, len(requests), n) for a in self._answer_batch(requests[i:i + n], trajectories)]

    def predict_fn(self, items) -> list[str]:
        """The eval harness's predictor: items with ``video_id`` and ``prompt`` (attributes or keys) -> answers."""
        pairs = [(i["video_id"], i["prompt"]) if isinstance(i, dict) else (i.video_id, i.prompt) for i in items]
        return [answer.text for answer in self.answer(pairs)]

    def _answer_batch(self, requests: list[tuple[str, str]], trajectories: bool) -> list[Answer]:
        videos = [self._video(video) for video, _ in requests]
        answers: dict[int, Answer] = {}
        for shape in dict.fromkeys(v.shape for v in videos):  # one generate() per feature shape
            rows = [i for i, v in enumerate(videos) if v.shape == shape]
            found = self._generate([requests[i][1] for i in rows], [videos[i] for i in rows], trajectories)
            answers.update(zip(rows, found))
        return [answers[i] for i in range(len(requests))]

    @torch.no_grad()
    def _generate(self, questions: list[str], videos: list[np.ndarray], trajectories: bool) -> list[Answer]:
        from transformers import GenerationConfig

        tok, model = self.tokenizer, self.model
        frames = videos[0].shape[0]
        try:
            prompts = [encode_prompt(q, tok, self.conversation, model.video_token_id, frames) for q in questions]
        except ValueError as err:
            raise UserError(str(err)) from err
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        width = max(map(len, prompts))  # left padding:
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        feats = torch.from_numpy(np.stack(videos).astype(np.float32)).to(self.device)
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=pad, eos_token_id=tok.eos_token_id)
        generated = model.generate(ids, mask, feats, generation_config=config).cpu()  # (B, G)
        rows = [row[:row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)]
                for row in generated.tolist()]
        texts = [tok.decode(row, skip_special_tokens=True) for row in rows]
        answers = [Answer(text.strip()) for text in texts]
        if trajectories:
            self._add_trajectories(answers, texts, rows, ids, mask, feats, generated)
        return answers

    def _add_trajectories(self, answers, texts, rows, ids, mask, feats, generated) -> None:
        found = self.phrases([a.text for a in answers])
        picks: list[tuple[int, tuple[str, int, int], list[int]]] = []
        for b, (text, row) in enumerate(zip(texts, rows)):
            shift = len(text) - len(text.lstrip())  # the answer is the decoded text stripped
            spans = token_spans(self.tokenizer, row)
            for phrase in found[b]:
                lo, hi = phrase[1] + shift, phrase[2] + shift
                tokens = [t for t, (s, e) in enumerate(spans) if e > s and s < hi and e > lo]
                if tokens:
                    picks.append((b, phrase, tokens))
        if not picks:
            return
        positions = torch.tensor([[b, t] for b, _, tokens in picks for t in tokens])
        traj = self.model.generated_trajectories(ids, generated.to(self.device), positions, mask, feats)
        per_token = np.split(traj.float().cpu().numpy(), np.cumsum([len(t) for *_, t in picks])[:-1])  # (k, P, N, 2)
        for (b, (text, lo, hi), tokens), points in zip(picks, per_token):
            answers[b].phrases.append(Phrase(text, lo, hi, tokens, points.mean(axis=0)))


def make_eval_predictor(cfg) -> Callable:
    """``predict_fn`` for ``pite eval``: the config's checkpoint, feature store, batch size and max tokens."""
    if not cfg.checkpoint or not cfg.features:
        raise UserError("the eval config needs `checkpoint` and `features` to predict")
    predictor = Predictor.from_checkpoint(cfg.checkpoint, StoreFeatures(cfg.features), batch_size=cfg.batch_size,
                                          max_new_tokens=cfg.max_new_tokens)
    return predictor.predict_fn


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="stage/export folder, or a PiTe/VTimeLLM release folder")
    p.add_argument("--base", default=None, help="base LLM of a LoRA checkpoint (default: the one it names)")
    p.add_argument("--features", default=None, help="feature store (pite features); videos are then store ids")
    p.add_argument("--clip", default="openai/clip-vit-large-patch14", help="CLIP for video files (no --features)")
    p.add_argument("--show-trajectories", action="store_true", help="trajectories of the phrases of each answer")
    p.add_argument("--parser", default=None, help="SuPar parser for noun phrases (default: every content word)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of foreign .bin weights (runs code from them: trusted files only)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: bf16 on GPU, fp32 on CPU")


def add_chat_commands(subparsers) -> None:
    """Register ``pite chat`` and ``pite infer``."""
    p = subparsers.add_parser("chat", help="answer questions about one video")
    _add_common(p)
    p.add_argument("--video", required=True, help="a video file, or a store id with --features")
    ask = p.add_mutually_exclusive_group(required=True)
    ask.add_argument("--question", help="the question")
    ask.add_argument("--interactive", action="store_true", help="read questions from stdin until EOF or an empty line")
    p.set_defaults(func=run_chat)
    p = subparsers.add_parser("infer", help="answer a JSONL of (video, question) rows into a JSONL (resumable)")
    _add_common(p)
    p.add_argument("--input", required=True, help='JSONL rows {"id"?, "video_id" or "video", "question"}')
    p.add_argument("--output", required=True, help="JSONL answers; a rerun continues it")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generate call (default 8)")
    p.set_defaults(func=run_infer)


def _predictor(args, videos: list[str], video_root: Path | None = None) -> Predictor:
    """Features first (a store is checked for ``videos`` before any model loads), then the checkpoint."""
    features = StoreFeatures(args.features) if args.features else VideoFeatures(args.clip, args.device, video_root)
    if args.features:
        features.check(videos)
    predictor = Predictor.from_checkpoint(
        args.checkpoint, features, base=args.base, trust_pickle=args.trust_pickle, device=args.device,
        dtype=args.dtype, max_new_tokens=args.max_new_tokens, batch_size=getattr(args, "batch_size", 1),
        phrases=noun_phrase_finder(args.parser) if args.parser else None)
    for note in predictor.info.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.show_trajectories and "traj_head" not in predictor.info.trained_heads:
        raise UserError(f"{args.checkpoint} has no trained trajectory head ({predictor.info.layout}); "
                        "drop --show-trajectories")
    return predictor


def format_phrase(phrase: Phrase, points: int = 5) -> str:
    """A phrase and its trajectories at ``points`` frames: ``trajectory 1: 00 (0.41, 0.52)  25 (...) ...``."""
    frames = np.linspace(0, phrase.trajectory.shape[1] - 1, points).round().astype(int)
    return "\n".join([f'  "{phrase.text}" [{phrase.char_start}:{phrase.char_end}]'] + [
        f"    trajectory {p + 1}: " + "  ".join(f"{f:02d} ({xy[f, 0]:.2f}, {xy[f, 1]:.2f})" for f in frames)
        for p, xy in enumerate(phrase.trajectory)])


def run_chat(args) -> int:
    """``pite chat``: answer ``--question``, or each stdin line until EOF or an empty line (``--interactive``)."""
    predictor = _predictor(args, [args.video])
    while True:
        if args.interactive and sys.stdin.isatty():
            print("question> ", end="", file=sys.stderr, flush=True)
        question = sys.stdin.readline().strip() if args.interactive else args.question
        if not question:
            return 0
        [answer] = predictor.answer([(args.video, question)], trajectories=args.show_trajectories)
        print("\n".join([answer.text] + [format_phrase(phrase) for phrase in answer.phrases]), flush=True)
        if not args.interactive:
            return 0


def _read_rows(path: Path) -> list[dict]:
    """Input rows as ``{"id", "video", "question"}`` in order (id: the row's, else its number)."""
    if not path.is_file():
        raise UserError(f"input {path} does not exist")
    rows: dict[str, dict] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key, video, question = str(row.get("id", len(rows))), row.get("video_id", row.get("video")), row["question"]
        except (ValueError, AttributeError, KeyError) as err:
            raise UserError(f'{path}:{n}: expected a JSON row with "question" and "video_id" (or "video")') from err
        if key in rows or not isinstance(video, str) or not isinstance(question, str):
            raise UserError(f"{path}:{n}: " + (f"id {key!r} appears twice" if key in rows else "bad video/question"))
        rows[key] = {"id": key, "video": video, "question": question}
    return list(rows.values())


def _resume(path: Path, rows: dict[str, dict]) -> set[str]:
    """Ids already answered in ``path``; a torn or unreadable tail is cut off."""
    if not path.exists():
        return set()
    data, keep, done = path.read_bytes(), 0, set()
    for line in data.splitlines(keepends=True):
        try:
            row = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            row = None
        if not isinstance(row, dict) or "answer" not in row:
            break
        item = rows.get(str(row.get("id")))
        if item is None or (item["video"], item["question"]) != (row.get("video"), row.get("question")):
            raise UserError(f"{path} holds an answer for id {row.get('id')!r} that is not in the input as written "
                            "(another input file?); use another --output or delete it")
        done.add(item["id"])
        keep += len(line)
    if keep < len(data):
        os.truncate(path, keep)
    return done


def run_infer(args) -> int:
    source, out = Path(args.input), Path(args.output)
    rows = _read_rows(source)
    done = _resume(out, {row["id"]: row for row in rows})
    todo = [row for row in rows if row["id"] not in done]
    print(f"{len(done)} of {len(rows)} answered already; {len(todo)} to go", file=sys.stderr)
    if not todo:
        return 0
    predictor = _predictor(args, [row["video"] for row in todo], source.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), predictor.batch_size):
        batch = todo[start:start + predictor.batch_size]
        answers = predictor.answer([(r["video"], r["question"]) for r in batch], args.show_trajectories)
        lines = [json.dumps({**row, "answer": answer.text, **({"phrases": [p.to_dict() for p in answer.phrases]}
                                                              if args.show_trajectories else {})},
                            ensure_ascii=False) + "\n" for row, answer in zip(batch, answers)]
        with open(out, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        print(f"answered {len(done) + start + len(batch)}/{len(rows)}", file=sys.stderr, flush=True)
    return 0
