"""Decode step: probe each video, check its events' timestamps, decode the frames to track.

Per event, frames are decoded from ``start_s`` to ``end_s`` at ``track_fps`` (at most
``max_frames_per_event``), downscaled to ``short_side``; frame 0 is the event's first
frame, where grounding happens.

Timestamp policy (each case is recorded in the failures table with its event index):

- ``start < 0`` -> event dropped, reason ``negative_timestamp``;
- ``start >= end`` -> ``reversed_timestamps``;
- ``start >= duration`` -> ``event_after_end``;
- ``end > duration`` -> clamped to the duration and counted as ``clamped_end`` (InternVid
  end times often overshoot the file by a frame or two);
- an empty or whitespace-only caption -> ``empty_caption``;
- fewer than 2 decodable frames in the event -> ``too_few_frames``.

A video with fewer than 2 frames fails as a whole (``too_few_frames``), and so does one with
no usable event left (``no_usable_events``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import DecodeSettings
from pipeline.stats import StepStats
from pipeline.steps.base import PipelineStep
from pipeline.work import VideoWork
from pite.video import VideoError, event_sample_times, open_video

STAGE = "decode"


class DecodeStep(PipelineStep):
    name = "decode"

    def __init__(self, settings: DecodeSettings, video_root: str):
        self.settings = settings
        self.video_root = video_root

    def _path(self, video: VideoWork) -> Path | None:
        root = Path(self.video_root).resolve()
        path = (root / video.task.video_path).resolve()
        if not path.is_relative_to(root):
            video.fail(STAGE, "unsafe_path", f"{video.task.video_path} resolves outside the video root {root}")
            return None
        return path

    def _check_events(self, video: VideoWork, stats: StepStats) -> None:
        duration = video.info.duration_s
        for event in list(video.events):
            s, e = event.start_s, event.end_s
            problem = None
            if not event.caption or not event.caption.strip():
                problem = ("empty_caption", "the caption is empty")
            elif s < 0 or e < 0:
                problem = ("negative_timestamp", f"start {s:.3f}s / end {e:.3f}s is negative")
            elif s >= e:
                problem = ("reversed_timestamps", f"start {s:.3f}s is not before end {e:.3f}s")
            elif s >= duration:
                problem = ("event_after_end", f"start {s:.3f}s is past the video's end ({duration:.3f}s)")
            if problem:
                video.drop_event(event, STAGE, *problem)
                stats.drop(problem[0])
            elif e > duration:
                event.end_s = duration
                stats.count("clamped_end")

    def process(self, videos: list[VideoWork], stats: StepStats) -> None:
        for video in videos:
            stats.count("videos_in")
            path = self._path(video)
            if path is None:
                continue
            try:
                with open_video(path, self.settings.short_side, self.settings.backend) as source:
                    video.info = source.info
                    self._decode_events(video, source, stats)
            except VideoError as exc:
                video.fail(STAGE, exc.reason, str(exc))
                continue
            if video.ok:
                stats.count("videos_out")
                stats.count("events_out", len(video.events))
                stats.count("frames_decoded", sum(len(ev.times) for ev in video.events))

    def _decode_events(self, video: VideoWork, source, stats: StepStats) -> None:
        """Check timestamps, then read every event's frames (one decode pass per video)."""
        cfg = self.settings
        if video.info.num_frames < 2:
            video.fail(STAGE, "too_few_frames", f"the video has {video.info.num_frames} frame(s); tracking needs 2")
            return
        self._check_events(video, stats)
        if not video.events:
            video.fail(STAGE, "no_usable_events", "no event of this video has usable timestamps and caption")
            return
        times = [event_sample_times(ev.start_s, ev.end_s, cfg.track_fps, cfg.max_frames_per_event,
                                    video_fps=video.info.fps) for ev in video.events]
        frames = source.read_at(np.concatenate(times))
        offset = 0
        for event, t in zip(list(video.events), times):
            event.times, event.frames = t, frames[offset:offset + len(t)]
            offset += len(t)
            if len(t) < 2:
                video.drop_event(event, STAGE, "too_few_frames",
                                 f"event {event.start_s:.2f}-{event.end_s:.2f}s has {len(t)} decodable frame(s)")
                stats.drop("too_few_frames")
        if not video.events:
            video.fail(STAGE, "no_usable_events", "no event has at least 2 decodable frames")
