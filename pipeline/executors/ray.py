"""Run the pipeline on a Ray cluster: the same step objects as the local executor, in stages.

Design (see also ``docs/ray.md``):

* **Stages.** :func:`~pipeline.executors.stages.plan_stages` groups the steps into stages from
  ``run.stages``. A stage runs as stateless Ray *tasks* (``actors: 0``, for steps without a
  model, e.g. decode) or in a pool of *actors* that load their models once (``actors: N`` with
  per-actor ``num_cpus`` / ``num_gpus``, fractions allowed). With no ``run.stages`` the whole
  pipeline is one pool of one actor per cluster CPU: plain data parallelism, the fastest on CPU.
* **Streaming with backpressure.** The driver admits batches (``output.batch_size`` videos of one
  shard) in manifest order, at most ``run.max_batches_in_flight`` at a time, and moves each from
  stage to stage as soon as it is done: decoded frames go worker to worker through the object
  store, never through the driver. An actor gets one call at a time, so that a dying actor takes
  only its own batch down; older batches go first, so shards complete roughly in order. Built
  on Ray core rather than Ray Data so that every input is accounted for by this code, retries
  are bounded per batch, and a failed block can never be dropped silently.
* **Exactly once: the shard is the unit of commit.** Workers return a small
  :class:`~pipeline.executors.base.BatchResult` (records, failures, stats; no frames). The driver
  writes a shard (Parquet, failures, stats, then its completion marker, each atomically) only
  when every one of its videos is accounted for, and checks that each is there exactly once. A
  rerun skips shards with a marker (fingerprint-checked) and redoes the others from scratch, so
  a driver killed at any moment loses at most the uncommitted shards' work, never a video, and
  never writes one twice. Per-video results do not depend on which worker ran them (fixed seeds,
  no state kept across videos, same batch composition as the local executor), so the output is
  the same whether or not a run was interrupted.
* **Faults.** A step that raises fails only the video that broke it
  (:func:`~pipeline.executors.base.run_step`). A worker that dies (segfault, OOM kill, SIGKILL,
  ``os._exit``) is restarted by Ray (actors: ``max_restarts=-1``); its batch is first split into
  single videos (to find the culprit), then each is retried up to ``run.max_retries`` times, and
  a video whose worker still dies is recorded as failed with ``stage=<stage>``,
  ``reason=worker_died`` and the error. An error raised by Ray itself while running a stage
  (outside the steps' isolation) is split the same way and then recorded with ``reason=exception``.
  Until some call of a stage succeeds, its give-ups are held back, and :data:`BROKEN_AFTER` of
  them stop the run: a broken cluster or config must not record the whole manifest as failed.
* **Stats and progress.** Each batch's :class:`~pipeline.stats.RunStats` travels with it through
  the stages; shard stats are merged into ``stats.json`` at the end as for the local executor.
  The driver shows the live progress bar; workers' log records name the video
  (``[video_id] step grounding failed: ...``) and Ray prefixes them with the worker.
* **Cluster.** ``run.address`` (or ``--address``): ``auto`` or ``ray://host:10001`` join a running
  cluster; unset starts an in-process local Ray (``run.num_cpus``, ``run.object_store_mb``), or
  joins the job's cluster under ``ray job submit``. Model-cache variables (``PITE_CACHE``,
  ``HF_HOME``, ...) are forwarded to workers through the runtime env. If Ray is already
  initialised (tests, notebooks), that session is used and left running. Workers of stages
  without ``num_gpus`` see no GPU (``CUDA_VISIBLE_DEVICES=""``), so that ``device: auto`` cannot
  put a model on a GPU that Ray did not hand out.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pipeline.config import RunSettings
from pipeline.executors.base import (skip_completed, BatchResult, complete_shard, fail_videos,
                                     finish_batch, merge_results, merge_run_stats)
from pipeline.executors.ray_pool import StagePool, check_resources
from pipeline.executors.stages import BatchPayload, Stage, plan_stages
from pipeline.manifest import VideoTask, split_into_shards
from pipeline.progress import RunProgress
from pipeline.stats import RunStats
from pipeline.steps.base import PipelineStep
from pipeline.work import VideoWork
from pipeline.writer import ShardPaths

log = logging.getLogger("pite.pipeline")

BROKEN_AFTER = 3
"""Batches of one stage that may exhaust their retries before any call of that stage succeeds;
one more, and the run stops instead of recording their videos as failed."""

FORWARDED_ENV = ("PITE_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_HOME",
                 "TORCH_EXTENSIONS_DIR")
"""Environment variables passed on to Ray workers when set in the driver (where models are cached)."""


def worker_env() -> dict[str, str]:
    """:data:`FORWARDED_ENV` values of this process, minus those a ``ray job submit`` runtime env sets
    (Ray refuses to merge two values for one variable)."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if injected:
        try:
            taken = (json.loads(injected).get("runtime_env") or {}).get("env_vars") or {}
        except (ValueError, AttributeError):
            taken = {}
        env = {k: v for k, v in env.items() if k not in taken}
    return env


