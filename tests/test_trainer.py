"""The DeepSpeed trainer on CPU with the tiny LLaMA: overfitting, ZeRO-3 save/reload, the stage merge,
kill-and-resume, and two processes against one.

In-process tests share one single-process gloo group (the ``dist`` fixture); the kill-and-resume and the
two-process tests run ``python -m training.train`` / the ``deepspeed`` launcher as subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pite.config import ConfigError, load_config
from training.batches import RandomBatchSampler, RankBatches
from training.checkpoint import (
    capture_rng,
    list_checkpoints,
    prune_checkpoints,
    remove_partial_checkpoints,
    restore_rng,
)
from training.config import TrainConfig, check_train_config
from training.ds_config import build_deepspeed_config
from training.lora import lora_target_modules
from training.metrics_log import peak_flops, read_metrics
from training.trainer import CosineWithWarmup

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "train" / "demo"
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# ----------------------------------------------------------------------------- helpers


def demo_config(stage: int, out_dir: Path, *overrides: str) -> TrainConfig:
    """A shipped demo config with test overrides (no checkpoints, no TensorBoard unless asked)."""
    base = [f"out_dir={out_dir}", "init_from=''", "checkpoint.every=0", "checkpoint.resume=none",
            "logging.tensorboard=false"]
    return load_config(DEMO / f"stage{stage}.yaml", TrainConfig, overrides=[*base, *overrides])


def run_stage(cfg: TrainConfig):
    """build_model -> setup -> fit in this process; returns (FitResult, session, a batch of its data)."""
    from training.train import build_data
    from training.trainer import build_model, fit, setup

    model, tokenizer = build_model(cfg)
    dataset, collate_fn, sampler = build_data(cfg, tokenizer, model)
    session = setup(cfg, model, dataset, collate_fn, sampler)
    result = fit(session)
    return result, session, collate_fn([dataset[i] for i in range(min(3, len(dataset)))])


@torch.no_grad()
def logits_of(model, batch) -> torch.Tensor:
    """(B, L, V) next-token logits of a PiTe model (plain, peft or under a ZeRO-3 engine)."""
    hidden, _ = model.hidden_states(batch["input_ids"], batch["attention_mask"], None, batch["video_features"])
    return model.llm.get_output_embeddings()(hidden)


def subprocess_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # same kernels as this process: same bits
    return env


def losses(records: list[dict]) -> dict[int, tuple]:
    return {r["step"]: (r["loss"], r["ce"], r.get("l1")) for r in records}


@pytest.fixture(scope="module")
def dist():
    """One single-process gloo group for the in-process tests of this module."""
    import torch.distributed

    from training.train import ensure_distributed_env

    saved = {k: os.environ.get(k) for k in (*DIST_VARS, "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR")}
    ensure_distributed_env()
    import deepspeed

    deepspeed.init_distributed()
    yield
    torch.distributed.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def scaled_llm(tmp_path_factory) -> Path:
    """The kit's tiny LLaMA with its output layer scaled x25: random 0.02-std weights cap the logits at about
    +-1.3, so no LoRA could fit the answers; a pretrained LM's logits span far more."""
    from pite.models import load_causal_lm

    llm, tokenizer = load_causal_lm("tinykit://llm", dtype=torch.float32)
    with torch.no_grad():
        llm.get_output_embeddings().weight.mul_(25.0)
    folder = tmp_path_factory.mktemp("llm_scaled")
    llm.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


# ----------------------------------------------------------------------------- configs and pieces


def test_every_shipped_train_config_loads_and_builds_a_deepspeed_config():
    paths = sorted((REPO / "configs" / "train").rglob("*.yaml"))
    assert {p.name for p in paths} >= {"stage1.yaml", "stage2.yaml", "stage3.yaml"} and len(paths) >= 6
    for path in paths:
        cfg = load_config(path, TrainConfig, check_paths=False)
        ds = build_deepspeed_config(cfg, world_size=1)
        assert ds["train_batch_size"] == cfg.optim.global_batch
        assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] == cfg.optim.global_batch
        assert ds["zero_optimization"]["stage"] == cfg.deepspeed.zero_stage
        assert ds["bf16"]["enabled"] == (cfg.deepspeed.precision == "bf16")
    paper = load_config(REPO / "configs/train/stage2.yaml", TrainConfig, check_paths=False)
    assert (paper.model.llm, paper.optim.lr, paper.optim.global_batch, paper.optim.warmup_ratio) == (
        "lmsys/vicuna-7b-v1.5", 1e-4, 256, 0.03)
    assert (paper.lora.r, paper.lora.alpha, paper.lora.dropout, paper.data.max_length) == (64, 128, 0.05, 2048)
    assert build_deepspeed_config(paper, world_size=8)["gradient_accumulation_steps"] == 4


