"""Resumable checkpoints: written atomically, the newest K kept, and a resume that repeats the run exactly.

Layout of ``<out_dir>/checkpoints/step-00000100/``::

    deepspeed/            engine.save_checkpoint: trainable weights, optimizer and lr-scheduler states,
                          and the trainer's client state (step, epoch, batch offset, counters)
    rng-rank00000.pt      python, numpy, torch (and CUDA) RNG states, one file per rank
    trainer_state.json    the client state again, for people
    adapter_config.json, adapter_model.safetensors, non_lora_trainables.safetensors, pite_stage.json
                          the stage weights at this step (``pite export --checkpoint`` reads them)

Everything is written into ``.tmp-step-00000100/`` and renamed when complete, so a folder named ``step-*``
is always whole: a run killed while saving leaves only a ``.tmp-*`` folder, which is ignored and removed.
Frozen weights are not saved (``exclude_frozen_parameters``): they come back from the base LLM and the
earlier stages. Checkpoints assume a file system shared by all ranks (as DeepSpeed's do).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINTS = "checkpoints"
DS_TAG = "deepspeed"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def resolve_resume(resume: str, out_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``"auto"`` the newest under out_dir (or None), ``"none"`` None,
    otherwise the named folder."""
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(checkpoint_root(out_dir))
        return found[-1] if found else None
    folder = Path(resume)
    if not (folder / DS_TAG).is_dir():
        raise FileNotFoundError(f"{folder} is not a training checkpoint (no {DS_TAG}/ folder inside)")
    return folder


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict:
    """This process's RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    """Undo :func:`capture_rng`."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- save / load


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    engine,
    root: Path,
    step: int,
    client_state: dict,
    *,
    rank: int,
    keep: int,
    write_weights: Callable[[Path], None] | None = None,
) -> Path:
    """Save a resumable checkpoint of ``step`` under ``root``; every rank must call it. Returns its folder.

    ``write_weights(folder)`` adds the stage weights (collective under ZeRO-3; rank 0 writes).
    After the rename, checkpoints beyond the newest ``keep`` are deleted.
    """
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state=client_state, save_latest=False,
                           exclude_frozen_parameters=True)
    torch.save(capture_rng(), tmp / f"rng-rank{rank:05d}.pt")
    if write_weights is not None:
        write_weights(tmp)
    _barrier()
    if rank == 0:
        (tmp / STATE_FILE).write_text(json.dumps(client_state, indent=2) + "\n")
        _replace_folder(tmp, final)
        prune_checkpoints(root, keep)
    _barrier()
    return final


def load_checkpoint(engine, folder: Path, rank: int) -> tuple[dict, dict]:
    """Load a checkpoint into ``engine`` (weights, optimizer, scheduler); returns (client state, RNG state).

    The RNG state is returned, not applied: restore it with :func:`restore_rng` right before the next step.
    """
    folder = Path(folder)
    path, client_state = engine.load_checkpoint(str(folder), tag=DS_TAG, load_module_strict=False,
                                                load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint in {folder / DS_TAG}")
    rng_file = folder / f"rng-rank{rank:05d}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: was the checkpoint written by fewer processes?")
    return client_state or {}, torch.load(rng_file, weights_only=True)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and leftovers of interrupted saves."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in Path(root).glob(".old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def remove_partial_checkpoints(root: Path) -> list[Path]:
    """Delete ``.tmp-*`` folders of saves that never finished; returns what was removed."""
    removed = sorted(Path(root).glob(".tmp-*")) if Path(root).is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _replace_folder(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, replacing an existing ``dst`` (moved aside first, then deleted)."""
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
