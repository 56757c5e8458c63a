"""TAP-Vid point-tracking metrics: Average Jaccard (AJ), <δ_avg and Occlusion Accuracy (OA).

Definitions (``/work/shared/reference/metrics.md``, TAP-Vid):

- coordinates are rescaled to 256x256 before thresholding;
- evaluated frames: every frame *after* each point's query frame;
- a point is within δ when ‖pred − gt‖ < δ (strict), for δ ∈ {1, 2, 4, 8, 16} px;
- OA = fraction of evaluated (point, frame) pairs whose predicted occlusion equals the truth;
- <δ_avg = mean over δ of |within ∧ gt visible| / |gt visible| (ignores predicted occlusion);
- AJ = mean over δ of TP / (|gt visible| + FP), with TP = within ∧ gt visible ∧ pred visible and
  FP = pred visible ∧ (gt occluded ∨ not within);
- computed per video, then averaged over videos, ×100.

Arrays are time-major like :class:`pipeline.tracking.base.Tracks`: xy (T, N, 2) as (x, y), visible (T, N).
A ratio whose denominator is zero (e.g. <δ of a video where no point is ever visible) is NaN and
is skipped when averaging over videos.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (1.0, 2.0, 4.0, 8.0, 16.0)
METRIC_NAMES = ("AJ", "delta_avg", "OA")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def tapvid_metrics(
    pred_xy: np.ndarray,
    pred_visible: np.ndarray,
    gt_xy: np.ndarray,
    gt_visible: np.ndarray,
    query_frames: np.ndarray | None = None,
    frame_size: tuple[int, int] = (256, 256),
) -> dict[str, float]:
    """TAP-Vid metrics of one video, in percent.

    Args:
        pred_xy, gt_xy: float (T, N, 2) (x, y) pixel positions in a ``frame_size`` = (H, W) frame.
        pred_visible, gt_visible: bool (T, N).
        query_frames: int (N,) frame each point was queried on (default: all 0); only later frames count.
        frame_size: (height, width) of the frame the coordinates live in; rescaled to 256x256.
    Returns:
        {"AJ", "delta_avg", "OA"} in [0, 100], plus "delta_<δ>" and "jaccard_<δ>" per threshold.
    """
    pred_xy = np.asarray(pred_xy, np.float64)
    gt_xy = np.asarray(gt_xy, np.float64)
    pred_vis = np.asarray(pred_visible, bool)
    gt_vis = np.asarray(gt_visible, bool)
    if pred_xy.shape != gt_xy.shape or pred_xy.ndim != 3 or pred_xy.shape[-1] != 2:
        raise ValueError(f"xy must both be (T, N, 2); got {pred_xy.shape} and {gt_xy.shape}")
    if pred_vis.shape != gt_vis.shape or pred_vis.shape != pred_xy.shape[:2]:
        raise ValueError(f"visibility must be (T, N) = {pred_xy.shape[:2]}; got {pred_vis.shape}, {gt_vis.shape}")
    num_frames, num_points = gt_vis.shape
    queries = np.zeros(num_points, np.int64) if query_frames is None else np.asarray(query_frames, np.int64)
    evaluated = np.arange(num_frames)[:, None] > queries[None, :]

    scale = np.array([256.0 / frame_size[1], 256.0 / frame_size[0]])
    dist = np.linalg.norm((pred_xy - gt_xy) * scale, axis=-1)

    gt_v = gt_vis & evaluated
    pred_v = pred_vis & evaluated
    out = {"OA": 100.0 * _ratio(np.sum((pred_vis == gt_vis) & evaluated), np.sum(evaluated))}
    deltas, jaccards = [], []
    for delta in THRESHOLDS:
        within = (dist < delta) & evaluated
        true_pos = np.sum(within & gt_v & pred_v)
        false_pos = np.sum(pred_v & (~gt_vis | ~within))
        deltas.append(_ratio(np.sum(within & gt_v), np.sum(gt_v)))
        jaccards.append(_ratio(true_pos, np.sum(gt_v) + false_pos))
        out[f"delta_{delta:g}"] = 100.0 * deltas[-1]
        out[f"jaccard_{delta:g}"] = 100.0 * jaccards[-1]
    out["delta_avg"] = 100.0 * float(np.mean(deltas))
    out["AJ"] = 100.0 * float(np.mean(jaccards))
    return out


def average_metrics(per_video: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over videos, skipping NaN entries (NaN if every video is NaN)."""
    if not per_video:
        return {name: float("nan") for name in METRIC_NAMES}
    out = {}
    for key in per_video[0]:
        values = np.array([m[key] for m in per_video], np.float64)
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out
