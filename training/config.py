"""Typed configuration of one training stage (``configs/train/*.yaml``).

Every section is a plain, picklable dataclass; every field has a docstring and is range-checked when the YAML
is read (:func:`pite.config.load_config`). Checks that need more than one field, or the number of processes,
live in :func:`check_train_config` and run at the start of training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pite.config import ConfigError, option

REPO_ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED_CONFIGS = REPO_ROOT / "configs" / "deepspeed"


@dataclass
class ModelSettings:
    llm: str = option("lmsys/vicuna-7b-v1.5", "The LLM: HF repo id, local folder, or tinykit://llm.", model="llm")
    vision_dim: int = option(768, "Size of one CLIP frame feature (ViT-L/14 image_embeds: 768).", ge=1)
    num_frames: int = option(100, "Frames per video N (video tokens per video, points per trajectory).", ge=1)
    num_trajectories: int = option(3, "Key trajectories per phrase P.", ge=1)
    video_token: str = option("<video>", "Prompt placeholder of a video; its id comes from the tokenizer.")
    video_token_id: int | None = option(
        None, "Id written at the video positions; null: the tokenizer's id of video_token, else -200.")
    init_trajectory_from_localization: bool = option(
        True, "Stage 2 after stage 1: start rho as phi repeated P*N times (false: the 'w/o initialize' ablation).")
    gradient_checkpointing: bool = option(True, "Recompute decoder layers in the backward pass to save memory.")


@dataclass
class DataSettings:
    stage: Literal[1, 2, 3] = option(2, "Training stage: 1 localization, 2 trajectories, 3 instructions.")
    shards: str = option("", "PiTe-143k Parquet shards (stage 2).", exists="dir")
    features: str = option("", "Folder of pre-extracted CLIP frame features (one file per video or image).",
                           exists="dir")
    json: str = option("", "Annotations: Localized Narratives JSONL (stage 1) or VTimeLLM-format JSON "
                           "(stage 2 captions, stage 3 instructions).", exists="file")
    max_length: int = option(2048, "Longest token sequence, video tokens included.", ge=16)
    packing: bool = option(False, "Pack several samples per row (position ids restart per sample).")
    num_workers: int = option(2, "DataLoader worker processes per rank (0: load in the training process).", ge=0)
    synthetic_samples: int = option(
        0, "Train on this many generated samples instead of the files above (smoke tests; 0: real data).", ge=0)
    synthetic_length: int = option(24, "Text tokens per generated sample (video tokens come on top).", ge=4)


@dataclass
class LoraSettings:
    r: int = option(64, "LoRA rank.", ge=1)
    alpha: float = option(128.0, "LoRA alpha (the update is scaled by alpha / r).", gt=0)
    dropout: float = option(0.05, "Dropout on the LoRA input.", ge=0, lt=1)
    target_modules: list[str] = option(
        [], "Module names to adapt; empty: every nn.Linear inside the LLM except its output embedding.")


@dataclass
class OptimSettings:
    lr: float = option(1e-4, "Peak learning rate of AdamW.", gt=0, le=1)
    epochs: int = option(1, "Passes over the training set (ignored when max_steps is set).", ge=1)
    max_steps: int | None = option(None, "Optimizer steps in all; null: epochs x steps per epoch.", ge=1)
    global_batch: int = option(256, "Samples per optimizer step, over all processes and accumulation.", ge=1)
    micro_batch: int = option(4, "Samples per forward pass on one process.", ge=1)
    warmup_ratio: float = option(0.03, "Fraction of the steps spent warming the lr up linearly.", ge=0, lt=1)
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0)
    grad_clip: float = option(1.0, "Clip the global gradient norm to this (0: no clipping).", ge=0)
    loss_lambda: float = option(1.0, "lambda: weight of the head L1 (phi in stage 1, rho in stage 2).", ge=0)
    label_smoothing: float = option(0.1, "Label smoothing of the stage-1 cross-entropy.", ge=0, lt=1)
    official_unmasked: bool = option(
        False, "Reproduce the official head loss (L1 everywhere, -1 off target) instead of the masked one.")


@dataclass
class DeepSpeedSettings:
    zero_stage: Literal[2, 3] = option(2, "ZeRO stage: 2 shards optimizer state and gradients, 3 also weights.")
    precision: Literal["bf16", "fp32"] = option("bf16", "Training precision (bf16 on GPUs; fp32 or bf16 on CPU).")
    config: str = option("", "DeepSpeed JSON; empty: configs/deepspeed/zero<stage>.json. Batch sizes, "
                             "clipping and precision are filled in from this file.", exists="file")


@dataclass
class CheckpointSettings:
    every: int = option(500, "Save a resumable checkpoint every this many optimizer steps (0: never).", ge=0)
    keep: int = option(2, "Keep the newest this many checkpoints.", ge=1)
    resume: str = option("auto", "auto: the newest checkpoint under out_dir if any; none: start afresh; "
                                 "or a checkpoint folder.")


@dataclass
class LoggingSettings:
    every: int = option(1, "Log metrics every this many optimizer steps.", ge=1)
    tensorboard: bool = option(True, "Write TensorBoard events under out_dir/tensorboard.")
    wandb: bool = option(False, "Also log to Weights & Biases (needs the wandb package).")
    wandb_project: str = option("pite", "W&B project.")
    run_name: str = option("", "Run name for W&B (empty: the out_dir's name).")


@dataclass
class TrainConfig:
    out_dir: str = option(doc="Output folder: stage weights, checkpoints/, metrics.jsonl, tensorboard/.")
    model: ModelSettings = option(default_factory=ModelSettings, doc="The model.")
    data: DataSettings = option(default_factory=DataSettings, doc="The stage's data.")
    lora: LoraSettings = option(default_factory=LoraSettings, doc="The LoRA added in this stage.")
    optim: OptimSettings = option(default_factory=OptimSettings, doc="Optimisation.")
    deepspeed: DeepSpeedSettings = option(default_factory=DeepSpeedSettings, doc="DeepSpeed engine.")
    checkpoint: CheckpointSettings = option(default_factory=CheckpointSettings, doc="Resumable checkpoints.")
    logging: LoggingSettings = option(default_factory=LoggingSettings, doc="Metrics.")
    init_from: str = option("", "The previous stage's output folder: its LoRA is merged and its adapter and "
                                "heads loaded (empty: start from the plain LLM). Checked when training starts: "
                                "it is the output of an earlier run.")
    seed: int = option(0, "Seed of initialisation, data order and dropout.", ge=0)

    @property
    def stage(self) -> int:
        return self.data.stage


def deepspeed_json_path(cfg: TrainConfig) -> Path:
    """The DeepSpeed JSON this run reads."""
    if cfg.deepspeed.config:
        return Path(cfg.deepspeed.config)
    return DEEPSPEED_CONFIGS / f"zero{cfg.deepspeed.zero_stage}.json"


def gradient_accumulation(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batches each process accumulates per optimizer step: global / (micro x processes)."""
    per_pass = cfg.optim.micro_batch * world_size
    if cfg.optim.global_batch % per_pass:
        raise ConfigError("optim", [
            f"optim.global_batch ({cfg.optim.global_batch}) must be a multiple of optim.micro_batch "
            f"({cfg.optim.micro_batch}) x processes ({world_size}) = {per_pass}"])
    return cfg.optim.global_batch // per_pass


