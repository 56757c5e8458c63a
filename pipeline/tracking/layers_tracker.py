"""Long-range dense tracker ``dis_layers``: motion layers + direct registration to frame 0.

Chained flow loses a point for good once something covers it, and it drifts. This tracker keeps the
chain for what it is good at (short, accurate steps) and adds three classical parts:

1. **Motion layers** (:mod:`pipeline.tracking.layers`): the work grid is chained with DIS flow and a
   forward–backward check; a greedy multi-frame RANSAC groups the uninterrupted trajectories of a
   sparse anchor grid into layers that each follow one homography per frame, and every pixel joins
   the layer that best explains its own trajectory.
2. **Sequential tracking** frame by frame: points that were visible move by the chained flow (when
   forward–backward consistent); every layer's homography is refitted on them (with a weak
   constant-velocity prior, so thin slivers stay stable); points that are occluded or outside the
   frame follow their layer's homography plus the offset they had when last seen.
3. **Registration and appearance** (:mod:`pipeline.tracking.register`): frame t is warped into
   frame-0 geometry through the predicted positions and a small DIS residual snaps them back onto
   frame 0's texture (no drift); a lighting-robust normalised-patch comparison then decides
   visibility — which is also how points are re-acquired when they reappear.

All work happens on the full work-resolution grid; arbitrary queries are read off the grid through
their nearest grid pixel and that pixel's layer homography (sub-pixel offsets map exactly).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.tracking.base import DenseTracker, pixel_grid
from pipeline.tracking.flow import DISPairs, chain_tracks, fb_step, inside, make_dis, to_gray
from pipeline.tracking.homography import apply_h, extrapolate_h, fit_h
from pipeline.tracking.layers import assign_points, find_layers
from pipeline.tracking.redetect import Redetector
from pipeline.tracking.segment import label_by_warping
from pipeline.tracking.register import appearance_distance, chromaticity, normalized, register_to_reference

KEYFRAME_STEP = 3  # keyframe spacing for layer discovery and assignment
CHAIN_STRIDE = 2  # layer discovery chains every 2nd pixel (labels are refined per pixel afterwards)
FIT_POINTS = 1500  # most points per layer used to fit a homography
MIN_SUPPORT = 12  # fewer visible points than this: the layer is carried by its prior
PRIOR_WEIGHT = 4.0
CHAIN_GATE = 2.0  # px: a chained step farther than this from the layer's prediction is not trusted
SEEN_SHARE = 0.15  # a layer with fewer of its points seen counts as hidden (re-detection is tried)
REDETECT_AFTER = 2  # frames a layer must have been unsupported before feature re-detection is tried
REDETECT_EVERY = 2  # ... and then try every this many frames
HIDDEN_DAMPING = 0.9  # velocity of a hidden layer's extrapolated motion is damped by this per frame
RIGID_GATE = 3.0  # px: a registered point farther than this from its layer's motion is not trusted  # weight of each of the 5 constant-velocity pseudo-points in a fit


class LayeredTracker(DenseTracker):
    """Motion-layer long-range tracker (``backend="dis_layers"``)."""

    name = "dis_layers"

    def _track_work(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        num_frames, (h, w) = len(frames), frames.shape[1:3]
        grid = pixel_grid(h, w)
        if num_frames == 1:
            return queries[None].astype(np.float32), np.ones((1, len(queries)), bool)
        gray = to_gray(frames)
        pairs = DISPairs(gray, s.dis_preset, s.dis_backward_preset)
        layer_of = self._find_layer_labels(frames, gray, pairs, grid)
        rng = np.random.default_rng(s.seed)
        xy, visible, models = self._sequential(frames, gray, pairs, grid, layer_of, rng)
        if len(queries) == len(grid) and np.array_equal(queries, grid):
            return xy, visible
        return _read_queries(queries, grid, xy, visible, layer_of, models, (h, w))

    def _find_layer_labels(self, frames, gray, pairs, grid) -> np.ndarray:
        """Layer of every work-grid pixel (int (h·w,)): cluster chained anchors, label a half-resolution
        grid by trajectory, then every pixel by warping error."""
        s = self.settings
        num_frames, (h, w) = len(frames), frames.shape[1:3]
        sub_h, sub_w = (h + CHAIN_STRIDE - 1) // CHAIN_STRIDE, (w + CHAIN_STRIDE - 1) // CHAIN_STRIDE
        sub = pixel_grid(sub_h, sub_w) * CHAIN_STRIDE
        keys = np.arange(0, num_frames, KEYFRAME_STEP)
        chain_xy, _, chain_alive = chain_tracks(pairs, sub, num_frames, (h, w), s.fb_threshold, s.fb_relative)
        chain_xy = chain_xy[keys]
        chain_alive = _looks_alike(frames, gray, keys, chain_xy, chain_alive[keys], s.appearance_threshold,
                                   CHAIN_STRIDE)
        step = max(1, s.layers_anchor_stride // CHAIN_STRIDE)
        anchors = _anchor_indices(sub_h, sub_w, step)
        _, layers = find_layers(chain_xy[:, anchors], chain_alive[:, anchors], (h, w),
                                np.random.default_rng(s.seed), max_layers=s.layers_max,
                                inlier_px=s.layers_inlier_px, seed_radius=1.5 * s.layers_anchor_stride)
        if not layers:
            return np.zeros(len(grid), np.int64)
        coarse = assign_points(chain_xy, chain_alive, layers, (sub_h, sub_w), s.layers_inlier_px)
        fallback = cv2.resize(coarse.reshape(sub_h, sub_w).astype(np.uint8), (sub_w * CHAIN_STRIDE, sub_h * CHAIN_STRIDE),
                              interpolation=cv2.INTER_NEAREST)[:h, :w].ravel().astype(np.int64)
        labels = label_by_warping(frames, gray, keys, layers, grid, fallback)
        return np.unique(labels, return_inverse=True)[1].ravel()  # drop merged (empty) layers

    def _sequential(self, frames, gray, pairs, grid, layer_of, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame-by-frame tracking of every grid point: xy (T, G, 2), visible (T, G), models (T, L, 3, 3)."""
        s = self.settings
        num_frames, (h, w) = len(gray), gray.shape[1:3]
        num_layers = int(layer_of.max()) + 1
        members = [np.flatnonzero(layer_of == k) for k in range(num_layers)]
        fit_sets = [m if len(m) <= FIT_POINTS else np.sort(rng.choice(m, FIT_POINTS, replace=False)) for m in members]
        boxes = [_box_points(grid[m]) for m in members]
        fitter = _LayerFitter(grid, fit_sets, boxes, (w / 2.0, h / 2.0), max(h, w) / 2.0)
        models = np.tile(np.eye(3), (num_frames, num_layers, 1, 1))
        xy = np.zeros((num_frames, len(grid), 2), np.float32)
        visible = np.zeros((num_frames, len(grid)), bool)
        xy[0], visible[0] = grid, True
        offset = np.zeros_like(grid)
        reg_dis = make_dis(s.register_preset)
        ref_norm = normalized(gray[0])
        label_map = layer_of.reshape(h, w)
        ref_chroma = chromaticity(frames[0], label_map)
        redetector = Redetector(gray[0], label_map)
        hidden_for = np.zeros(num_layers, np.int64)  # frames since the layer was last well supported
        restart = np.ones(num_layers, bool)  # no velocity estimate (first frame, or just re-detected)
        for t in range(1, num_frames):
            forward, backward = pairs(t - 1)
            moved, ok = fb_step(xy[t - 1], forward, backward, s.fb_threshold, s.fb_relative)
            ok &= visible[t - 1] & inside(moved, h, w)
            priors = [models[t - 1, k] if restart[k] else
                      extrapolate_h(models[t - 2, k], models[t - 1, k], HIDDEN_DAMPING if hidden_for[k] else 1.0)
                      for k in range(num_layers)]
            restart[:] = False
            prelim, _ = fitter.fit(moved, ok, priors)
            for k in np.flatnonzero(hidden_for >= REDETECT_AFTER):
                if (t + k) % REDETECT_EVERY == 0 and (found := redetector.find(int(k), t, gray[t])) is not None:
                    prelim[k], offset[members[k]], restart[k] = found, 0.0, True
            expected = fitter.apply(prelim, members) + offset
            agree = ok & _close(moved, expected, CHAIN_GATE)
            predicted = np.where(agree[:, None], moved, expected)
            refined, _ = register_to_reference(reg_dis, gray[0], gray[t], predicted.reshape(h, w, 2),
                                               s.register_max_shift)
            distance = appearance_distance(ref_norm, normalized(gray[t]), refined, label_map,
                                           ref_chroma, chromaticity(frames[t])).ravel()
            refined = refined.reshape(-1, 2)
            candidate = (distance < s.appearance_threshold) & inside(refined, h, w)
            models[t], support = fitter.fit(refined, candidate, prelim)
            model_xy = fitter.apply(models[t], members)
            seen = candidate & _close(refined, model_xy + offset, RIGID_GATE)
            for k in range(num_layers):
                if support[k] < MIN_SUPPORT:
                    seen[members[k]] = False
                well_seen = seen[members[k]].sum() >= max(MIN_SUPPORT, SEEN_SHARE * len(members[k]))
                hidden_for[k] = 0 if well_seen else hidden_for[k] + 1
            offset[seen] = refined[seen] - model_xy[seen]
            xy[t] = np.where(seen[:, None], refined, model_xy + offset)
            visible[t] = seen
        return xy, visible, models


