"""Long-range dense tracker ``dis_layers``: motion layers + direct registration to frame 0.

Chained flow loses a point for good once something covers it, and it drifts. This tracker keeps the
chain for what it is good at (short, accurate steps) and adds classical parts around it:

1. **Motion layers.** Every 2nd pixel is chained with DIS flow (forward–backward and appearance
   checks end a chain). A greedy multi-frame RANSAC (:mod:`pipeline.tracking.layers`) groups the
   chains of a sparse anchor grid into layers that each follow one homography per keyframe step.
   Every pixel is then labelled by warping error (:mod:`pipeline.tracking.segment`): the layer
   whose motion best maps later frames back onto its frame-0 neighbourhood wins, which is accurate
   at motion boundaries; regions no layer explains become layers of their own.
2. **Sequential tracking**, frame by frame (:class:`pipeline.tracking.layer_set.LayerSet`): points
   that were reliably seen move by the chained flow; each layer's homography is refitted robustly
   (with a weak constant-velocity prior, so slivers stay stable); occluded points and points outside
   the frame follow their layer's homography plus their last offset from it. Layers hidden for a
   while are re-detected by ORB feature matching (:mod:`pipeline.tracking.redetect`), which is how
   objects are re-acquired after a full occlusion or after leaving and re-entering the frame.
3. **Registration and appearance** (:mod:`pipeline.tracking.register`): frame t is warped into
   frame-0 geometry through the predicted positions and a DIS residual snaps them onto frame 0's
   texture (no drift). Offsets from the layer homography are averaged over a small window of the
   same layer (``offset_window``), which removes registration noise but keeps smooth deformation. A
   lighting-insensitive appearance distance (normalised texture + chromaticity) then decides
   visibility: below ``fit_threshold`` a point steers the tracking, below ``appearance_threshold``
   it is reported visible; a point must also sit within a few pixels of its layer's motion.

All work happens on the work-resolution grid; arbitrary queries are read off the grid through their
nearest grid pixel and that pixel's layer homography (sub-pixel offsets map exactly).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.tracking.base import DenseTracker, pixel_grid
from pipeline.tracking.flow import DISPairs, chain_tracks, fb_step, inside, make_dis, to_gray
from pipeline.tracking.homography import apply_h
from pipeline.tracking.layer_set import LayerSet, close
from pipeline.tracking.layers import assign_points, find_layers
from pipeline.tracking.redetect import Redetector
from pipeline.tracking.segment import label_by_warping
from pipeline.tracking.register import (
    LayerRegions,
    appearance_distance,
    chromaticity,
    normalized,
    register_to_reference,
)

KEYFRAME_STEP = 3  # keyframe spacing for layer discovery and assignment
CHAIN_STRIDE = 2  # layer discovery chains every 2nd pixel (labels are refined per pixel afterwards)
MIN_SUPPORT = 12  # fewer usable points than this: the layer is carried by its prior
CHAIN_GATE = 2.0  # px: a chained step farther than this from the layer's prediction is not trusted
SEEN_SHARE = 0.15  # a layer with fewer of its points seen counts as hidden (re-detection is tried)
REDETECT_AFTER = 2  # frames a layer must have been unsupported before feature re-detection is tried
REDETECT_MAX_GAP = 16  # failed re-detections are retried after 2, 4, 8, 16, 16, ... frames,
REDETECT_EVERY = 2  # rounded up to a multiple of this (layers share each frame's ORB features)
RIGID_GATE = 3.0  # px: a registered point farther than this from its layer's motion is not trusted


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
        pairs = DISPairs(gray, s.dis_preset or "balanced", s.dis_backward_preset or "fast")
        layer_of = self._find_layer_labels(frames, gray, pairs, grid)
        rng = np.random.default_rng(s.seed)
        xy, visible, layer_of, models = self._sequential(frames, gray, pairs, grid, layer_of, rng)
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
        chain_alive = _looks_alike(frames, gray, keys, chain_xy, chain_alive[keys], s.fit_threshold,
                                   CHAIN_STRIDE)
        step = max(1, s.layers_anchor_stride // CHAIN_STRIDE)
        anchors = _anchor_indices(sub_h, sub_w, step)
        _, layers = find_layers(chain_xy[:, anchors], chain_alive[:, anchors], (h, w),
                                np.random.default_rng(s.seed), max_layers=s.layers_max,
                                inlier_px=s.layers_inlier_px, seed_radius=1.5 * s.layers_anchor_stride)
        if not layers:
            return np.zeros(len(grid), np.int64)
        coarse = assign_points(chain_xy, chain_alive, layers, (sub_h, sub_w), s.layers_inlier_px)
        fallback = _upsample(coarse.reshape(sub_h, sub_w).astype(np.uint8), (h, w)).ravel().astype(np.int64)
        motion = _upsample((chain_xy[1] - chain_xy[0]).reshape(sub_h, sub_w, 2), (h, w))  # first keyframe step
        labels = label_by_warping(frames, gray, keys, layers, grid, fallback, motion)
        return np.unique(labels, return_inverse=True)[1].ravel()  # drop merged (empty) layers

    def _sequential(self, frames, gray, pairs, grid, layer_of, rng):
        """Frame-by-frame tracking of every grid point.

        Returns xy (T, G, 2), visible (T, G), the final layer of each point (G,) and models (T, L, 3, 3).
        """
        s = self.settings
        num_frames, (h, w) = len(gray), gray.shape[1:3]
        layers = LayerSet(grid, layer_of, (h, w), num_frames, rng, MIN_SUPPORT, RIGID_GATE)
        xy = np.zeros((num_frames, len(grid), 2), np.float32)
        visible = np.zeros((num_frames, len(grid)), bool)
        xy[0], visible[0] = grid, True
        offset = np.zeros_like(grid)
        seen = np.ones(len(grid), bool)  # points sure enough to steer the tracking (last frame)
        reg_dis = make_dis(s.register_preset)
        ref_norm = normalized(gray[0])
        ref_chroma = chromaticity(frames[0], layers.regions)
        redetector = Redetector(gray[0], layer_of.reshape(h, w))
        for t in range(1, num_frames):
            forward, backward = pairs(t - 1)
            moved, ok = fb_step(xy[t - 1], forward, backward, s.fb_threshold, s.fb_relative)
            ok &= seen & inside(moved, h, w)
            prelim, _ = layers.fit(moved, ok, layers.priors(t))
            self._redetect(layers, redetector, prelim, offset, t, gray[t])
            expected = layers.apply(prelim) + offset
            agree = ok & close(moved, expected, CHAIN_GATE)
            norm, chroma = normalized(gray[t]), chromaticity(frames[t])
            predicted = np.where(agree[:, None], moved, expected)
            refined, _ = register_to_reference(reg_dis, gray[0], gray[t], predicted.reshape(h, w, 2),
                                               s.register_max_shift)
            distance = appearance_distance(ref_norm, norm, refined, layers.regions, ref_chroma, chroma).ravel()
            refined = refined.reshape(-1, 2)
            in_frame = inside(refined, h, w)
            models, support = layers.fit(refined, in_frame & (distance < s.fit_threshold), prelim)
            layers.models[t] = models
            model_xy = layers.apply(models)
            placed = in_frame & close(refined, model_xy + offset, RIGID_GATE)
            seen = placed & (distance < s.fit_threshold)  # sure enough to steer the tracking
            shown = placed & (distance < s.appearance_threshold)  # reported visible
            for k, idx in enumerate(layers.members):
                if support[k] < MIN_SUPPORT:
                    seen[idx] = shown[idx] = False
                well_seen = seen[idx].sum() >= max(MIN_SUPPORT, SEEN_SHARE * len(idx))
                layers.hidden_for[k] = 0 if well_seen else layers.hidden_for[k] + 1
                if well_seen:
                    layers.failures[k] = layers.next_try[k] = 0
            offset[seen] = _smooth_offsets(refined - model_xy, seen, layers.regions, s.offset_window)[seen]
            xy[t] = model_xy + offset
            visible[t] = shown
        return xy, visible, layers.labels, layers.models

    @staticmethod
    def _redetect(layers: LayerSet, redetector: Redetector, prelim, offset, t: int, gray_t) -> None:
        """Re-detect layers hidden for a while (feature matching), with exponential back-off."""
        due = (layers.hidden_for >= REDETECT_AFTER) & (layers.next_try <= t)
        for k in np.flatnonzero(due):
            found = redetector.find(int(k), t, gray_t)
            if found is not None:
                prelim[k], offset[layers.members[k]] = found, 0.0
                layers.restart[k], layers.failures[k] = True, 0
            else:
                layers.failures[k] += 1
                wait = min(2 ** layers.failures[k], REDETECT_MAX_GAP)
                layers.next_try[k] = -(-(t + wait) // REDETECT_EVERY) * REDETECT_EVERY  # shared frames

def _smooth_offsets(offsets: np.ndarray, valid: np.ndarray, regions: LayerRegions, window: int) -> np.ndarray:
    """Average (G, 2) per-point offsets from the layer model over a ``window``² neighbourhood of valid
    points of the same layer (registration noise averages out; smooth non-rigid motion remains)."""
    if window <= 1:
        return offsets
    h, w = regions.labels.shape
    smoothed = regions.blur(offsets.reshape(h, w, 2), window, valid.reshape(h, w).astype(np.float32))
    return smoothed.reshape(-1, 2)


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


def _upsample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a ``CHAIN_STRIDE``-subsampled (h', w'[, C]) image to ``size``."""
    h, w = size
    full = cv2.resize(image, (image.shape[1] * CHAIN_STRIDE, image.shape[0] * CHAIN_STRIDE),
                      interpolation=cv2.INTER_NEAREST)
    return full[:h, :w]


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
