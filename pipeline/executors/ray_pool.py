"""Ray plumbing of one stage: its actor pool (or task function), and the check that the
stages fit the cluster. Used by :mod:`pipeline.executors.ray`; Ray is passed in, not imported."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.executors.stages import Stage, StageWorker, run_stage_task

log = logging.getLogger("pite.pipeline")


class StagePool:
    """Submits one stage's calls: to a free actor of its pool (one call each at a time), or as
    tasks, at most ``max_tasks`` at a time.

    An actor whose call failed is pinged (the ping waits through Ray's restart of the actor) and
    gets no new batch until it answers, so that a retry never lands on an actor that is still
    restarting; a ping that fails (the actor is gone for good) replaces the actor.
    """

    FREE, BUSY, RESTARTING = 0, 1, 2

    def __init__(self, ray: Any, stage: Stage, max_tasks: int):
        self.ray, self.stage = ray, stage
        self.replaced = 0
        if stage.actors:
            self.cls = ray.remote(StageWorker).options(num_cpus=stage.num_cpus, num_gpus=stage.num_gpus,
                                                       max_restarts=-1, max_task_retries=0)
            self.actors = [self._new_actor() for _ in range(stage.actors)]
            self.state = [self.FREE] * stage.actors
        else:
            self.fn = ray.remote(run_stage_task).options(num_cpus=stage.num_cpus, num_gpus=stage.num_gpus,
                                                         max_retries=0, num_returns=2)
            self.steps_ref = ray.put(stage.steps)
            self.max_tasks, self.running = max_tasks, 0

    def _new_actor(self) -> Any:
        return self.cls.remote(self.stage.steps, log.getEffectiveLevel(), self.stage.num_gpus > 0)

    def free(self) -> bool:
        return (self.FREE in self.state) if self.stage.actors else self.running < self.max_tasks

    def submit(self, args: tuple) -> tuple[Any, Any, int]:
        """Start the stage with :func:`~pipeline.executors.stages.run_stage`'s ``args`` after the steps:
        ``(payload_ref, result_ref, slot)``."""
        if self.stage.actors:
            slot = self.state.index(self.FREE)
            self.state[slot] = self.BUSY
            payload_ref, result_ref = self.actors[slot].run.options(num_returns=2).remote(*args)
            return payload_ref, result_ref, slot
        self.running += 1
        payload_ref, result_ref = self.fn.remote(self.steps_ref, *args)
        return payload_ref, result_ref, -1

    def release(self, slot: int, failed: bool) -> Any | None:
        """Free the slot of a finished call; after a failed actor call, return a ping to wait for."""
        if not self.stage.actors:
            self.running -= 1
            return None
        if not failed:
            self.state[slot] = self.FREE
            return None
        self.state[slot] = self.RESTARTING
        return self.actors[slot].ready.options(max_task_retries=-1).remote()

    def answered(self, slot: int, ping: Any) -> Any | None:
        """The ping of ``slot`` came back: the actor is free again, or replaced and pinged anew."""
        from ray.exceptions import RayError

        try:
            self.ray.get(ping)
        except RayError as exc:
            self.replaced += 1
            if self.replaced > 10 * self.stage.actors:
                raise RuntimeError(f"stage {self.stage.name}: actors keep dying for good ({exc}); stopping") from exc
            log.warning("stage %s: actor %d is gone (%s); starting a new one", self.stage.name, slot,
                        type(exc).__name__)
            self.actors[slot] = self._new_actor()
            return self.actors[slot].ready.remote()
        self.state[slot] = self.FREE
        return None

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)


def check_resources(stages: list[Stage], cpus: float, gpus: float, strict: bool) -> None:
    """Check that the actor pools fit the cluster and leave room for the task stages.

    Raises (``strict``) or logs a warning (a remote cluster may autoscale): otherwise Ray would
    wait forever for resources that never come.
    """
    need_cpu = sum(s.actors * s.num_cpus for s in stages)
    need_gpu = sum(s.actors * s.num_gpus for s in stages)
    task_cpu = max((s.num_cpus for s in stages if not s.actors), default=0.0)
    problems = []
    if need_gpu > gpus + 1e-9:
        problems.append(f"the actor pools need {need_gpu:g} GPUs; the cluster has {gpus:g}")
    if need_cpu + task_cpu > cpus + 1e-9:
        problems.append(f"the actor pools reserve {need_cpu:g} of the cluster's {cpus:g} CPUs and the task stages "
                        f"need {task_cpu:g} more; lower run.stages[*].num_cpus (fractions are allowed) or actors")
    if not problems:
        return
    message = "run.stages do not fit the Ray cluster: " + "; ".join(problems)
    if strict:
        from pite.config import ConfigError

        raise ConfigError("run.stages", [message])
    log.warning(message)
