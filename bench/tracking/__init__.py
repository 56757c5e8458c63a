"""Procedural point-tracking benchmark with exact per-pixel ground truth.

Each video is a seeded random :class:`~bench.tracking.scene.Scene` (textured objects under exact
homographies over a panning textured background, see :mod:`bench.tracking.splits`) rendered at
256x256 for 100 frames, with query points on frame 0 and their true tracks and occlusion flags.

    from bench.tracking import make_video
    video = make_video("occlusion", index=3)   # same seed, same video, every time
    video.frames      # uint8 (T, H, W, 3) RGB
    video.queries     # float32 (N, 2) (x, y) on frame 0
    video.gt_xy       # float32 (T, N, 2); video.gt_visible: bool (T, N)

Queries: half are drawn uniformly over the pixels covered by foreground objects on frame 0, the
rest uniformly over the whole frame (so tracks on moving objects are well represented).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from bench.tracking.render import ground_truth, render_frames
from bench.tracking.scene import Scene
from bench.tracking.splits import SPLITS, sample_scene

GENERATOR_VERSION = 3
"""Bumped whenever rendering or sampling changes, so cached videos are regenerated."""

__all__ = ["GENERATOR_VERSION", "SPLITS", "TrackingVideo", "make_scene", "make_video", "sample_queries"]


@dataclass
class TrackingVideo:
    """One benchmark video and its ground truth."""

    name: str
    frames: np.ndarray  # uint8 (T, H, W, 3)
    queries: np.ndarray  # float32 (N, 2) (x, y) on frame 0
    gt_xy: np.ndarray  # float32 (T, N, 2)
    gt_visible: np.ndarray  # bool (T, N)
    query_layer: np.ndarray  # int (N,) 0 = background, k > 0 = k-th object
    scene: Scene


def _seed(split: str, index: int, seed: int) -> int:
    return zlib.crc32(f"{split}/{index}/{seed}".encode())


def make_scene(split: str, index: int, seed: int = 0, size: int = 256, frames: int = 100) -> Scene:
    """The (deterministic) scene of video ``index`` of ``split``."""
    return sample_scene(split, np.random.default_rng(_seed(split, index, seed)), size=size, frames=frames)


def sample_queries(scene: Scene, rng: np.random.Generator, count: int, object_fraction: float = 0.5) -> np.ndarray:
    """Query points on frame 0: ``object_fraction`` on foreground objects, the rest uniform. float32 (count, 2)."""
    n_obj = int(round(count * object_fraction)) if len(scene.layers) > 1 else 0
    uniform = rng.uniform([0, 0], [scene.width - 1, scene.height - 1], size=(count - n_obj, 2))
    picked: list[np.ndarray] = []
    while sum(len(p) for p in picked) < n_obj:
        cand = rng.uniform([0, 0], [scene.width - 1, scene.height - 1], size=(4 * count, 2))
        picked.append(cand[scene.top_layer(0.0, cand) > 0])
    on_objects = np.concatenate(picked)[:n_obj] if n_obj else np.zeros((0, 2))
    return np.concatenate([on_objects, uniform]).astype(np.float32)


def make_video(split: str, index: int, seed: int = 0, num_queries: int = 256, size: int = 256,
               frames: int = 100) -> TrackingVideo:
    """Render video ``index`` of ``split`` with ``num_queries`` ground-truth tracks (seeded, reproducible)."""
    scene = make_scene(split, index, seed, size, frames)
    rng = np.random.default_rng(_seed(split, index, seed) + 1)
    queries = sample_queries(scene, rng, num_queries)
    gt_xy, gt_visible, layer = ground_truth(scene, queries.astype(np.float64))
    gt_xy[0] = queries
    video_frames = render_frames(scene, rng)
    return TrackingVideo(f"{split}/{index:03d}", video_frames, queries, gt_xy, gt_visible, layer, scene)
