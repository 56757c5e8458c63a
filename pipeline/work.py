"""The work items that flow between pipeline steps: one :class:`VideoWork` per manifest video.

Steps fill these in place (decode adds frames, noun phrases add phrases, grounding adds
masks, tracking adds tracks, key trajectories add the final arrays). A video that fails
carries a :class:`~pite.schema.Failure` and later steps skip it; a dropped event or phrase
is removed and its reason counted, so nothing disappears without a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.manifest import VideoTask
from pite.schema import Failure
from pite.video import VideoInfo


@dataclass
class PhraseWork:
    """A noun phrase of one event, growing as steps run."""

    text: str
    char_start: int
    char_end: int
    box: tuple[float, float, float, float] | None = None  # normalised xyxy on the event's first frame
    mask: np.ndarray | None = None  # bool (H, W) at the decoded frame size
    score: float = 0.0
    trajectory: np.ndarray | None = None  # float16 (P, 100, 2), normalised, -1 where absent
    visibility: np.ndarray | None = None  # bool (P, 100)


@dataclass
class EventWork:
    """One event (a caption with a time span) of a video."""

    index: int  # position among the video's manifest events
    start_s: float
    end_s: float
    caption: str
    times: np.ndarray | None = None  # float64 (T,) seconds of the decoded frames
    frames: np.ndarray | None = None  # uint8 (T, H, W, 3) RGB, frame 0 at start_s
    phrases: list[PhraseWork] = field(default_factory=list)
    track_xy: np.ndarray | None = None  # float32 (T, N, 2) pixel (x, y) of the tracked query points
    track_visible: np.ndarray | None = None  # bool (T, N)
    track_queries: np.ndarray | None = None  # float32 (N, 2) query points (x, y) on frame 0


@dataclass
class VideoWork:
    """A manifest video on its way through the pipeline."""

    task: VideoTask
    info: VideoInfo | None = None
    events: list[EventWork] = field(default_factory=list)
    failure: Failure | None = None
    event_failures: list[Failure] = field(default_factory=list)

    @classmethod
    def from_task(cls, task: VideoTask) -> "VideoWork":
        events = [EventWork(i, e.start_s, e.end_s, e.caption) for i, e in enumerate(task.events)]
        return cls(task=task, events=events)

    @property
    def video_id(self) -> str:
        return self.task.video_id

    @property
    def ok(self) -> bool:
        return self.failure is None

    def fail(self, stage: str, reason: str, message: str) -> None:
        """Mark the whole video failed; it will be written to the failures table."""
        if self.failure is None:
            self.failure = Failure(video_id=self.video_id, event=-1, stage=stage, reason=reason, message=message)
        self.release()

    def drop_event(self, event: EventWork, stage: str, reason: str, message: str) -> None:
        """Remove one event, recording why in the failures table (with its event index)."""
        self.events = [e for e in self.events if e is not event]
        self.event_failures.append(
            Failure(video_id=self.video_id, event=event.index, stage=stage, reason=reason, message=message))

    def release(self) -> None:
        """Free the large arrays (frames, dense tracks) once they are no longer needed."""
        for e in self.events:
            e.frames = None
            e.track_xy = e.track_visible = e.track_queries = None
