"""Optical-flow building blocks: DIS flow, bilinear sampling at points, and frame-to-frame chaining.

A *flow field* is float32 (h, w, 2): the displacement (dx, dy) of each pixel of the first image.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

_ROW = 1024  # cv2.remap maps must stay below 32767 per side: sample points in rows of this length


def to_gray(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, h, w, 3) RGB → uint8 (T, h, w) grey."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


BALANCED = {"patch_stride": 5, "gradient_iterations": 12, "refinement_iterations": 3}
"""The "balanced" preset: "medium" with a sparser patch grid and fewer iterations (~0.6x its time,
nearly its accuracy on small residual motions, measured on the tracking benchmark)."""


def make_dis(preset: str) -> cv2.DISOpticalFlow:
    """An OpenCV DIS flow object for ``preset`` ("ultrafast", "fast", "balanced", "medium")."""
    if preset == "balanced":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        dis.setPatchStride(BALANCED["patch_stride"])
        dis.setGradientDescentIterations(BALANCED["gradient_iterations"])
        dis.setVariationalRefinementIterations(BALANCED["refinement_iterations"])
        return dis
    if preset not in DIS_PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS) + ['balanced']}")
    return cv2.DISOpticalFlow_create(DIS_PRESETS[preset])


def dis_flow(dis: cv2.DISOpticalFlow, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flow from grey image ``a`` to ``b`` (uint8 (h, w)) → float32 (h, w, 2).

    (OpenCV 5's DIS takes no initial flow; to refine a guess, warp ``b`` by it first, see
    :func:`pipeline.tracking.register.register_to_reference`.)
    """
    return dis.calc(a, b, None)


def sample(field: np.ndarray, points: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Bilinear samples of ``field`` (h, w) or (h, w, C) at float (N, 2) (x, y) points → (N,) or (N, C)."""
    n = len(points)
    if n == 0:
        return np.zeros((0,) + field.shape[2:], np.float32)
    rows = -(-n // _ROW)
    pts = np.zeros((rows * _ROW, 2), np.float32)
    pts[:n] = points
    map_x = pts[:, 0].reshape(rows, _ROW)
    map_y = pts[:, 1].reshape(rows, _ROW)
    out = cv2.remap(np.ascontiguousarray(field, np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=border)
    return out.reshape((rows * _ROW,) + field.shape[2:])[:n]


def inside(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Whether float (N, 2) points lie in the frame [0, w−1] × [0, h−1]. bool (N,)."""
    return (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)


def fb_step(
    points: np.ndarray, forward: np.ndarray, backward: np.ndarray, threshold: float, relative: float
) -> tuple[np.ndarray, np.ndarray]:
    """Move points one frame with ``forward`` flow and test them against ``backward`` flow.

    Returns the moved points float32 (N, 2) and bool (N,) consistency: ‖f + b‖ < threshold + relative·‖f‖.
    """
    f = sample(forward, points)
    moved = points + f
    loop = f + sample(backward, moved)
    err2 = np.einsum("ij,ij->i", loop, loop)
    limit = threshold + relative * np.sqrt(np.einsum("ij,ij->i", f, f))
    return moved, err2 < limit * limit


FlowPair = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""Given t, returns (forward flow t→t+1, backward flow t+1→t), both float32 (h, w, 2)."""


def chain_tracks(
    pair_flows: FlowPair, queries: np.ndarray, num_frames: int, size: tuple[int, int],
    threshold: float, relative: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chain flows frame to frame from frame-0 ``queries`` float32 (N, 2).

    Returns:
        xy float32 (T, N, 2) chained positions,
        visible bool (T, N): the last step was forward–backward consistent and the point is in the frame,
        alive bool (T, N): every step so far was consistent (the track has never been interrupted).
    """
    h, w = size
    n = len(queries)
    xy = np.zeros((num_frames, n, 2), np.float32)
    visible = np.zeros((num_frames, n), bool)
    alive = np.zeros((num_frames, n), bool)
    xy[0], visible[0], alive[0] = queries, True, True
    for t in range(num_frames - 1):
        forward, backward = pair_flows(t)
        xy[t + 1], ok = fb_step(xy[t], forward, backward, threshold, relative)
        visible[t + 1] = ok & inside(xy[t + 1], h, w)
        alive[t + 1] = alive[t] & visible[t + 1]
    return xy, visible, alive


class DISPairs:
    """Forward and backward DIS flows between consecutive grey frames, computed on demand and cached."""

    def __init__(self, gray: np.ndarray, preset: str = "medium", backward_preset: str | None = None):
        """gray: uint8 (T, h, w) frames; presets as in :func:`make_dis` (backward defaults to forward)."""
        self.gray = gray
        self._fwd = make_dis(preset)
        self._bwd = make_dis(backward_preset or preset)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        if t not in self._cache:
            a, b = self.gray[t], self.gray[t + 1]
            self._cache[t] = (dis_flow(self._fwd, a, b), dis_flow(self._bwd, b, a))
        return self._cache[t]
