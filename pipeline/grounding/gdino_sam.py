"""GroundingDINO boxes, then segment-anything masks prompted with those boxes.

**Prompt.** The phrases of a frame go into one GroundingDINO prompt, ``"a pen . a white table ."``.
Each phrase is first cleaned by :func:`clean_phrase`: lower case (as GroundingDINO does), runs of
white space collapsed, and ``.`` / ``?`` replaced by spaces, because the model splits its prompt into
phrases at those two tokens. Phrases that are equal after cleaning share one slot in the prompt and
one result. A phrase that is empty after cleaning is not sent and gets ``no_box``.

**Token spans.** The prompt is tokenised once, with character offsets; a phrase's tokens are those
whose offsets overlap the phrase's characters in the prompt (:func:`token_spans`). Phrases are never
tokenised on their own, so repeated words ("a cat . the cat .") and word pieces map to the right
positions.

**Long prompts.** The text encoder reads at most ``max_text_len`` tokens (256 for the released
models). A prompt that would be longer is split greedily, in phrase order, into several prompts that
each fit (:func:`plan_prompts`); each is one detector call on the same preprocessed image, so a frame
costs one call per prompt: one in practice (256 tokens hold dozens of noun phrases). A single phrase
longer than a whole prompt is cut to its first tokens that fit, at a token boundary.

**Thresholds** (:func:`select_boxes`). For query box q and phrase p, with the phrase's token positions
S_p and token probabilities sigmoid(logits[q, t]):

- phrase score: s(q, p) = max over t in S_p of sigmoid(logits[q, t]);
- the phrase's box is its highest-scoring query, q* = argmax_q s(q, p) (the first on ties);
- box_threshold: p is grounded only if s(q*, p) >= box_threshold. GroundingDINO keeps a box when its
  max token score over the *whole* prompt passes; taking the max over p's own tokens instead means a
  box found for another phrase of the prompt cannot ground p ("a man . a hat ." must not give the
  man's box to "a hat" just because "hat" scores 0.3 on it);
- text_threshold: GroundingDINO's label of box q is the set of tokens with sigmoid(logits[q, t]) >=
  text_threshold; p must be part of the label of q*, i.e. some token of p reaches text_threshold. As
  the phrase score is the max over p's tokens, this is s(q*, p) >= text_threshold: with the usual
  settings (text_threshold <= box_threshold) the box threshold decides, and text_threshold only
  binds when set higher.

Both comparisons are ``>=``. A chosen box is converted from (cx, cy, w, h) to (x0, y0, x1, y1) and
clipped to [0, 1]; a box with no area left after clipping grounds nothing (``no_box``).

**Masks.** :class:`GdinoSamGrounder` sets the frame once in a ``SamPredictor`` and predicts the
masks of all grounded boxes in one batched ``predict_torch`` call (``multimask_output=False``), at
the frame's size. :class:`GdinoBoxGrounder` (backend ``gdino_box``) uses the box rectangle as the
mask, for when SAM weights are missing. Either way, empty masks are dropped (``empty_mask``) and so
are masks below ``min_area_frac`` of the frame (``mask_too_small``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.grounding.base import (
    NO_BOX,
    Grounder,
    Grounding,
    box_mask,
    check_inputs,
    resolve_device,
    with_mask,
)

Box = tuple[float, float, float, float]


# ----------------------------------------------------------------------------- prompt


def clean_phrase(text: str) -> str:
    """Lower case, ``.`` and ``?`` (GroundingDINO's phrase separators) turned into spaces, white space
    collapsed: ``"Mr. Smith's  DOG?"`` -> ``"mr smith's dog"``."""
    return " ".join(text.lower().replace(".", " ").replace("?", " ").split())


def join_phrases(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The prompt ``"p1 . p2 ."`` and each phrase's (start, end) characters in it."""
    spans, start = [], 0
    for phrase in phrases:
        spans.append((start, start + len(phrase)))
        start += len(phrase) + 3  # " . "
    return " . ".join(phrases) + " .", spans


def token_spans(offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token positions of each character span: the tokens whose (start, end) offsets overlap it.
    Special tokens, whose offsets are empty (0, 0), belong to no span."""
    return [
        [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
        for start, end in char_spans
    ]


@dataclass
class Prompt:
    """One detector prompt.

    text: the prompt, ``"p1 . p2 ."``.
    phrases: for each phrase in it, its index in the list given to :func:`plan_prompts`.
    spans: for each phrase in it, its token positions in ``encoding``.
    encoding: the tokenizer's tensors for ``text`` (``input_ids`` (1, T), ``attention_mask``, ...).
    """

    text: str
    phrases: list[int]
    spans: list[list[int]]
    encoding: dict[str, Any]


def encode(tokenizer, text: str) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """Tensors of ``text`` for the model, and the (start, end) character offsets of its tokens."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    except NotImplementedError as err:
        raise TypeError(f"{type(tokenizer).__name__} gives no character offsets; GroundingDINO grounding "
                        "needs a fast (tokenizers-backed) tokenizer") from err
    offsets = [(int(s), int(e)) for s, e in enc.pop("offset_mapping")[0].tolist()]
    return dict(enc), offsets


def plan_prompts(phrases: Sequence[str], tokenizer, max_tokens: int) -> list[Prompt]:
    """Prompts covering ``phrases`` (cleaned, distinct, non-empty), each at most ``max_tokens``
    tokens: one prompt when all fit, else greedy chunks in phrase order. A phrase that does not fit
    in a prompt on its own is cut after its first tokens that do."""
    text, chars = join_phrases(phrases)
    encoding, offsets = encode(tokenizer, text)
    spans = token_spans(offsets, chars)
    if len(offsets) <= max_tokens:
        return [Prompt(text, list(range(len(phrases))), spans, encoding)]

    overhead = len(offsets) - sum(len(s) for s in spans) - len(phrases)  # [CLS], [SEP]; one "." each
    budget = max_tokens - overhead  # tokens for phrases and their separators, per prompt
    if budget < 2:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for a phrase")
    texts, chunks, used = list(phrases), [[]], 0
    for i, span in enumerate(spans):
        cost = len(span) + 1
        if cost > budget:  # keep the first budget - 1 tokens of the phrase
            texts[i] = phrases[i][: offsets[span[budget - 2]][1] - chars[i][0]]
            cost = budget
        if used + cost > budget and chunks[-1]:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += cost

    prompts = []
    for chunk in chunks:
        text, chars = join_phrases([texts[i] for i in chunk])
        encoding, offsets = encode(tokenizer, text)
        if len(offsets) > max_tokens:
            raise RuntimeError(f"prompt split failed: {len(offsets)} tokens > {max_tokens} for {text!r}")
        prompts.append(Prompt(text, chunk, token_spans(offsets, chars), encoding))
    return prompts


# ----------------------------------------------------------------------------- box selection


@dataclass(frozen=True)
class Detection:
    """The detector's answer for one phrase.

    box: normalised xyxy in [0, 1] when the phrase is grounded, else None.
    score: the phrase score s(q*, p) of its best query (0 for a phrase without tokens).
    query: the index q* of that query (None for a phrase without tokens).
    message: why ``box`` is None (empty when grounded).
    """

    box: Box | None
    score: float
    query: int | None
    message: str = ""


def cxcywh_to_xyxy(boxes):
    """(N, 4) (cx, cy, w, h) -> (N, 4) (x0, y0, x1, y1), clipped to [0, 1]."""
    import torch

    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0.0, 1.0)


def select_boxes(logits, boxes, spans: Sequence[Sequence[int]], box_threshold: float,
                 text_threshold: float) -> list[Detection]:
    """One :class:`Detection` per phrase, by the rule in the module docstring. Pure function.

    Args:
        logits: (Q, T) token logits of Q query boxes over the T token positions of one prompt.
        boxes: (Q, 4) normalised (cx, cy, w, h) of the query boxes (``pred_boxes``).
        spans: for each phrase, its token positions (indices into T).
        box_threshold, text_threshold: see the module docstring.
    """
    probs = logits.float().sigmoid()
    xyxy = cxcywh_to_xyxy(boxes.float())
    detections = []
    for span in spans:
        if len(span) == 0:
            detections.append(Detection(None, 0.0, None, "the phrase has no tokens in the prompt"))
            continue
        phrase_scores = probs[:, list(span)].max(dim=1).values  # (Q,)
        query = int(phrase_scores.argmax())
        score = float(phrase_scores[query])
        box = tuple(float(v) for v in xyxy[query])
        if score < box_threshold or score < text_threshold:
            which = "box_threshold" if score < box_threshold else "text_threshold"
            limit = box_threshold if which == "box_threshold" else text_threshold
            detections.append(Detection(None, score, query, f"best box score {score:.3f} < {which} {limit:.3f}"))
        elif box[2] <= box[0] or box[3] <= box[1]:
            detections.append(Detection(None, score, query, f"the best box (score {score:.3f}) lies outside the frame"))
        else:
            detections.append(Detection(box, score, query))
    return detections


# ----------------------------------------------------------------------------- grounders


@dataclass
class _Models:
    detector: Any  # GroundingDinoForObjectDetection, eval mode, on `device`
    processor: Any  # GroundingDinoProcessor
    device: str
    predictor: Any = None  # segment_anything.SamPredictor (gdino_sam only)


class GdinoBoxGrounder(Grounder):
    """GroundingDINO boxes; each phrase's mask is its box rectangle (backend ``gdino_box``)."""

    def load_models(self) -> _Models:
        from pite.models import load_grounding_dino

        device = resolve_device(self.settings.device)
        detector, processor = load_grounding_dino(self.settings.detector)
        return _Models(detector=detector.to(device), processor=processor, device=device)

    def ground(self, frame: np.ndarray, phrases: list[str]) -> list[Grounding]:
        """frame: uint8 (H, W, 3) RGB; phrases: the event's noun phrases. One detector call (per
        prompt, see the module docstring) and one mask call cover all phrases."""
        check_inputs(frame, phrases)
        cleaned = [clean_phrase(p) for p in phrases]
        distinct = list(dict.fromkeys(c for c in cleaned if c))
        if not distinct:
            return [Grounding.dropped(NO_BOX, "the phrase has no words") for _ in phrases]

        detections = self.detect(frame, distinct)
        grounded = [i for i, d in enumerate(detections) if d.box is not None]
        masks = self.masks(frame, [detections[i].box for i in grounded]) if grounded else []
        by_phrase: dict[str, Grounding] = {}
        for i, det in enumerate(detections):
            by_phrase[distinct[i]] = Grounding.dropped(NO_BOX, det.message)
        for i, mask in zip(grounded, masks):
            det = detections[i]
            by_phrase[distinct[i]] = with_mask(det.box, mask, det.score, self.settings.min_area_frac)

        results, seen = [], set()
        for phrase in cleaned:
            if not phrase:
                results.append(Grounding.dropped(NO_BOX, "the phrase has no words"))
                continue
            result = by_phrase[phrase]
            if phrase in seen and result.mask is not None:  # a repeated phrase gets its own mask array
                result = Grounding(result.box, result.mask.copy(), result.score, result.reason, result.message)
            seen.add(phrase)
            results.append(result)
        return results

    def detect(self, frame: np.ndarray, phrases: list[str]) -> list[Detection]:
        """One :class:`Detection` per phrase (cleaned, distinct, non-empty)."""
        import torch

        models = self.models
        detector, processor = models.detector, models.processor
        image = processor.image_processor(images=frame, return_tensors="pt")
        pixels = {
            "pixel_values": image["pixel_values"].to(models.device, detector.dtype),
            "pixel_mask": image["pixel_mask"].to(models.device),
        }
        detections: list[Detection | None] = [None] * len(phrases)
        for prompt in plan_prompts(phrases, processor.tokenizer, max_prompt_tokens(detector)):
            text = {k: v.to(models.device) for k, v in prompt.encoding.items()}
            with torch.inference_mode():
                out = detector(**pixels, **text)
            chosen = select_boxes(out.logits[0].cpu(), out.pred_boxes[0].cpu(), prompt.spans,
                                  self.settings.box_threshold, self.settings.text_threshold)
            for index, detection in zip(prompt.phrases, chosen):
                detections[index] = detection
        return detections

    def masks(self, frame: np.ndarray, boxes: list[Box]) -> list[np.ndarray]:
        """bool (H, W) masks, one per normalised xyxy box: here the box rectangles."""
        height, width = frame.shape[:2]
        return [box_mask(box, height, width) for box in boxes]


class GdinoSamGrounder(GdinoBoxGrounder):
    """GroundingDINO boxes, then segment-anything masks prompted with the boxes (backend ``gdino_sam``)."""

    def __init__(self, settings):
        super().__init__(settings)
        if not settings.sam_checkpoint:
            raise ValueError("grounding.sam_checkpoint is empty: point it at a segment-anything checkpoint "
                             "(.pth, or tinykit://sam), or use backend 'gdino_box' for box-shaped masks")

    def load_models(self) -> _Models:
        from segment_anything import SamPredictor

        from pite.models import load_sam

        models = super().load_models()
        sam = load_sam(self.settings.sam_checkpoint, self.settings.sam_model_type)
        models.predictor = SamPredictor(sam.to(models.device))
        return models

    def masks(self, frame: np.ndarray, boxes: list[Box]) -> list[np.ndarray]:
        """bool (H, W) SAM masks, one per normalised xyxy box: one ``set_image`` and one batched
        ``predict_torch`` for all boxes."""
        import torch

        predictor = self.models.predictor
        height, width = frame.shape[:2]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        pixel_boxes = (torch.tensor(boxes, dtype=torch.float32) * scale).to(predictor.device)  # (N, 4)
        try:
            predictor.set_image(np.ascontiguousarray(frame))
            with torch.inference_mode():
                masks, _, _ = predictor.predict_torch(
                    point_coords=None,
                    point_labels=None,
                    boxes=predictor.transform.apply_boxes_torch(pixel_boxes, (height, width)),
                    multimask_output=False,
                )  # (N, 1, H, W) bool
        finally:
            predictor.reset_image()  # drop the image embedding between frames
        return list(masks[:, 0].cpu().numpy())


def max_prompt_tokens(detector) -> int:
    """Most tokens one prompt may have: the model's ``max_text_len``, capped by its text encoder's
    position embeddings."""
    config = detector.config
    limits = [config.max_text_len, getattr(config.text_config, "max_position_embeddings", None)]
    return int(min(v for v in limits if v))
