"""Dense point tracking of an event's first frame (the pipeline's tracking step).

    from pipeline.tracking import TrackerSettings, make_tracker
    tracker = make_tracker(TrackerSettings())          # default: the long-range "dis_layers"
    tracks = tracker.track(frames)                     # every work-resolution pixel of frame 0
    tracks.xy, tracks.visible                          # (T, N, 2) input px, (T, N) bool

Backends (``TrackerSettings.backend``):

- ``dis_chain``: OpenCV DIS flow chained frame to frame with a forward–backward occlusion check.
- ``dis_layers``: long-range tracker: chained DIS anchors grouped into motion layers (a homography
  per layer and frame) carry points through occlusions and out of the frame; each frame is
  re-registered directly to frame 0 (warp + DIS) to remove drift, an appearance check decides
  visibility, and ORB re-detection re-acquires layers after they reappear. The default: best on the
  benchmark (``bench/tracking_bench.py``) within 3 s per 100-frame 256-px video on one core.
- ``raft``: torchvision RAFT flow chained like ``dis_chain``; needs the user's local weights file.
"""

from __future__ import annotations

from pipeline.tracking.base import DenseTracker, TrackerSettings, Tracks, grid_queries, work_size

TRACKERS = ("dis_chain", "dis_layers", "raft")
DEFAULT_TRACKER = TrackerSettings.backend

__all__ = ["DEFAULT_TRACKER", "TRACKERS", "DenseTracker", "TrackerSettings", "Tracks", "grid_queries",
           "make_tracker", "work_size"]


def make_tracker(settings: TrackerSettings | None = None) -> DenseTracker:
    """The tracker named by ``settings.backend`` (cheap: models load on first use)."""
    settings = settings or TrackerSettings()
    if settings.backend == "dis_chain":
        from pipeline.tracking.dis import DISChainTracker

        return DISChainTracker(settings)
    if settings.backend == "dis_layers":
        from pipeline.tracking.layers_tracker import LayeredTracker

        return LayeredTracker(settings)
    if settings.backend == "raft":
        from pipeline.tracking.raft import RaftChainTracker

        return RaftChainTracker(settings)
    raise ValueError(f"unknown tracker backend {settings.backend!r}; choose one of {TRACKERS}")
