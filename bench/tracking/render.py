"""Render a :class:`Scene` to uint8 frames and compute exact ground-truth tracks for query points.

Rendering samples each layer's texture at the exact inverse-homography position of every pixel
centre (bilinear) and composites back to front, using the same analytic ``inside`` test that the
ground truth uses. Ground truth for a query on frame 0: find the nearest layer covering it, take its
texture coordinate, and map that through the layer's homography at every frame. The point is
occluded when it falls outside the frame or a nearer layer covers it.
"""

from __future__ import annotations

import cv2
import numpy as np

from bench.tracking.scene import Layer, Scene, apply_homography


def _layer_into(canvas: np.ndarray, layer: Layer, t: float) -> None:
    """Composite ``layer`` at time ``t`` onto float32 canvas (H, W, 3), in place."""
    height, width = canvas.shape[:2]
    h = layer.homography(t)
    th, tw = layer.texture.shape[:2]
    if layer.shape is None:
        x0, y0, x1, y1 = 0, 0, width, height
    else:
        corners = apply_homography(h, np.array([[0, 0], [tw, 0], [0, th], [tw, th]], np.float64))
        x0, y0 = np.floor(corners.min(axis=0)).astype(int)
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x0 >= x1 or y0 >= y1:
            return
    ys, xs = np.mgrid[y0:y1, x0:x1]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    uv = apply_homography(np.linalg.inv(h), pts)
    shape = (y1 - y0, x1 - x0)
    map_u = uv[:, 0].reshape(shape).astype(np.float32)
    map_v = uv[:, 1].reshape(shape).astype(np.float32)
    color = cv2.remap(layer.texture, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    region = canvas[y0:y1, x0:x1]
    if layer.shape is None:
        region[:] = color
    else:
        mask = layer.shape.inside(uv).reshape(shape)
        region[mask] = color[mask]


def render_sharp(scene: Scene, t: float) -> np.ndarray:
    """Composite all layers at time ``t`` without photometric effects. float32 (H, W, 3)."""
    canvas = np.zeros((scene.height, scene.width, 3), np.float32)
    for layer in scene.layers:
        _layer_into(canvas, layer, t)
    return canvas


def _illumination(scene: Scene, t: float) -> np.ndarray:
    """Multiplicative illumination at frame ``t``: float32 (H, W, 1)."""
    fx = scene.effects
    n = max(scene.num_frames - 1, 1)
    gain = 1.0 + fx.gain_amp * np.sin(2 * np.pi * fx.gain_freq * t / n + fx.phase)
    ys, xs = np.mgrid[0 : scene.height, 0 : scene.width].astype(np.float32)
    angle = fx.phase + 2 * np.pi * t / n
    ramp = (np.cos(angle) * (xs / scene.width - 0.5) + np.sin(angle) * (ys / scene.height - 0.5)) * 2
    return (gain * (1.0 + fx.gradient_amp * ramp))[..., None].astype(np.float32)


def render_frames(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """All frames of ``scene`` with motion blur, lighting and noise. uint8 (T, H, W, 3) RGB."""
    fx = scene.effects
    frames = np.empty((scene.num_frames, scene.height, scene.width, 3), np.uint8)
    samples = max(fx.blur_samples, 1) if fx.blur_exposure > 0 else 1
    offsets = np.linspace(-0.5, 0.5, samples) * fx.blur_exposure if samples > 1 else np.zeros(1)
    for t in range(scene.num_frames):
        image = np.mean([render_sharp(scene, t + dt) for dt in offsets], axis=0)
        if fx.gain_amp or fx.gradient_amp:
            image = image * _illumination(scene, t)
        if fx.noise_sigma:
            image = image + rng.normal(0.0, fx.noise_sigma, image.shape).astype(np.float32)
        frames[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames


def ground_truth(scene: Scene, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact tracks of frame-0 query points.

    Args:
        queries: float (N, 2) (x, y) on frame 0, inside the frame.
    Returns:
        xy: float32 (T, N, 2) true positions (also while occluded / outside the frame);
        visible: bool (T, N) — inside the frame and not covered by a nearer layer;
        layer: int (N,) index of the layer each query lies on.
    """
    layer_of = scene.top_layer(0.0, queries)
    num = len(queries)
    xy = np.zeros((scene.num_frames, num, 2), np.float64)
    visible = np.zeros((scene.num_frames, num), bool)
    for index in np.unique(layer_of):
        sel = np.flatnonzero(layer_of == index)
        layer = scene.layers[index]
        uv = apply_homography(np.linalg.inv(layer.homography(0.0)), queries[sel])
        for t in range(scene.num_frames):
            pos = apply_homography(layer.homography(float(t)), uv)
            inside = (pos[:, 0] >= 0) & (pos[:, 0] <= scene.width - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= scene.height - 1)
            covered = np.zeros(len(sel), bool)
            for nearer in scene.layers[index + 1 :]:
                covered |= nearer.covers(float(t), pos)
            xy[t, sel] = pos
            visible[t, sel] = inside & ~covered
    return xy.astype(np.float32), visible, layer_of
