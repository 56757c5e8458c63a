"""The model-backed steps: noun phrases (SuPar), grounding (GroundingDINO + SAM), dense tracking.

Each wraps a library object that loads its model lazily, so a step is cheap to build and
to ship to a worker; the model loads once per worker on its first batch.
"""

from __future__ import annotations

import dataclasses

from pipeline.config import GroundingSettings, NounPhraseStepSettings, TrackingSettings
from pipeline.stats import StepStats
from pipeline.steps.base import PipelineStep
from pipeline.work import PhraseWork, VideoWork


class NounPhraseStep(PipelineStep):
    """Lowest-level noun phrases of every event caption, parsed in batches."""

    name = "nounphrases"

    def __init__(self, settings: NounPhraseStepSettings):
        self.settings = settings
        self._extractor = None

    @property
    def extractor(self):
        if self._extractor is None:
            from pite.nounphrases import NounPhraseExtractor, NounPhraseSettings

            self._extractor = NounPhraseExtractor(NounPhraseSettings(**dataclasses.asdict(self.settings)))
        return self._extractor

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "_extractor": None}

    def process(self, videos: list[VideoWork], stats: StepStats) -> None:
        events = [(v, e) for v in videos for e in v.events]
        results = self.extractor.extract_with_drops([e.caption for _, e in events])
        for (_video, event), (phrases, drops) in zip(events, results):
            event.phrases = [PhraseWork(p.text, p.char_start, p.char_end) for p in phrases]
            for _phrase, reason in drops:
                stats.drop(reason)
            if not phrases:
                stats.drop("no_noun_phrase")
            stats.count("phrases_out", len(phrases))
        stats.count("events_in", len(events))


class GroundingStep(PipelineStep):
    """One mask per phrase on its event's first frame; one batched call per frame."""

    name = "grounding"
    resources = "gpu"

    def __init__(self, settings: GroundingSettings):
        self.settings = settings
        self._grounder = None

    @property
    def grounder(self):
        if self._grounder is None:
            from pipeline.grounding import make_grounder

            self._grounder = make_grounder(self.settings)
        return self._grounder

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "_grounder": None}

    def process(self, videos: list[VideoWork], stats: StepStats) -> None:
        for video in videos:
            for event in video.events:
                if not event.phrases:
                    continue
                results = self.grounder.ground(event.frames[0], [p.text for p in event.phrases])
                kept = []
                for phrase, g in zip(event.phrases, results):
                    if g.reason is not None:
                        stats.drop(g.reason)
                        continue
                    phrase.box, phrase.mask, phrase.score = g.box, g.mask, float(g.score)
                    kept.append(phrase)
                stats.count("phrases_in", len(event.phrases))
                stats.count("phrases_out", len(kept))
                event.phrases = kept


class TrackingStep(PipelineStep):
    """Dense tracks of every pixel of each event's first frame (events with a grounded phrase)."""

    name = "tracking"
    resources = "gpu"

    def __init__(self, settings: TrackingSettings):
        self.settings = settings
        self._tracker = None

    @property
    def tracker(self):
        if self._tracker is None:
            from pipeline.tracking import TrackerSettings, make_tracker

            known = {f.name for f in dataclasses.fields(TrackerSettings)}
            values = {k: v for k, v in dataclasses.asdict(self.settings).items() if k in known}
            if values.get("raft_weights") == "":
                values["raft_weights"] = None
            if values.get("device") == "auto":
                import torch

                values["device"] = "cuda" if torch.cuda.is_available() else "cpu"
            self._tracker = make_tracker(TrackerSettings(**values))
        return self._tracker

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "_tracker": None}

    def process(self, videos: list[VideoWork], stats: StepStats) -> None:
        from pipeline.tracking import grid_queries

        for video in videos:
            for event in video.events:
                if not event.phrases:
                    continue
                tracks = self.tracker.track(event.frames)
                h, w = event.frames.shape[1:3]
                event.track_xy, event.track_visible = tracks.xy, tracks.visible
                event.track_queries = grid_queries(h, w, self.settings.short_side)
                stats.count("events_tracked")
                stats.count("points_tracked", int(tracks.xy.shape[1]))
                stats.count("frames_tracked", int(tracks.xy.shape[0]))

