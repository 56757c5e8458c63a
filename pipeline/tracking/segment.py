"""Pixel-accurate layer labels on frame 0 by warping error.

Trajectory-based labels are blurred at motion boundaries: flow fields are smooth there, so points
just outside a moving object travel with it for a while. Here each layer's motion (the composed
keyframe-step homographies found by :func:`pipeline.tracking.layers.find_layers`) warps early
keyframes back onto frame 0, and every pixel takes the layer whose warp reproduces its
neighbourhood best. A layer is judged on the better half of the keyframes, so frames where the pixel
is hidden do not count against its own layer. Regions that no layer explains become new layers
(the sequential tracker fits their motion frame by frame), so an object missed by the clustering
is still tracked.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.tracking.homography import apply_h
from pipeline.tracking.register import appearance_distance, chromaticity, normalized

UNEXPLAINED = 0.45  # robust warping error above which no layer explains a pixel
MIN_NEW_AREA = 0.004  # smallest unexplained region (fraction of the frame) that becomes a layer
MOTION_TOLERANCE = 0.75  # px: neighbouring unexplained pixels with closer early displacements share a region


def compose_steps(models: np.ndarray, defined: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame-0 → keyframe-k maps from step maps (K−1, 3, 3). Returns (K, 3, 3) and valid (K,)
    (every step up to k was defined)."""
    out = [np.eye(3)]
    valid = [True]
    for step, ok in zip(models, defined):
        nxt = step @ out[-1]
        out.append(nxt / nxt[2, 2])
        valid.append(valid[-1] and bool(ok))
    return np.stack(out), np.array(valid)


