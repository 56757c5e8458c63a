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

With SDPA the mask is still dense (B, 1, L, L) and attention cost is that of the whole row; rows of the
model's sequence length (2048) keep that bounded. On GPUs with flash-attention-2 the packed positions
are handled without any mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
