"""Training data: the three stage datasets, the collator and a length-grouped sampler.

- ``conversation.py`` templates (Vicuna v1, or the tokenizer's chat template) and the one tokenisation of a
  sample: labels only on assistant turns, ``<video>`` -> the video block, head targets on exact tokens.
- ``base.py``   ConversationDataset: pre-scan, skip counts (``skipped``), lengths, items.
- ``stage1.py`` Localized Narratives (images, word locations), ``stage2.py`` PiTe-143k shards (dense captions,
  phrase trajectories), ``stage3.py`` VTimeLLM / Video-ChatGPT instructions.
- ``collator.py`` items -> the batch dict of ``PiTeModel.forward`` (packed rows or right padding).
- ``sampler.py`` LengthGroupedSampler (indices for one rank; deterministic per seed and epoch, resumable) and
  LengthGroupedBatchSampler (the job's micro-batches, for ``training.batches.RankBatches``).
- ``build.py``  build_dataset (by stage) and build_stage_data (from a ``TrainConfig``, for the trainer).

Typical use::

    dataset = build_dataset(2, tokenizer, video_token_id=model.video_token_id, features="out/features",
                            shards="out/annotate")
    sampler = LengthGroupedSampler(dataset.lengths, batch_size=4, seed=0)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=Collator(tokenizer.pad_token_id))
    for batch in loader:
        out = model(**model_inputs(batch, device))
"""

from __future__ import annotations

from training.data.base import ConversationDataset
from training.data.build import build_dataset, build_stage_data
from training.data.collator import MODEL_KEYS, Collator, CollatorSettings, model_inputs
from training.data.conversation import (
    BadSample,
    Conversation,
    ConversationSettings,
    EncodedSample,
    Target,
    TokenizationMismatch,
    encode,
    render,
    render_prompt,
)
from training.data.sampler import LengthGroupedBatchSampler, LengthGroupedSampler
from training.data.stage1 import Stage1Dataset
from training.data.stage2 import Stage2Dataset
from training.data.stage3 import Stage3Dataset


__all__ = [
    "MODEL_KEYS", "BadSample", "Collator", "CollatorSettings", "Conversation", "ConversationDataset",
    "ConversationSettings", "EncodedSample", "LengthGroupedBatchSampler", "LengthGroupedSampler", "Stage1Dataset",
    "Stage2Dataset", "Stage3Dataset", "Target", "TokenizationMismatch", "build_dataset", "build_stage_data",
    "encode", "model_inputs", "render", "render_prompt",
]
