"""The mutable set of motion layers during sequential tracking.

Holds, per layer: its member points (indices into the frame-0 grid), the subset used for fitting,
its bounding-box pseudo-points (for the constant-velocity prior), per-frame homographies
(frame 0 → frame t) and its status (hidden for how long, re-detection back-off).
"""

from __future__ import annotations

import numpy as np

from pipeline.tracking.homography import apply_h, extrapolate_h, fit_h
from pipeline.tracking.register import LayerRegions

FIT_POINTS = 800  # most points per layer used to fit a homography
PRIOR_WEIGHT = 4.0  # weight of each of the 5 constant-velocity pseudo-points in a fit
HIDDEN_DAMPING = 0.9  # velocity of a hidden layer's extrapolated motion is damped by this per frame


def close(a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Whether rows of (N, 2) ``a`` and ``b`` are within ``radius`` px. bool (N,)."""
    d = a - b
    return np.einsum("ij,ij->i", d, d) < radius * radius


def box_points(points: np.ndarray) -> np.ndarray:
    """Corners and centre of the bounding box of (P, 2) points: float32 (5, 2)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]], (lo + hi) / 2], np.float32)


class LayerSet:
    """Layers of the frame-0 grid and their per-frame homographies (see module docstring)."""

    def __init__(self, grid: np.ndarray, labels: np.ndarray, size: tuple[int, int], num_frames: int,
                 rng: np.random.Generator, min_support: int, outlier_px: float):
        """grid: float32 (G, 2) frame-0 points (row-major (h, w) = ``size``); labels: int (G,) layer ids."""
        self.grid, self.size, self.rng = grid, size, rng
        self.min_support, self.outlier_px = min_support, outlier_px
        self.labels = labels.astype(np.int64).copy()
        self.count = int(self.labels.max()) + 1
        capacity = self.count
        self.models = np.tile(np.eye(3), (num_frames, capacity, 1, 1))
        self.hidden_for = np.zeros(capacity, np.int64)  # frames since the layer was last well seen
        self.failures = np.zeros(capacity, np.int64)  # consecutive failed re-detections
        self.next_try = np.zeros(capacity, np.int64)  # frame of the next re-detection attempt
        self.restart = np.ones(capacity, bool)  # no velocity estimate (first frame, or just re-detected)
        h, w = size
        self.center, self.scale = (w / 2.0, h / 2.0), max(h, w) / 2.0
        self._rebuild()

    def _rebuild(self) -> None:
        self.members = [np.flatnonzero(self.labels == k) for k in range(self.count)]
        self.fit_sets = [m if len(m) <= FIT_POINTS else np.sort(self.rng.choice(m, FIT_POINTS, replace=False))
                         for m in self.members]
        self.boxes = [box_points(self.grid[m]) if len(m) else np.zeros((0, 2), np.float32) for m in self.members]
        self.member_points = [self.grid[m] for m in self.members]
        self.regions = LayerRegions(self.labels.reshape(self.size))

    def priors(self, t: int) -> np.ndarray:
        """Constant-velocity predictions (L, 3, 3) of every layer's map at frame ``t``."""
        out = []
        for k in range(self.count):
            if t < 2 or self.restart[k]:
                out.append(self.models[t - 1, k])
            else:
                damping = HIDDEN_DAMPING if self.hidden_for[k] else 1.0
                out.append(extrapolate_h(self.models[t - 2, k], self.models[t - 1, k], damping))
        self.restart[: self.count] = False
        return np.stack(out)

    def fit(self, positions: np.ndarray, usable: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Robust homographies (L, 3, 3) mapping frame-0 points to ``positions`` (G, 2) where ``usable``,
        pulled towards ``priors`` by weak pseudo-points; and the support (L,) (usable fit points)."""
        models, support = [], []
        for k, fit_set in enumerate(self.fit_sets):
            use = fit_set[usable[fit_set]]
            support.append(len(use))
            if len(use) < self.min_support:
                models.append(priors[k])
                continue
            box = self.boxes[k]
            src = np.concatenate([self.grid[use], box])
            dst = np.concatenate([positions[use], apply_h(priors[k], box)])
            weights = np.concatenate([np.ones(len(use)), np.full(len(box), PRIOR_WEIGHT)])
            model = fit_h(src, dst, weights, self.center, self.scale)
            weights[: len(use)] = close(apply_h(model, src[: len(use)]), dst[: len(use)], self.outlier_px)
            models.append(fit_h(src, dst, weights, self.center, self.scale))  # refit without outliers
        return np.stack(models), np.array(support)

    def apply(self, models: np.ndarray) -> np.ndarray:
        """Positions (G, 2) of every grid point under its layer's model (models (L, 3, 3))."""
        out = np.empty_like(self.grid)
        for k, idx in enumerate(self.members):
            out[idx] = apply_h(models[k], self.member_points[k])
        return out
