"""Items of a stage dataset -> the batch ``PiTeModel.forward`` takes (see ``pite/model/pite.py``).

Two layouts, no padding computed beyond the longest row:

- ``pack`` (default): the items are packed into rows of at most ``max_length`` tokens by first-fit decreasing
  (``pite.model.packing.first_fit_decreasing``); ``position_ids`` restart at 0 for every item
  (``packed_position_ids``), ``attention_mask`` is None, and rows are only as long as the fullest one (rounded
  up to ``pad_to_multiple_of``). Each item attends to itself only, so its tokens, labels and targets are the
  same as unpacked.
- ``pad``: one item per row, right-padded to the longest (rounded up), with a 2-D ``attention_mask``.

``video_features`` (V, T, D) lists the items' videos in the order they appear in the flattened batch (row by
row, left to right), as the model splices them. Head targets are flat indices ``row * L + column`` of the
target tokens plus their values. Padding is ``pad_token_id`` with label -100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from pite.config import option
from pite.model.packing import first_fit_decreasing, packed_position_ids
from training.data.conversation import IGNORE_INDEX

HEADS = ("loc", "traj")


@dataclass
class CollatorSettings:
    mode: Literal["pack", "pad"] = option("pack", "pack: several items per row (position ids restart); "
                                          "pad: one item per row, right padding and an attention mask.")
    max_length: int = option(2048, "Longest row in tokens (pack); items are never longer (datasets cut them).",
                             ge=16)
    pad_to_multiple_of: int = option(1, "Round the row length up to a multiple of this (8 helps tensor cores).",
                                     ge=1)


MODEL_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "video_features",
              "loc_index", "loc_target", "traj_index", "traj_target")
"""Batch keys ``PiTeModel.forward`` takes; the others (``sample_ids``, ``num_tokens``) are for logging."""


def model_inputs(batch: dict, device=None) -> dict:
    """The tensors of ``batch`` that ``PiTeModel.forward`` takes, moved to ``device`` when given."""
    return {k: v if device is None else v.to(device) for k, v in batch.items() if k in MODEL_KEYS and v is not None}


class Collator:
    """``collate(items) -> dict`` (the batch). Args: pad_token_id (the tokenizer's, or 0), settings."""

    def __init__(self, pad_token_id: int | None, settings: CollatorSettings | None = None):
        self.pad_token_id = int(pad_token_id or 0)
        self.settings = settings or CollatorSettings()

    def rows(self, lengths: list[int]) -> list[list[int]]:
        """Which items go in which row, in order."""
        if self.settings.mode == "pad":
            return [[i] for i in range(len(lengths))]
        return first_fit_decreasing(lengths, self.settings.max_length)

    def __call__(self, items: list[dict]) -> dict:
        """Items -> the batch dict:

        - ``input_ids`` / ``labels`` (B, L) int64; ``video_features`` (V, T, D) float16;
        - ``attention_mask`` (B, L) (pad) or ``position_ids`` (B, L) (pack);
        - ``loc_index`` (K,) + ``loc_target`` (K, 2) and/or ``traj_index`` (K,) + ``traj_target`` (K, P, N, 2)
          when the items carry those targets;
        - ``sample_ids``: per row, the ids of its items in order; ``num_tokens``: real (non-padding) tokens.
        """
        if not items:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(item["input_ids"]) for item in items]
        rows = self.rows(lengths)
        multiple = self.settings.pad_to_multiple_of
        longest = max(sum(lengths[i] for i in row) for row in rows)
        width = -(-longest // multiple) * multiple
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        heads = [h for h in HEADS if any(f"{h}_pos" in item for item in items)]
        index: dict[str, list[torch.Tensor]] = {h: [] for h in heads}
        target: dict[str, list[torch.Tensor]] = {h: [] for h in heads}
        videos = []
        for r, row in enumerate(rows):
            column = 0
            for i in row:
                item, n = items[i], lengths[i]
                input_ids[r, column:column + n] = item["input_ids"]
                labels[r, column:column + n] = item["labels"]
                videos.append(item["video_features"])
                for h in (h for h in heads if f"{h}_pos" in item):
                    index[h].append(item[f"{h}_pos"].long() + r * width + column)
                    target[h].append(item[f"{h}_target"].float())
                column += n
        shapes = {tuple(v.shape) for v in videos}
        if len(shapes) != 1:
            raise ValueError(f"items of one batch must have features of one shape (frames, dim), got {sorted(shapes)}")
        batch = {"input_ids": input_ids, "labels": labels, "video_features": torch.stack(videos).to(torch.float16)}
        if self.settings.mode == "pad":
            real = torch.tensor([lengths[row[0]] for row in rows])
            batch["attention_mask"] = (torch.arange(width)[None, :] < real[:, None]).long()
        else:
            batch["position_ids"] = packed_position_ids([[lengths[i] for i in row] for row in rows], width)
        for h in heads:
            batch[f"{h}_index"], batch[f"{h}_target"] = torch.cat(index[h]), torch.cat(target[h])
        batch["sample_ids"] = [[items[i]["sample_id"] for i in row] for row in rows]
        batch["num_tokens"] = sum(lengths)
        return batch
