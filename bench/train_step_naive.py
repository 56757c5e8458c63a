"""The workload of ``bench/train_step.py`` and the naive reference formulation of a PiTe stage-2 step.

:func:`make_samples` draws the seeded stage-2 samples both formulations train on.

It computes the same loss as :class:`pite.model.PiTeModel` (same weights, samples and loss definition) the
way a straightforward LLaVA-style implementation would, and keeps every cost our formulation avoids:

- video embeddings spliced with a Python loop, one sample at a time (``torch.cat`` of the pieces);
- the batch padded to its longest sample, with a 2-D ``attention_mask`` (padding is computed);
- full (B, L, V) logits, upcast to float32, then ``F.cross_entropy`` on labels shifted by padding
  (the Hugging Face ``ForCausalLMLoss`` recipe: no extra copy of the logits for the shift);
- dense (B, L, P, N, 2) trajectory targets, -1 everywhere except at noun-phrase tokens;
- the trajectory head on every position, masked afterwards (same masked L1 as ``masked_l1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pite.model.losses import IGNORE_INDEX, MISSING_POINT
from pite.model.pite import PiTeModel

PAD_TOKEN_ID = 0


@dataclass
class Sample:
    """One stage-2 training sample (what a dataset yields before collation).

    input_ids (L,) with T copies of the video token; labels (L,) -100 where no loss; video (T, D_in) frame
    features; traj_pos (K,) positions of noun-phrase tokens; traj_target (K, P, N, 2) with -1 points.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    video: torch.Tensor
    traj_pos: torch.Tensor
    traj_target: torch.Tensor


@dataclass
class Workload:
    """The batch every formulation trains on: stage-2 samples of uniform random length."""

    samples: int = 8
    min_len: int = 200
    max_len: int = 2048
    video_tokens: int = 100
    prompt_tokens: int = 10
    question_tokens: int = 20
    phrases: int = 10
    missing_fraction: float = 0.2
    seed: int = 0


def make_samples(work: Workload, vocab: int, vision_dim: int, video_token_id: int) -> list[Sample]:
    """Seeded samples: prompt, T video tokens, question (no loss), answer (CE), ``phrases`` noun-phrase tokens
    in the answer, each with a (3, T, 2) trajectory target in [0, 1] whose points are -1 with probability
    ``missing_fraction``; frame features (T, vision_dim) ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(work.seed)
    lengths = torch.randint(work.min_len, work.max_len + 1, (work.samples,), generator=gen).tolist()
    answer_start = work.prompt_tokens + work.video_tokens + work.question_tokens
    if work.min_len < answer_start + 1 + work.phrases:
        raise ValueError(f"min_len {work.min_len} leaves no room for {work.phrases} phrase tokens in the answer")
    samples = []
    for length in lengths:
        ids = torch.randint(1, vocab, (length,), generator=gen)
        ids[work.prompt_tokens : work.prompt_tokens + work.video_tokens] = video_token_id
        labels = torch.full((length,), IGNORE_INDEX, dtype=torch.long)
        labels[answer_start:] = ids[answer_start:]
        pos = answer_start + 1 + torch.randperm(length - answer_start - 1, generator=gen)[: work.phrases]
        target = torch.rand(work.phrases, 3, work.video_tokens, 2, generator=gen)
        target[torch.rand(target.shape[:-1], generator=gen) < work.missing_fraction] = MISSING_POINT
        video = torch.randn(work.video_tokens, vision_dim, generator=gen)
        samples.append(Sample(ids, labels, video, pos.sort().values, target))
    return samples


@dataclass
class PaddedBatch:
    """Samples padded to the longest one. input_ids / labels / attention_mask (B, L); video (B, T, D_in);
    traj_dense (B, L, P, N, 2): -1 everywhere except at the target tokens (aligned with input_ids)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    video: torch.Tensor
    traj_dense: torch.Tensor


def collate_padded(samples: list[Sample]) -> PaddedBatch:
    """Right-pad ``samples`` to the longest one and build the dense trajectory targets."""
    length = max(int(s.input_ids.numel()) for s in samples)
    batch = len(samples)
    input_ids = torch.full((batch, length), PAD_TOKEN_ID, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    shape = samples[0].traj_target.shape[1:]  # (P, N, 2)
    traj_dense = torch.full((batch, length, *shape), MISSING_POINT)
    for b, s in enumerate(samples):
        n = s.input_ids.numel()
        input_ids[b, :n] = s.input_ids
        labels[b, :n] = s.labels
        attention_mask[b, :n] = 1
        traj_dense[b, s.traj_pos] = s.traj_target
    video = torch.stack([s.video for s in samples])
    return PaddedBatch(input_ids, labels, attention_mask, video, traj_dense)


def naive_splice(model: PiTeModel, input_ids: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Per-sample loop: embed the text, run the adapter, concatenate around the video span.

    input_ids (B, L) with one contiguous run of T video tokens per row, video (B, T, D_in) -> (B, L, d).
    """
    embed = model.llm.get_input_embeddings()
    frames = video.shape[1]
    rows = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b]
        is_video = ids == model.video_token_id
        start = int(is_video.nonzero()[0])
        text = embed(ids.masked_fill(is_video, PAD_TOKEN_ID))  # (L, d)
        frame_embeds = model.adapter(video[b]).to(text.dtype)  # (T, d)
        rows.append(torch.cat([text[:start], frame_embeds, text[start + frames :]]))
    return torch.stack(rows)


def naive_loss(model: PiTeModel, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage-2 loss ``CE + traj_weight * masked L1`` of a padded batch. Returns (loss, ce, l1), 0-dim float32."""
    settings = model.loss
    embeds = naive_splice(model, batch.input_ids, batch.video)
    length = embeds.shape[1]
    positions = torch.arange(length, device=embeds.device).expand(embeds.shape[0], length)
    hidden = model.llm.get_decoder()(
        inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions, use_cache=False
    ).last_hidden_state  # (B, L, d)

    logits = model.llm.get_output_embeddings()(hidden).float()  # (B, L, V): every position, padding included
    shifted = F.pad(batch.labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # label of token t+1 at position t
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1),
        ignore_index=IGNORE_INDEX, label_smoothing=settings.label_smoothing,
    )

    pred = model.traj_head(hidden)[:, :-1].float()  # (B, L-1, P, N, 2): the head on every position
    target = batch.traj_dense[:, 1:]  # (B, L-1, P, N, 2)
    valid = ~((target[..., 0] == MISSING_POINT) & (target[..., 1] == MISSING_POINT))  # (B, L-1, P, N)
    l1 = ((pred - target).abs().sum(-1) * valid).sum() / (2 * valid.sum())
    return ce + settings.traj_weight * l1, ce, l1
