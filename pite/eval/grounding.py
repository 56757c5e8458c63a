"""Temporal grounding metrics: R@1 at IoU >= {0.3, 0.5, 0.7} and mIoU (``metrics.md``).

One query is a sentence with its ground-truth segment in seconds. The model answers in frame
indices of the global 100-frame timeline ("From 05 to 23"); the first pair in the answer is read
with :func:`pite.timeline.parse_segment` and converted to seconds with
:func:`pite.timeline.segment_to_seconds`, the project's one conversion. An answer without a pair
scores IoU 0 and is counted as unparsable, never dropped; a query without any answer also scores
0 and is counted as missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pite.timeline import parse_segment, segment_to_seconds

THRESHOLDS = (0.3, 0.5, 0.7)


def segment_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two segments ``(start, end)`` in seconds: intersection / union, 0 when disjoint.

    Degenerate segments (``start == end``) have length 0; two identical points give 0, not NaN.
    The ends of each segment are sorted first.
    """
    a0, a1 = sorted((float(a[0]), float(a[1])))
    b0, b1 = sorted((float(b[0]), float(b[1])))
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    return inter / union if union > 0 else 0.0


def answer_to_seconds(answer: str, duration_s: float) -> tuple[float, float] | None:
    """The first segment of a model answer, in seconds, or None when the answer has no pair."""
    parsed = parse_segment(answer)
    if parsed is None:
        return None
    return segment_to_seconds(parsed.start, parsed.end, duration_s)


@dataclass(frozen=True)
class GroundingScore:
    """The score of one query: IoU, the predicted segment (None if unparsable or missing)."""

    item_id: str
    iou: float
    predicted_s: tuple[float, float] | None
    status: str  # "ok", "unparsable" or "missing"


def score_query(item_id: str, answer: str | None, gt_s: Sequence[float], duration_s: float) -> GroundingScore:
    """Score one answer against the ground-truth segment ``gt_s`` (seconds)."""
    if answer is None:
        return GroundingScore(item_id, 0.0, None, "missing")
    predicted = answer_to_seconds(answer, duration_s)
    if predicted is None:
        return GroundingScore(item_id, 0.0, None, "unparsable")
    return GroundingScore(item_id, segment_iou(predicted, gt_s), predicted, "ok")


def grounding_metrics(ious: Sequence[float], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """``{"R@0.3", "R@0.5", "R@0.7", "mIoU"}`` in percent (×100) over all queries.

    R@τ counts IoU >= τ. An empty list gives 0 everywhere (nothing was grounded).
    """
    n = len(ious)
    metrics = {f"R@{t:g}": (100.0 * sum(iou >= t for iou in ious) / n if n else 0.0) for t in thresholds}
    metrics["mIoU"] = 100.0 * sum(ious) / n if n else 0.0
    return metrics


def evaluate_grounding(queries: Sequence, answers: Mapping[str, str]) -> tuple[dict, list[GroundingScore], dict]:
    """Score every query and summarise.

    Args:
        queries: objects with ``item_id``, ``start_s``, ``end_s`` and ``duration_s``
            (:class:`pite.eval.datasets.GroundingQuery`).
        answers: model answer per ``item_id``; queries without one score 0 and are counted.
    Returns:
        ``(metrics, per-query scores, counts)``; counts hold ``queries``, ``unparsable``, ``missing``.
    """
    scores = [score_query(q.item_id, answers.get(q.item_id), (q.start_s, q.end_s), q.duration_s) for q in queries]
    counts = {
        "queries": len(scores),
        "unparsable": sum(s.status == "unparsable" for s in scores),
        "missing": sum(s.status == "missing" for s in scores),
    }
    return grounding_metrics([s.iou for s in scores]), scores, counts