def check_train_config(cfg: TrainConfig, world_size: int | None = None, source: str = "train config") -> None:
    """Cross-field checks (the batch split only when ``world_size`` is given); raises one
    :class:`ConfigError` listing every problem."""
    problems = []
    per_pass = cfg.optim.micro_batch * (world_size or 1)
    if world_size is not None and cfg.optim.global_batch % per_pass:
        problems.append(f"optim.global_batch ({cfg.optim.global_batch}) must be a multiple of optim.micro_batch "
                        f"({cfg.optim.micro_batch}) x processes ({world_size}) = {per_pass}")
    if cfg.init_from:
        stage_file = Path(cfg.init_from) / "pite_stage.json"
        if not stage_file.is_file():
            problems.append(f"init_from: {cfg.init_from} is not a finished stage folder ({stage_file.name} missing)")
        elif json.loads(stage_file.read_text()).get("stage", 0) >= cfg.stage:
            problems.append(f"init_from: {cfg.init_from} holds a later or equal stage; stage {cfg.stage} must "
                            "start from an earlier one")
    if cfg.data.synthetic_samples == 0:
        needed = {1: ("json", "features"), 2: ("shards", "features"), 3: ("json", "features")}[cfg.stage]
        for name in needed:
            if not getattr(cfg.data, name):
                problems.append(f"data.{name}: stage {cfg.stage} needs it (or set data.synthetic_samples)")
    if cfg.checkpoint.resume not in ("auto", "none") and not Path(cfg.checkpoint.resume).is_dir():
        problems.append(f"checkpoint.resume: not 'auto', 'none' or a folder: {cfg.checkpoint.resume}")
    if not deepspeed_json_path(cfg).is_file():
        problems.append(f"deepspeed.config: file not found: {deepspeed_json_path(cfg)}")
    if problems:
        raise ConfigError(source, problems)
