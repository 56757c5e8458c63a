"""Packing several samples into one row, so padding is (almost) never computed.

Convention (what transformers 5.x LLaMA/Qwen2 understand natively):

- A packed row is the concatenation of samples; ``position_ids`` restart at 0 at the start of each sample.
- ``attention_mask`` is **None**. transformers then derives the sequences from the position ids
  (a new sequence wherever consecutive positions do not increase by exactly 1) and builds a block-diagonal
  causal mask for SDPA / eager / flex attention; flash-attention-2 uses the same position ids for its
  variable-length kernels. Each sample attends only to itself, with its own rotary positions.
- The unused tail of a row is padding; it gets positions 0, 1, ... (a segment of its own, which no
  real token attends to) and labels -100.
- The first token of every sample can never be predicted (nothing before it in its sequence), so the
  model ignores labels and head targets where ``position_ids == 0``.

With transformers' plain ``sdpa`` the mask is a dense (B, 1, L, L) block-diagonal tensor and the kernel
computes every block of the row. ``enable_packed_attention(llm)`` switches an ``sdpa`` LLM to
``packed_sdpa`` (``packed_sdpa_attention``): no 4-D mask is built for packed rows, and each sample runs its
own causal SDPA call. Padded batches (a 2-D ``attention_mask``) and generation with a cache still go through
transformers' standard SDPA path. On GPUs with flash-attention-2 the packed positions are handled without
any mask (``enable_packed_attention`` leaves other implementations alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

PACKED_SDPA = "packed_sdpa"
"""Name under which ``packed_sdpa_attention`` (and its mask builder) are registered in transformers."""


def first_fit_decreasing(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Group sample indices into rows of at most ``row_length`` tokens (first-fit decreasing bin packing).

    Returns a list of rows, each a list of sample indices (longest first). Raises if a sample is too long.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        if lengths[i] > row_length:
            raise ValueError(f"sample {i} has {lengths[i]} tokens, more than the row length {row_length}")
        for r, space in enumerate(free):
            if lengths[i] <= space:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(row_length - lengths[i])
    return rows


def packed_position_ids(row_lengths: Sequence[Sequence[int]], row_length: int | None = None) -> torch.Tensor:
    """Position ids for packed rows.

    Args:
        row_lengths: per row, the lengths of the samples packed into it, in order.
        row_length: total length L of every row (default: the longest row). The tail is padding with
            positions 0, 1, ... of its own.

    Returns:
        (B, L) int64, restarting at 0 at each sample (and at the padding tail).
    """
    totals = [sum(r) for r in row_lengths]
    length = max(totals, default=0) if row_length is None else row_length
    if any(t > length for t in totals):
        raise ValueError(f"a row holds {max(totals)} tokens, more than the row length {length}")
    rows = []
    for lengths in row_lengths:
        pieces = [torch.arange(n) for n in lengths if n > 0]
        tail = length - sum(lengths)
        if tail:
            pieces.append(torch.arange(tail))
        rows.append(torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long))
    return torch.stack(rows).long()


def sequence_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) position ids -> (B, L) int64 index of the packed sequence each token belongs to (0, 1, ...).

    A new sequence starts wherever the position does not increase by exactly 1 (transformers' rule).
    """
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    return (step != 1).cumsum(-1)


