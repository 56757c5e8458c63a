"""Build a stage's data from settings: the dataset, the collator and a batch sampler."""

from __future__ import annotations

from dataclasses import replace

from training.data.base import ConversationDataset
from training.data.collator import Collator, CollatorSettings
from training.data.conversation import ConversationSettings
from training.data.sampler import LengthGroupedBatchSampler
from training.data.stage1 import Stage1Dataset
from training.data.stage2 import Stage2Dataset
from training.data.stage3 import Stage3Dataset


def build_dataset(stage: int, tokenizer, *, video_token_id: int, features, annotations=None, shards=None,
                  conversation: ConversationSettings | None = None, num_frames: int = 100,
                  seed: int = 0) -> ConversationDataset:
    """The dataset of ``stage``: 1 needs ``annotations`` (Localized Narratives JSONL), 2 ``shards``,
    3 ``annotations`` (VTimeLLM / Video-ChatGPT JSON); all need the ``features`` store."""
    common = dict(video_token_id=video_token_id, conversation=conversation)
    if stage == 1:
        return Stage1Dataset(_need(annotations, "annotations", 1), features, tokenizer, **common)
    if stage == 2:
        return Stage2Dataset(_need(shards, "shards", 2), features, tokenizer, num_frames=num_frames, seed=seed,
                             **common)
    if stage == 3:
        return Stage3Dataset(_need(annotations, "annotations", 3), features, tokenizer, num_frames=num_frames,
                             **common)
    raise ValueError(f"stage must be 1, 2 or 3, got {stage}")


def _need(value, name: str, stage: int):
    if not value:
        raise ValueError(f"stage {stage} needs {name}")
    return value


def build_stage_data(cfg, tokenizer, *, video_token_id: int):
    """``(dataset, collate_fn, batch_sampler or None)`` for a ``training.config.TrainConfig``.

    Reads ``cfg.data`` (stage, json, shards, features, max_length, packing, and ``conversation`` when the
    config has that section), ``cfg.model.num_frames``, ``cfg.optim.micro_batch`` and ``cfg.seed``. Padded
    batches come with a :class:`LengthGroupedBatchSampler` (little padding); packed ones with None (the
    trainer's random order: packing already leaves little padding).
    """
    data = cfg.data
    conversation = replace(getattr(data, "conversation", None) or ConversationSettings(), max_length=data.max_length)
    dataset = build_dataset(data.stage, tokenizer, video_token_id=video_token_id, features=data.features,
                            annotations=data.json or None, shards=data.shards or None, conversation=conversation,
                            num_frames=cfg.model.num_frames, seed=cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = Collator(pad_id, CollatorSettings(mode="pack" if data.packing else "pad", max_length=data.max_length))
    sampler = None if data.packing else LengthGroupedBatchSampler(dataset.lengths, cfg.optim.micro_batch, cfg.seed)
    return dataset, collate, sampler
