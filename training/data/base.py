"""What the three stage datasets share: the pre-scan, skip counts, feature loading and the item layout.

A stage dataset turns its records into :class:`~training.data.conversation.Conversation` objects and hands
them to :class:`ConversationDataset`, which pre-scans them once at construction:

- a sample whose video (or image) has no features in the store -> skipped, ``missing_feature``;
- a record that cannot be read or rendered -> skipped, ``bad_record`` (counted by the stage reader, or here);
- a tokenisation mismatch -> :class:`TokenizationMismatch` naming the sample (``on_mismatch: raise``, the
  default), or skipped as ``tokenization_mismatch``;
- longer than ``max_length`` -> cut at the end (counted in ``counts["truncated"]``), or skipped as
  ``too_long`` when the cut would lose the video, a head target or every label.

Nothing is replaced by another sample: ``len(dataset)`` is the number of good samples, ``skipped`` a
``Counter`` of reasons, ``lengths[i]`` the exact token count of item ``i`` (for length grouping and packing).
Texts are tokenised in batches during the scan; items are encoded again on access (cheap, and nothing large
stays in memory).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from pite.feature_store import FeatureStore
from training.data.conversation import (
    BadSample,
    Conversation,
    ConversationSettings,
    TokenizationMismatch,
    align,
    encode,
    render,
    tokenize,
    truncate,
)

log = logging.getLogger("pite.training.data")
SCAN_BATCH = 512


def open_store(features: FeatureStore | str | os.PathLike) -> FeatureStore:
    return features if isinstance(features, FeatureStore) else FeatureStore(features)


class ConversationDataset(Dataset):
    """Encoded conversations over a feature store.

    Args:
        conversations: the samples (consumed once, during the scan).
        tokenizer: a fast Hugging Face tokenizer.
        features: a :class:`FeatureStore` or its folder.
        video_token_id: the model's video token id (``PiTeModel.video_token_id``).
        frames_per_video: video tokens per sample: 100 for videos, 1 for images.
        conversation: template, system prompt, max length, mismatch policy.
        skipped / counts: counters to continue (stage readers count bad records into them while the
            conversations are consumed).

    Item ``i`` is a dict: ``sample_id`` str, ``input_ids`` / ``labels`` int64 (L,), ``video_features`` float16
    (T, D), and for a stage with a head ``loc_pos`` (K,) + ``loc_target`` (K, 2) or ``traj_pos`` (K,) +
    ``traj_target`` (K, P, N, 2): positions of the target tokens within the sample.
    """

    head: ClassVar[str | None] = None
    """"loc" (stage 1), "traj" (stage 2) or None (stage 3): which head targets items carry."""

    def __init__(self, conversations: Iterable[Conversation], tokenizer, features, *, video_token_id: int,
                 frames_per_video: int, conversation: ConversationSettings | None = None,
                 skipped: Counter | None = None, counts: Counter | None = None):
        self.tokenizer = tokenizer
        self.features = open_store(features)
        self.settings = conversation or ConversationSettings()
        self.video_token_id = int(video_token_id)
        self.frames_per_video = int(frames_per_video)
        self.skipped: Counter = skipped if skipped is not None else Counter()
        self.counts: Counter = counts if counts is not None else Counter()
        self.samples: list[Conversation] = []
        self.lengths: list[int] = []
        chunk: list[Conversation] = []
        for conv in conversations:
            if conv.video_id not in self.features:
                self.skipped["missing_feature"] += 1
                continue
            chunk.append(conv)
            if len(chunk) == SCAN_BATCH:
                self._scan(chunk)
                chunk = []
        self._scan(chunk)
        if self.skipped:
            log.warning("%s: %d good samples, skipped %s", type(self).__name__, len(self.samples), dict(self.skipped))

    def _scan(self, chunk: list[Conversation]) -> None:
        rendered = []
        for conv in chunk:
            try:
                rendered.append((conv, render(conv, self.tokenizer, self.settings)))
            except BadSample as exc:
                log.warning("skipping: %s", exc)
                self.skipped["bad_record"] += 1
        if not rendered:
            return
        tokens = tokenize([r.text for _, r in rendered], self.tokenizer, rendered[0][1].add_special_tokens)
        for (conv, text), (ids, offsets) in zip(rendered, tokens):
            try:
                sample = align(conv, text, ids, offsets, video_token_id=self.video_token_id,
                               frames_per_video=self.frames_per_video)
            except TokenizationMismatch:
                if self.settings.on_mismatch == "raise":
                    raise
                self.skipped["tokenization_mismatch"] += 1
                continue
            except BadSample as exc:
                log.warning("skipping: %s", exc)
                self.skipped["bad_record"] += 1
                continue
            kept = truncate(sample, self.settings.max_length, self.video_token_id)
            if kept is None:
                self.skipped["too_long"] += 1
                continue
            self.counts["truncated"] += len(kept) < len(sample)
            self.samples.append(conv)
            self.lengths.append(len(kept))

    def __len__(self) -> int:
        return len(self.samples)

    def encoded(self, index: int):
        """The :class:`EncodedSample` of item ``index`` (tokens, labels, head targets; no features)."""
        conv = self.samples[index]
        sample = encode(conv, self.tokenizer, self.settings, video_token_id=self.video_token_id,
                        frames_per_video=self.frames_per_video)
        return truncate(sample, self.settings.max_length, self.video_token_id)

    def __getitem__(self, index: int) -> dict:
        sample = self.encoded(index)
        features = np.asarray(self.features.get(sample.video_id), dtype=np.float16)
        if features.ndim != 2 or features.shape[0] != self.frames_per_video:
            raise ValueError(f"sample {sample.sample_id!r}: features of {sample.video_id!r} have shape "
                             f"{features.shape}, expected ({self.frames_per_video}, dim)")
        item = {"sample_id": sample.sample_id, "input_ids": torch.from_numpy(sample.input_ids),
                "labels": torch.from_numpy(sample.labels), "video_features": torch.from_numpy(features.copy())}
        if self.head == "loc":
            item["loc_pos"], item["loc_target"] = torch.from_numpy(sample.loc_pos), torch.from_numpy(sample.loc_target)
        elif self.head == "traj":
            item["traj_pos"] = torch.from_numpy(sample.traj_pos)
            item["traj_target"] = torch.from_numpy(sample.traj_target)
        return item

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"{type(self).__name__}: {len(self)} samples, {sum(self.lengths)} tokens, "
                f"truncated {self.counts['truncated']}, skipped {sum(self.skipped.values())} ({skipped})")
