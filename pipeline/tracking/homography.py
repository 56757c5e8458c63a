"""Batched weighted homography fitting (normalised DLT solved by least squares) and application.

Coordinates are normalised by ``scale`` (half the frame size) around ``center`` so the normal
equations are well conditioned. A ridge on the two perspective terms keeps fits from small or thin
point sets close to affine.
"""

from __future__ import annotations

import cv2
import numpy as np


def apply_h(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply homographies to points.

    Args:
        h: (3, 3) or (B, 3, 3); points: (P, 2), or (B, P, 2) to pair each batch with its own points.
    Returns: float32 (P, 2) or (B, P, 2).
    """
    h = np.asarray(h, np.float64)
    p = np.asarray(points, np.float32)
    if h.ndim == 2 and p.ndim == 2:  # the common case: OpenCV's SIMD transform
        return cv2.perspectiveTransform(p.reshape(-1, 1, 2), h).reshape(-1, 2)
    h = (h / h[..., 2:3, 2:3]).astype(np.float32)  # float32 is ample for pixel coordinates and twice as fast
    x, y = p[..., 0], p[..., 1]
    if h.ndim == 3:
        h = h[:, None, :, :]  # broadcast each batch over its points
    den = h[..., 2, 0] * x + h[..., 2, 1] * y + h[..., 2, 2]
    den = np.where(np.abs(den) < 1e-6, np.float32(1e-6), den)
    out = np.empty(np.broadcast_shapes(den.shape) + (2,), np.float32)
    out[..., 0] = (h[..., 0, 0] * x + h[..., 0, 1] * y + h[..., 0, 2]) / den
    out[..., 1] = (h[..., 1, 0] * x + h[..., 1, 1] * y + h[..., 1, 2]) / den
    return out


def fit_h(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray,
    center: tuple[float, float],
    scale: float,
    perspective_ridge: float = 1.0,
) -> np.ndarray:
    """Weighted least-squares homographies mapping ``src`` to ``dst``, batched over a leading dim.

    Args:
        src: (P, 2) or (B, P, 2) source points; dst: (B, P, 2) (or (P, 2)) targets.
        weights: (B, P) (or (P,)) non-negative weights; a batch whose weight sum is below 3 gets
            the identity (callers check support themselves).
        center, scale: normalisation (pixels).
        perspective_ridge: ridge weight (× total weight / 1000) pulling the perspective terms to 0.
    Returns: float64 (B, 3, 3) (or (3, 3)).
    """
    single = np.ndim(dst) == 2
    dst = np.asarray(dst, np.float64)[None] if single else np.asarray(dst, np.float64)
    w = np.asarray(weights, np.float64)[None] if single else np.asarray(weights, np.float64)
    src = np.broadcast_to(np.asarray(src, np.float64), dst.shape)
    c = np.asarray(center, np.float64)
    s = (src - c) / scale
    d = (dst - c) / scale
    x, y, u, v = s[..., 0], s[..., 1], d[..., 0], d[..., 1]
    batch, num = x.shape
    rows = np.zeros((batch, 2, num, 8))  # design matrix: one u-row and one v-row per point
    rows[:, 0, :, 0], rows[:, 0, :, 1], rows[:, 0, :, 2] = x, y, 1.0
    rows[:, 1, :, 3], rows[:, 1, :, 4], rows[:, 1, :, 5] = x, y, 1.0
    rows[:, 0, :, 6], rows[:, 0, :, 7] = -x * u, -y * u
    rows[:, 1, :, 6], rows[:, 1, :, 7] = -x * v, -y * v
    rows = rows.reshape(batch, 2 * num, 8)
    target = np.concatenate([u, v], axis=1)
    ww = np.concatenate([w, w], axis=1)
    weighted = rows * ww[..., None]
    ata = np.matmul(weighted.transpose(0, 2, 1), rows)
    atb = np.matmul(weighted.transpose(0, 2, 1), target[..., None])[..., 0]
    total = w.sum(axis=1)
    ridge = np.zeros((batch, 8, 8))
    ridge[:, 6, 6] = ridge[:, 7, 7] = perspective_ridge * total / 1000.0
    ridge += np.eye(8)[None] * 1e-9
    sol = np.linalg.solve(ata + ridge, atb[..., None])[..., 0]
    h = np.concatenate([sol, np.ones((batch, 1))], axis=1).reshape(-1, 3, 3)
    h[total < 3] = np.eye(3)
    norm = np.array([[1 / scale, 0, -c[0] / scale], [0, 1 / scale, -c[1] / scale], [0, 0, 1]])
    denorm = np.array([[scale, 0, c[0]], [0, scale, c[1]], [0, 0, 1]])
    h = denorm @ h @ norm
    h /= h[:, 2:3, 2:3]
    return h[0] if single else h


def extrapolate_h(previous: np.ndarray, last: np.ndarray, damping: float = 1.0) -> np.ndarray:
    """Constant-velocity prediction: apply the motion from ``previous`` to ``last`` once more.

    ``damping`` in [0, 1] scales that motion down (0 = stay at ``last``) by blending with ``last``.
    """
    step = last @ np.linalg.pinv(previous)
    nxt = step @ last
    nxt = nxt / nxt[2, 2]
    if damping < 1.0:
        nxt = damping * nxt + (1.0 - damping) * last
    return nxt
