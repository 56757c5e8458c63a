"""The weights a stage hands on: one folder per stage (and per checkpoint), in the official PiTe layout.

A stage folder holds

- ``adapter_config.json``, ``adapter_model.safetensors``: this stage's LoRA (peft ``save_pretrained``);
- ``non_lora_trainables.safetensors``: every PiTe parameter outside the LLM (``adapter.*``, ``loc_head.*``,
  ``traj_head.*``), whether it trained in this stage or not, so the newest folder has all of them;
- ``pite_stage.json``: the stage, the base LLM, the model settings, and ``init_from``, the previous stage's
  folder. A stage's LoRA was trained on top of the earlier LoRAs merged, so a model is rebuilt by merging
  the chain oldest first (:func:`merge_stage_loras`), as VTimeLLM and PiTe do.

Under ZeRO-3 the parameters are gathered from every rank before saving (all ranks must call
:func:`save_stage_weights`; rank 0 writes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

STAGE_FILE = "pite_stage.json"
NON_LORA_FILE = "non_lora_trainables.safetensors"
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")


def full_parameters(module: nn.Module, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """CPU copies of ``module``'s parameters whose name passes ``keep``, gathered when ZeRO-3 partitions them.

    Every rank must call this with the same module (the gathers are collective).
    """
    out = {}
    for name, param in module.named_parameters():
        if not keep(name):
            continue
        if hasattr(param, "ds_id"):  # partitioned by ZeRO-3
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                out[name] = param.detach().to("cpu", copy=True)
        else:
            out[name] = param.detach().to("cpu", copy=True)
    return out


def save_stage_weights(model: nn.Module, folder: Path, meta: dict, rank: int = 0) -> None:
    """Write ``model``'s LoRA, adapter and heads and ``meta`` (see :func:`stage_meta`) into ``folder``."""
    from safetensors.torch import save_file

    lora = full_parameters(model.llm, lambda name: "lora_" in name)
    rest = full_parameters(model, lambda name: not name.startswith("llm."))
    if rank != 0:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if lora:
        model.llm.save_pretrained(str(folder), state_dict=lora, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in rest.items()}, str(folder / NON_LORA_FILE))
    (folder / STAGE_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def stage_meta(*, stage: int, llm: str, model_settings: dict, lora: dict, init_from: str, step: int) -> dict:
    """The content of ``pite_stage.json``; local paths are made absolute."""
    llm_path = Path(llm).expanduser()
    return {
        "format": "pite-stage",
        "version": 1,
        "stage": stage,
        "step": step,
        "llm": str(llm_path.resolve()) if "://" not in llm and llm_path.exists() else llm,
        "model": model_settings,
        "lora": lora,
        "init_from": str(Path(init_from).resolve()) if init_from else "",
    }


def _parent_of(folder: Path, meta: dict) -> Path | None:
    """The previous stage's folder named by ``meta``: its absolute path, else the same name next to ``folder``
    (a whole outputs tree that was moved or copied keeps working)."""
    parent = meta.get("init_from", "")
    if not parent:
        return None
    for candidate in (Path(parent), folder.parent / Path(parent).name):
        if (candidate / STAGE_FILE).is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"{folder / STAGE_FILE} names init_from {parent}, which is not a stage folder")


def read_stage_meta(folder: Path) -> dict:
    """``pite_stage.json`` of a stage folder, with a clear error when it is not one."""
    path = Path(folder) / STAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a PiTe stage folder: {STAGE_FILE} is missing")
    return json.loads(path.read_text())


def stage_chain(folder: Path) -> list[Path]:
    """The stage folders whose LoRAs make up ``folder``'s model, oldest first (``folder`` last)."""
    chain, seen = [], set()
    current: Path | None = Path(folder).resolve()
    while current is not None:
        if current in seen:
            raise ValueError(f"init_from forms a loop at {current}")
        seen.add(current)
        chain.append(current)
        current = _parent_of(current, read_stage_meta(current))
    return chain[::-1]


def merge_stage_loras(llm: nn.Module, folders: list[Path]) -> nn.Module:
    """Apply and merge each folder's LoRA in turn (oldest first); returns the plain HF model."""
    from peft import PeftModel

    for folder in folders:
        if not (Path(folder) / LORA_FILES[0]).is_file():
            continue  # a stage saved without LoRA
        llm = PeftModel.from_pretrained(llm, str(folder)).merge_and_unload()
    return llm


def load_non_lora(model: nn.Module, folder: Path) -> list[str]:
    """Load ``non_lora_trainables.safetensors`` into ``model`` (adapter and heads); returns the names loaded."""
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / NON_LORA_FILE))
    own = dict(model.named_parameters())
    for name, tensor in state.items():
        if name not in own:
            raise KeyError(f"{folder / NON_LORA_FILE} holds {name!r}, which the model does not have")
        if own[name].shape != tensor.shape:
            raise ValueError(f"{folder / NON_LORA_FILE}: {name} has shape {tuple(tensor.shape)}, the model "
                             f"{tuple(own[name].shape)} (different hidden size, frames or trajectories?)")
        with torch.no_grad():
            own[name].copy_(tensor.to(own[name].dtype))
    return sorted(state)


def load_previous_stage(model: nn.Module, folder: Path, stage: int, init_trajectory: bool = True) -> dict:
    """Start a stage from the previous one: merge its LoRA chain into ``model.llm`` and load its adapter and
    heads. Entering stage 2 from stage 1, rho is re-initialised from the trained phi (the paper's init).
    Returns the previous stage's meta."""
    from pite.model import init_trajectory_from_localization

    meta = read_stage_meta(folder)
    if meta["stage"] >= stage:
        raise ValueError(f"init_from {folder} is a stage-{meta['stage']} folder; stage {stage} must follow it")
    model.llm = merge_stage_loras(model.llm, stage_chain(folder))
    load_non_lora(model, folder)
    if stage == 2 and meta["stage"] == 1 and init_trajectory:
        init_trajectory_from_localization(model.traj_head, model.loc_head)
    return meta


def load_stage_model(folder: Path, *, dtype: torch.dtype | None = torch.float32, merge: bool = True):
    """Rebuild a trained PiTe model from a stage (or checkpoint) folder: ``(PiTeModel, tokenizer)``, eval mode.

    ``merge=False`` keeps the last stage's LoRA unmerged (a peft model), as it was during training.
    """
    from peft import PeftModel

    from pite.model import PiTeSettings, build_pite

    meta = read_stage_meta(folder)
    settings = PiTeSettings(**{k: meta["model"][k] for k in ("vision_dim", "num_trajectories", "num_frames",
                                                             "video_token_id")})
    model, tokenizer = build_pite(meta["llm"], settings, dtype=dtype)
    chain = stage_chain(folder)
    model.llm = merge_stage_loras(model.llm, chain[:-1])
    if merge:
        model.llm = merge_stage_loras(model.llm, chain[-1:])
    elif (chain[-1] / LORA_FILES[0]).is_file():
        model.llm = PeftModel.from_pretrained(model.llm, str(chain[-1]))
    load_non_lora(model, folder)
    return model.eval(), tokenizer
