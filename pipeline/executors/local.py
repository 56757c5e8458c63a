"""Run the pipeline in this process, shard after shard, batch after batch."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.executors.base import (skip_completed, complete_shard, merge_results,
                                     merge_run_stats, process_batch)
from pipeline.manifest import VideoTask, split_into_shards
from pipeline.progress import RunProgress
from pipeline.stats import RunStats
from pipeline.steps.base import PipelineStep
from pipeline.writer import ShardPaths

log = logging.getLogger("pite.pipeline")


class LocalExecutor:
    """In-process executor.

    Args:
        steps: the pipeline's steps, in order.
        out: output folder (see :mod:`pipeline.writer` for its layout).
        videos_per_shard: videos per output shard (the unit of resume).
        batch_size: videos per step call.
        overwrite: redo shards that already have a completion marker.
        write_dense: also save dense tracks per event.
        progress: show a live progress bar.
    """

    def __init__(self, steps: list[PipelineStep], out: str | Path, videos_per_shard: int, batch_size: int = 4,
                 overwrite: bool = False, write_dense: bool = False, progress: bool = True):
        self.steps, self.out = steps, Path(out)
        self.videos_per_shard, self.batch_size = videos_per_shard, batch_size
        self.overwrite, self.write_dense, self.progress = overwrite, write_dense, progress

    def run(self, tasks: list[VideoTask]) -> RunStats:
        shards = split_into_shards(tasks, self.videos_per_shard)
        with RunProgress(len(tasks), enabled=self.progress) as bar:
            for index, shard_tasks in enumerate(shards):
                paths = ShardPaths(self.out, index)
                if skip_completed(paths, shard_tasks, self.overwrite, bar):
                    continue
                parts = []
                for start in range(0, len(shard_tasks), self.batch_size):
                    batch = shard_tasks[start:start + self.batch_size]
                    part = process_batch(self.steps, batch, paths.dense if self.write_dense else None)
                    parts.append(part)
                    bar.advance(written=len(part.records), failed=part.videos_failed)
                complete_shard(paths, shard_tasks, merge_results(parts))
        return merge_run_stats(self.out)