def is_packed(position_ids: torch.Tensor) -> bool:
    """True when some row of (B, L) ``position_ids`` holds more than one sequence."""
    return bool((sequence_ids(position_ids)[:, -1] > 0).any()) if position_ids.numel() else False


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) position ids -> (B, 1, L, L) bool, True where query i may attend key j (same sequence, j <= i).

    For inspection and tests; the model lets transformers build the mask for its attention backend.
    """
    seq = sequence_ids(position_ids)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    same = seq[:, :, None] == seq[:, None, :]
    return (same & causal)[:, None]


def segment_bounds(position_ids: torch.Tensor) -> list[list[int]]:
    """(B, L) position ids -> per row, the cut points [0, c1, ..., L] between its packed sequences."""
    length = position_ids.shape[-1]
    starts = torch.diff(position_ids, dim=-1) != 1  # (B, L-1): True where token i+1 starts a sequence
    return [[0, *(row.nonzero().flatten() + 1).tolist(), length] for row in starts]


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention run separately on each packed sequence of a row (transformers attention interface).

    Args:
        module: the attention layer (``num_key_value_groups``, ``training``, ``is_causal`` are read).
        query: (B, H, L, D).
        key, value: (B, H_kv, L, D) with H a multiple of H_kv (GQA).
        attention_mask: None for packed / unpadded rows; anything else (a 4-D mask from a padded batch)
            defers to transformers' standard ``sdpa_attention_forward``.
        dropout: attention dropout probability, used only while ``module.training``.
        scaling: softmax scale (default 1/sqrt(D)).
        position_ids: (B, L) restarting at 0 per packed sequence; the decoder layer forwards them here.

    Returns:
        ((B, L, H, D) attention output, None).

    Without position ids, with a mask, with a cache (key longer than query) or for a non-causal module,
    this is exactly transformers' ``sdpa`` attention.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_length = query.shape[2]
    if (
        attention_mask is not None
        or position_ids is None
        or q_length <= 1
        or key.shape[2] != q_length
        or not getattr(module, "is_causal", True)
        or kwargs.get("is_causal") is False
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, position_ids=position_ids,
            **kwargs,
        )
    extra = {}
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        extra["enable_gqa"] = True  # same as transformers' sdpa without a mask; key/value keep H_kv heads
    dropout_p = dropout if module.training else 0.0
    bounds = segment_bounds(position_ids.expand(query.shape[0], -1))
    rows = []
    for b, cuts in enumerate(bounds):
        if len(cuts) == 2:  # one sequence: the whole row
            pieces = [F.scaled_dot_product_attention(
                query[b : b + 1], key[b : b + 1], value[b : b + 1],
                dropout_p=dropout_p, is_causal=True, scale=scaling, **extra,
            )]
        else:
            pieces = [
                F.scaled_dot_product_attention(
                    query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                    dropout_p=dropout_p, is_causal=True, scale=scaling, **extra,
                )
                for s, e in zip(cuts[:-1], cuts[1:])
            ]
        rows.append(torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0])
    output = torch.cat(rows) if len(rows) > 1 else rows[0]  # (B, H, L, D)
    return output.transpose(1, 2).contiguous(), None


def packed_sdpa_mask(*, q_length: int, kv_length: int, attention_mask=None, q_offset=0, kv_offset=0, **kwargs):
    """Mask builder paired with ``packed_sdpa_attention``.

    No 2-D mask, no cache offset: returns None (the attention splits rows by ``position_ids`` itself).
    Otherwise (padding or a cache) builds transformers' usual SDPA mask.
    """
    from transformers.masking_utils import sdpa_mask

    unshifted = isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == 0 == kv_offset
    if attention_mask is None and q_length == kv_length and unshifted:
        return None
    return sdpa_mask(
        q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, q_offset=q_offset,
        kv_offset=kv_offset, **kwargs,
    )


def register_packed_attention() -> None:
    """Register ``packed_sdpa`` with transformers' attention and mask interfaces (global; idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ALL_ATTENTION_FUNCTIONS._global_mapping.get(PACKED_SDPA) is not packed_sdpa_attention:
        AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    if ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(PACKED_SDPA) is not packed_sdpa_mask:
        AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def enable_packed_attention(llm: torch.nn.Module) -> bool:
    """Switch a HF causal LM (or a peft model around one) from ``sdpa`` to ``packed_sdpa``.

    Only ``sdpa`` configs (and sub-configs) are switched: eager, flash-attention and flex keep their own
    handling of packed rows. Idempotent. Returns True when the LLM now uses ``packed_sdpa``.
    """
    register_packed_attention()
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    configs = [base.config]
    for name in getattr(base.config, "sub_configs", {}) or {}:
        sub = getattr(base.config, name, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            configs.append(sub)
    switched = False
    for config in configs:
        if config._attn_implementation == "sdpa":
            config._attn_implementation = PACKED_SDPA
        switched |= config._attn_implementation == PACKED_SDPA
    return switched
