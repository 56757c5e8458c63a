"""Scene description for the tracking benchmark: textured layers moving under exact homographies.

A scene is a background layer (index 0, farthest) and foreground objects (higher index = nearer).
Every layer maps its texture coordinates ``u = (u, v)`` to frame coordinates ``x = (x, y)`` by a
3x3 homography ``H(t)`` that is an analytic function of (continuous) time ``t``, so the true
position of any texture point at any instant is known exactly. Objects are star-shaped regions
of their texture, also defined analytically (``inside``), so coverage is exact too.

Pixel convention: pixel ``(row i, column j)`` has its centre at ``x = j, y = i`` (OpenCV's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def apply_homography(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points float (N, 2) by the 3x3 homography ``h``. Returns float64 (N, 2)."""
    p = np.asarray(points, np.float64)
    den = h[2, 0] * p[:, 0] + h[2, 1] * p[:, 1] + h[2, 2]
    x = (h[0, 0] * p[:, 0] + h[0, 1] * p[:, 1] + h[0, 2]) / den
    y = (h[1, 0] * p[:, 0] + h[1, 1] * p[:, 1] + h[1, 2]) / den
    return np.stack([x, y], axis=1)


@dataclass
class StarShape:
    """Star-shaped region around ``center`` (texture px): radius(θ) = radius · (1 + Σ_k a_k cos(kθ + φ_k))."""

    center: tuple[float, float]
    radius: float
    harmonics: list[tuple[int, float, float]] = field(default_factory=list)  # (k, a_k, φ_k)
    aspect: float = 1.0  # >1 stretches the shape along u (bars)

    def radius_at(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k, amp, phase in self.harmonics:
            r = r + amp * np.cos(k * theta + phase)
        return self.radius * np.clip(r, 0.35, None)

    def inside(self, uv: np.ndarray) -> np.ndarray:
        """Whether texture points float (N, 2) lie inside the shape. Returns bool (N,)."""
        du = (uv[:, 0] - self.center[0]) / self.aspect
        dv = uv[:, 1] - self.center[1]
        return np.hypot(du, dv) <= self.radius_at(np.arctan2(dv, du))

    def max_radius(self) -> float:
        """Largest distance from ``center`` to the boundary (texture px)."""
        return float(self.radius_at(np.linspace(-np.pi, np.pi, 721)).max() * max(self.aspect, 1.0))


@dataclass
class Motion:
    """Time-varying similarity + perspective tilt about the texture centre.

    centre(t) = start + (end - start) · ease(t) + wiggle · sin(2π t / T · wiggle_freq + wiggle_phase),
    where ease(t) = 0.5 - 0.5 cos(π · sweeps · t / (T - 1) + phase) goes start→end→start… ``sweeps``
    times (``phase`` shifts where in that cycle the video starts).
    """

    start: tuple[float, float]
    end: tuple[float, float]
    sweeps: float = 1.0
    phase: float = 0.0
    wiggle: tuple[float, float] = (0.0, 0.0)
    wiggle_freq: float = 1.0
    wiggle_phase: float = 0.0
    angle0: float = 0.0
    spin: float = 0.0  # rad / frame
    scale0: float = 1.0
    scale_amp: float = 0.0  # log-scale amplitude
    scale_freq: float = 1.0
    tilt: tuple[float, float] = (0.0, 0.0)  # perspective coefficients (1 / px) at peak
    tilt_freq: float = 1.0
    num_frames: int = 100

    def center(self, t: float) -> np.ndarray:
        n = max(self.num_frames - 1, 1)
        ease = 0.5 - 0.5 * np.cos(np.pi * self.sweeps * t / n + self.phase)
        s, e, w = np.array(self.start), np.array(self.end), np.array(self.wiggle)
        return s + (e - s) * ease + w * np.sin(2 * np.pi * self.wiggle_freq * t / n + self.wiggle_phase)

    def scale(self, t: float) -> float:
        n = max(self.num_frames - 1, 1)
        return float(self.scale0 * np.exp(self.scale_amp * np.sin(2 * np.pi * self.scale_freq * t / n)))

    def homography(self, t: float, pivot: tuple[float, float]) -> np.ndarray:
        """3x3 map texture → frame at time ``t``; ``pivot`` (texture px) goes to ``center(t)``."""
        n = max(self.num_frames - 1, 1)
        a = self.angle0 + self.spin * t
        s = self.scale(t)
        rot = np.array([[s * np.cos(a), -s * np.sin(a), 0.0], [s * np.sin(a), s * np.cos(a), 0.0], [0, 0, 1.0]])
        k = np.sin(2 * np.pi * self.tilt_freq * t / n)
        tilt = np.array([[1.0, 0, 0], [0, 1.0, 0], [self.tilt[0] * k, self.tilt[1] * k, 1.0]])
        c = self.center(t)
        return _translate(c[0], c[1]) @ rot @ tilt @ _translate(-pivot[0], -pivot[1])


@dataclass
class Layer:
    """One textured layer. ``shape`` is None for the background (which covers the whole plane)."""

    texture: np.ndarray  # float32 (h, w, 3) in [0, 255]
    motion: Motion
    shape: StarShape | None = None

    def homography(self, t: float) -> np.ndarray:
        """Texture → frame map at time ``t`` (3x3)."""
        h, w = self.texture.shape[:2]
        pivot = self.shape.center if self.shape is not None else (w / 2.0, h / 2.0)
        return self.motion.homography(t, pivot)

    def covers(self, t: float, xy: np.ndarray) -> np.ndarray:
        """Whether frame points float (N, 2) are covered by this layer at time ``t``. bool (N,)."""
        if self.shape is None:
            return np.ones(len(xy), bool)
        return self.shape.inside(apply_homography(np.linalg.inv(self.homography(t)), xy))


@dataclass
class Effects:
    """Photometric effects applied after compositing."""

    blur_exposure: float = 0.0  # fraction of a frame interval the shutter stays open (0 = sharp)
    blur_samples: int = 1
    gain_amp: float = 0.0  # global gain varies as 1 + gain_amp · sin(...)
    gain_freq: float = 1.0
    gradient_amp: float = 0.0  # moving linear illumination gradient (fraction of intensity)
    noise_sigma: float = 0.0  # Gaussian sensor noise (grey levels)
    phase: float = 0.0


@dataclass
class Scene:
    """Background + objects (nearer = later), frame size and photometric effects."""

    layers: list[Layer]
    height: int = 256
    width: int = 256
    num_frames: int = 100
    effects: Effects = field(default_factory=Effects)

    def top_layer(self, t: float, xy: np.ndarray) -> np.ndarray:
        """Index of the nearest layer covering each frame point float (N, 2) at time ``t``. int (N,)."""
        top = np.zeros(len(xy), np.int64)
        for index in range(1, len(self.layers)):
            top[self.layers[index].covers(t, xy)] = index
        return top
