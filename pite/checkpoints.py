"""One loader for every checkpoint PiTe can run: ours, official PiTe releases and VTimeLLM releases.

``load_pite_checkpoint(path) -> (PiTeModel, tokenizer, CheckpointInfo)`` finds the layout by the files present
(never by words in the path), in this order:

``pite-export``   ``pite_config.json``: a merged model written by ``pite export`` (``training.export``).
``pite-stage``    ``pite_stage.json``: a stage output folder (or one of its ``checkpoints/step-*`` folders) of
                  our trainer; the LoRA chain named by ``init_from`` is merged oldest first and the adapter and
                  heads come from ``non_lora_trainables.safetensors`` (``training.stage_weights``). A training
                  output folder without ``pite_stage.json`` but with complete checkpoints gives the newest one.
``official-pite`` PEFT LoRA stage folders (``adapter_config.json``, ``adapter_model.bin|.safetensors``,
                  ``non_lora_trainables.bin``) plus ``vision_adapter.bin`` (Linear 768 -> d).
``vtimellm``      the same LoRA folders plus ``mm_projector.bin`` (keys ``model.mm_projector.weight/bias``);
                  VTimeLLM has no heads, so the model's heads stay untrained (``info.trained_heads`` is empty).

A release folder is one LoRA folder, or holds the stage folders (sub-folders with ``adapter_config.json``),
merged in the order of the number after "stage" in their names (``pite-vicuna-7b-v1.5-stage1`` ...). The
projector file is looked for in the stage folders (latest first), the other sub-folders (VTimeLLM's stage 1
holds only ``mm_projector.bin``), then the folder itself. The official loaders' order is kept: the base LLM
(``base``, else ``base_model_name_or_path`` of the first stage), the projector file, then per stage its
``non_lora_trainables`` and its LoRA, merged (``merge_and_unload``).

Name mapping (:data:`MODULE_ALIASES`, :func:`map_name`)
    A foreign key names our ``adapter`` / ``loc_head`` / ``traj_head`` when a dot-separated part of it is one of
    the aliases below, followed by ``weight`` or ``bias``, optionally with peft's ``base_layer.`` between (the
    frozen base of a LoRA-wrapped layer)::

        adapter    vision_adapter | mm_projector | adapter | vision_projector | video_adapter
        loc_head   localization_projector | localization_head | loc_head | loc_projector
        traj_head  trajectory_projector | trajectory_head | traj_head | traj_projector

    The official names are ``model.vision_adapter``, ``model.localization_projector`` and
    ``model.trajectory_projector`` (saved as ``base_model.model.model.<name>.weight``). Other keys are looked up
    in the LLM without peft's ``base_model.model.`` prefix (e.g. ``model.embed_tokens.weight``). Keys that fit
    neither stop the loading with their list (``strict=False``: skipped, listed in ``info.notes``).

LoRA on the adapter and heads
    The official trainer puts LoRA on every ``nn.Linear`` but ``lm_head``, the adapter and heads included; while
    a stage is merged they are hosted in the LLM at the paths its LoRA keys name, so peft merges them too.

Pickles
    Foreign ``.bin`` files are read with ``torch.load(weights_only=True)``. A file that needs more (pickled
    classes) is a :class:`pite.cli.UserError` unless ``trust_pickle=True`` (``--trust-pickle``): unpickling runs
    code from the file, so only for files from a source you trust.
"""

from __future__ import annotations

import json
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pite.cli import UserError

MODULE_ALIASES: dict[str, tuple[str, ...]] = {
    "adapter": ("vision_adapter", "mm_projector", "adapter", "vision_projector", "video_adapter"),
    "loc_head": ("localization_projector", "localization_head", "loc_head", "loc_projector"),
    "traj_head": ("trajectory_projector", "trajectory_head", "traj_head", "traj_projector"),
}
"""Our PiTe submodule -> the names other codebases give it (see the module docstring)."""

