"""What every executor shares: running steps on a batch with fault isolation, finishing a
shard, and merging run statistics. Executors differ only in *where* this runs."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.manifest import VideoTask
from pipeline.stats import RunStats, StepStats
from pipeline.steps.base import PipelineStep
from pipeline.work import VideoWork
from pipeline.writer import ShardPaths, save_dense_tracks, to_record, write_shard_outputs
from pite.schema import Failure, SchemaError, VideoRecord
from pite.validation import validate

log = logging.getLogger("pite.pipeline")


def run_step(step: PipelineStep, videos: list[VideoWork], stats: RunStats) -> None:
    """Run one step on a batch. If it raises, retry video by video so that only the video
    that breaks it fails (reason ``exception``), with the error message recorded."""
    started = time.perf_counter()
    step_stats = StepStats()
    try:
        step(videos, step_stats)
    except Exception:  # noqa: BLE001 - isolate the culprit below
        step_stats = StepStats()
        for video in [v for v in videos if v.ok]:
            one = StepStats()
            try:
                step([video], one)
                step_stats.merge(one)
            except Exception as exc:  # noqa: BLE001 - recorded as this video's failure
                log.warning("[%s] step %s failed: %s: %s", video.video_id, step.name, type(exc).__name__, exc)
                video.fail(step.name, "exception", f"{type(exc).__name__}: {exc}")
    step_stats.seconds += time.perf_counter() - started
    stats.step(step.name).merge(step_stats)


@dataclass
class BatchResult:
    """What a batch of videos turned into; small and picklable."""

    records: list[VideoRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    stats: RunStats = field(default_factory=RunStats)

    @property
    def videos_failed(self) -> int:
        return sum(f.event == -1 for f in self.failures)

    @property
    def videos(self) -> int:
        """Input videos this result accounts for (written + failed)."""
        return len(self.records) + self.videos_failed


def merge_results(parts: list[BatchResult]) -> BatchResult:
    """One result from several, records and failures kept in the order of ``parts``."""
    merged = BatchResult()
    for part in parts:
        merged.records += part.records
        merged.failures += part.failures
        merged.stats.merge(part.stats)
    return merged


def finish_batch(videos: list[VideoWork], stats: RunStats, dense_dir: Path | None = None) -> BatchResult:
    """Records for the videos that made it, failures for the rest; frees the big arrays."""
    result = BatchResult(stats=stats)
    for video in videos:
        record = None
        if video.ok:
            record = to_record(video)
            problems = validate(record)
            if problems:
                video.fail("write", "invalid_record", str(SchemaError(problems)))
                record = None
        if record is not None:
            if dense_dir is not None:
                save_dense_tracks(video, dense_dir)
            result.records.append(record)
            stats.totals["videos_written"] += 1
            stats.totals["events_written"] += len(record.events)
            stats.totals["phrases_written"] += sum(len(e.phrases) for e in record.events)
        else:
            result.failures.append(video.failure)
            stats.totals["videos_failed"] += 1
            stats.failures[f"{video.failure.stage}/{video.failure.reason}"] += 1
        for f in video.event_failures:
            result.failures.append(f)
            stats.totals["events_dropped"] += 1
            stats.failures[f"{f.stage}/{f.reason}"] += 1
        video.release()
    return result


def run_steps(steps: list[PipelineStep], videos: list[VideoWork], stats: RunStats) -> None:
    """Run ``steps`` in order on one batch, each with :func:`run_step`'s fault isolation."""
    for step in steps:
        run_step(step, videos, stats)


def fail_videos(videos: list[VideoWork], stage: str, reason: str, message: str) -> None:
    """Fail every video of a batch that has not failed yet (e.g. its worker kept dying)."""
    for video in videos:
        if video.ok:
            log.warning("[%s] %s: %s: %s", video.video_id, stage, reason, message)
            video.fail(stage, reason, message)


def process_batch(steps: list[PipelineStep], tasks: list[VideoTask], dense_dir: Path | None = None) -> BatchResult:
    """Run every step on one batch of manifest videos, in-process."""
    videos = [VideoWork.from_task(t) for t in tasks]
    stats = RunStats()
    stats.totals["videos_input"] += len(videos)
    run_steps(steps, videos, stats)
    return finish_batch(videos, stats, dense_dir)


def shard_fingerprint(tasks: list[VideoTask]) -> str:
    """Hash of a shard's video ids: a completed shard is reused only for the same videos."""
    return hashlib.sha256("\n".join(t.video_id for t in tasks).encode()).hexdigest()[:16]


def check_completed(paths: ShardPaths, tasks: list[VideoTask]) -> bool:
    """True when the shard was completed earlier for these very videos.

    Raises:
        RuntimeError: the shard was completed for other videos (the manifest changed).
    """
    if not paths.is_complete():
        return False
    stored = json.loads(paths.marker.read_text()).get("fingerprint")
    if stored != shard_fingerprint(tasks):
        raise RuntimeError(f"{paths.marker} was written for other videos: the manifest or videos_per_shard changed "
                           f"since. Use a new output folder or output.overwrite: true.")
    return True


def completed_counts(paths: ShardPaths) -> tuple[int, int]:
    """``(written, failed)`` videos of a completed shard, from its marker."""
    marker = json.loads(paths.marker.read_text())
    return int(marker.get("written", 0)), int(marker.get("failed", 0))


def skip_completed(paths: ShardPaths, tasks: list[VideoTask], overwrite: bool, bar) -> bool:
    """True when shard ``paths`` was completed earlier for ``tasks`` (and ``overwrite`` is off);
    its videos are then counted on the progress ``bar`` as done."""
    if overwrite or not check_completed(paths, tasks):
        return False
    log.info("shard %d already complete; skipped", paths.index)
    written, failed = completed_counts(paths)
    bar.advance(written=written, failed=failed, skipped=True)
    return True


def complete_shard(paths: ShardPaths, tasks: list[VideoTask], result: BatchResult) -> None:
    """Write a shard's outputs, then its marker (which records the shard's fingerprint).

    Raises:
        RuntimeError: ``result`` does not account for each of the shard's videos exactly once.
    """
    from collections import Counter

    wanted = Counter(t.video_id for t in tasks)
    got = Counter([r.video_id for r in result.records] + [f.video_id for f in result.failures if f.event == -1])
    if got != wanted:
        raise RuntimeError(f"{paths.marker.name}: the results do not account for each video exactly once: "
                           f"missing {sorted(wanted - got)}, extra or duplicated {sorted(got - wanted)}")
    write_shard_outputs(paths, result.records, result.failures, result.stats,
                        marker={"fingerprint": shard_fingerprint(tasks), "videos": len(tasks),
                                "written": len(result.records), "failed": result.videos_failed})


def merge_run_stats(out: Path) -> RunStats:
    """Merge the stats of every completed shard into ``out/stats.json``."""
    merged = RunStats()
    for marker in sorted((Path(out) / "completions").glob("shard-*")):
        merged.merge(RunStats.load(Path(out) / "stats" / f"{marker.name}.json"))
    extra = Path(out) / "stats" / "manifest.json"
    if extra.exists():
        merged.merge(RunStats.load(extra))
    merged.save(Path(out) / "stats.json")
    return merged
