"""Procedural colour textures for the tracking benchmark.

Textures are sums of band-limited noise octaves plus a few random strokes and blobs, so every
patch has structure at several scales (optical flow needs texture) and no two objects look alike.
They are smooth at the pixel scale (the finest octave has a period of ~4 px), so sampling them
bilinearly at sub-pixel positions is accurate to a few grey levels.
"""

from __future__ import annotations

import cv2
import numpy as np


def noise_texture(rng: np.random.Generator, height: int, width: int, finest: float = 4.0) -> np.ndarray:
    """Multi-octave colour noise. Returns float32 (height, width, 3) in [0, 255]."""
    out = np.zeros((height, width, 3), np.float32)
    total = 0.0
    cell = max(height, width) / 4.0
    weight = 1.0
    while cell >= finest:
        gh, gw = int(np.ceil(height / cell)) + 2, int(np.ceil(width / cell)) + 2
        grid = rng.random((gh, gw, 3)).astype(np.float32)
        up = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
        out += weight * up[:height, :width]
        total += weight
        cell /= 2.0
        weight *= 0.8
    out /= total
    out -= out.mean(axis=(0, 1), keepdims=True)
    out /= out.std(axis=(0, 1), keepdims=True) + 1e-6
    base = rng.uniform(60, 195, size=3).astype(np.float32)
    contrast = rng.uniform(35, 55)
    return np.clip(base + contrast * out, 0, 255)


def add_strokes(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    """Draw ``count`` random anti-aliased lines and discs on ``image`` (float32 (H, W, 3)), in place."""
    h, w = image.shape[:2]
    for _ in range(count):
        color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        if rng.random() < 0.5:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(image, p0, p1, color, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(image, center, int(rng.integers(2, max(3, min(h, w) // 12))), color, -1, cv2.LINE_AA)
    return image


def make_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured colour image, float32 (height, width, 3) in [0, 255], smoothed at the pixel scale."""
    image = noise_texture(rng, height, width)
    add_strokes(rng, image, count=max(4, (height * width) // 2500))
    return cv2.GaussianBlur(image, (0, 0), 0.8)