_ALIAS_TO_OURS = {alias: ours for ours, aliases in MODULE_ALIASES.items() for alias in aliases}
_ALIASES = "|".join(sorted(map(re.escape, _ALIAS_TO_OURS), key=len, reverse=True))
_NAME_RULE = re.compile(rf"(?:^|\.)(?P<module>{_ALIASES})\.(?:base_layer\.)?(?P<param>weight|bias)$")
_LORA_KEY = re.compile(rf"^(?P<path>(?:.*\.)?(?:{_ALIASES}))\.lora_[A-Za-z_]+\.")
_PEFT_PREFIX = "base_model.model."
_STAGE_NUMBER = re.compile(r"stage[ _-]?(\d+)", re.IGNORECASE)
PROJECTOR_FILES = {"vision_adapter": "official-pite", "mm_projector": "vtimellm"}
"""Projector file stems (``.bin`` or ``.safetensors``) and the layout each one means, in order of preference."""
LORA_CONFIG = "adapter_config.json"
LORA_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA = ("non_lora_trainables.safetensors", "non_lora_trainables.bin")


@dataclass
class CheckpointInfo:
    """What was loaded, and from where."""

    layout: str
    """"pite-export", "pite-stage", "official-pite" or "vtimellm"."""
    path: str
    base: str | None = None
    """The base LLM reference (None for an export, which holds the merged LLM)."""
    merged: list[str] = field(default_factory=list)
    """LoRA folders merged into the LLM, in order."""
    files: list[str] = field(default_factory=list)
    """Other weight files read (projector, non-LoRA weights), in order."""
    trained_heads: list[str] = field(default_factory=list)
    """Heads with trained weights: "loc_head", "traj_head" (VTimeLLM: none)."""
    notes: list[str] = field(default_factory=list)


def map_name(key: str) -> str | None:
    """Our parameter name (``adapter.weight``, ``traj_head.bias``, ...) for a foreign key, or None."""
    match = _NAME_RULE.search(key)
    return f"{_ALIAS_TO_OURS[match['module']]}.{match['param']}" if match else None


def load_weights(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or pickled ``.bin`` state dict (weights-only unless ``trust_pickle``;
    non-tensor values are dropped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        raise UserError(f"{path} holds pickled objects besides tensors ({found[1] if found else 'see torch.load'}), "
                        "which weights-only loading refuses. Unpickling runs code from the file: if you trust "
                        "its source, rerun with --trust-pickle") from err
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a state dict (a mapping of names to tensors): got {type(state).__name__}")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def release_stages(path: Path) -> list[Path]:
    """The LoRA folders of a release, in merge order (see the module docstring); [] when there are none."""
    if (path / LORA_CONFIG).is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / LORA_CONFIG).is_file()) if path.is_dir() else []
    if len(found) < 2:
        return found
    numbers = {p: _STAGE_NUMBER.findall(p.name) for p in found}
    unnumbered = [p.name for p, n in numbers.items() if not n]
    keys = [int(n[-1]) for n in numbers.values() if n]
    if unnumbered or len(set(keys)) != len(keys):
        raise UserError(
            f"{path} holds several LoRA folders ({', '.join(p.name for p in found)}) and their order cannot be "
            "told: name them with their stage (...-stage1, ...-stage2, ...), or point --checkpoint at one")
    return sorted(found, key=lambda p: int(numbers[p][-1]))


def _projector_file(path: Path, stages: list[Path]) -> tuple[Path | None, str]:
    """(projector file, layout): the latest stage folder holding one, then other sub-folders, then ``path``."""
    others = sorted(p for p in path.iterdir() if p.is_dir() and p not in stages) if path.is_dir() else []
    for stem, layout in PROJECTOR_FILES.items():
        for folder in [*reversed(stages), *others, path]:
            found = _find(folder, (f"{stem}.safetensors", f"{stem}.bin"))
            if found is not None:
                return found, layout
    return None, "official-pite"


# ----------------------------------------------------------------------------- ours


