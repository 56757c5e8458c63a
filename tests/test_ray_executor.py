"""The Ray executor on a real local Ray (2 CPUs, 256 MiB object store): the same shards as the
local executor, exactly-once accounting after the driver is killed, retries after an actor dies.

Stage planning and progress formatting are checked without Ray first (fast)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.annotate import annotate, build_steps
from pipeline.config import DecodeSettings, PipelineConfig, RunSettings, StageSettings
from pipeline.demo_data import prepare_demo_videos
from pipeline.executors.base import BatchResult, complete_shard
from pipeline.executors.stages import plan_stages
from pipeline.manifest import VideoTask
from pipeline.progress import RunProgress, format_eta
from pipeline.stats import StepStats
from pipeline.steps.base import PipelineStep
from pipeline.steps.decode import DecodeStep
from pipeline.writer import ShardPaths
from pite.config import ConfigError, load_config
from pite.schema import read_failures, read_shards

REPO = Path(__file__).resolve().parent.parent
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}
# every kind of stage and boundary (tasks -> actors -> fused actors -> tasks), for the tests' sake
SPLIT_STAGES = ("[{steps: [decode], num_cpus: 0.25}, {steps: [nounphrases], actors: 1, num_cpus: 0.25}, "
                "{steps: [grounding, tracking], actors: 2, num_cpus: 0.25}, {steps: [keytracks], num_cpus: 0.25}]")


# ----------------------------------------------------------------------------- without Ray


def test_plan_stages_groups_unnamed_steps_and_checks_names(demo_config):
    steps = build_steps(demo_config)
    plan = plan_stages(steps, [], default_actors=2)
    assert [(s.name, s.actors) for s in plan] == [("decode+nounphrases+grounding+tracking+keytracks", 2)]
    plan = plan_stages(steps, [StageSettings(["grounding"], actors=3, num_gpus=0.25)], default_actors=2)
    assert [(s.name, s.actors, s.num_gpus) for s in plan] == [
        ("decode+nounphrases", 2, 0.0), ("grounding", 3, 0.25), ("tracking+keytracks", 2, 0.0)]
    with pytest.raises(ConfigError) as err:
        plan_stages(steps, [StageSettings(["decode", "grounding"]), StageSettings(["grounding", "tracker"]),
                            StageSettings(["keytracks"], num_gpus=1)], default_actors=1)
    text = str(err.value)
    assert "not consecutive" in text and "unknown step 'tracker'" in text
    assert "already in run.stages[0]" in text and "num_gpus needs actors >= 1" in text


def test_stages_that_cannot_fit_the_local_cluster_are_refused(demo_config):
    from pipeline.executors.ray_pool import check_resources

    steps = build_steps(demo_config)
    fits = plan_stages(steps, [StageSettings(["decode"], num_cpus=0.5),
                               StageSettings(["grounding"], actors=2, num_cpus=0.5, num_gpus=0.5)], default_actors=1)
    check_resources(fits, cpus=4, gpus=1, strict=True)  # actors: 1 (nounphrases) + 2 x 0.5 + 1; decode 0.5
    with pytest.raises(ConfigError, match=r"need 1 GPUs; the cluster has 0.*reserve 3 of the cluster's 2 CPUs"):
        check_resources(fits, cpus=2, gpus=0, strict=True)
    check_resources(fits, cpus=2, gpus=0, strict=False)  # a remote cluster may grow: only a warning


def test_shard_commit_refuses_a_video_missing_or_twice(tmp_path):
    from pite.schema import Failure

    tasks = [VideoTask("a", "a.mp4", ()), VideoTask("b", "b.mp4", ())]
    twice = Failure("a", -1, "decode", "missing_file", "")
    with pytest.raises(RuntimeError, match=r"missing \['b'\], extra or duplicated \['a'\]"):
        complete_shard(ShardPaths(tmp_path, 0), tasks, BatchResult(failures=[twice, twice]))
    assert not ShardPaths(tmp_path, 0).is_complete()


def test_progress_rate_and_eta_leave_out_skipped_shards():
    assert (format_eta(None), format_eta(65.4), format_eta(3 * 3600 + 62)) == ("?", "1:05", "3:01:02")
    with RunProgress(10, enabled=False) as bar:
        bar.advance(written=4, failed=1, skipped=True)
        assert bar.rate() == 0 and bar.eta_s() is None
        bar._t0 -= 2.0  # two seconds later, one more video
        bar.advance(written=1)
        assert bar.rate() == pytest.approx(0.5, rel=0.05) and bar.eta_s() == pytest.approx(8, rel=0.05)
        assert "ok 5  failed 1" in bar.detail()


def test_worker_env_forwards_the_model_cache_but_not_what_a_job_sets(monkeypatch):
    from pipeline.executors.ray import worker_env

    monkeypatch.setenv("PITE_CACHE", "/cache/pite")
    monkeypatch.setenv("HF_HOME", "/cache/hf")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert {"PITE_CACHE": "/cache/pite", "HF_HOME": "/cache/hf"}.items() <= worker_env().items()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"HF_HOME": "/x"}}}))
    assert "HF_HOME" not in worker_env() and worker_env()["PITE_CACHE"] == "/cache/pite"


def test_run_section_loads_from_yaml_overrides():
    cfg = load_config(REPO / "configs/pipeline/demo.yaml", PipelineConfig, check_paths=False, overrides=[
        "run.executor=ray", f"run.stages={SPLIT_STAGES}", "run.max_retries=1"])
    assert cfg.run.executor == "ray" and cfg.run.max_retries == 1
    assert cfg.run.stages[2] == StageSettings(["grounding", "tracking"], actors=2, num_cpus=0.25)


# ----------------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def demo_config() -> PipelineConfig:
    prepare_demo_videos(REPO / "data/demo/videos")
    return load_config(REPO / "configs/pipeline/demo.yaml", PipelineConfig)


@pytest.fixture(scope="module")
def local_reference(demo_config, tmp_path_factory) -> Path:
    """The demo annotated by the local executor: what every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("local")
    annotate(demo_config, out=out, progress=False)
    return out


