"""Dense point tracking interface: settings, result type, base class and resolution helpers.

Every tracker follows one event: ``frames`` uint8 (T, H, W, 3) RGB, frame 0 being the query frame.
It works at a *work resolution* whose short side is ``settings.short_side`` (never upscaling) and maps
coordinates back to the input frame size.

Queries. ``track(frames, queries)`` follows the given (N, 2) (x, y) input-pixel points of frame 0.
``queries=None`` means **every pixel of the work-resolution grid**, in row-major order, mapped back to
input coordinates: N = h·w where (h, w) = :func:`work_size`, and :func:`grid_queries` returns exactly
those points (float32 (N, 2), input pixels). For a 256-px short side that is one track per work pixel,
which is what the annotation pipeline needs, at a fraction of the memory of one per input pixel.

Coordinates use OpenCV's convention: the centre of pixel (row i, column j) is (x, y) = (j, i).
Resizing maps pixel centres to pixel centres: x_work = (x_in + 0.5) · w / W − 0.5.

New trackers (e.g. CoTracker/DOT-style learned ones) subclass :class:`DenseTracker` and implement
``_track_work`` at the work resolution; resizing and coordinate mapping are shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class TrackerSettings:
    """Plain, picklable settings of a dense tracker."""

    backend: str = "dis_layers"
    """Tracker name: "dis_chain" (chained DIS flow), "dis_layers" (long-range, motion layers) or "raft"."""
    short_side: int = 256
    """Work resolution: short side in pixels (inputs are downscaled to it, never upscaled)."""
    dis_preset: str | None = None
    """OpenCV DIS preset for the forward flow: "ultrafast", "fast", "balanced" or "medium". None = the
    backend's choice: "medium" for "dis_chain", "balanced" for "dis_layers" (see
    :data:`pipeline.tracking.flow.BALANCED`)."""
    dis_backward_preset: str | None = None
    """DIS preset for the backward flow that only feeds the forward–backward check. None = the
    backend's choice: the forward preset for "dis_chain" (its only occlusion cue), "fast" for
    "dis_layers" (which has appearance checks as well)."""
    fb_threshold: float = 1.0
    """Forward–backward consistency threshold, px at work resolution (plus ``fb_relative`` · |flow|)."""
    fb_relative: float = 0.05
    """Part of the forward–backward threshold that grows with the flow magnitude."""
    fb_sticky: bool = True
    """dis_chain / raft: a point stays occluded after its first failed forward–backward check (its
    chained position is no longer trustworthy); False = visibility of the last step only."""
    raft_weights: str | None = None
    """Local path to torchvision RAFT weights (a state dict for ``raft_model``); required by "raft"."""
    raft_model: str = "raft_small"
    """torchvision RAFT architecture: "raft_small" or "raft_large"."""
    raft_iters: int = 12
    """RAFT refinement iterations per frame pair."""
    device: str = "cpu"
    """Torch device for learned backends."""
    layers_max: int = 8
    """dis_layers: most motion layers (each tracked by a per-frame homography)."""
    layers_inlier_px: float = 0.4
    """dis_layers: tolerance (px, work resolution; plus 10 % of the step length) on a trajectory's
    3-frame steps under a layer's motion; a trajectory joins a layer when 80 % of its steps fit."""
    layers_anchor_stride: int = 6
    """dis_layers: grid stride (px, work resolution) of the anchor points used to find layers."""
    register_preset: str = "balanced"
    """dis_layers: DIS preset of the residual flow that registers each frame directly to frame 0."""
    register_max_shift: float = 3.0
    """dis_layers: largest residual (px) a registration may apply to a predicted position."""
    appearance_threshold: float = 0.6
    """dis_layers: appearance distance (normalised-patch texture difference + 2 × chromaticity
    difference, see :func:`pipeline.tracking.register.appearance_distance`) above which a point is
    judged occluded."""
    fit_threshold: float = 0.35
    """dis_layers: stricter appearance distance under which a point may shape its layer's motion
    (layer discovery and per-frame homography fits)."""
    offset_window: int = 15
    """dis_layers: points' offsets from their layer's homography are averaged over this many pixels
    (square window, same layer only): removes registration noise, keeps smooth deformation (1 = off)."""
    seed: int = 0
    """Seed of any randomised step (RANSAC), for reproducible tracks."""