@contextmanager
def ray_session(settings: RunSettings) -> Iterator[Any]:
    """The ``ray`` module, initialised per ``settings`` unless it already is (then left running)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"address": settings.address, "log_to_driver": True}
    env = worker_env()
    if env:
        kwargs["runtime_env"] = {"env_vars": env}
    if settings.address is None and "RAY_ADDRESS" not in os.environ:  # a new local Ray in this process
        kwargs.update(num_cpus=settings.num_cpus, include_dashboard=False,
                      object_store_memory=settings.object_store_mb * 2**20 if settings.object_store_mb else None)
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        from pite.config import ConfigError

        raise ConfigError("run.address", [f"cannot join the Ray cluster at {settings.address!r}: {exc}"]) from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass
class _Batch:
    """Some videos of one shard on their way through the stages."""

    shard: int
    key: tuple[int, int]  # (batch index in the shard, first video's position in the batch): order in the shard
    tasks: list[VideoTask]
    counted: int  # videos_input counted in this batch's stats (0 for all but one part of a split batch)
    stage: int = 0
    payload: Any = None  # BatchPayload, or an ObjectRef to one: the input of `stage`
    select: list[int] | None = None  # positions in the payload's videos (a split batch)
    keep_stats: bool = True
    attempts: int = 0  # failed attempts at `stage`

    @property
    def label(self) -> str:
        return ",".join(t.video_id for t in self.tasks)


@dataclass
class _Shard:
    paths: ShardPaths
    tasks: list[VideoTask]
    parts: dict[tuple[int, int], BatchResult] = field(default_factory=dict)
    accounted: int = 0


class RayExecutor:
    """Executor on a Ray cluster (see the module docstring).

    Args:
        steps: the pipeline's steps, in order (the same objects the local executor runs).
        out: output folder, visible to the driver (and to the workers with ``write_dense``).
        videos_per_shard: videos per output shard (the unit of commit and resume).
        batch_size: videos per stage call.
        overwrite: redo shards that already have a completion marker.
        write_dense: also save dense tracks per event (written by the workers).
        progress: show a live progress bar.
        settings: the ``run:`` section (stages, retries, backpressure, cluster address).
    """

    def __init__(self, steps: list[PipelineStep], out: str | Path, videos_per_shard: int, batch_size: int = 4,
                 overwrite: bool = False, write_dense: bool = False, progress: bool = True,
                 settings: RunSettings | None = None):
        self.steps, self.out = steps, Path(out)
        self.videos_per_shard, self.batch_size = videos_per_shard, batch_size
        self.overwrite, self.write_dense, self.progress = overwrite, write_dense, progress
        self.settings = settings or RunSettings(executor="ray")
        plan_stages(steps, self.settings.stages, default_actors=1)  # config problems out before Ray starts
        self.counters: dict[str, int] = {}  # batches, worker deaths, retries, split batches of the last run
        self.timeline: list[tuple[float, int]] = []  # (time.perf_counter(), videos) per finished batch

    def run(self, tasks: list[VideoTask]) -> RunStats:
        shards: dict[int, _Shard] = {}
        todo: deque[_Batch] = deque()
        with RunProgress(len(tasks), enabled=self.progress) as bar:
            for index, shard_tasks in enumerate(split_into_shards(tasks, self.videos_per_shard)):
                paths = ShardPaths(self.out, index)
                if skip_completed(paths, shard_tasks, self.overwrite, bar):
                    continue
                shards[index] = _Shard(paths, shard_tasks)
                for b, start in enumerate(range(0, len(shard_tasks), self.batch_size)):
                    part = shard_tasks[start:start + self.batch_size]
                    todo.append(_Batch(index, (b, 0), part, counted=len(part)))
            if todo:
                with ray_session(self.settings) as ray:
                    scheduler = _Scheduler(ray, self._plan(ray), self.settings, shards, bar, dense=self.write_dense)
                    try:
                        scheduler.run(todo)
                    finally:
                        self.counters, self.timeline = scheduler.counters, scheduler.timeline
                        scheduler.close()
                    log.info("ray: %(batches)d batches, %(worker_deaths)d worker deaths, %(retries)d retries, "
                             "%(splits)d split batches", self.counters)
        return merge_run_stats(self.out)

    def _plan(self, ray: Any) -> list[Stage]:
        cluster = ray.cluster_resources()
        cpus = float(cluster.get("CPU", 1.0))
        stages = plan_stages(self.steps, self.settings.stages, self.settings.default_actors or max(1, int(cpus)))
        local = self.settings.address is None and "RAY_ADDRESS" not in os.environ  # not a cluster that may grow
        check_resources(stages, cpus, float(cluster.get("GPU", 0.0)), strict=local)
        log.info("ray stages: %s", "; ".join(
            f"{s.name} ({f'{s.actors} actors' if s.actors else 'tasks'}, cpu {s.num_cpus:g}, gpu {s.num_gpus:g})"
            for s in stages))
        return stages


class _Scheduler:
    """Moves batches through the stages (see the module docstring) and files their results.

    Args:
        ray: the initialised ``ray`` module.
        stages: the plan.
        settings: retries and backpressure.
        shards: the shards to complete, by index; each is committed once its videos are accounted for.
        bar: the progress display.
        dense: let the last stage save dense tracks into each shard's folder.
    """

    def __init__(self, ray: Any, stages: list[Stage], settings: RunSettings, shards: dict[int, _Shard],
                 bar: RunProgress, dense: bool = False):
        from ray.exceptions import RayError, RayTaskError

        self.ray, self.stages, self.settings, self.shards, self.bar = ray, stages, settings, shards, bar
        self.dense, self.RayError, self.RayTaskError = dense, RayError, RayTaskError
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.pools = [StagePool(ray, s, max_tasks=max(1, int(cpus / s.num_cpus)) if s.num_cpus else int(cpus) + 1)
                      for s in stages]
        self.limit = settings.max_batches_in_flight or max(
            4, 2 * sum(s.actors or max(1, int(cpus / max(s.num_cpus, 1.0))) for s in stages))
        self.queues: list[list] = [[] for _ in stages]  # heaps: older shards first
        self.order = itertools.count()
        self.inflight: dict[Any, tuple[_Batch, int, Any]] = {}  # result ref -> (batch, slot, payload ref)
        self.pings: dict[Any, tuple[int, int]] = {}  # ping ref -> (stage, slot) of an actor being restarted
        self.succeeded = [0] * len(stages)  # calls per stage that returned
        self.deferred: list[list[tuple[_Batch, str, str]]] = [[] for _ in stages]  # give-ups before any success
        self.admitted = 0  # batches between admission and result
        self.counters = {"batches": 0, "worker_deaths": 0, "retries": 0, "splits": 0}
        self.timeline: list[tuple[float, int]] = []

    def run(self, todo: deque[_Batch]) -> None:
        self.counters["batches"] = len(todo)
        while todo or self.admitted:
            while todo and self.admitted < self.limit:
                self._admit(todo.popleft())
            self._dispatch()
            self._wait()
        self._flush_deferred()  # nothing is left that could vouch for the cluster: record them

    def close(self) -> None:
        for pool in self.pools:
            pool.close()

    def _admit(self, batch: _Batch) -> None:
        stats = RunStats()
        stats.totals["videos_input"] += len(batch.tasks)
        batch.payload = BatchPayload([VideoWork.from_task(t) for t in batch.tasks], stats)
        self._push(batch)
        self.admitted += 1

    def _push(self, batch: _Batch) -> None:
        heapq.heappush(self.queues[batch.stage], (batch.shard, batch.key, next(self.order), batch))

    def _dispatch(self) -> None:
        """Start every queued batch that a stage has room for, the later stages first."""
        last = len(self.stages) - 1
        for s in reversed(range(len(self.stages))):
            while self.queues[s] and self.pools[s].free():
                batch = heapq.heappop(self.queues[s])[-1]
                dense = str(self.shards[batch.shard].paths.dense) if self.dense and s == last else None
                payload_ref, result_ref, slot = self.pools[s].submit(
                    (batch.payload, batch.select, batch.keep_stats, s == last, dense))
                self.inflight[result_ref] = (batch, slot, payload_ref)

    def _wait(self) -> None:
        """Handle every call and ping that has come back (waiting for at least one)."""
        waiting = [*self.inflight, *self.pings]
        if not waiting:
            return
        self.ray.wait(waiting, num_returns=1)
        ready, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=0)
        for ref in ready:
            if ref in self.pings:
                s, slot = self.pings.pop(ref)
                again = self.pools[s].answered(slot, ref)
                if again is not None:
                    self.pings[again] = (s, slot)
                continue
            batch, slot, payload_ref = self.inflight.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.RayError as exc:
                ping = self.pools[batch.stage].release(slot, failed=True)
                if ping is not None:
                    self.pings[ping] = (batch.stage, slot)
                self._on_error(batch, exc)
                continue
            self.pools[batch.stage].release(slot, failed=False)
            self.succeeded[batch.stage] += 1
            self._flush_deferred(batch.stage)
            if batch.stage == len(self.stages) - 1:
                self._finish(batch, result)
            else:
                batch.stage, batch.payload, batch.select, batch.keep_stats, batch.attempts = (
                    batch.stage + 1, payload_ref, None, True, 0)
                self._push(batch)

    def _on_error(self, batch: _Batch, exc: Exception) -> None:
        """A call failed: split a batch to find the culprit, retry a video whose worker died, or give up."""
        died = not isinstance(exc, self.RayTaskError)
        self.counters["worker_deaths"] += died
        batch.attempts += 1
        stage = self.stages[batch.stage]
        lines = str(exc).strip().splitlines() or [""]
        message = f"{type(exc).__name__}: {lines[0][:300]}"
        if died:
            message = f"the worker process died ({message})"
        log.warning("[%s] stage %s: %s (attempt %d)", batch.label, stage.name, message, batch.attempts)
        if len(batch.tasks) > 1:
            self.counters["splits"] += 1
            positions = batch.select or list(range(len(batch.tasks)))
            for i, (pos, task) in enumerate(zip(positions, batch.tasks)):
                self._push(_Batch(batch.shard, (batch.key[0], pos), [task], batch.counted if i == 0 else 0,
                                  batch.stage, batch.payload, [pos], batch.keep_stats and i == 0))
            self.admitted += len(batch.tasks) - 1
        elif died and batch.attempts <= self.settings.max_retries:
            self.counters["retries"] += 1
            self._push(batch)
        else:
            reason = "worker_died" if died else "exception"
            message = f"{message} (after {batch.attempts} attempt(s))"
            if self.succeeded[batch.stage]:
                self._finish(batch, self._give_up(batch, stage.name, reason, message))
                return
            # no call of this stage has worked yet: a bad video, or a broken cluster or config?
            self.deferred[batch.stage].append((batch, reason, message))
            self.admitted -= 1  # held aside: not in the pipeline any more
            if len(self.deferred[batch.stage]) >= BROKEN_AFTER:
                raise RuntimeError(f"stage {stage.name}: {BROKEN_AFTER} batches failed and none succeeded, the "
                                   f"last with {message}. The cluster or the config looks broken; stopping "
                                   f"before recording videos as failed (completed shards are kept).") from exc

    def _flush_deferred(self, stage: int | None = None) -> None:
        """Record the give-ups held back while no call of ``stage`` (None: any stage) had succeeded."""
        for s in range(len(self.stages)) if stage is None else [stage]:
            deferred, self.deferred[s] = self.deferred[s], []
            for batch, reason, message in deferred:
                self.admitted += 1  # _finish takes it out again
                self._finish(batch, self._give_up(batch, self.stages[s].name, reason, message))

    def _give_up(self, batch: _Batch, stage: str, reason: str, message: str) -> BatchResult:
        """Fail the batch's live videos (``stage`` / ``reason``), keeping what earlier stages recorded."""
        payload = batch.payload
        if not isinstance(payload, BatchPayload):
            try:
                payload = self.ray.get(payload)
            except self.RayError:  # the input itself is gone: start the record from the manifest
                payload = None
        if payload is None:
            stats = RunStats()
            stats.totals["videos_input"] += batch.counted
            videos = [VideoWork.from_task(t) for t in batch.tasks]
        else:
            videos = payload.videos if batch.select is None else [payload.videos[i] for i in batch.select]
            stats = payload.stats if batch.keep_stats else RunStats()
        fail_videos(videos, stage, reason, message)
        return finish_batch(videos, stats)

    def _finish(self, batch: _Batch, result: BatchResult) -> None:
        """File a finished batch under its shard; commit the shard once every video is accounted for."""
        self.admitted -= 1
        self.timeline.append((time.perf_counter(), result.videos))
        shard = self.shards[batch.shard]
        shard.parts[batch.key] = result
        shard.accounted += result.videos
        self.bar.advance(written=len(result.records), failed=result.videos_failed)
        if shard.accounted == len(shard.tasks):
            complete_shard(shard.paths, shard.tasks, merge_results([shard.parts[k] for k in sorted(shard.parts)]))
            del self.shards[batch.shard]
            log.debug("shard %d committed", batch.shard)
