"""The PiTe model: any Hugging Face causal LM plus a vision adapter and two prediction heads.

Built by composition, segment-anything style: ``PiTeModel(llm, adapter, loc_head, traj_head, video_token_id)``.
``llm`` may be a plain ``*ForCausalLM`` (LLaMA/Vicuna, Qwen2, ...) or a peft model wrapping one; the wrapper only
uses ``get_input_embeddings()``, ``get_decoder()``, ``get_output_embeddings()`` and ``generate()``.

Batch conventions (what the collator produces)
----------------------------------------------
- ``input_ids`` (B, L): the single ``<video>`` placeholder of a prompt is expanded by the collator into
  exactly T copies of ``video_token_id`` (T = frames per video, 100), so lengths are final before the model.
  ``video_token_id`` may be any integer, in the vocabulary or not (default -200, the LLaVA/VTimeLLM sentinel):
  those positions are never looked up in the embedding table; the adapter's T outputs are written into them
  with one ``masked_scatter``, in row-major order.
- ``video_features`` (V, T, D_in): one entry per video, in the order the videos appear in the flattened batch.
- ``labels`` (B, L): aligned with ``input_ids``, -100 where no loss; the model shifts them (the hidden state
  at t predicts token t+1). Labels equal to ``video_token_id`` are ignored too.
- Head targets as flat indices of the *target token* into B*L plus values, never dense label tensors:
  ``loc_index`` (K,) + ``loc_target`` (K, 2); ``traj_index`` (K,) + ``traj_target`` (K, P, N, 2).
  The head runs on the hidden state one position earlier (shifted like the LM loss).
- Padding: either right padding with a 2-D ``attention_mask``, or packing (``attention_mask=None`` and
  ``position_ids`` restarting at 0 per sample; see ``pite.model.packing``). Labels and head targets at a
  sequence's first token (``position_ids == 0``) are ignored: nothing precedes them.

Losses (``LossSettings``)
-------------------------
``loss = CE + loc_weight * L1(phi) + traj_weight * L1(rho)``, the L1 terms present only when their targets
are given. CE is label-smoothed (``label_smoothing``) and computed without (B, L, V) logits. L1 is masked
(``pite.model.losses.masked_l1``) unless ``official_unmasked`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pite.model.adapter import VisionAdapter
from pite.model.heads import LocalizationHead, TrajectoryHead
from pite.model.losses import (
    IGNORE_INDEX,
    checkpointed_linear_cross_entropy,
    fused_linear_cross_entropy,
    masked_l1,
    official_unmasked_l1,
)
from pite.model.packing import is_packed

DEFAULT_VIDEO_TOKEN_ID = -200


@dataclass
class LossSettings:
    """How PiTe's training loss is put together."""

    label_smoothing: float = 0.1
    """PyTorch-style label smoothing of the LM cross-entropy (the paper's stage 1 uses smoothed CE)."""
    loc_weight: float = 1.0
    """lambda for the localization L1 (stage 1)."""
    traj_weight: float = 1.0
    """lambda for the trajectory L1 (stage 2); the paper's 1/(P*N) is inside the masked mean."""
    official_unmasked: bool = False
    """Reproduce the official head loss: L1 over every position, -1 at non-target positions, nothing masked."""
    ce_chunk_size: int | None = None
    """Label positions projected to the vocabulary at a time; None: about 128 MiB of float32 logits per chunk
    for "fused" (``losses.auto_chunk_size``), 256 rows for "checkpointed"."""
    ce_impl: str = "auto"
    """"fused" (custom autograd over lm_head.weight), "checkpointed" (checkpointed calls of the lm_head
    module; needed for LoRA-wrapped heads or DeepSpeed ZeRO-3), or "auto" (fused when possible)."""

    def __post_init__(self) -> None:
        if self.ce_impl not in ("auto", "fused", "checkpointed"):
            raise ValueError(f"ce_impl must be 'auto', 'fused' or 'checkpointed', got {self.ce_impl!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ce_chunk_size is not None and self.ce_chunk_size < 1:
            raise ValueError(f"ce_chunk_size must be positive, got {self.ce_chunk_size}")

    @classmethod
    def for_stage(cls, stage: int, *, lam: float = 1.0, label_smoothing: float = 0.1, **overrides) -> "LossSettings":
        """The paper's recipe: stage 1 smoothed CE + lam*L1(phi); stage 2 CE + lam*L1(rho); stage 3 CE.

        Smoothing applies to stage 1 only (the paper names smoothed CE there and plain CE after).
        """
        if stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
        smoothing = label_smoothing if stage == 1 else 0.0
        return cls(label_smoothing=smoothing, loc_weight=lam, traj_weight=lam, **overrides)


@dataclass
class PiTeOutput:
    """What ``PiTeModel.forward`` returns. Losses are 0-dim float32 tensors, or None when not computed."""

    loss: torch.Tensor | None
    ce_loss: torch.Tensor | None
    l1_loss: torch.Tensor | None
    """Unweighted head L1 (the sum of the localization and trajectory terms when both are given)."""
    num_label_tokens: int
    """Tokens that entered the CE mean."""
    num_head_targets: int
    """Target tokens (rows of loc_index plus traj_index) that entered the head losses."""


class PiTeModel(nn.Module):
    """A causal LM that reads video frame features and predicts token locations and trajectories.

    Args:
        llm: a Hugging Face causal LM (or a peft model around one).
        adapter: frame features (..., D_in) -> (..., d).
        loc_head: phi, (..., d) -> (..., 2).
        traj_head: rho, (..., d) -> (..., P, N, 2).
        video_token_id: id filling the T positions of each video in ``input_ids``.
        loss: loss settings (changeable between stages: ``model.loss = LossSettings.for_stage(2)``).
    """

    def __init__(
        self,
        llm: nn.Module,
        adapter: VisionAdapter,
        loc_head: LocalizationHead,
        traj_head: TrajectoryHead,
        video_token_id: int = DEFAULT_VIDEO_TOKEN_ID,
        loss: LossSettings | None = None,
    ) -> None:
        super().__init__()
        self.llm = llm
        self.adapter = adapter
        self.loc_head = loc_head
        self.traj_head = traj_head
        self.video_token_id = int(video_token_id)
        self.loss = loss or LossSettings()

    # ---- inputs ---------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, video_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the adapter's outputs spliced in at the video positions.

        input_ids (B, L), video_features (V, T, D_in) -> inputs_embeds (B, L, d).
        """
        is_video = input_ids == self.video_token_id  # (B, L)
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_video, 0))  # (B, L, d)
        counts = is_video.sum(dim=1)  # (B,)
        total = int(counts.sum())
        if video_features is None:
            if total:
                raise ValueError(f"input_ids hold {total} video tokens but no video_features were given")
            return embeds
        if video_features.ndim != 3:
            raise ValueError(f"video_features must be (videos, frames, dim), got shape {tuple(video_features.shape)}")
        num_videos, frames = video_features.shape[:2]
        bad = (counts % frames).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"sample {bad[0]} has {int(counts[bad[0]])} video tokens, not a multiple of the {frames} frames per "
                f"video: the collator must expand each <video> placeholder into exactly {frames} tokens"
            )
        if total != num_videos * frames:
            raise ValueError(
                f"input_ids hold {total} video tokens ({total // frames} videos of {frames} frames, per sample: "
                f"{counts.tolist()}) but video_features has {num_videos} videos"
            )
        frame_embeds = self.adapter(video_features).to(embeds.dtype)  # (V, T, d)
        return embeds.masked_scatter(is_video[..., None], frame_embeds.reshape(-1, embeds.shape[-1]))

    @staticmethod
    def _positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None):
        """(B, L) position ids: the given ones, else counted over the attention mask (so left padding works),
        else 0..L-1."""
        if position_ids is not None:
            if attention_mask is not None and is_packed(position_ids):
                raise ValueError(
                    "packed position_ids need attention_mask=None (transformers detects packing only without a "
                    "2-D mask); give padding its own restarting positions instead"
                )
            return position_ids.to(input_ids.device).expand(input_ids.shape)
        if attention_mask is not None:
            return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder body. Returns (last hidden states (B, L, d), position ids (B, L))."""
        embeds = self.embed(input_ids, video_features)
        positions = self._positions(input_ids, attention_mask, position_ids)
        out = self.llm.get_decoder()(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=False
        )
        return out.last_hidden_state, positions

    # ---- losses ---------------------------------------------------------------------------------
    def _lm_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """hidden (N, d) at labelled positions, targets (N,) -> 0-dim mean CE, without (N, V) logits at once."""
        head = self.llm.get_output_embeddings()
        settings = self.loss
        impl = settings.ce_impl
        if impl == "auto":
            plain = type(head) is nn.Linear and not hasattr(head.weight, "ds_id")  # ds_id: ZeRO-3 partitioned
            impl = "fused" if plain else "checkpointed"
        if impl == "fused":
            return fused_linear_cross_entropy(
                hidden, head.weight, targets, head.bias,
                label_smoothing=settings.label_smoothing, chunk_size=settings.ce_chunk_size,
            )
        return checkpointed_linear_cross_entropy(
            hidden, head, targets, label_smoothing=settings.label_smoothing, chunk_size=settings.ce_chunk_size or 256
        )

    @staticmethod
    def _source_rows(index: torch.Tensor, positions: torch.Tensor, name: str) -> torch.Tensor:
        """Flat target-token indices (K,) into B*L -> flat indices of the hidden states that predict them."""
        batch, length = positions.shape
        index = index.to(positions.device).long()
        if index.ndim != 1:
            raise ValueError(f"{name} must be flat indices (K,) into batch*length, got shape {tuple(index.shape)}")
        if index.numel():
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= batch * length:
                raise ValueError(f"{name} holds {lo if lo < 0 else hi}, outside 0..{batch * length - 1}")
            first = (positions.reshape(-1)[index] == 0) | (index % length == 0)
            if bool(first.any()):
                k = int(first.nonzero()[0])
                raise ValueError(
                    f"{name}[{k}] points at the first token of a sequence (sample row {int(index[k]) // length}), "
                    "which no hidden state predicts"
                )
        return index - 1

    def _head_loss(self, head: nn.Module, hidden: torch.Tensor, positions, index, target, name):
        """Returns (unweighted L1, number of target rows) for one head."""
        if target is None or target.shape[0] != index.shape[0]:
            raise ValueError(f"{name}_target must have one row per {name}_index entry")
        rows = self._source_rows(index, positions, f"{name}_index")  # (K,)
        batch, length, dim = hidden.shape
        if not self.loss.official_unmasked:
            pred = head(hidden.reshape(-1, dim)[rows])  # (K, 2) or (K, P, N, 2)
            return masked_l1(pred, target.to(pred.device))[0], int(index.numel())
        pred_all = head(hidden[:, :-1].reshape(-1, dim))  # called as a module, so ZeRO-3 hooks gather it
        pred_all = pred_all.flatten(1)  # (B*(L-1), D): every position predicts
        shifted_rows = (rows // length) * (length - 1) + rows % length  # row in the (B, L-1) grid
        return official_unmasked_l1(pred_all, shifted_rows, target.to(pred_all.device)), int(index.numel())

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        loc_index: torch.Tensor | None = None,
        loc_target: torch.Tensor | None = None,
        traj_index: torch.Tensor | None = None,
        traj_target: torch.Tensor | None = None,
    ) -> PiTeOutput:
        """Compute the training loss.

        Args:
            input_ids: (B, L) with T video tokens per video.
            labels: (B, L) next-token targets aligned with input_ids, -100 = no loss.
            attention_mask: (B, L) 1 = real token, or None for packed rows.
            position_ids: (B, L) restarting at 0 per packed sample, or None.
            video_features: (V, T, D_in).
            loc_index / loc_target: (K,) flat target-token indices into B*L, (K, 2) points.
            traj_index / traj_target: (K,) flat target-token indices, (K, P, N, 2) trajectories.
        """
        hidden, positions = self.hidden_states(input_ids, attention_mask, position_ids, video_features)
        parts: list[torch.Tensor] = []
        ce_loss = l1_loss = None
        num_labels = num_targets = 0
        if labels is not None:
            targets = labels[:, 1:]  # (B, L-1): what the hidden state at t predicts
            keep = (targets != IGNORE_INDEX) & (targets != self.video_token_id) & (positions[:, 1:] > 0)
            if attention_mask is not None:
                keep &= attention_mask[:, 1:].bool()
            num_labels = int(keep.sum())
            ce_loss = self._lm_loss(hidden[:, :-1][keep], targets[keep])
            parts.append(ce_loss)
        for name, head, index, target, weight in (
            ("loc", self.loc_head, loc_index, loc_target, self.loss.loc_weight),
            ("traj", self.traj_head, traj_index, traj_target, self.loss.traj_weight),
        ):
            if index is None:
                continue
            l1, count = self._head_loss(head, hidden, positions, index, target, name)
            num_targets += count
            l1_loss = l1 if l1_loss is None else l1_loss + l1
            parts.append(weight * l1)
        loss = torch.stack(parts).sum() if parts else None
        return PiTeOutput(loss, ce_loss, l1_loss, num_labels, num_targets)

    # ---- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        **gen_kwargs,
    ) -> torch.Tensor:
        """Splice the video and call ``llm.generate(inputs_embeds=...)``.

        input_ids (B, L) left-padded for batches, attention_mask (B, L), video_features (V, T, D_in)
        -> (B, new) the generated tokens only (the prompt is not repeated).
        """
        embeds = self.embed(input_ids, video_features)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **gen_kwargs)

    @torch.no_grad()
    def predict_heads(
        self,
        input_ids: torch.Tensor,
        index: torch.Tensor,
        head: str = "trajectory",
        attention_mask: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A head's predictions for given target tokens.

        input_ids (B, L), index (K,) flat indices into B*L of the tokens to locate
        -> (K, P, N, 2) for ``head="trajectory"`` or (K, 2) for ``head="localization"``.
        """
        heads = {"trajectory": self.traj_head, "localization": self.loc_head}
        if head not in heads:
            raise ValueError(f"head must be one of {sorted(heads)}, got {head!r}")
        hidden, positions = self.hidden_states(input_ids, attention_mask, None, video_features)
        rows = self._source_rows(index, positions, "index")
        return heads[head](hidden.reshape(-1, hidden.shape[-1])[rows])

    @torch.no_grad()
    def generated_trajectories(
        self,
        input_ids: torch.Tensor,
        generated_ids: torch.Tensor,
        token_positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Trajectories for tokens of a generated answer (``--show-trajectories``).

        input_ids (B, L) the prompt as given to :meth:`generate`, generated_ids (B, G) its output,
        token_positions (K, 2) rows of (sample, index into generated_ids) -> (K, P, N, 2).
        """
        batch, prompt_len = input_ids.shape
        full = torch.cat([input_ids, generated_ids.to(input_ids.device)], dim=1)  # (B, L + G)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        full_mask = torch.cat([attention_mask, torch.ones_like(generated_ids).to(attention_mask)], dim=1)
        token_positions = token_positions.to(input_ids.device).long()
        flat = token_positions[:, 0] * full.shape[1] + prompt_len + token_positions[:, 1]
        return self.predict_heads(full, flat, "trajectory", full_mask, video_features)
