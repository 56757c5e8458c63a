"""Build a PiTe model from settings, and choose what trains in each stage.

``build_pite(llm_ref, settings)`` loads the LLM through ``pite.models.load_causal_lm`` and assembles the
rest around it; ``assemble_pite(llm, settings)`` does the assembling for an LLM you already have (tests build
tiny ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` from configs and pass them here).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from pite.model.adapter import VisionAdapter
from pite.model.heads import LocalizationHead, TrajectoryHead, init_trajectory_from_localization
from pite.model.packing import enable_packed_attention
from pite.model.pite import DEFAULT_VIDEO_TOKEN_ID, LossSettings, PiTeModel

VIDEO_TOKEN = "<video>"


@dataclass
class PiTeSettings:
    """The parts of PiTe around the LLM."""

    vision_dim: int = 768
    """Size of one frame feature (CLIP ViT-L/14 ``image_embeds``: 768)."""
    num_trajectories: int = 3
    """P, key trajectories per phrase."""
    num_frames: int = 100
    """N, frames per video (and points per trajectory)."""
    video_token_id: int | None = None
    """Id the collator writes at each of a video's N positions; need not be in the vocabulary. None:
    the tokenizer's ``<video>`` special token when it has one (``build_pite``), else -200."""
    loss: LossSettings = field(default_factory=LossSettings)
    """Loss weights, smoothing and CE implementation."""
    packed_attention: bool = True
    """Switch an ``sdpa`` LLM to ``packed_sdpa`` (per-sample causal SDPA on packed rows, no dense
    (B, 1, L, L) mask; padded batches keep the standard path). Other attention implementations are kept."""


def assemble_pite(llm: nn.Module, settings: PiTeSettings | None = None) -> PiTeModel:
    """Wrap ``llm`` (a HF causal LM, possibly a peft model) with a fresh adapter and heads.

    The adapter and heads get the dtype and device of the LLM's input embeddings; rho starts as phi repeated.
    With ``settings.packed_attention`` an ``sdpa`` LLM is switched to ``packed_sdpa`` (see
    ``pite.model.packing.enable_packed_attention``).
    """
    settings = settings or PiTeSettings()
    if settings.packed_attention:
        enable_packed_attention(llm)
    embeddings = llm.get_input_embeddings()
    hidden_size = embeddings.weight.shape[1]
    adapter = VisionAdapter(settings.vision_dim, hidden_size)
    loc_head = LocalizationHead(hidden_size)
    traj_head = TrajectoryHead(hidden_size, settings.num_trajectories, settings.num_frames)
    init_trajectory_from_localization(traj_head, loc_head)
    like = embeddings.weight
    for module in (adapter, loc_head, traj_head):
        module.to(device=like.device, dtype=like.dtype)
    video_token_id = DEFAULT_VIDEO_TOKEN_ID if settings.video_token_id is None else settings.video_token_id
    return PiTeModel(llm, adapter, loc_head, traj_head, video_token_id, settings.loss)


def build_pite(llm_ref: str, settings: PiTeSettings | None = None, *, dtype: torch.dtype | str | None = None):
    """Load the LLM named by ``llm_ref`` (a path, hub id or ``tinykit://`` name) and assemble PiTe around it.

    Returns (PiTeModel, tokenizer). Unless ``settings.video_token_id`` is set, the model's video token is the
    tokenizer's ``<video>`` special token when it has one (the collator must use ``model.video_token_id``).
    """
    from pite.models import load_causal_lm  # imported here: assembling needs no loader

    llm, tokenizer = load_causal_lm(llm_ref, dtype=dtype)
    settings = settings or PiTeSettings()
    if settings.video_token_id is None:
        settings = replace(settings, video_token_id=video_token_id_of(tokenizer))
    return assemble_pite(llm, settings), tokenizer


def video_token_id_of(tokenizer, token: str = VIDEO_TOKEN) -> int:
    """The tokenizer's id for ``<video>`` if it is one of its added tokens, else the -200 sentinel."""
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    return int(added[token]) if token in added else DEFAULT_VIDEO_TOKEN_ID


STAGE_MODULES = {1: ("adapter", "loc_head"), 2: ("traj_head",), 3: ()}
"""Non-LoRA submodules trained in each stage; LoRA weights train in every stage."""


def set_trainable(model: PiTeModel, stage: int) -> list[str]:
    """Freeze everything, then unfreeze LoRA weights plus the stage's modules.

    Stage 1: adapter, LoRA, phi. Stage 2: LoRA, rho. Stage 3: LoRA. Works whether or not LoRA (peft) has
    been applied to ``model.llm``; LoRA weights are recognised by peft's ``lora_`` parameter names.
    Returns the names of the trainable parameters.
    """
    if stage not in STAGE_MODULES:
        raise ValueError(f"stage must be one of {sorted(STAGE_MODULES)}, got {stage}")
    prefixes = tuple(f"{name}." for name in STAGE_MODULES[stage])
    trainable = []
    for name, param in model.named_parameters():
        train = name.startswith(prefixes) or (name.startswith("llm.") and "lora_" in name)
        param.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable
