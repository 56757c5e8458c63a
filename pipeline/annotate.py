"""`pite annotate`: read the manifest, build the steps, run them with an executor, summarise."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.stats import RunStats
from pipeline.steps.base import PipelineStep

log = logging.getLogger("pite.pipeline")


def check_backends(cfg: PipelineConfig, source: str = "config") -> None:
    """Raise one :class:`~pite.config.ConfigError` naming every unknown grounder / tracker backend."""
    from pipeline.grounding import GROUNDERS
    from pipeline.tracking import TRACKERS
    from pite.config import ConfigError

    problems = []
    if cfg.grounding.backend not in GROUNDERS:
        problems.append(f"grounding.backend: unknown grounder {cfg.grounding.backend!r}; known: {', '.join(GROUNDERS)}")
    if cfg.tracking.backend not in TRACKERS:
        problems.append(f"tracking.backend: unknown tracker {cfg.tracking.backend!r}; known: {', '.join(TRACKERS)}")
    if problems:
        raise ConfigError(source, problems)


def build_steps(cfg: PipelineConfig) -> list[PipelineStep]:
    """The pipeline's steps, in order, each with its own settings section."""
    from pipeline.steps.decode import DecodeStep
    from pipeline.steps.keytracks import KeyTrajectoryStep
    from pipeline.steps.models import GroundingStep, NounPhraseStep, TrackingStep

    return [
        DecodeStep(cfg.decode, cfg.manifest.video_root),
        NounPhraseStep(cfg.nounphrases),
        GroundingStep(cfg.grounding),
        TrackingStep(cfg.tracking),
        KeyTrajectoryStep(cfg.keytracks),
    ]


def record_manifest_errors(manifest, out: Path) -> None:
    """Account for the rows the manifest reader rejected.

    A video all of whose rows were rejected is a whole-video failure (``stage=manifest``) in
    ``failures/manifest.parquet``; a rejected row of a video that still has good rows only
    loses that event, so it is counted in the stats and listed in ``manifest_errors.jsonl``.
    """
    import json

    from pite.atomic import atomic_write_text
    from pite.schema import Failure, write_failures

    lost = set(manifest.lost_video_ids())
    failures, seen = [], set()
    for e in manifest.errors:
        if e.video_id in lost and e.video_id not in seen:
            seen.add(e.video_id)
            failures.append(Failure(video_id=e.video_id, event=-1, stage="manifest", reason=e.reason,
                                    message=f"line {e.line}: {e.message}"))
    stats = RunStats()
    stats.totals["manifest_rows_rejected"] = len(manifest.errors)
    stats.totals["videos_input"] = len(failures)
    stats.totals["videos_failed"] = len(failures)
    for e in manifest.errors:
        stats.failures[f"manifest/{e.reason}"] += 1
    write_failures(failures, out / "failures" / "manifest.parquet")
    stats.save(out / "stats" / "manifest.json")
    rows = [json.dumps({"line": e.line, "video_id": e.video_id, "reason": e.reason, "message": e.message})
            for e in manifest.errors]
    atomic_write_text(out / "manifest_errors.jsonl", "".join(r + "\n" for r in rows))


def make_executor(cfg: PipelineConfig, out: Path, progress: bool = True):
    """The executor ``cfg.run.executor`` names, set up from the config."""
    common = dict(steps=build_steps(cfg), out=out, videos_per_shard=cfg.output.videos_per_shard,
                  batch_size=cfg.output.batch_size, overwrite=cfg.output.overwrite,
                  write_dense=cfg.output.write_dense_tracks, progress=progress)
    if cfg.run.executor == "ray":
        from pipeline.executors.ray import RayExecutor

        return RayExecutor(**common, settings=cfg.run)
    from pipeline.executors.local import LocalExecutor

    return LocalExecutor(**common)


def annotate(cfg: PipelineConfig, out: str | Path | None = None, progress: bool = True,
             executor: str | None = None, address: str | None = None) -> RunStats:
    """Annotate every manifest video of ``cfg`` into ``out`` (default ``cfg.output.dir``).

    ``executor`` ("local" or "ray") and ``address`` (a Ray cluster; implies "ray") override ``cfg.run``.
    """
    import dataclasses

    from pipeline.manifest import read_manifest

    if executor is not None or address is not None:
        run = dataclasses.replace(cfg.run, executor=executor or ("ray" if address else cfg.run.executor),
                                  address=address if address is not None else cfg.run.address)
        cfg = dataclasses.replace(cfg, run=run)
    check_backends(cfg)
    out = Path(out or cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    runner = make_executor(cfg, out, progress)  # config problems surface before any work
    manifest = read_manifest(cfg.manifest)
    record_manifest_errors(manifest, out)
    return runner.run(manifest.tasks)


def summary_lines(stats: RunStats) -> list[str]:
    """A short human summary of a run: counts, failures by reason, seconds per step."""
    t = stats.totals
    lines = [f"videos: {t.get('videos_input', 0)} in, {t.get('videos_written', 0)} written, "
             f"{t.get('videos_failed', 0)} failed",
             f"events: {t.get('events_written', 0)} written, {t.get('events_dropped', 0)} dropped",
             f"phrases: {t.get('phrases_written', 0)}  trajectories: "
             f"{stats.steps['keytracks'].counts.get('trajectories', 0) if 'keytracks' in stats.steps else 0}"]
    if t.get("manifest_rows_rejected"):
        lines.append(f"manifest rows rejected: {t['manifest_rows_rejected']}")
    if stats.failures:
        lines.append("failures by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.failures.items())))
    drops = {f"{name}/{r}": n for name, st in stats.steps.items() for r, n in st.drops.items()}
    if drops:
        lines.append("drops by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    lines.append("seconds per step: " + ", ".join(f"{k} {v.seconds:.2f}" for k, v in stats.steps.items()))
    return lines
