"""One training loop for all three PiTe stages, on the DeepSpeed engine: ``build_model -> setup -> fit``.

::

    model, tokenizer = build_model(cfg)          # LLM (+ previous stages merged) + fresh LoRA + trainable set
    session = setup(cfg, model, dataset, collate_fn, batch_sampler)   # engine, schedule, resume
    result = fit(session)                        # the loop, logs, checkpoints, final stage weights

An optimizer step reads ``grad_accum`` micro-batches on each process; the engine averages their gradients
(over accumulation and processes), clips them, and steps AdamW on the cosine schedule with warm-up. The
stage decides the trainable set (``pite.model.set_trainable``) and the loss (``LossSettings.for_stage``).
Arguments are explicit; nothing is global. The process group is the caller's (``training.train`` sets it up
and tears it down).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import yaml

from pite.config import ConfigError, to_dict
from pite.model import LossSettings, PiTeModel, PiTeSettings, assemble_pite, set_trainable
from pite.model.build import video_token_id_of
from training.batches import RandomBatchSampler, RankBatches
from training.checkpoint import (
    checkpoint_root,
    load_checkpoint,
    remove_partial_checkpoints,
    resolve_resume,
    restore_rng,
    save_checkpoint,
)
from training.config import TrainConfig, check_train_config
from training.ds_config import build_deepspeed_config
from training.lora import add_lora
from training.metrics_log import MetricsLog, model_flops_utilization, peak_flops
from training.stage_weights import STAGE_FILE, load_previous_stage, save_stage_weights, stage_meta

MODEL_INPUTS = ("input_ids", "labels", "attention_mask", "position_ids", "video_features",
                "loc_index", "loc_target", "traj_index", "traj_target")
"""Batch keys passed to ``PiTeModel.forward``; a collator may add others (ids, lengths), which are ignored."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig) -> tuple[PiTeModel, Any]:
    """The stage's model and tokenizer: the LLM, the previous stage's LoRA merged and its adapter and heads
    loaded (``cfg.init_from``), a fresh LoRA, and only the stage's parameters trainable."""
    from pite.models import load_causal_lm

    check_train_config(cfg)  # before loading billions of weights
    seed_everything(cfg.seed)
    dtype = torch.bfloat16 if cfg.deepspeed.precision == "bf16" else torch.float32
    llm, tokenizer = load_causal_lm(cfg.model.llm, dtype=dtype)
    video_token_id = cfg.model.video_token_id
    if video_token_id is None:
        video_token_id = video_token_id_of(tokenizer, cfg.model.video_token)
    loss = LossSettings.for_stage(cfg.stage, lam=cfg.optim.loss_lambda, label_smoothing=cfg.optim.label_smoothing,
                                  official_unmasked=cfg.optim.official_unmasked)
    settings = PiTeSettings(vision_dim=cfg.model.vision_dim, num_trajectories=cfg.model.num_trajectories,
                            num_frames=cfg.model.num_frames, video_token_id=video_token_id, loss=loss)
    model = assemble_pite(llm, settings)
    if cfg.init_from:
        load_previous_stage(model, Path(cfg.init_from), cfg.stage, cfg.model.init_trajectory_from_localization)
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model.llm)
    model.llm = add_lora(model.llm, cfg.lora)
    set_trainable(model, cfg.stage)
    return model, tokenizer


def enable_activation_checkpointing(llm) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant: no inputs need grads)."""
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.x
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class CosineWithWarmup:
    """lr factor of optimizer step ``s`` (0-based): (s + 1) / warmup during warm-up, then a half cosine from
    1 down to 0 at ``total``. A picklable callable for ``LambdaLR`` (its state is saved with checkpoints)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- setup


@dataclass
class TrainState:
    """Where training stands after ``step`` optimizer steps (saved in every checkpoint)."""

    step: int = 0
    epoch: int = 0
    batch_offset: int = 0
    """Micro-batches of ``epoch`` this rank has consumed."""
    samples: int = 0
    tokens: int = 0


