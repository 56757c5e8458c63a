"""Feature step: CLIP features of each video's global 100-frame timeline, into a feature store.

The step runs on the pipeline's executors like any other (``resources = "gpu"``). For each live video it
decodes ``num_frames`` frames over the whole video, embeds them (:class:`pite.features.ClipFeatureExtractor`)
and adds them to the store in ``out_dir`` (:mod:`pite.feature_store`); videos already there are skipped
(``already_done``). A video that cannot be decoded fails with the decoder's reason (stage ``features``) and
is also listed in the store's ``failures.jsonl``. The store is flushed at the end of every batch, so a batch
that the executor marks complete never has features left in memory; with several workers the store's file
lock keeps ``index.json`` consistent. Videos are not changed otherwise (``info`` is filled when missing).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.stats import StepStats
from pipeline.steps.base import PipelineStep
from pipeline.work import VideoWork
from pite.feature_store import FeatureWriter
from pite.features import ClipFeatureExtractor, ClipSettings, FeatureInputError, FeatureItem, inside_root
from pite.video import VideoError, probe

STAGE = "features"


class FeatureStep(PipelineStep):
    """Args: settings (model, frames, batch, device, decoding), out_dir (the store), video_root."""

    name = "features"
    resources = "gpu"

    def __init__(self, settings: ClipSettings, out_dir: str, video_root: str):
        self.settings = settings
        self.out_dir = out_dir
        self.video_root = video_root
        self._extractor: ClipFeatureExtractor | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_extractor": None}

    def _path(self, video: VideoWork) -> Path | None:
        path = inside_root(self.video_root, video.task.video_path)
        if path is None:
            video.fail(STAGE, "unsafe_path", f"{video.task.video_path} climbs out of the video root {self.video_root}")
        return path

    def process(self, videos: list[VideoWork], stats: StepStats) -> None:
        if self._extractor is None:
            self._extractor = ClipFeatureExtractor(self.settings).load()
        # one shard per batch at most: flushed below, before the executor can mark the batch done
        with FeatureWriter(self.out_dir, self.settings.model, per_shard=len(videos) + 1) as writer:
            for video in videos:
                stats.count("videos_in")
                path = self._path(video)
                if path is None:
                    writer.fail(video.video_id, "unsafe_path", video.failure.message)
                    stats.drop("unsafe_path")
                    continue
                try:
                    if video.video_id in writer:
                        stats.count("already_done")
                    else:
                        writer.add(video.video_id, self._extractor(FeatureItem(video.video_id, str(path))))
                        stats.count("features_written")
                    if video.info is None:
                        video.info = probe(path, backend=self.settings.backend)
                except (VideoError, FeatureInputError) as exc:
                    video.fail(STAGE, exc.reason, str(exc))
                    writer.fail(video.video_id, exc.reason, str(exc))
                    stats.drop(exc.reason)