@pytest.fixture()
def local_ray(monkeypatch):
    ray = pytest.importorskip("ray")
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


def _manifest_ids(cfg: PipelineConfig) -> list[str]:
    ids = [json.loads(line)["YoutubeID"] for line in Path(cfg.manifest.path).read_text().splitlines()]
    return list(dict.fromkeys(ids))


def assert_exactly_once(out: Path, video_ids: list[str]) -> None:
    """Every input video in exactly one shard row or whole-video failure; every shard committed."""
    written = [r.video_id for r in read_shards(out / "shards")]
    failed = [f.video_id for f in read_failures(out / "failures") if f.event == -1]
    assert sorted(written + failed) == sorted(video_ids)
    stats = json.loads((out / "stats.json").read_text())["totals"]
    assert stats["videos_input"] == len(video_ids) == stats["videos_written"] + stats["videos_failed"]
    assert len(list((out / "completions").iterdir())) == len(list((out / "shards").glob("*.parquet")))


def assert_same_shards(out: Path, reference: Path) -> None:
    """Each shard holds the same rows (trajectories included), in the same order, as the reference
    run's rows for those videos; failures and stat counts agree too."""
    ref_rows = {r.video_id: r for r in read_shards(reference / "shards")}
    for shard in sorted((out / "shards").glob("*.parquet")):
        rows = list(read_shards(shard))
        assert rows == [ref_rows[r.video_id] for r in rows], shard.name
    key = lambda f: (f.video_id, f.event)  # noqa: E731
    assert sorted(read_failures(out / "failures"), key=key) == sorted(read_failures(reference / "failures"), key=key)
    got, want = (json.loads((d / "stats.json").read_text()) for d in (out, reference))
    assert got["totals"] == want["totals"] and got["failures"] == want["failures"]
    assert {k: v["counts"] for k, v in got["steps"].items()} == {k: v["counts"] for k, v in want["steps"].items()}


@pytest.mark.slow
def test_ray_runs_the_demo_config_like_the_local_executor(demo_config, local_reference, local_ray, tmp_path):
    cfg = dataclasses.replace(demo_config, output=dataclasses.replace(demo_config.output, write_dense_tracks=True))
    stats = annotate(cfg, out=tmp_path, progress=False, executor="ray")
    assert_exactly_once(tmp_path, _manifest_ids(demo_config))
    for name in ("shards", "failures"):  # same shard layout: compare file by file
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(
            p.name for p in (local_reference / name).iterdir())
    assert_same_shards(tmp_path, local_reference)
    assert stats.totals["videos_written"] == 4
    dense = {p.stem for p in (tmp_path / "dense").rglob("*.npz")}  # written by the workers
    assert dense == {r.video_id for r in read_shards(tmp_path / "shards")}


def _annotate_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "pite.cli", "annotate", "--config", "configs/pipeline/demo.yaml",
            "--out", str(out), "--no-progress", "--executor", "ray", "--set", "run.num_cpus=2",
            "--set", "run.object_store_mb=256", "--set", "output.videos_per_shard=2",
            "--set", "output.batch_size=1", "--set", f"run.stages={SPLIT_STAGES}"]