class _LayerFitter:
    """Per-frame homography of every layer from a subset of its points (robust, with a weak prior)."""

    def __init__(self, grid, fit_sets, boxes, center, scale):
        self.grid, self.fit_sets, self.boxes, self.center, self.scale = grid, fit_sets, boxes, center, scale

    def fit(self, positions, usable, priors) -> tuple[np.ndarray, np.ndarray]:
        """Models (L, 3, 3) mapping frame-0 points to ``positions`` where ``usable``; support (L,) counts."""
        models, support = [], []
        for k, fit_set in enumerate(self.fit_sets):
            use = fit_set[usable[fit_set]]
            support.append(len(use))
            if len(use) < MIN_SUPPORT:
                models.append(priors[k])
                continue
            src = np.concatenate([self.grid[use], self.boxes[k]])
            dst = np.concatenate([positions[use], apply_h(priors[k], self.boxes[k])])
            weights = np.concatenate([np.ones(len(use)), np.full(len(self.boxes[k]), PRIOR_WEIGHT)])
            model = fit_h(src, dst, weights, self.center, self.scale)
            for gate in (4.0, 2.0):  # two rounds of outlier rejection
                weights[: len(use)] = _close(apply_h(model, src[: len(use)]), dst[: len(use)], gate)
                model = fit_h(src, dst, weights, self.center, self.scale)
            models.append(model)
        return np.stack(models), np.array(support)

    def apply(self, models, members) -> np.ndarray:
        """Positions (G, 2) of every grid point under its layer's model."""
        out = np.empty_like(self.grid)
        for k, idx in enumerate(members):
            out[idx] = apply_h(models[k], self.grid[idx])
        return out


