"""Baseline dense tracker: OpenCV DIS optical flow chained frame to frame.

Each point moves by the forward flow sampled (bilinearly) at its current position. It is visible at
frame t+1 when the step t→t+1 passes the forward–backward check (the backward flow at the new
position brings it back within ``fb_threshold + fb_relative·|flow|`` px) and it lies inside the
frame. Once a point has been occluded, its chained position follows whatever covers it, so the
track cannot recover; :mod:`pipeline.tracking.layers_tracker` fixes that.
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
        pairs = DISPairs(to_gray(frames), s.dis_preset, s.dis_backward_preset)
        xy, visible, _ = chain_tracks(pairs, queries, len(frames), frames.shape[1:3], s.fb_threshold, s.fb_relative)
        return xy, visible
