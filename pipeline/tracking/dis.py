"""Baseline dense tracker: OpenCV DIS optical flow chained frame to frame.

Each point moves by the forward flow sampled (bilinearly) at its current position. A step t→t+1
passes the forward–backward check when the backward flow at the new position brings the point back
within ``fb_threshold + fb_relative·|flow|`` px. With ``fb_sticky`` (default) a point is visible only
while every step so far passed and it lies inside the frame: once it has been occluded, its chained
position follows whatever covered it, so the track is not trusted again. Without it, visibility is
the last step's check alone. Either way the track cannot recover after an occlusion, and it drifts;
:mod:`pipeline.tracking.layers_tracker` fixes both.
"""

from __future__ import annotations

import numpy as np

from pipeline.tracking.base import DenseTracker
from pipeline.tracking.flow import DISPairs, chain_tracks, to_gray


class DISChainTracker(DenseTracker):
    """Chained DIS flow with a forward–backward occlusion check (``backend="dis_chain"``)."""

    name = "dis_chain"

    def _track_work(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        preset = s.dis_preset or "medium"
        pairs = DISPairs(to_gray(frames), preset, s.dis_backward_preset or preset)
        xy, visible, alive = chain_tracks(pairs, queries, len(frames), frames.shape[1:3], s.fb_threshold, s.fb_relative)
        return xy, (alive if s.fb_sticky else visible)