@pytest.mark.slow
def test_driver_killed_mid_run_then_resumed_accounts_every_video_once(demo_config, local_reference, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO)}
    # own process group: the driver and the local Ray it starts, so that none outlives the test
    log = tmp_path / "killed_run.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(_annotate_cmd(out), cwd=REPO, env=env, stdout=sink, stderr=sink,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "completions").glob("shard-*")):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard was completed in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-run
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # then what is left of its Ray
        except ProcessLookupError:
            pass
    committed = {p.name for p in (out / "completions").iterdir()}
    assert committed and committed != {"shard-00000", "shard-00001", "shard-00002"}, "killed too late to test"
    before = {name: (out / "shards" / f"{name}.parquet").stat().st_mtime_ns for name in committed}
    rerun = subprocess.run(_annotate_cmd(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {n: (out / "shards" / f"{n}.parquet").stat().st_mtime_ns for n in committed} == before  # skipped
    assert_exactly_once(out, _manifest_ids(demo_config))
    assert_same_shards(out, local_reference)


@dataclass
class CrashSettings:
    die_on: str  # os._exit in every attempt on this video ("*": on every video)
    die_once_on: str  # os._exit on the first attempt only (a flag file remembers)
    raise_on: str  # an ordinary exception
    flag_dir: str


class CrashStep(PipelineStep):
    """Test-only step: kills its worker process on chosen videos."""

    name = "crash"

    def __init__(self, settings: CrashSettings):
        self.settings = settings

    def process(self, videos, stats: StepStats) -> None:
        for video in videos:
            flag = Path(self.settings.flag_dir) / video.video_id
            if self.settings.die_on in ("*", video.video_id) or (video.video_id == self.settings.die_once_on
                                                                 and not flag.exists()):
                flag.touch()
                os._exit(1)
            if video.video_id == self.settings.raise_on:
                raise ValueError("this video breaks the step")
            stats.count("videos_out")


@pytest.mark.slow
def test_dying_actor_is_restarted_and_its_batch_retried_then_failed(demo_config, local_ray, tmp_path):
    from ray import cloudpickle

    from pipeline.executors.ray import RayExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test module
    cfg = demo_config.manifest
    steps = [DecodeStep(DecodeSettings(short_side=64, track_fps=2.0, max_frames_per_event=4), cfg.video_root),
             CrashStep(CrashSettings(die_on="carphone_pristine", die_once_on="synthetic_square",
                                     raise_on="bigbuckbunny", flag_dir=str(tmp_path)))]
    settings = RunSettings(executor="ray", max_retries=1, stages=[
        StageSettings(["decode"], num_cpus=0.5), StageSettings(["crash"], actors=2, num_cpus=0.5)])
    from pipeline.manifest import read_manifest

    tasks = read_manifest(cfg).tasks
    out = tmp_path / "out"
    executor = RayExecutor(steps, out, videos_per_shard=2, batch_size=2, progress=False, settings=settings)
    stats = executor.run(tasks)
    assert_exactly_once(out, [t.video_id for t in tasks])
    failures = {f.video_id: f for f in read_failures(out / "failures") if f.event == -1}
    assert {v: (f.stage, f.reason) for v, f in failures.items()} == {
        "carphone_pristine": ("crash", "worker_died"), "bigbuckbunny": ("crash", "exception"),
        "missing_clip": ("decode", "missing_file")}
    assert "the worker process died" in failures["carphone_pristine"].message
    assert "after 2 attempt(s)" in failures["carphone_pristine"].message
    assert {r.video_id for r in read_shards(out / "shards")} == {"bikes", "synthetic_square"}
    # [carphone, synthetic] died once as a batch, then carphone twice alone, synthetic once alone
    assert executor.counters["worker_deaths"] == 4 and executor.counters["splits"] == 1
    assert stats.failures["crash/worker_died"] == 1 and stats.failures["crash/exception"] == 1
    assert stats.steps["crash"].counts["videos_out"] == 2  # bikes and synthetic, each counted once

    # a stage whose every call kills its worker looks like a broken cluster: stop, record nothing
    steps[1] = CrashStep(CrashSettings(die_on="*", die_once_on="", raise_on="", flag_dir=str(tmp_path)))
    settings.max_retries = 0
    broken = RayExecutor(steps, tmp_path / "broken", videos_per_shard=2, batch_size=1, progress=False,
                         settings=settings)
    with pytest.raises(RuntimeError, match="3 batches failed and none succeeded"):
        broken.run(tasks)
    assert not (tmp_path / "broken" / "completions").exists()