def test_config_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as info:
        demo_config(2, tmp_path, "optim.lr=-1", "deepspeed.zero_stage=1", "lora.dropout=1.5")
    assert len(info.value.problems) == 3
    cfg = demo_config(2, tmp_path, "optim.global_batch=6")
    with pytest.raises(ConfigError, match="multiple of optim.micro_batch"):
        build_deepspeed_config(cfg, world_size=2)
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_batch_size": 8, "optimizer": {"type": "AdamW"}}))
    with pytest.raises(ConfigError) as info:
        build_deepspeed_config(demo_config(2, tmp_path, f"deepspeed.config={bad}"), world_size=1)
    assert len(info.value.problems) == 2 and "trainer sets it" in str(info.value)
    with pytest.raises(ConfigError, match="not a finished stage folder"):
        check_train_config(demo_config(2, tmp_path, f"init_from={tmp_path}"))


def test_lora_targets_every_linear_layer_but_the_output_embedding():
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))
    assert lora_target_modules(llm) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factor = CosineWithWarmup(warmup=3, total=13)
    assert [factor(s) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert factor(8) == pytest.approx(0.5) and factor(13) == pytest.approx(0.0)
    assert all(factor(s) >= factor(s + 1) for s in range(3, 13))


def test_ranks_share_one_data_order_and_resume_skips_what_was_read():
    data = list(range(40))
    sampler = RandomBatchSampler(len(data), micro_batch=2, seed=3)
    one = RankBatches(data, list, sampler, rank=0, world_size=1, grad_accum=4, seed=3)
    two = [RankBatches(data, list, sampler, rank=r, world_size=2, grad_accum=2, seed=3) for r in (0, 1)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == 5
    for epoch in (0, 1):
        single = one.epoch_batches(epoch)
        ranks = [t.epoch_batches(epoch) for t in two]
        for step in range(5):
            step_samples = sorted(i for b in single[4 * step : 4 * step + 4] for i in b)
            assert step_samples == sorted(i for r in ranks for b in r[2 * step : 2 * step + 2] for i in b)
    assert one.epoch_batches(0) != one.epoch_batches(1)
    assert list(one.loader(1, offset=7)) == one.epoch_batches(1)[7:]


def test_rng_states_round_trip_and_partial_checkpoints_are_ignored(tmp_path):
    import random

    import numpy as np

    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(torch.load(_saved(state, tmp_path), weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])
    root = tmp_path / "checkpoints"
    for name in ("step-00000002", "step-00000004", "step-00000006", ".tmp-step-00000008"):
        (root / name).mkdir(parents=True)
    assert [p.name for p in list_checkpoints(root)] == ["step-00000002", "step-00000004", "step-00000006"]
    prune_checkpoints(root, keep=2)
    assert [p.name for p in list_checkpoints(root)] == ["step-00000004", "step-00000006"]
    assert [p.name for p in remove_partial_checkpoints(root)] == [".tmp-step-00000008"]


def _saved(obj, folder: Path) -> Path:
    torch.save(obj, folder / "rng.pt")
    return folder / "rng.pt"


def test_mfu_peaks_by_gpu_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp32") is None and peak_flops("Some GPU") is None


# ----------------------------------------------------------------------------- training in this process


@pytest.mark.slow
def test_zero2_overfits_four_stage2_samples(dist, tmp_path, scaled_llm):
    cfg = demo_config(2, tmp_path / "run", f"model.llm={scaled_llm}", "data.synthetic_samples=4",
                      "optim.max_steps=30", "optim.lr=0.003", "lora.r=16", "lora.alpha=32", "lora.dropout=0.0",
                      "model.gradient_checkpointing=false", "logging.tensorboard=true")
    result, _, _ = run_stage(cfg)
    first, last = result.metrics[0], result.metrics[-1]
    assert last["ce"] <= 0.1 * first["ce"], (first, last)
    assert last["l1"] <= 0.1 * first["l1"], (first, last)
    assert [r["step"] for r in read_metrics(cfg.out_dir)] == list(range(1, 31))
    assert all(k in read_metrics(cfg.out_dir)[0] for k in ("loss", "ce", "l1", "lr", "samples_per_s", "tokens_per_s"))
    assert list((Path(cfg.out_dir) / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_zero3_run_resumes_exactly_and_saves_weights_that_reload_to_the_same_logits(dist, tmp_path):
    from training.stage_weights import load_stage_model

    cfg = demo_config(2, tmp_path / "run", "deepspeed.zero_stage=3", "optim.max_steps=4", "optim.lr=0.01",
                      "data.synthetic_samples=8", "checkpoint.every=2", "checkpoint.keep=2", "checkpoint.resume=auto")
    first, _, _ = run_stage(cfg)
    shutil.rmtree(Path(cfg.out_dir) / "checkpoints" / "step-00000004")
    result, session, batch = run_stage(cfg)  # resumes from the ZeRO-3 checkpoint of step 2
    assert result.step == 4 and result.resumed_from.name == "step-00000002"
    assert losses(result.metrics) == {s: v for s, v in losses(first.metrics).items() if s > 2}
    engine_model = session.model.eval()
    assert hasattr(engine_model.traj_head.weight, "ds_id")  # really partitioned
    reloaded, _ = load_stage_model(cfg.out_dir, merge=False)
    torch.testing.assert_close(logits_of(reloaded, batch), logits_of(engine_model, batch), rtol=1e-5, atol=1e-5)
    args = (batch["input_ids"], batch["traj_index"], "trajectory", batch["attention_mask"], batch["video_features"])
    torch.testing.assert_close(reloaded.predict_heads(*args), engine_model.predict_heads(*args), rtol=1e-5, atol=1e-5)
    lora_b = [p for n, p in reloaded.llm.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained, not the zero init


@pytest.mark.slow
def test_merge_between_stages_leaves_the_logits_unchanged(dist, tmp_path):
    from training.export import load_exported, run_export
    from training.stage_weights import load_stage_model
    from training.trainer import build_model

    stage1 = demo_config(1, tmp_path / "stage1", "optim.max_steps=3", "optim.lr=0.01", "data.synthetic_samples=8")
    _, _, batch = run_stage(stage1)
    before, _ = load_stage_model(stage1.out_dir, merge=False)  # stage 1 as trained: LoRA unmerged
    assert any(p.abs().sum() > 0 for n, p in before.llm.named_parameters() if "lora_B" in n)

    stage2 = demo_config(2, tmp_path / "stage2", f"init_from={stage1.out_dir}")
    after, _ = build_model(stage2)  # stage 1 merged, a fresh LoRA added
    after.eval()
    torch.testing.assert_close(logits_of(after, batch), logits_of(before, batch), rtol=1e-5, atol=1e-5)
    assert all(p.abs().sum() == 0 for n, p in after.llm.named_parameters() if "lora_B" in n)
    torch.testing.assert_close(after.adapter.weight, before.adapter.weight)
    torch.testing.assert_close(after.traj_head.weight, before.loc_head.weight.repeat(300, 1))  # rho from phi
    trainable = {n.split(".")[0] for n, p in after.named_parameters() if p.requires_grad}
    assert trainable == {"llm", "traj_head"}

    exported = tmp_path / "export"
    assert run_export(argparse.Namespace(checkpoint=stage1.out_dir, out=str(exported), dtype="fp32")) == 0
    assert run_export(argparse.Namespace(checkpoint=str(tmp_path), out=str(tmp_path / "x"), dtype="fp32")) == 2
    assert {"config.json", "model.safetensors", "pite_heads.safetensors", "pite_config.json"} <= {
        p.name for p in exported.iterdir()}
    merged, _ = load_exported(exported)
    torch.testing.assert_close(logits_of(merged, batch), logits_of(before, batch), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- subprocesses


def _train_command(out_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "training.train", "--config", str(DEMO / "stage2.yaml"),
            "--set", f"out_dir={out_dir}", "--set", "init_from=''", "--set", "logging.tensorboard=false",
            *[arg for o in overrides for arg in ("--set", o)]]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_losses_as_an_uninterrupted_one(dist, tmp_path):
    overrides = ("optim.max_steps=24", "checkpoint.every=3", "checkpoint.keep=2", "optim.lr=0.01")
    reference, _, _ = run_stage(demo_config(2, tmp_path / "reference", *overrides, "checkpoint.every=0"))

    out, log = tmp_path / "killed", tmp_path / "killed.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(_train_command(out, *overrides), cwd=REPO, env=subprocess_env(), stdout=sink,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not list_checkpoints(out / "checkpoints") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
    resumed_from = int(list_checkpoints(out / "checkpoints")[-1].name.split("-")[1])
    print(f"killed after step {len(read_metrics(out))}; resuming from the checkpoint of step {resumed_from}")
    assert 3 <= resumed_from < 24

    done = subprocess.run(_train_command(out, *overrides), cwd=REPO, env=subprocess_env(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    got, want = losses(read_metrics(out)), losses(reference.metrics)
    assert sorted(got) == list(range(1, 25))
    assert {s: got[s] for s in got if s > resumed_from} == {s: want[s] for s in want if s > resumed_from}
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000021", "step-00000024"]
    assert json.loads((out / "pite_stage.json").read_text())["step"] == 24


@pytest.mark.slow
def test_two_processes_give_the_loss_of_one_with_the_same_global_batch(dist, tmp_path):
    from training.train import free_port

    overrides = ("optim.max_steps=4", "optim.global_batch=4", "optim.micro_batch=2", "lora.dropout=0.0",
                 "checkpoint.every=0", "checkpoint.resume=none")
    one, _, _ = run_stage(demo_config(2, tmp_path / "one", *overrides))  # 2 micro-batches accumulated

    out = tmp_path / "two"
    command = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               "--module", *_train_command(out, *overrides)[2:]]
    done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    two = read_metrics(out)
    assert json.loads((out / "deepspeed_config.json").read_text())["gradient_accumulation_steps"] == 1
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one.metrics, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["l1"] == pytest.approx(a["l1"], rel=1e-5)