@dataclass
class Tracks:
    """Tracks of N points over T frames, in input-frame pixels."""

    xy: np.ndarray
    """float32 (T, N, 2) (x, y) positions; also filled (best guess) where the point is not visible."""
    visible: np.ndarray
    """bool (T, N): the point is inside the frame and not occluded."""

    def __post_init__(self) -> None:
        if self.xy.ndim != 3 or self.xy.shape[-1] != 2 or self.visible.shape != self.xy.shape[:2]:
            raise ValueError(f"Tracks need xy (T, N, 2) and visible (T, N); got {self.xy.shape}, {self.visible.shape}")


def work_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) of the work resolution for an input of (height, width): short side ``short_side``, no upscaling."""
    scale = min(1.0, short_side / min(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def input_to_work(xy: np.ndarray, in_size: tuple[int, int], work: tuple[int, int]) -> np.ndarray:
    """Map (..., 2) input-pixel (x, y) to work-resolution pixels (pixel centres to pixel centres)."""
    sx, sy = work[1] / in_size[1], work[0] / in_size[0]
    out = np.asarray(xy, np.float32).copy()
    out[..., 0] = (out[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (out[..., 1] + 0.5) * sy - 0.5
    return out


def work_to_input(xy: np.ndarray, in_size: tuple[int, int], work: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`input_to_work`."""
    sx, sy = in_size[1] / work[1], in_size[0] / work[0]
    out = np.asarray(xy, np.float32).copy()
    out[..., 0] = (out[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (out[..., 1] + 0.5) * sy - 0.5
    return out


def pixel_grid(height: int, width: int) -> np.ndarray:
    """Every pixel centre of an (height, width) image in row-major order: float32 (height·width, 2)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def grid_queries(height: int, width: int, short_side: int = 256) -> np.ndarray:
    """The points ``track(frames, None)`` follows for an (height, width) input: the work grid in input px.

    Returns float32 (h·w, 2) with (h, w) = work_size(height, width, short_side); query i is work pixel
    (i % w, i // w).
    """
    work = work_size(height, width, short_side)
    return work_to_input(pixel_grid(*work), (height, width), work)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 (T, H, W, 3) frames to (T, h, w, 3) with area averaging (no copy when unchanged)."""
    if frames.shape[1:3] == tuple(size):
        return frames
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])


class DenseTracker:
    """Base class of dense trackers. Construction is cheap; models load lazily on first use."""

    name = "base"

    def __init__(self, settings: TrackerSettings):
        self.settings = settings

    def track(self, frames: np.ndarray, queries: np.ndarray | None = None) -> Tracks:
        """Track points of frame 0 through ``frames``.

        Args:
            frames: uint8 (T, H, W, 3) RGB of one event; frame 0 is the query frame.
            queries: optional float32 (N, 2) (x, y) input pixels on frame 0. None = every pixel of
                the work grid (see :func:`grid_queries`).
        Returns:
            :class:`Tracks` with xy (T, N, 2) in input pixels (row 0 = the queries) and visible (T, N).
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB; got {frames.dtype} {frames.shape}")
        if len(frames) < 1:
            raise ValueError("frames is empty: an event needs at least one frame")
        in_size = frames.shape[1:3]
        work = work_size(*in_size, self.settings.short_side)
        if queries is None:
            work_queries = pixel_grid(*work)
        else:
            queries = np.asarray(queries, np.float32)
            if queries.ndim != 2 or queries.shape[1] != 2:
                raise ValueError(f"queries must be (N, 2) (x, y); got {queries.shape}")
            work_queries = input_to_work(queries, in_size, work)
        xy, visible = self._track_work(resize_frames(frames, work), work_queries)
        xy = np.asarray(xy, np.float32)
        if tuple(work) != tuple(in_size):
            xy = work_to_input(xy, in_size, work)
        if queries is not None:
            xy[0] = queries
        return Tracks(xy, np.asarray(visible, bool))

    def _track_work(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Track ``queries`` float32 (N, 2) through uint8 (T, h, w, 3) work-resolution frames.

        Returns xy float32 (T, N, 2) and visible bool (T, N), in work pixels.
        """
        raise NotImplementedError
