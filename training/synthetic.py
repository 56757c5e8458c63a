"""Generated training samples in the model's batch contract, for smoke runs and tests (no data files).

``data.synthetic_samples: N`` in a train config trains on N of these instead of the stage's files. A sample
is ``<s>``, one video (``num_frames`` video tokens), a random prompt and a random answer; the answer carries
the labels, and in stages 1 and 2 two answer tokens carry a location (2,) or trajectories (P, N, 2) with
some invisible (-1, -1) points. Everything is a function of the seed, so runs repeat exactly.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


class SyntheticStageDataset(Dataset):
    """``num_samples`` deterministic samples of one stage.

    Item ``i``: ``input_ids`` (L,), ``labels`` (L,), ``video`` (T, D) frame features, ``head_pos`` (K,)
    positions of the target tokens, ``head_target`` (K, 2) in stage 1, (K, P, T, 2) in stage 2, (0,) in 3.
    """

    def __init__(self, num_samples: int, *, stage: int, vocab_size: int, video_token_id: int, num_frames: int,
                 vision_dim: int, num_trajectories: int = 3, text_length: int = 24, seed: int = 0) -> None:
        if stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
        self.num_samples = num_samples
        self.stage = stage
        self.vocab_size = vocab_size
        self.video_token_id = video_token_id
        self.num_frames = num_frames
        self.vision_dim = vision_dim
        self.num_trajectories = num_trajectories
        self.text_length = text_length
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def _tokens(self, n: int, gen: torch.Generator) -> torch.Tensor:
        ids = torch.randint(3, self.vocab_size, (n,), generator=gen)
        return ids.masked_fill(ids == self.video_token_id, 3)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_samples:
            raise IndexError(i)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        text = self.text_length - i % 3  # lengths differ, so batches carry padding
        prompt, answer = self._tokens(text // 2, gen), self._tokens(text - text // 2, gen)
        video = torch.full((self.num_frames,), self.video_token_id)
        input_ids = torch.cat([torch.tensor([1]), video, prompt, answer])
        labels = input_ids.clone()
        labels[: input_ids.numel() - answer.numel()] = IGNORE_INDEX
        start = input_ids.numel() - answer.numel()
        head_pos = torch.tensor([start + 1, start + answer.numel() // 2])
        if self.stage == 1:
            head_target = torch.rand(2, 2, generator=gen)
        elif self.stage == 2:
            head_target = torch.rand(2, self.num_trajectories, self.num_frames, 2, generator=gen)
            hidden = torch.rand(2, self.num_trajectories, self.num_frames, generator=gen) < 0.2
            head_target[hidden] = -1.0
        else:
            head_pos, head_target = head_pos[:0], torch.zeros(0)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "video": torch.randn(self.num_frames, self.vision_dim, generator=gen),
            "head_pos": head_pos,
            "head_target": head_target,
        }


class SyntheticCollator:
    """Right-pads samples into the model's batch: input_ids, labels, attention_mask (B, L), video_features
    (B, T, D), and ``loc_index``/``loc_target`` (stage 1) or ``traj_index``/``traj_target`` (stage 2) as
    flat indices into B*L."""

    def __init__(self, stage: int, pad_id: int = 0) -> None:
        self.stage = stage
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        length = max(s["input_ids"].numel() for s in samples)
        batch = len(samples)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(batch, length, dtype=torch.long)
        for b, s in enumerate(samples):
            n = s["input_ids"].numel()
            input_ids[b, :n], labels[b, :n], attention_mask[b, :n] = s["input_ids"], s["labels"], 1
        out = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "video_features": torch.stack([s["video"] for s in samples]),
        }
        if self.stage in (1, 2):
            name = "loc" if self.stage == 1 else "traj"
            out[f"{name}_index"] = torch.cat([b * length + s["head_pos"] for b, s in enumerate(samples)])
            out[f"{name}_target"] = torch.cat([s["head_target"] for s in samples])
        return out
