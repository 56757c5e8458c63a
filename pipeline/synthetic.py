"""Synthetic clips with exact ground truth, for tests and the demo.

``render_square_clip`` draws a textured red square translating at a constant, known
speed over a textured gravel background, optionally with a blue disc that crosses in
front of it (an occlusion with known timing). Everything is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SquareClip:
    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    fps: float
    square_xy0: tuple[float, float]  # top-left corner (x, y) of the square at frame 0, px
    square_size: int  # side, px
    velocity: tuple[float, float]  # px per frame (vx, vy)
    occluder_boxes: list[tuple[int, int, int, int] | None]  # per frame: disc bbox (x0, y0, x1, y1) or None

    def square_position(self, t: int) -> tuple[float, float]:
        """Top-left corner (x, y) of the square at frame ``t``."""
        return self.square_xy0[0] + self.velocity[0] * t, self.square_xy0[1] + self.velocity[1] * t

    def point_at(self, x0: float, y0: float, t: int) -> tuple[float, float]:
        """Where a point of the square at (x0, y0) on frame 0 is at frame ``t``."""
        return x0 + self.velocity[0] * t, y0 + self.velocity[1] * t


def _texture(rng: np.random.Generator, h: int, w: int, base: tuple[int, int, int], amp: int) -> np.ndarray:
    """Smooth random texture: blurred noise around a base colour, uint8 (h, w, 3)."""
    import cv2

    noise = rng.normal(0, 1, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 0.5, (h, w, 3)).astype(np.float32)
    tex = np.asarray(base, np.float32) + amp * np.tanh(noise + fine)
    return np.clip(tex, 0, 255).astype(np.uint8)


def render_square_clip(num_frames: int = 100, height: int = 256, width: int = 320, size: int = 48,
                       velocity: tuple[float, float] = (1.5, 0.5), start: tuple[float, float] = (40.0, 80.0),
                       occluder: bool = False, occluder_frames: tuple[int, int] = (50, 80), fps: float = 25.0,
                       seed: int = 0) -> SquareClip:
    """Render the clip. Sub-pixel motion is exact: the square's texture is sampled with
    bilinear interpolation at its true (fractional) position.

    The occluding disc (radius ``size * 0.8``) moves vertically across the square's path
    and covers its centre between ``occluder_frames[0]`` and ``occluder_frames[1]``.
    """
    import cv2

    rng = np.random.default_rng(seed)
    background = _texture(rng, height + 64, width + 64, (120, 110, 95), 60)
    square = _texture(rng, size, size, (200, 40, 40), 55)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    occ_boxes: list[tuple[int, int, int, int] | None] = []
    radius = int(size * 0.8)
    o0, o1 = occluder_frames
    for t in range(num_frames):
        frame = background[32:32 + height, 32:32 + width].copy()
        x, y = start[0] + velocity[0] * t, start[1] + velocity[1] * t
        # warp the square texture onto the frame at its fractional position
        m = np.float32([[1, 0, x], [0, 1, y]])
        layer = cv2.warpAffine(square, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        alpha = cv2.warpAffine(np.ones((size, size), np.float32), m, (width, height), flags=cv2.INTER_LINEAR)
        frame = (frame * (1 - alpha[..., None]) + layer * alpha[..., None]).round().astype(np.uint8)
        box = None
        if occluder and o0 <= t <= o1:
            cx = x + size / 2
            frac = (t - o0) / max(o1 - o0, 1)
            cy = (y + size / 2) + (1 - 2 * frac) * size * 0.6  # passes over the centre mid-way
            cv2.circle(frame, (int(round(cx)), int(round(cy))), radius, (40, 60, 210), -1, lineType=cv2.LINE_AA)
            box = (int(cx - radius), int(cy - radius), int(cx + radius), int(cy + radius))
        occ_boxes.append(box)
        frames[t] = frame
    return SquareClip(frames, fps, start, size, velocity, occ_boxes)