def _stage_folder(path: Path) -> Path | None:
    """``path`` if it holds ``pite_stage.json``, else the newest complete checkpoint under it, else None."""
    from training.checkpoint import checkpoint_root, list_checkpoints
    from training.stage_weights import STAGE_FILE

    if (path / STAGE_FILE).is_file():
        return path
    steps = [p for p in list_checkpoints(checkpoint_root(path)) if (p / STAGE_FILE).is_file()]
    return steps[-1] if steps else None


def _load_stage(folder: Path, base: str | None, dtype) -> tuple[nn.Module, object, CheckpointInfo]:
    from pite.model import PiTeSettings
    from training.stage_weights import NON_LORA_FILE, load_non_lora, merge_stage_loras, read_stage_meta, stage_chain

    try:
        meta = read_stage_meta(folder)
        chain = stage_chain(folder)
        settings = PiTeSettings(**{k: meta["model"][k] for k in ("vision_dim", "num_trajectories", "num_frames",
                                                                 "video_token_id")})
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"cannot read the PiTe stage folder {folder}: {err}") from err
    model, tokenizer = _build(base or meta["llm"], settings, dtype, "--base" if base else f"{folder}/pite_stage.json")
    try:
        model.llm = merge_stage_loras(model.llm, chain)
        load_non_lora(model, folder)
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"cannot load the PiTe stage folder {folder}: {err}") from err
    return model, tokenizer, CheckpointInfo("pite-stage", str(folder), base or meta["llm"], [str(p) for p in chain],
                                            [str(folder / NON_LORA_FILE)], _heads(meta["stage"]))


def _load_export(folder: Path, dtype) -> tuple[nn.Module, object, CheckpointInfo]:
    from training.export import CONFIG_FILE, HEADS_FILE, load_exported

    try:
        stage = json.loads((folder / CONFIG_FILE).read_text()).get("stage", 3)
        model, tokenizer = load_exported(folder, dtype=dtype)
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"cannot load the PiTe export {folder}: {err}") from err
    return model, tokenizer, CheckpointInfo("pite-export", str(folder), None, [], [str(folder / HEADS_FILE)],
                                            _heads(stage))


def _heads(stage: int) -> list[str]:
    """Heads trained by the end of our ``stage``: phi from stage 1, rho from stage 2."""
    return ["loc_head"] + (["traj_head"] if stage >= 2 else [])


def _build(base: str, settings, dtype, named_by: str):
    from pite.model import build_pite
    from pite.models import ModelNotFoundError

    try:
        return build_pite(base, settings, dtype=dtype)
    except (ModelNotFoundError, OSError) as err:
        raise UserError(f"cannot load the base LLM {base!r} (named by {named_by}): {err}\n"
                        "Pass the base model with --base (a folder or a Hugging Face id).") from err


# ----------------------------------------------------------------------------- foreign releases


def _lora_config(folder: Path):
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(str(folder))
    except (OSError, TypeError, ValueError) as err:
        raise UserError(f"cannot read {folder / LORA_CONFIG}: {err}") from err
    if str(getattr(config, "peft_type", "")).upper().rsplit(".", 1)[-1] != "LORA":
        raise UserError(f"{folder} holds a {config.peft_type} adapter; only LoRA stages can be merged")
    return config


@contextmanager
def _hosted(llm: nn.Module, model: nn.Module, lora_keys: list[str]):
    """Host our adapter/heads inside ``llm`` at the module paths the LoRA keys name (e.g. ``model.vision_adapter``)
    so peft wraps and merges them; removed again on exit."""
    added = []
    paths = {m["path"] for key in lora_keys if (m := _LORA_KEY.match(key.removeprefix(_PEFT_PREFIX)))}
    try:
        for path in sorted(paths):
            parent_path, _, name = path.rpartition(".")
            try:
                parent = llm.get_submodule(parent_path)
            except AttributeError:
                continue  # its keys are reported as unexpected
            if name in parent._modules:
                raise UserError(f"LoRA keys name {path} for PiTe's {_ALIAS_TO_OURS[name]}, but the LLM has one")
            parent.add_module(name, getattr(model, _ALIAS_TO_OURS[name]))
            added.append((parent, name))
        yield
    finally:
        for parent, name in added:
            del parent._modules[name]


