"""Key-trajectory step: turn each grounded phrase's dense tracks into P key trajectories."""

from __future__ import annotations

import numpy as np

from pipeline.config import KeyTrajectorySettings
from pipeline.keytracks import key_trajectories
from pipeline.stats import StepStats
from pipeline.steps.base import PipelineStep
from pipeline.work import EventWork, VideoWork


def points_inside(mask: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """bool (N,): whether each query point (x, y) in pixels (N, 2) falls inside ``mask`` (H, W)."""
    h, w = mask.shape
    x = np.clip(np.rint(queries[:, 0]).astype(np.int64), 0, w - 1)
    y = np.clip(np.rint(queries[:, 1]).astype(np.int64), 0, h - 1)
    return mask[y, x]


class KeyTrajectoryStep(PipelineStep):
    name = "keytracks"

    def __init__(self, settings: KeyTrajectorySettings):
        self.settings = settings

    def _event(self, video: VideoWork, event: EventWork, stats: StepStats) -> None:
        cfg, info = self.settings, video.info
        h, w = event.frames.shape[1:3]
        kept = []
        for phrase in event.phrases:
            inside = points_inside(phrase.mask, event.track_queries)
            result = None
            if inside.any():
                result = key_trajectories(
                    event.track_xy, event.track_visible, inside, event.times, event.start_s, event.end_s,
                    info.duration_s, w, h, num_trajectories=cfg.num_trajectories,
                    min_visible_frac=cfg.min_visible_frac, max_points=cfg.max_points, seed=cfg.seed)
            if result is None:
                stats.drop("occluded_after_first_frame" if inside.any() else "no_tracks_in_mask")
                continue
            phrase.trajectory, phrase.visibility = result.trajectory, result.visibility
            kept.append(phrase)
            stats.count("trajectories", cfg.num_trajectories)
        event.phrases = kept
        stats.count("phrases_out", len(kept))

    def process(self, videos: list[VideoWork], stats: StepStats) -> None:
        for video in videos:
            for event in video.events:
                if event.phrases:
                    self._event(video, event, stats)
