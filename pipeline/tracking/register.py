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


class LayerRegions:
    """Per-layer bounding boxes of a frame-0 label map, for fast same-layer (masked) box filtering.

    Filtering runs per layer inside its bounding box (plus a ``margin`` ≥ half the largest window),
    so its cost is about the total layer area, not layers × frame.
    """

    def __init__(self, labels: np.ndarray, margin: int = 8):
        self.labels, self.margin = labels, margin
        h, w = labels.shape
        self.regions = []
        for k in np.unique(labels):
            mask = labels == k
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            ys = slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h))
            xs = slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w))
            inside = mask[ys, xs]
            self.regions.append((ys, xs, inside, inside.astype(np.float32)))
        self.regions.sort(key=lambda r: -int(r[2].sum()))  # largest first (see blur)

    def blur(self, image: np.ndarray, window: int, weights: np.ndarray | None = None) -> np.ndarray:
        """Mean of (h, w[, C]) ``image`` over each pixel's ``window``² neighbours of the same layer,
        weighted by (h, w) ``weights`` when given; pixels without any weight keep their value."""
        if window > 2 * self.margin + 1:
            raise ValueError(f"window {window} exceeds the regions' margin {self.margin}")
        out = image.copy()
        dens = np.zeros(image.shape[:2], np.float32)
        size = (window, window)
        skipped = []
        for index, (ys, xs, inside, mask) in enumerate(self.regions):
            weight = mask if weights is None else cv2.multiply(mask, weights[ys, xs])
            if weights is not None and index > 0 and not weight.any():
                skipped.append((ys, xs, inside))  # nothing to average: restored below
                continue
            crop = image[ys, xs]
            den = cv2.blur(weight, size)
            safe = np.maximum(den, 1e-6)
            if crop.ndim == 3:
                channels = crop.shape[2]
                value = cv2.divide(cv2.blur(cv2.multiply(crop, cv2.merge([weight] * channels)), size),
                                   cv2.merge([safe] * channels))
            else:
                value = cv2.divide(cv2.blur(cv2.multiply(crop, weight), size), safe)
            if index == 0:  # the largest layer writes its whole box; the others overwrite their pixels
                out[ys, xs], dens[ys, xs] = value, den
            else:
                np.copyto(out[ys, xs], value, where=inside[..., None] if crop.ndim == 3 else inside)
                np.copyto(dens[ys, xs], den, where=inside)
        for ys, xs, inside in skipped:  # (the largest layer's box write may have covered them)
            np.copyto(out[ys, xs], image[ys, xs], where=inside[..., None] if image.ndim == 3 else inside)
            np.copyto(dens[ys, xs], 1.0, where=inside)
        empty = (dens <= 1e-3).astype(np.uint8)
        return cv2.copyTo(image, empty, out) if empty.any() else out


def _masked_blur(image: np.ndarray, regions: LayerRegions | None, window: int) -> np.ndarray:
    """Box blur of (h, w[, C]) ``image``; same-layer only when ``regions`` is given."""
    if regions is None:
        return cv2.blur(image, (window, window))
    return regions.blur(image, window)


def chromaticity(rgb: np.ndarray, labels: LayerRegions | None = None, window: int = 7) -> np.ndarray:
    """Local mean chromaticity (r, g) / (r + g + b), float32 (h, w, 2): insensitive to lighting gain."""
    if labels is None:
        mean = cv2.blur(rgb, (window, window)).astype(np.float32)
    else:
        mean = labels.blur(rgb.astype(np.float32), window)
    total = mean[..., 0] + mean[..., 1] + mean[..., 2] + 10.0  # (sums over a last axis of 3 are slow in numpy)
    out = np.empty(mean.shape[:2] + (2,), np.float32)
    out[..., 0] = mean[..., 0] / total
    out[..., 1] = mean[..., 1] / total
    return out


def appearance_distance(
    ref_norm: np.ndarray,
    norm: np.ndarray,
    pos_map: np.ndarray,
    labels: LayerRegions | None = None,
    ref_chroma: np.ndarray | None = None,
    chroma: np.ndarray | None = None,
    chroma_weight: float = 2.0,
    window: int = 7,
) -> np.ndarray:
    """How different frame t looks at ``pos_map`` from frame 0, per frame-0 pixel. float32 (h, w).

    Texture term: mean |difference| of the normalised images over each pixel's ``window``²
    neighbourhood (only neighbours of the same layer when ``labels`` is given, so a point next to another
    layer is judged by its own layer). Colour term: ``chroma_weight`` × L1 difference of local
    chromaticity (when ``ref_chroma``/``chroma`` are given). ~0 for a match; ≳0.6 for other content.
    """
    out = _masked_blur(np.abs(ref_norm - warp(norm, pos_map)), labels, window)
    if ref_chroma is not None and chroma is not None:
        gap = np.abs(ref_chroma - warp(chroma, pos_map))
        out += chroma_weight * (gap[..., 0] + gap[..., 1])
    return out