def _robust_scores(errors: np.ndarray) -> np.ndarray:
    """Mean of the better half of each (layer, pixel)'s finite keyframe errors (L, P, N) → (L, N);
    inf with fewer than two finite values."""
    finite = np.isfinite(errors)
    count = finite.sum(axis=1)
    ordered = np.sort(np.where(finite, errors, np.inf), axis=1)
    half = np.maximum((count + 1) // 2, 1)
    csum = np.cumsum(np.where(np.isfinite(ordered), ordered, 0.0), axis=1)
    total = np.take_along_axis(csum, (half - 1)[:, None, :], axis=1)[:, 0]
    return np.where(count >= 2, total / half, np.inf).astype(np.float32)


def label_by_warping(
    frames: np.ndarray,
    gray: np.ndarray,
    keyframes: np.ndarray,
    layers: list[tuple[np.ndarray, np.ndarray]],
    grid: np.ndarray,
    fallback: np.ndarray,
    motion: np.ndarray | None = None,
    frames_used: int = 6,
    horizon: int = 45,
    margin: float = 0.05,
) -> np.ndarray:
    """Layer of every frame-0 pixel by robust warping error.

    Args:
        frames: uint8 (T, h, w, 3) RGB; gray: uint8 (T, h, w); keyframes: frame indices of the
            step models' keyframes.
        layers: per layer (step models (K−1, 3, 3), defined (K−1,)) as from ``find_layers``.
        grid: float32 (h·w, 2) the frame-0 pixel grid, row-major.
        fallback: int (h·w,) labels kept where the warping error cannot decide (e.g. trajectory labels).
        motion: optional float (h, w, 2) early displacement of each pixel (e.g. chained over a few
            frames), used to split unexplained regions by motion.
        frames_used: how many keyframes (evenly spread over frames 1..``horizon``) to score.
        margin: layers within ``margin`` of the best score count as ties; a tie keeps the
            ``fallback`` label when it is among them, else goes to the largest tied layer. A layer
            tied with a larger one on most of its pixels is merged into it first.
    Returns: int (h·w,) labels (median-filtered 5x5), possibly with new layers appended.
    """
    h, w = gray.shape[1:3]
    composed = [compose_steps(m, d) for m, d in layers]
    early = np.flatnonzero((keyframes > 0) & (keyframes <= horizon))
    if len(early) < 2:
        return fallback
    picks = early[np.unique(np.linspace(0, len(early) - 1, min(frames_used, len(early))).round().astype(int))]
    ref_norm, ref_chroma = normalized(gray[0]), chromaticity(frames[0])
    errors = np.full((len(layers), len(picks), h * w), np.inf, np.float32)
    for j, k in enumerate(picks):
        frame_norm, frame_chroma = normalized(gray[keyframes[k]]), chromaticity(frames[keyframes[k]])
        for index, (maps, valid) in enumerate(composed):
            if not valid[k]:
                continue
            pos = apply_h(maps[k], grid)
            diff = appearance_distance(ref_norm, frame_norm, pos.reshape(h, w, 2), None, ref_chroma, frame_chroma,
                                       window=5).ravel()
            inside = (pos[:, 0] >= 0) & (pos[:, 0] <= w - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= h - 1)
            errors[index, j] = np.where(inside, diff, np.inf)
    score = _robust_scores(errors)
    labels = _merge_indistinct(score, fallback.copy(), margin)
    best = score.min(axis=0)
    tie = score <= best[None] + margin  # (L, h·w) layers that explain a pixel about as well as the best
    own = score[labels, np.arange(h * w)]
    keep = ~np.isfinite(own) | tie[labels, np.arange(h * w)]  # no evidence against the trajectory label
    sizes = np.bincount(labels, minlength=len(layers))
    decided = keep.copy()
    for index in np.argsort(-sizes, kind="stable"):  # otherwise the largest tied layer
        take = ~decided & np.isfinite(best) & tie[index]
        labels[take] = index
        decided |= take
    labels = _add_unexplained(labels, np.isfinite(best) & (best > UNEXPLAINED), motion, (h, w))
    return cv2.medianBlur(labels.reshape(h, w).astype(np.uint8), 5).ravel().astype(np.int64)


def _add_unexplained(labels: np.ndarray, unexplained: np.ndarray, motion: np.ndarray | None,
                     size: tuple[int, int]) -> np.ndarray:
    """Give each sizeable region that no layer explains a new label.

    Regions are grown over unexplained pixels whose early displacement ``motion`` (h, w, 2) differs
    from a neighbour's by less than ``MOTION_TOLERANCE`` px, so touching objects that move apart
    get separate layers (without ``motion``: connected components).
    """
    h, w = size
    mask = cv2.morphologyEx(unexplained.reshape(h, w).astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    if motion is None:
        count, components = cv2.connectedComponents(mask, connectivity=4)
    else:
        components = _grow_regions(mask, motion)
        count = int(components.max()) + 1
    next_label = int(labels.max()) + 1
    flat = components.ravel()
    areas = np.bincount(flat, minlength=count)
    for comp in np.flatnonzero(areas >= MIN_NEW_AREA * h * w):
        if comp == 0 or next_label >= 255:
            continue
        labels[flat == comp] = next_label
        next_label += 1
    return labels


def _grow_regions(mask: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Flood-fill regions of ``mask`` (uint8 (h, w)) with neighbour-to-neighbour motion differences
    below ``MOTION_TOLERANCE``. Returns int32 (h, w) region ids (0 = outside ``mask``)."""
    h, w = mask.shape
    image = np.zeros((h, w, 3), np.float32)
    image[..., :2] = motion
    fill_mask = np.ones((h + 2, w + 2), np.uint8)
    fill_mask[1:-1, 1:-1] = mask == 0  # floodFill never crosses non-zero mask pixels
    regions = np.zeros((h, w), np.int32)
    tolerance = (MOTION_TOLERANCE,) * 3
    next_id = 1
    for y, x in zip(*np.nonzero(mask)):
        if regions[y, x]:
            continue
        before = fill_mask[1:-1, 1:-1].copy()
        cv2.floodFill(image, fill_mask, (int(x), int(y)), 0, tolerance, tolerance,
                      4 | cv2.FLOODFILL_MASK_ONLY | (1 << 8))
        regions[(fill_mask[1:-1, 1:-1] != 0) & (before == 0)] = next_id
        next_id += 1
    return regions


def _merge_indistinct(score: np.ndarray, labels: np.ndarray, margin: float, share: float = 0.7) -> np.ndarray:
    """Fold a layer into a larger one that explains most (``share``) of its pixels about as well.

    Spurious layers (fragments of one motion split by tracking noise) disappear this way; their
    score rows are set to inf. Returns the updated labels; ``score`` is modified in place.
    """
    sizes = np.bincount(labels, minlength=len(score))
    for small in np.argsort(sizes):
        pixels = labels == small
        if not pixels.any():
            continue
        own = score[small, pixels]
        if np.mean(np.isfinite(own)) < share:
            continue  # too little evidence about this layer's own motion to judge it
        for big in np.argsort(-sizes):
            if sizes[big] <= sizes[small] or big == small:
                continue
            if np.mean(score[big, pixels] <= own + margin) > share:
                labels[pixels] = big
                sizes[big] += sizes[small]
                sizes[small] = 0
                score[small] = np.inf
                break
    return labels
