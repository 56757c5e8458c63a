"""The DeepSpeed config of a run: the JSON file's ZeRO settings plus values filled in from the train config.

``configs/deepspeed/zero2.json`` and ``zero3.json`` hold only ZeRO settings (explicit numbers, no "auto";
the ZeRO-3 bucket sizes suit a 4096-wide LLM such as Vicuna-7B). The trainer owns, and fills in:

- ``train_batch_size`` = optim.global_batch, ``train_micro_batch_size_per_gpu`` = optim.micro_batch,
  ``gradient_accumulation_steps`` = global / (micro x processes);
- ``gradient_clipping`` = optim.grad_clip;
- ``bf16.enabled`` from deepspeed.precision (fp16 is not offered);
- ``zero_optimization.stage`` from deepspeed.zero_stage.

The optimizer (torch AdamW) and the lr schedule (cosine with warm-up) are passed to ``deepspeed.initialize``
as objects, so a JSON ``optimizer``/``scheduler`` block is refused (it would also compile fused_adam on CPU).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from pite.config import ConfigError
from training.config import TrainConfig, deepspeed_json_path, gradient_accumulation

OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler")


def read_deepspeed_json(path: Path) -> dict:
    """The JSON file, with a clear error for broken ones and for keys the trainer fills in."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), [f"cannot read DeepSpeed JSON: {err}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["a DeepSpeed config must be a JSON object"])
    owned = [key for key in OWNED_KEYS if key in data]
    if owned:
        raise ConfigError(str(path), [
            f"{key}: remove it; the trainer sets it from the train config (optim / deepspeed sections)"
            for key in owned])
    return data


def build_deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The dict passed to ``deepspeed.initialize(config=...)`` for ``world_size`` processes."""
    path = deepspeed_json_path(cfg)
    base = copy.deepcopy(read_deepspeed_json(path))
    zero = base.setdefault("zero_optimization", {})
    if "stage" in zero and zero["stage"] != cfg.deepspeed.zero_stage:
        raise ConfigError(str(path), [f"zero_optimization.stage is {zero['stage']} but deepspeed.zero_stage is "
                                      f"{cfg.deepspeed.zero_stage}; point deepspeed.config at a matching file"])
    zero["stage"] = cfg.deepspeed.zero_stage
    base.update(
        train_batch_size=cfg.optim.global_batch,
        train_micro_batch_size_per_gpu=cfg.optim.micro_batch,
        gradient_accumulation_steps=gradient_accumulation(cfg, world_size),
        gradient_clipping=cfg.optim.grad_clip,
        bf16={"enabled": cfg.deepspeed.precision == "bf16"},
        fp16={"enabled": False},
    )
    base.setdefault("steps_per_print", 10**9)
    return base