@dataclass
class Session:
    """Everything ``fit`` needs, made by ``setup``."""

    cfg: TrainConfig
    engine: Any
    batches: RankBatches
    state: TrainState
    total_steps: int
    rank: int
    world_size: int
    num_params: int
    log: MetricsLog
    fingerprint: dict
    resumed_from: Path | None = None
    resume_rng: dict | None = None

    @property
    def model(self) -> PiTeModel:
        return self.engine.module


@dataclass
class FitResult:
    step: int
    """Optimizer steps done in all (including those before a resume)."""
    metrics: list[dict]
    """The metrics of each step run by this call."""
    out_dir: Path
    resumed_from: Path | None


def setup(cfg: TrainConfig, model: PiTeModel, train_dataset, collate_fn: Callable[[list], dict],
          batch_sampler: Iterable[list[int]] | None = None) -> Session:
    """Wrap ``model`` in a DeepSpeed engine with AdamW and the cosine schedule; resume if a checkpoint says so.

    ``batch_sampler`` gives the job's micro-batches per epoch (see ``training.batches``); by default a seeded
    random order. The distributed environment must be set (``training.train.ensure_distributed_env``).
    """
    import deepspeed

    deepspeed.init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    check_train_config(cfg, world_size)
    ds_config = build_deepspeed_config(cfg, world_size)
    grad_accum = ds_config["gradient_accumulation_steps"]
    if batch_sampler is None:
        batch_sampler = RandomBatchSampler(len(train_dataset), cfg.optim.micro_batch, cfg.seed)
    batches = RankBatches(train_dataset, collate_fn, batch_sampler, rank=rank, world_size=world_size,
                          grad_accum=grad_accum, seed=cfg.seed, num_workers=cfg.data.num_workers)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * batches.steps_per_epoch
    num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    warmup = math.ceil(cfg.optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWithWarmup(warmup, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    engine.train()
    seed_everything(cfg.seed + rank)  # dropout differs between ranks, repeats between runs

    fingerprint = {"stage": cfg.stage, "seed": cfg.seed, "global_batch": cfg.optim.global_batch,
                   "micro_batch": cfg.optim.micro_batch, "world_size": world_size, "total_steps": total_steps,
                   "steps_per_epoch": batches.steps_per_epoch, "samples": len(train_dataset)}
    out_dir = Path(cfg.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        (out_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
        remove_partial_checkpoints(checkpoint_root(out_dir))
    state, resume_rng = TrainState(), None
    resumed_from = resolve_resume(cfg.checkpoint.resume, out_dir)
    if resumed_from is not None:
        client, resume_rng = load_checkpoint(engine, resumed_from, rank)
        changed = {k: (client.get("fingerprint", {}).get(k), v) for k, v in fingerprint.items()
                   if client.get("fingerprint", {}).get(k) != v}
        if changed:
            raise ConfigError("checkpoint.resume", [
                f"cannot resume from {resumed_from}: the run differs in "
                + ", ".join(f"{k} (checkpoint {a}, now {b})" for k, (a, b) in changed.items())
                + "; set checkpoint.resume: none or use another out_dir"])
        state = TrainState(**client["trainer"])
    log = MetricsLog(out_dir, cfg.logging, enabled=rank == 0, resume_step=state.step, run_config=to_dict(cfg))
    return Session(cfg, engine, batches, state, total_steps, rank, world_size, num_params, log, fingerprint,
                   resumed_from, resume_rng)


# ----------------------------------------------------------------------------- fit


def fit(session: Session) -> FitResult:
    """Train until ``session.total_steps``; log, checkpoint, and save the stage weights into ``cfg.out_dir``."""
    cfg, engine, state = session.cfg, session.engine, session.state
    grad_accum = session.batches.grad_accum
    data = session.batches.stream(state.epoch, state.batch_offset)
    if session.resume_rng is not None:
        restore_rng(session.resume_rng)  # after the loader is made, right before the next step
    peak = peak_flops(torch.cuda.get_device_name(), cfg.deepspeed.precision) if torch.cuda.is_available() else None
    done: list[dict] = []
    while state.step < session.total_steps:
        started = time.perf_counter()
        lr = float(engine.get_lr()[0])
        totals = _sum_over_ranks(train_step(engine, data, grad_accum), engine.device)
        seconds = time.perf_counter() - started
        state.step += 1
        state.batch_offset += grad_accum
        if state.batch_offset == session.batches.per_epoch:
            state.epoch, state.batch_offset = state.epoch + 1, 0
        state.samples += int(totals[4])
        state.tokens += int(totals[5])

        micro_batches = grad_accum * session.world_size
        metrics = {
            "epoch": state.step / session.batches.steps_per_epoch,
            "loss": totals[0].item() / micro_batches,
            "ce": totals[1].item() / micro_batches,
            "l1": totals[2].item() / totals[3].item() if totals[3] > 0 else None,
            "lr": lr,
            "grad_norm": _grad_norm(engine),
            "samples_per_s": totals[4].item() / seconds,
            "tokens_per_s": totals[5].item() / seconds,
            "mfu": model_flops_utilization(session.num_params, totals[5].item() / seconds, session.world_size, peak),
        }
        done.append({"step": state.step, **metrics})
        if state.step % cfg.logging.every == 0 or state.step == session.total_steps:
            session.log.log(state.step, metrics, session.total_steps)
        every = cfg.checkpoint.every
        if every and (state.step % every == 0 or state.step == session.total_steps):
            save_checkpoint(engine, checkpoint_root(cfg.out_dir), state.step,
                            {"trainer": dataclasses.asdict(state), "fingerprint": session.fingerprint},
                            rank=session.rank, keep=cfg.checkpoint.keep,
                            write_weights=lambda folder: _write_weights(session, folder))
    save_final_weights(session)
    session.log.close()
    return FitResult(state.step, done, Path(cfg.out_dir), session.resumed_from)


def train_step(engine, data: Iterator[dict], grad_accum: int) -> torch.Tensor:
    """One optimizer step: ``grad_accum`` micro-batches forward and backward, then the engine steps (it
    averages, clips and applies the gradients at the accumulation boundary).

    Returns this rank's sums (6,) float64: loss, CE, L1, micro-batches with an L1, samples, tokens.
    """
    totals = torch.zeros(6, dtype=torch.float64)
    for _ in range(grad_accum):
        batch = next(data)
        inputs = {k: v.to(engine.device) for k, v in batch.items() if k in MODEL_INPUTS and v is not None}
        out = engine(**inputs)
        engine.backward(out.loss)
        engine.step()
        totals += torch.tensor([
            out.loss.item(), out.ce_loss.item() if out.ce_loss is not None else 0.0,
            out.l1_loss.item() if out.l1_loss is not None else 0.0, float(out.l1_loss is not None),
            float(batch["input_ids"].shape[0]), float(_count_tokens(batch)),
        ], dtype=torch.float64)
    return totals


def save_final_weights(session: Session) -> Path:
    """Write the stage weights into ``cfg.out_dir`` (files replaced one by one; ``pite_stage.json`` last)."""
    out_dir = Path(session.cfg.out_dir)
    tmp = out_dir / ".tmp-weights"
    _write_weights(session, tmp)
    if session.rank == 0:
        names = sorted(p.name for p in tmp.iterdir())
        for name in sorted(names, key=lambda n: n == STAGE_FILE):  # the stage file last: it marks completion
            os.replace(tmp / name, out_dir / name)
        tmp.rmdir()
    if dist.is_initialized():
        dist.barrier()
    return out_dir


def _write_weights(session: Session, folder: Path) -> None:
    cfg, model = session.cfg, session.model
    meta = stage_meta(
        stage=cfg.stage, llm=cfg.model.llm, init_from=cfg.init_from, step=session.state.step,
        model_settings={"vision_dim": cfg.model.vision_dim, "num_trajectories": cfg.model.num_trajectories,
                        "num_frames": cfg.model.num_frames, "video_token": cfg.model.video_token,
                        "video_token_id": model.video_token_id},
        lora={"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout},
    )
    save_stage_weights(model, Path(folder), meta, session.rank)


def _count_tokens(batch: dict) -> int:
    """Real tokens of a batch: the collator's ``num_tokens``, else the attention mask's ones, else every
    position."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def _sum_over_ranks(values: torch.Tensor, device) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.to(device)
        dist.all_reduce(values)
    return values.cpu()


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    norm = float(norm)
    return norm if math.isfinite(norm) else None