def _merge_lora(model: nn.Module, folder: Path, trust_pickle: bool, notes: list[str]) -> set[str]:
    """Apply and merge one LoRA folder into ``model.llm`` (adapter and heads included). Full weights of the
    adapter or heads in it (peft's ``modules_to_save``) then replace ours; returns the modules they set."""
    from peft import PeftModel, set_peft_model_state_dict

    config = _lora_config(folder)
    config.inference_mode, config.init_lora_weights = True, True
    if (weights := _find(folder, LORA_WEIGHTS)) is None:
        raise UserError(f"{folder} has {LORA_CONFIG} but no {' or '.join(LORA_WEIGHTS)}")
    state = load_weights(weights, trust_pickle)
    full = {k: state.pop(k) for k in list(state) if "lora_" not in k and map_name(k)}
    with _hosted(model.llm, model, list(state)):
        try:
            wrapped = PeftModel(model.llm, config)
        except ValueError as err:  # peft: no target module found
            raise UserError(f"the LoRA of {folder} does not fit the base LLM: {err}") from err
        result = set_peft_model_state_dict(wrapped, state)
        if lost := result.unexpected_keys:
            raise UserError(f"{len(lost)} weights of {folder} name layers the model does not have "
                            f"(wrong base LLM?), e.g. {', '.join(lost[:5])}")
        unset = [k for k in result.missing_keys if "lora_" in k]
        if unset:
            notes.append(f"{folder.name}: {len(unset)} LoRA weights absent from the file were left at zero")
        model.llm = wrapped.merge_and_unload()
    return _apply_state(model, full, weights, strict=True)[0]


def _apply_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path, strict: bool) -> tuple[set, list]:
    """Load mapped keys into the adapter/heads or the LLM; returns (our modules set, unmapped keys)."""
    own = dict(model.named_parameters())
    llm_own = model.llm.state_dict()
    touched, unmapped = set(), []
    for key, tensor in state.items():
        ours = map_name(key)
        if ours is not None:
            target = own[ours]
        else:
            name = key.removeprefix(_PEFT_PREFIX)
            if name not in llm_own:
                unmapped.append(key)
                continue
            ours, target = f"llm.{name}", llm_own[name]
        if tuple(target.shape) != tuple(tensor.shape):
            raise UserError(f"{source}: {key} has shape {tuple(tensor.shape)}, our {ours} "
                            f"{tuple(target.shape)} (another hidden size, feature size or trajectory count?)")
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))
        touched.add(ours.split(".")[0])
    if unmapped and strict:
        known = "; ".join(f"{ours}: {', '.join(a)}" for ours, a in MODULE_ALIASES.items())
        raise UserError(f"{source} holds {len(unmapped)} weights that fit neither the LLM nor PiTe's modules: "
                        f"{', '.join(unmapped[:10])}{' ...' if len(unmapped) > 10 else ''}. Known module names: "
                        f"{known} (see pite/checkpoints.py)")
    return touched, unmapped


def _settings_from(states: list[dict[str, torch.Tensor]]):
    """PiTeSettings with the frame-feature size, P and N read from the adapter and trajectory-head shapes."""
    from pite.model import PiTeSettings

    shapes = {map_name(key): tuple(tensor.shape) for state in states for key, tensor in state.items()}
    vision_dim = shapes["adapter.weight"][1] if "adapter.weight" in shapes else None
    num_traj = shapes["traj_head.weight"][0] if "traj_head.weight" in shapes else None
    settings = PiTeSettings(vision_dim=vision_dim or 768)
    if num_traj is not None:
        if num_traj % (2 * settings.num_frames):
            raise UserError(f"the trajectory head has {num_traj} outputs, not P x {settings.num_frames} x 2")
        settings.num_trajectories = num_traj // (2 * settings.num_frames)
    return settings, vision_dim is not None


