"""Direct frame-0 registration and appearance checks for dense position maps.

A *position map* is float32 (h, w, 2): where each frame-0 pixel is (believed to be) in frame t.

- :func:`register_to_reference` removes drift: warp frame t into frame-0 geometry through the map,
  measure the small residual flow from frame 0 to that warp with DIS, and compose.
- :func:`normalized` / :func:`appearance_distance` compare local, contrast-normalised patches of
  frame 0 and of frame t at the mapped positions, which is insensitive to lighting gain, offset and
  smooth illumination gradients. Large distance = the point shows something else (occluded).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.tracking.flow import dis_flow


def normalized(gray: np.ndarray, window: int = 7, floor: float = 3.0) -> np.ndarray:
    """Locally zero-mean, unit-contrast image float32 (h, w): (I − mean) / (std + floor), over ``window``²."""
    g = gray.astype(np.float32)
    mean = cv2.blur(g, (window, window))
    var = cv2.blur(g * g, (window, window)) - mean * mean
    return (g - mean) / (np.sqrt(np.maximum(var, 0.0)) + floor)


def warp(image: np.ndarray, pos_map: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Sample ``image`` (h', w'[, C]) at the positions of ``pos_map`` (h, w, 2) (bilinear)."""
    return cv2.remap(image, pos_map[..., 0], pos_map[..., 1], cv2.INTER_LINEAR, borderMode=border)


def register_to_reference(
    dis: cv2.DISOpticalFlow, ref_gray: np.ndarray, gray: np.ndarray, pos_map: np.ndarray, max_shift: float
) -> tuple[np.ndarray, np.ndarray]:
    """Refine ``pos_map`` (h, w, 2) of frame-0 pixels in ``gray`` by direct registration to ``ref_gray``.

    Returns the refined map and bool (h, w) where the correction was accepted (residual < ``max_shift``).
    """
    warped = warp(gray, pos_map)
    residual = dis_flow(dis, ref_gray, warped)
    h, w = ref_gray.shape
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    refined = cv2.remap(pos_map, grid_x + residual[..., 0], grid_y + residual[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    ok = np.einsum("hwc,hwc->hw", residual, residual) < max_shift * max_shift
    return np.where(ok[..., None], refined, pos_map), ok


def _masked_blur(image: np.ndarray, labels: np.ndarray | None, window: int) -> np.ndarray:
    """Box blur of (h, w[, C]) ``image`` that averages only over neighbours with the same label."""
    if labels is None:
        return cv2.blur(image, (window, window))
    out = np.empty_like(image)
    for k in np.unique(labels):
        mask = (labels == k).astype(np.float32)
        weight = mask if image.ndim == 2 else mask[..., None]
        num = cv2.blur(image * weight, (window, window))
        den = cv2.blur(mask, (window, window))
        den = den if image.ndim == 2 else den[..., None]
        sel = labels == k
        out[sel] = (num / np.maximum(den, 1e-6))[sel]
    return out


def chromaticity(rgb: np.ndarray, labels: np.ndarray | None = None, window: int = 7) -> np.ndarray:
    """Local mean chromaticity (r, g) / (r + g + b), float32 (h, w, 2): insensitive to lighting gain."""
    mean = _masked_blur(rgb.astype(np.float32), labels, window)
    return mean[..., :2] / (mean.sum(axis=-1, keepdims=True) + 10.0)


def appearance_distance(
    ref_norm: np.ndarray,
    norm: np.ndarray,
    pos_map: np.ndarray,
    labels: np.ndarray | None = None,
    ref_chroma: np.ndarray | None = None,
    chroma: np.ndarray | None = None,
    chroma_weight: float = 2.0,
    window: int = 7,
) -> np.ndarray:
    """How different frame t looks at ``pos_map`` from frame 0, per frame-0 pixel. float32 (h, w).

    Texture term: mean |difference| of the normalised images over each pixel's ``window``²
    neighbourhood (only neighbours with the same ``labels``, when given, so a point next to another
    layer is judged by its own layer). Colour term: ``chroma_weight`` × L1 difference of local
    chromaticity (when ``ref_chroma``/``chroma`` are given). ~0 for a match; ≳0.6 for other content.
    """
    out = _masked_blur(np.abs(ref_norm - warp(norm, pos_map)), labels, window)
    if ref_chroma is not None and chroma is not None:
        out += chroma_weight * np.abs(ref_chroma - warp(chroma, pos_map)).sum(axis=-1)
    return out