def _close(a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Whether rows of (N, 2) ``a`` and ``b`` are within ``radius`` px. bool (N,)."""
    d = a - b
    return np.einsum("ij,ij->i", d, d) < radius * radius


def _looks_alike(frames, gray, keys, traj, alive, threshold, stride) -> np.ndarray:
    """Chained tracks stay alive only while frame-0 appearance matches at keyframes (sticky).

    Chains dragged along by an occluding edge pass the forward–backward check but land on other
    texture; this catches them. traj (K, G, 2) of the ``stride``-subsampled grid at ``keys``;
    returns alive (K, G).
    """
    h, w = gray.shape[1:3]
    sub_h, sub_w = (h + stride - 1) // stride, (w + stride - 1) // stride
    ref_norm = normalized(gray[0])[::stride, ::stride]
    ref_chroma = chromaticity(frames[0])[::stride, ::stride]
    alive = alive.copy()
    for k in range(1, len(keys)):
        distance = appearance_distance(ref_norm, normalized(gray[keys[k]]), traj[k].reshape(sub_h, sub_w, 2), None,
                                       ref_chroma, chromaticity(frames[keys[k]]), window=3)
        alive[k] &= alive[k - 1] & (distance.ravel() < threshold)
    return alive


def _box_points(points: np.ndarray) -> np.ndarray:
    """Corners and centre of the bounding box of (P, 2) points: float32 (5, 2)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]], (lo + hi) / 2], np.float32)


def _anchor_indices(h: int, w: int, stride: int) -> np.ndarray:
    """Row-major indices of a ``stride``-spaced sub-grid of an (h, w) grid."""
    ys, xs = np.mgrid[stride // 2 : h : stride, stride // 2 : w : stride]
    return (ys * w + xs).ravel()


def _read_queries(queries, grid, xy, visible, layer_of, models, size):
    """Tracks of arbitrary queries: the nearest grid pixel's track plus its layer's map of the sub-pixel offset."""
    h, w = size
    col = np.clip(np.rint(queries[:, 0]), 0, w - 1).astype(np.int64)
    row = np.clip(np.rint(queries[:, 1]), 0, h - 1).astype(np.int64)
    nearest = row * w + col
    labels = layer_of[nearest]
    out = xy[:, nearest].copy()
    for k in np.unique(labels):
        sel = np.flatnonzero(labels == k)
        shift = apply_h(models[:, k], queries[sel]) - apply_h(models[:, k], grid[nearest[sel]])
        out[:, sel] += shift
    return out, visible[:, nearest]