def _load_release(path: Path, base: str | None, trust_pickle: bool, dtype, strict: bool):
    stages = release_stages(path)
    projector, layout = _projector_file(path, stages)
    non_lora = {stage: _find(stage, NON_LORA) for stage in stages}
    states = {stage: load_weights(file, trust_pickle) for stage, file in non_lora.items() if file is not None}
    projector_state = load_weights(projector, trust_pickle) if projector is not None else {}
    settings, has_adapter = _settings_from([projector_state, *states.values()])
    if not has_adapter:
        raise UserError(f"no vision adapter weights in {path}: expected vision_adapter.bin (PiTe) or mm_projector.bin "
                        "(VTimeLLM) in it or its stage folders, or adapter weights in non_lora_trainables")
    named_by = "--base" if base else f"{stages[0] / LORA_CONFIG}" if stages else ""
    base = base or (getattr(_lora_config(stages[0]), "base_model_name_or_path", None) if stages else None)
    if not base:
        raise UserError(f"{path}: no base LLM is named (base_model_name_or_path); pass --base")
    model, tokenizer = _build(base, settings, dtype, named_by)
    info = CheckpointInfo(layout, str(path), base)
    trained: set[str] = set()

    def apply(source: Path | None, state: dict | None) -> None:
        if source is None or state is None:
            return
        touched, unmapped = _apply_state(model, state, source, strict)
        trained.update(touched)
        info.files.append(str(source))
        if unmapped:
            info.notes.append(f"{source}: skipped {len(unmapped)} unmapped keys: {', '.join(unmapped[:10])}")

    apply(projector, projector_state)
    for stage in stages:  # the official order: a stage's non-LoRA weights, then its LoRA merged
        apply(non_lora[stage], states.get(stage))
        trained |= _merge_lora(model, stage, trust_pickle, info.notes)
        info.merged.append(str(stage))
    info.trained_heads = sorted(trained & {"loc_head", "traj_head"})
    return model, tokenizer, info


def load_pite_checkpoint(path: str | Path, base: str | None = None, trust_pickle: bool = False,
                         device: str | torch.device = "cpu", dtype: torch.dtype | None = None, *,
                         strict: bool = True):
    """Load any supported checkpoint (see the module docstring) -> ``(PiTeModel in eval mode, tokenizer, info)``.

    Args:
        path: the checkpoint folder.
        base: the base LLM (a folder, HF id or ``tinykit://`` ref); None: the one the checkpoint names.
        trust_pickle: allow full unpickling of foreign ``.bin`` files (runs code from them).
        device: where the model ends up.
        dtype: dtype of the LLM (None: as saved); the adapter and heads follow it.
        strict: stop on foreign weights that map to nothing (False: skip them, listed in ``info.notes``).
    """
    from training.export import CONFIG_FILE

    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"checkpoint {path} {'is a file: pass its folder' if path.exists() else 'does not exist'}")
    if (path / CONFIG_FILE).is_file():
        model, tokenizer, info = _load_export(path, dtype)
    elif (stage := _stage_folder(path)) is not None:
        model, tokenizer, info = _load_stage(stage, base, dtype)
        if stage != path:
            info.notes.append(f"{path} has no final weights yet: loaded its newest checkpoint {stage.name}")
    elif release_stages(path) or _projector_file(path, [])[0] is not None:
        model, tokenizer, info = _load_release(path, base, trust_pickle, dtype, strict)
    else:
        raise UserError(
            f"{path} is not a checkpoint: expected pite_config.json (pite export), pite_stage.json (a training "
            f"stage), or PEFT LoRA stage folders ({LORA_CONFIG}) with vision_adapter.bin / mm_projector.bin")
    if info.layout == "vtimellm":
        info.notes.append("VTimeLLM has no localization or trajectory head: those heads are untrained")
    return model.to(device).eval(), tokenizer, info
