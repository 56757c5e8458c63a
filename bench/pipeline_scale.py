"""Scaling benchmark: the demo pipeline on >= 40 events, local executor (1 process) vs Ray (2 workers).

    PYTHONPATH=. .venv/bin/python bench/pipeline_scale.py             # 10 copies of the demo clips: 100 events, ~3 min
    PYTHONPATH=. .venv/bin/python bench/pipeline_scale.py --copies 4 --repeats 2

The demo's four real clips (10 events) are copied ``--copies`` times under new video ids into a
scratch folder, and the same manifest is annotated with the demo config's steps and models by
``pite annotate`` in a fresh process each time: with the local executor (one process,
sequential) and with ``--executor ray --address`` a local Ray cluster of ``--workers`` CPUs that
this script starts (default plan: one actor per CPU running every step, see docs/ray.md). Both
outputs must be identical, row for row.

Timing: each run includes its process start, imports and model loads (for Ray: the driver's and
every worker's), but not starting the cluster (normally up already; ``ray_init_s`` apart).
Torch runs one thread per process (``OMP_NUM_THREADS=1``, ``--threads`` to change the local
run's), so the ratio measures process parallelism on ``--workers`` cores (video decoders and
OpenCV keep threads of their own, in both runs). On a machine shared with other work the
wall-clock ratio moves with their load (the load average before each run is printed; Linux
also shares CPU time fairly between sessions, so all the processes of this script get one
session's share), so the CPU seconds of each run's process tree are measured too:
``ray_over_local_idle_estimate`` = workers x local CPU s / Ray CPU s is the ratio to expect on
idle cores with the work spread evenly and the local run held to one core.

Scheduling overhead is measured with a no-op pipeline (steps that only fill in the video's
metadata) on ``--overhead-videos`` and three times as many videos: Ray's wall seconds per video
in the steady state, its CPU seconds per video (slope between the two runs), and the fixed cost
of a run (starting the actors), next to the local executor's figures. Once with every step in
one stage (the default plan), once across three stages that hand ~2 MB of frames per video
through the object store.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repository root
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pipeline.config import RunSettings, StageSettings  # noqa: E402
from pipeline.stats import StepStats  # noqa: E402
from pipeline.steps.base import PipelineStep  # noqa: E402
from pipeline.work import VideoWork  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs/pipeline/demo.yaml"


def make_dataset(root: Path, copies: int) -> tuple[Path, Path, int]:
    """``copies`` copies of every demo video that exists (``missing_clip`` does not): (manifest, videos, events)."""
    from pipeline.demo_data import prepare_demo_videos

    demo_videos = prepare_demo_videos(REPO / "data/demo/videos")
    rows = [json.loads(line) for line in (REPO / "data/demo/manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if (demo_videos / f"{r['YoutubeID']}.mp4").exists()]
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(copies):
        for name in dict.fromkeys(r["YoutubeID"] for r in rows):
            target = videos / f"{name}_{k:02d}.mp4"
            if not target.exists():
                shutil.copyfile(demo_videos / f"{name}.mp4", target)
        lines += [json.dumps({**r, "YoutubeID": f"{r['YoutubeID']}_{k:02d}"}) for r in rows]
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, videos, len(lines)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


class MetadataOnlyStep(PipelineStep):
    """No-op work: fills in a video's metadata (and, with ``frames``, ~2 MB of frames per event)
    so that the batch is finished and written like a real one."""

    name = "noop"

    def __init__(self, frames: bool = False, name: str = "noop"):
        self.frames = frames
        self.name = name

    def process(self, videos: list[VideoWork], stats: StepStats) -> None:
        from pite.video import VideoInfo

        for video in videos:
            if video.info is None:
                video.info = VideoInfo(duration_s=4.0, fps=25.0, width=228, height=128, num_frames=100)
            for event in video.events:
                if self.frames and event.frames is None:
                    event.frames = np.zeros((25, 128, 228, 3), np.uint8)
            stats.count("videos")


def overhead_run(n: int, batch_size: int, workers: int, split: bool, root: Path) -> dict[str, float]:
    """What Ray adds per video, measured on the no-op pipeline on a running Ray.

    Returns the local executor's wall and CPU seconds per video, and Ray's: wall seconds per
    video in the steady state (between the first and the last finished batch of a run on
    ``3 n`` videos, so actor start-up is left out), CPU seconds per video of the whole process
    tree (the slope between runs on ``n`` and ``3 n`` videos), and the fixed wall seconds of a run
    (mostly starting the actors).
    """
    from pipeline.executors.local import LocalExecutor
    from pipeline.executors.ray import RayExecutor
    from pipeline.manifest import EventSpec, VideoTask

    steps = [MetadataOnlyStep(frames=split, name="noop_a"), MetadataOnlyStep(name="noop_b"),
             MetadataOnlyStep(name="noop_c")]
    stages = ([StageSettings(["noop_a"], num_cpus=0.5), StageSettings(["noop_b"], actors=workers, num_cpus=0.5),
               StageSettings(["noop_c"], num_cpus=0.5)] if split else [])
    settings = RunSettings(executor="ray", stages=stages, default_actors=workers)
    shard = max(batch_size, 20)
    wall, cpu = {}, {}

    def tasks_of(count: int) -> list:
        return [VideoTask(f"v{i:04d}", f"v{i:04d}.mp4", (EventSpec(0.0, 2.0, "a cat"),)) for i in range(count)]

    for count in (n, 3 * n):
        run = RayExecutor(steps, root / f"ray_{split}_{count}", shard, batch_size, progress=False, settings=settings)
        wall[count], cpu[count], _ = measure(lambda meter: run.run(tasks_of(count)), sample=True)
    (t_first, first), (t_last, _) = run.timeline[0], run.timeline[-1]
    steady = (t_last - t_first) / (3 * n - first)
    local_wall, local_cpu, _ = measure(lambda meter: LocalExecutor(steps, root / f"local_{split}", shard, batch_size,
                                                                   progress=False).run(tasks_of(3 * n)), sample=False)
    return {"local_s_per_video": local_wall / (3 * n), "local_cpu_s_per_video": local_cpu / (3 * n),
            "ray_s_per_video": steady, "ray_cpu_s_per_video": (cpu[3 * n] - cpu[n]) / (2 * n),
            "ray_fixed_s": wall[n] - steady * n}


def same_rows(a: Path, b: Path) -> bool:
    from pite.schema import read_failures, read_shards

    return (list(read_shards(a / "shards")) == list(read_shards(b / "shards"))
            and read_failures(a / "failures") == read_failures(b / "failures"))


class CpuMeter:
    """CPU seconds (user + system) spent while in the ``with`` block by this process, by the child
    processes it waited for (a ``pite annotate`` run), and (``sample``) by its other descendants
    (the local Ray: raylet, GCS, workers) except the pids in ``exclude``. Descendants are sampled
    every ``every_s`` seconds, so one that exits loses at most that much of its time."""

    def __init__(self, sample: bool, every_s: float = 0.5):
        import psutil

        self.psutil, self.sample, self.every_s = psutil, sample, every_s
        self.exclude: set[int] = set()
        self.seen: dict[int, float] = {}
        self.seconds = 0.0

    def _sample(self) -> None:
        for child in self.psutil.Process().children(recursive=True) if self.sample else []:
            try:
                t = child.cpu_times()
                self.seen[child.pid] = max(self.seen.get(child.pid, 0.0), t.user + t.system)
            except self.psutil.Error:
                pass

    @staticmethod
    def _waited() -> float:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def __enter__(self) -> "CpuMeter":
        import threading

        self._sample()
        self._before = dict(self.seen)
        self._own, self._children = time.process_time(), self._waited()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        sampled = sum(v - self._before.get(pid, 0.0) for pid, v in self.seen.items() if pid not in self.exclude)
        self.seconds = time.process_time() - self._own + self._waited() - self._children + sampled


def measure(fn, sample: bool) -> tuple[float, float, object]:
    """``(wall seconds, CPU seconds (see CpuMeter), fn(meter))``."""
    with CpuMeter(sample=sample) as cpu:
        wall, value = timed(lambda: fn(cpu))
    return wall, cpu.seconds, value


def run_cli(out: Path, overrides: list[str], executor: str, threads: int, address: str | None = None):
    """``pite annotate`` in a fresh process (so that each run pays its own imports and model
    loads, as a user's would): ``(wall s, CPU s, RunStats)``; the CPU seconds of a Ray run
    include the cluster's (its workers') during the run."""
    import subprocess

    from pipeline.stats import RunStats

    cmd = [sys.executable, "-m", "pite.cli", "annotate", "--config", str(DEMO_CONFIG), "--out", str(out),
           "--no-progress", "--executor", executor] + [a for o in overrides for a in ("--set", o)]
    if address:
        cmd += ["--address", address]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}

    def call(meter: CpuMeter) -> None:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        meter.exclude.add(proc.pid)  # counted exactly once waited for
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")

    wall, cpu, _ = measure(call, sample=address is not None)
    return wall, cpu, RunStats.load(out / "stats.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=10, help="copies of the demo's 4 clips (10 events each)")
    p.add_argument("--workers", type=int, default=2, help="Ray CPUs = actors")
    p.add_argument("--batch-size", type=int, default=1, help="videos per batch (both executors)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the local run")
    p.add_argument("--repeats", type=int, default=1, help="alternate local and Ray runs this many times; the "
                   "fastest of each counts (the machine may be shared)")
    p.add_argument("--overhead-videos", type=int, default=200, help="videos of the smaller no-op overhead run (0: skip)")
    p.add_argument("--out", default=None, help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args()

    scratch = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pite_scale_"))
    try:
        manifest, videos, events = make_dataset(scratch / "data", args.copies)
        n_videos = len({json.loads(line)["YoutubeID"] for line in manifest.read_text().splitlines()})
        overrides = [f"manifest.path={manifest}", f"manifest.video_root={videos}",
                     f"output.batch_size={args.batch_size}", "output.videos_per_shard=10",
                     f"run.default_actors={args.workers}", "output.overwrite=true"]
        print(f"{n_videos} videos, {events} events; local executor: 1 process, {args.threads} thread(s); "
              f"Ray executor: {args.workers} workers", flush=True)
        import ray

        local_runs, ray_runs, loads = [], [], []
        init_s, _ = timed(lambda: ray.init(num_cpus=args.workers, include_dashboard=False,
                                           object_store_memory=512 * 2**20, log_to_driver=False))
        try:
            address = ray.get_runtime_context().gcs_address
            for r in range(args.repeats):
                for name, runs in (("local", local_runs), ("ray", ray_runs)):
                    loads.append(os.getloadavg()[0])
                    runs.append(run_cli(scratch / name, overrides, name, args.threads,
                                        address if name == "ray" else None))
                    print(f"  run {r + 1} {name}: {runs[-1][0]:.1f} s wall, {runs[-1][1]:.1f} CPU s "
                          f"(load average before: {loads[-1]:.1f})", flush=True)
            overhead = {}
            if args.overhead_videos:
                for split in (False, True):
                    overhead["split" if split else "fused"] = overhead_run(
                        args.overhead_videos, args.batch_size, args.workers, split, scratch / "noop")
        finally:
            ray.shutdown()

        local_s, local_cpu, local_stats = min(local_runs, key=lambda x: x[0])
        ray_s, ray_cpu, ray_stats = min(ray_runs, key=lambda x: x[0])
        written = local_stats.totals["events_written"]
        assert ray_stats.totals["events_written"] == written == events, (written, events)
        identical = same_rows(scratch / "local", scratch / "ray")
        result = {
            "videos": n_videos, "events": events, "batch_size": args.batch_size, "workers": args.workers,
            "local_threads": args.threads, "repeats": args.repeats, "local_s": round(local_s, 2),
            "ray_s": round(ray_s, 2), "ray_init_s": round(init_s, 2),
            "local_events_per_s": round(events / local_s, 4), "ray_events_per_s": round(events / ray_s, 4),
            "ray_over_local": round(local_s / ray_s, 3),
            "ray_over_local_incl_init": round(local_s / (ray_s + init_s), 3),
            "local_cpu_s": round(local_cpu, 1), "ray_cpu_s": round(ray_cpu, 1),
            "ray_over_local_idle_estimate": round(min(args.workers * local_cpu / ray_cpu, args.workers), 3),
            "load_average_before_runs": [round(x, 2) for x in loads],
            "outputs_identical": identical,
        }
        for kind, figures in overhead.items():
            for key, value in figures.items():
                result[f"noop_{kind}_{key}"] = round(value, 5)
        print(f"local: {local_s:.1f} s, {result['local_events_per_s']:.3f} events/s ({local_cpu:.1f} CPU s)")
        print(f"ray:   {ray_s:.1f} s, {result['ray_events_per_s']:.3f} events/s ({ray_cpu:.1f} CPU s; "
              f"+ ray.init {init_s:.1f} s)")
        print(f"ray / local: {result['ray_over_local']:.2f}x ({result['ray_over_local_incl_init']:.2f}x counting "
              f"ray.init; {result['ray_over_local_idle_estimate']:.2f}x from CPU seconds on {args.workers} idle "
              f"cores); outputs identical: {identical}")
        for kind, f in overhead.items():
            print(f"scheduling overhead, no-op pipeline, {kind} stages: Ray {f['ray_s_per_video'] * 1000:.1f} ms wall "
                  f"and {f['ray_cpu_s_per_video'] * 1000:.1f} ms CPU per video (local executor: "
                  f"{f['local_s_per_video'] * 1000:.1f} ms wall, {f['local_cpu_s_per_video'] * 1000:.1f} ms CPU), "
                  f"plus {f['ray_fixed_s']:.1f} s per run to start the actors")
        print(json.dumps(result))
    finally:
        if not args.out:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
