"""Group the pipeline's steps into Ray stages and run one stage on one batch.

A *stage* is a run of consecutive steps that execute in the same worker process, either as
stateless Ray tasks (``actors == 0``: cheap steps without a model, such as decode) or in a
pool of actors that load the steps' models once and keep them (``actors >= 1``). Batches move
from stage to stage through the object store as a :class:`BatchPayload` (frames included, so
a stage boundary costs a copy of the decoded frames; put one only where resources differ).

Nothing here imports Ray: :func:`run_stage` is the body of both the task and the actor method,
so it can be tested (and reasoned about) as plain Python.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import StageSettings
from pipeline.executors.base import BatchResult, finish_batch, run_steps
from pipeline.stats import RunStats
from pipeline.steps.base import PipelineStep
from pipeline.work import VideoWork
from pite.config import ConfigError

log = logging.getLogger("pite.pipeline")


@dataclass
class Stage:
    """Consecutive ``steps`` run in one process: as tasks (``actors == 0``) or by ``actors`` actors."""

    steps: list[PipelineStep]
    actors: int = 0
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def name(self) -> str:
        """The steps' names joined by ``+`` (the ``stage`` of a failure when a worker dies)."""
        return "+".join(step.name for step in self.steps)


@dataclass
class BatchPayload:
    """A batch between two stages: its videos (frames included) and the stats gathered so far."""

    videos: list[VideoWork]
    stats: RunStats


def plan_stages(steps: list[PipelineStep], settings: list[StageSettings], default_actors: int) -> list[Stage]:
    """The stages that cover ``steps`` in order.

    Steps named in a :class:`~pipeline.config.StageSettings` run in that stage (its steps must
    be consecutive in pipeline order). Each maximal run of consecutive steps named in no stage
    becomes one stage of ``default_actors`` actors with 1 CPU each; so with no settings at all,
    the whole pipeline runs data-parallel in ``default_actors`` processes, which is what a
    CPU-only machine wants (no frames cross processes).

    Raises:
        ConfigError: an unknown step name, a step named twice, or a stage whose steps are not
            consecutive in pipeline order.
    """
    names = [s.name for s in steps]
    problems, owner = [], {}
    for i, stage in enumerate(settings):
        if not stage.steps:
            problems.append(f"run.stages[{i}].steps: empty; name at least one of {', '.join(names)}")
        for name in stage.steps:
            if name not in names:
                problems.append(f"run.stages[{i}].steps: unknown step {name!r}; steps: {', '.join(names)}")
            elif name in owner:
                problems.append(f"run.stages[{i}].steps: {name!r} is already in run.stages[{owner[name]}]")
            else:
                owner[name] = i
        where = [names.index(n) for n in stage.steps if n in names]
        if where and where != list(range(where[0], where[0] + len(where))):
            problems.append(f"run.stages[{i}].steps: {stage.steps} are not consecutive in pipeline order "
                            f"({' -> '.join(names)})")
        if stage.num_gpus > 0 and stage.actors == 0:
            problems.append(f"run.stages[{i}]: num_gpus needs actors >= 1 (a GPU task would reload its model "
                            f"for every batch)")
    if problems:
        raise ConfigError("run.stages", problems)
    plan, i = [], 0
    while i < len(steps):
        if steps[i].name not in owner:
            j = i
            while j < len(steps) and steps[j].name not in owner:
                j += 1
            plan.append(Stage(steps[i:j], actors=max(1, default_actors)))
            i = j
            continue
        cfg = settings[owner[steps[i].name]]
        plan.append(Stage(steps[i:i + len(cfg.steps)], cfg.actors, cfg.num_cpus, cfg.num_gpus))
        i += len(cfg.steps)
    return plan


def run_stage(steps: list[PipelineStep], payload: BatchPayload, select: list[int] | None = None,
              keep_stats: bool = True, final: bool = False,
              dense_dir: str | None = None) -> tuple[BatchPayload | None, BatchResult | None]:
    """Run ``steps`` on (part of) a batch: the body of a stage's task or actor call.

    Args:
        steps: the stage's steps, in order.
        payload: the batch, as left by the previous stage (or fresh from the driver).
        select: positions in ``payload.videos`` to run (a batch split after a worker died);
            ``None`` runs them all.
        keep_stats: carry ``payload.stats`` on (False for all but one part of a split batch, so
            that no stat is counted twice).
        final: this is the last stage: finish the batch into a :class:`BatchResult`.
        dense_dir: with ``final``, where to save dense tracks (None: don't).

    Returns:
        ``(payload, None)`` for the next stage, or ``(None, result)`` when ``final``.
    """
    videos = payload.videos if select is None else [payload.videos[i] for i in select]
    stats = payload.stats if keep_stats else RunStats()
    make_writable(videos)
    run_steps(steps, videos, stats)
    if final:
        return None, finish_batch(videos, stats, Path(dense_dir) if dense_dir else None)
    return BatchPayload(videos, stats), None


def make_writable(videos: list[VideoWork]) -> None:
    """Copy the arrays that arrived read-only from the object store (zero-copy reads), so that a
    step behaves exactly as in the local executor, where every array is writable."""
    for video in videos:
        for event in video.events:
            for name in ("times", "frames", "track_xy", "track_visible", "track_queries"):
                value = getattr(event, name)
                if isinstance(value, np.ndarray) and not value.flags.writeable:
                    setattr(event, name, value.copy())
            for phrase in event.phrases:
                for name in ("mask", "trajectory", "visibility"):
                    value = getattr(phrase, name)
                    if isinstance(value, np.ndarray) and not value.flags.writeable:
                        setattr(phrase, name, value.copy())


def run_stage_task(steps: list[PipelineStep], payload: BatchPayload, select: list[int] | None, keep_stats: bool,
                   final: bool, dense_dir: str | None) -> tuple[BatchPayload | None, BatchResult | None]:
    """The body of a stage's Ray task (a fresh copy of the steps each call; no model kept).
    Task stages never get a GPU (:func:`plan_stages` refuses ``num_gpus`` without actors)."""
    setup_worker_logging()
    hide_gpus()
    return run_stage(steps, payload, select, keep_stats, final, dense_dir)


class StageWorker:
    """The body of a stage's actor: holds the steps (and so their models, once loaded)."""

    def __init__(self, steps: list[PipelineStep], log_level: int = logging.INFO, gpus: bool = False):
        setup_worker_logging(log_level)
        if not gpus:
            hide_gpus()
        self.steps = steps

    def run(self, payload: BatchPayload, select: list[int] | None, keep_stats: bool, final: bool,
            dense_dir: str | None) -> tuple[BatchPayload | None, BatchResult | None]:
        return run_stage(self.steps, payload, select, keep_stats, final, dense_dir)

    def ready(self) -> bool:
        """Answered once the actor is up (after a restart, say)."""
        return True


def hide_gpus() -> None:
    """Hide the node's GPUs from a worker that Ray gave none. Ray 2.60 leaves
    ``CUDA_VISIBLE_DEVICES`` alone for such a worker, so with ``device: auto`` a CPU stage would
    put its models on the node's GPUs, unaccounted for. (Call before CUDA is first used.)"""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def setup_worker_logging(level: int = logging.INFO) -> None:
    """Send the pipeline's log records (which name the video) to the worker's stderr, which
    Ray forwards to the driver prefixed with the worker's pid."""
    logger = logging.getLogger("pite")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
