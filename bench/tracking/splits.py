"""Random scene sampling for the three difficulty splits (256x256, 100 frames by default).

- ``easy``: 2–4 rigid objects (translation, rotation, mild scale) each confined to its own quadrant,
  so objects never overlap and never leave the frame; the background pans slowly. The only
  occlusions are background points covered by the objects' own motion (and background leaving
  the frame as it pans).
- ``occlusion``: 3–5 objects sweeping across the frame on crossing paths (at least two objects must
  overlap at some frame), some back and forth (peak speeds up to ~7 px/frame); rotation and scale;
  no photometric effects.
- ``hard``: everything: 3–6 objects with perspective change, faster sweeps (up to ~13 px/frame),
  objects leaving and re-entering the frame, a panning + zooming + rotating background, lighting
  changes (global gain and a moving gradient), motion blur and sensor noise.

Every object is already moving on frame 0 (its sweep starts at a random phase in the first eighth
of a cycle), so objects begin apart and the crossings happen during the video.
"""

from __future__ import annotations

import numpy as np

from bench.tracking.scene import Effects, Layer, Motion, Scene, StarShape
from bench.tracking.textures import make_texture

SPLITS = ("easy", "occlusion", "hard")


def _shape(rng: np.random.Generator, size: int, bar: bool = False) -> StarShape:
    harmonics = [(k, float(rng.uniform(0, 0.25 / k)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5)]
    if bar:
        return StarShape((size / 2, size / 2), size * 0.16, [], aspect=2.8)
    return StarShape((size / 2, size / 2), size * 0.38, harmonics)


def _background(rng: np.random.Generator, scene_size: int, frames: int, hard: bool) -> Layer:
    """A texture twice the frame size, panning smoothly once (plus zoom and roll when ``hard``)."""
    texture = make_texture(rng, 2 * scene_size, 2 * scene_size)
    speed = rng.uniform(0.2, 1.2) if hard else rng.uniform(0.1, 0.6)
    direction = rng.uniform(0, 2 * np.pi)
    travel = speed * (frames - 1) * np.array([np.cos(direction), np.sin(direction)])
    motion = Motion(start=tuple(scene_size / 2 + travel / 2), end=tuple(scene_size / 2 - travel / 2),
                    sweeps=1.0, num_frames=frames)
    if hard:
        motion.scale0 = 1.1
        motion.scale_amp = float(rng.uniform(0.03, 0.08))
        motion.spin = float(rng.uniform(-0.002, 0.002))
    return Layer(texture, motion)


def _object(rng, frames, start, end, size, sweeps, spin, scale_amp, tilt=0.0, bar=False, wiggle=0.0) -> Layer:
    texture = make_texture(rng, size, size)
    motion = Motion(
        start=tuple(start), end=tuple(end), sweeps=sweeps, phase=float(rng.uniform(0, 0.25 * np.pi)),
        wiggle=tuple(rng.uniform(-wiggle, wiggle, 2)), wiggle_freq=float(rng.uniform(0.5, 2.0)),
        wiggle_phase=float(rng.uniform(0, 2 * np.pi)),
        angle0=float(rng.uniform(0, 2 * np.pi)), spin=spin,
        scale0=1.0, scale_amp=scale_amp, scale_freq=float(rng.uniform(0.5, 1.5)),
        tilt=tuple(rng.uniform(-tilt, tilt, 2)), tilt_freq=float(rng.uniform(0.5, 1.5)), num_frames=frames,
    )
    return Layer(texture, motion, _shape(rng, size, bar))


def _easy_objects(rng, size, frames) -> list[Layer]:
    cells = [(0, 0), (1, 0), (0, 1), (1, 1)]
    chosen = rng.permutation(4)[: int(rng.integers(2, 5))]
    half = size / 2
    layers = []
    for c in chosen:
        cx, cy = (cells[c][0] + 0.5) * half, (cells[c][1] + 0.5) * half
        tex = int(rng.integers(56, 76))
        reach = half / 2 - 0.38 * tex * 1.35 * 1.1  # room left in the quadrant for the centre to move
        reach = max(reach, 2.0)
        start = np.array([cx, cy]) + rng.uniform(-reach, reach, 2)
        end = np.array([cx, cy]) + rng.uniform(-reach, reach, 2)
        layers.append(_object(rng, frames, start, end, tex, float(rng.choice([1.0, 2.0])),
                              float(rng.uniform(-0.015, 0.015)), 0.08))
    return layers


def _crossing_path(rng, size, margin, overshoot=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Start/end on opposite sides of the frame centre; ``overshoot`` > 0 lets the end leave the frame."""
    angle = rng.uniform(0, 2 * np.pi)
    through = size / 2 + rng.uniform(-size * 0.15, size * 0.15, 2)
    reach = rng.uniform(0.25, 0.4) * size
    direction = np.array([np.cos(angle), np.sin(angle)])
    start = np.clip(through - reach * direction, margin, size - margin)
    end = through + (reach + overshoot) * direction
    if overshoot == 0.0:
        end = np.clip(end, margin, size - margin)
    return start, end


def _min_gap(scene: Scene) -> float:
    """Smallest distance between two objects' bounding circles over all frames (negative = overlap)."""
    objs = scene.layers[1:]
    gap = np.inf
    for t in range(0, scene.num_frames, 2):
        centers = [o.motion.center(t) for o in objs]
        radii = [o.shape.max_radius() * o.motion.scale(t) for o in objs]
        for i in range(len(objs)):
            for j in range(i + 1, len(objs)):
                gap = min(gap, float(np.linalg.norm(centers[i] - centers[j]) - radii[i] - radii[j]))
    return gap


def sample_scene(split: str, rng: np.random.Generator, size: int = 256, frames: int = 100) -> Scene:
    """Draw one scene of ``split`` (see module docstring) with ``rng``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    hard = split == "hard"
    for _ in range(50):
        layers = [_background(rng, size, frames, hard)]
        effects = Effects()
        if split == "easy":
            layers += _easy_objects(rng, size, frames)
        else:
            count = int(rng.integers(3, 6)) if split == "occlusion" else int(rng.integers(3, 7))
            for i in range(count):
                tex = int(rng.integers(60, 100))
                bar = split == "occlusion" and i == count - 1 and rng.random() < 0.5
                leaves = hard and rng.random() < 0.5
                start, end = _crossing_path(rng, size, margin=tex * 0.3, overshoot=tex * 0.9 if leaves else 0.0)
                if leaves:
                    sweeps = float(rng.choice([2.0, 3.0]))
                else:
                    sweeps = float(rng.choice([1.0, 2.0] if split == "occlusion" else [1.0, 2.0, 3.0]))
                spin = float(rng.uniform(-0.03, 0.03)) if hard else float(rng.uniform(-0.015, 0.015))
                layers.append(_object(rng, frames, start, end, tex, sweeps, spin,
                                      scale_amp=0.25 if hard else 0.12, tilt=0.0025 if hard else 0.0,
                                      bar=bar, wiggle=12.0 if hard else 6.0))
        if hard:
            effects = Effects(blur_exposure=float(rng.uniform(0.5, 1.0)), blur_samples=5,
                              gain_amp=float(rng.uniform(0.15, 0.3)), gain_freq=float(rng.uniform(0.5, 1.5)),
                              gradient_amp=float(rng.uniform(0.1, 0.25)), noise_sigma=2.0,
                              phase=float(rng.uniform(0, 2 * np.pi)))
        scene = Scene(layers, size, size, frames, effects)
        if split == "easy" or len(layers) < 3 or _min_gap(scene) < -10.0:
            return scene
    return scene
