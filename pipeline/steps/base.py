"""The pipeline step contract.

A step is a small class with plain, picklable settings. It loads its models lazily on
first use (so constructing one is cheap and it can be shipped to a worker), processes a
batch of :class:`~pipeline.work.VideoWork` in place, and may drop a video, an event or a
phrase only by recording why. Steps never import an executor (local or Ray).
"""

from __future__ import annotations

from typing import ClassVar

from pipeline.stats import StepStats
from pipeline.work import VideoWork


class PipelineStep:
    """Base class of every step.

    Subclasses set ``name`` and implement :meth:`process`. ``resources`` tells executors
    whether the step wants an accelerator ("gpu") or only CPU ("cpu").
    """

    name: ClassVar[str] = "step"
    resources: ClassVar[str] = "cpu"

    def process(self, videos: list[VideoWork], stats: StepStats) -> None:
        """Advance every video of the batch that has not failed. Mutates ``videos`` in place."""
        raise NotImplementedError

    def __call__(self, videos: list[VideoWork], stats: StepStats) -> list[VideoWork]:
        live = [v for v in videos if v.ok]
        if live:
            self.process(live, stats)
        return videos

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self, 'settings', '')})"
