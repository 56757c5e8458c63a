"""Stage 1: Localized Narratives -> image captions whose words carry (x, y) localization targets.

Record (JSONL, one per line)::

    {"image_id": "...", "annotator_id": 0, "caption": "In this image I can see a dog.",
     "timed_caption": [{"utterance": "In", "start_time": 0.0, "end_time": 0.4}, ...],
     "traces": [[{"x": 0.31, "y": 0.52, "t": 0.05}, ...], ...]}

Sample: user ``<video>\\n{prompt}``, assistant the caption (stripped). The image has one feature (1, D) in
the store, under ``feature_key.format(image_id=...)`` (e.g. ``"{image_id:0>12}"`` for zero-padded COCO file
names); ``<video>`` becomes one video token.

Word locations (:func:`word_locations`):

- **Alignment.** The utterances of ``timed_caption`` are the caption's words in order, so each is searched
  in the caption *forward* from the end of the previous match (exact first, then ignoring case). An utterance
  that is not found is left out (``counts["unaligned_words"]``) and the cursor stays, so one odd word does
  not derail the rest. The matched span is trimmed to its first and last letter or digit ("dog." -> "dog");
  an utterance with none (punctuation) gets no target.
- **Location.** The mean (x, y) of every trace point (all trace segments) with
  ``start_time <= t <= end_time``, clipped to [0, 1] (mouse traces stray slightly outside the image).
  A word spoken while no point was recorded gets no target (``counts["words_without_trace"]``).
- Every token covering the word carries its (x, y) (``loc_pos`` / ``loc_target``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from training.data.base import ConversationDataset
from training.data.conversation import VIDEO_PLACEHOLDER, Conversation, ConversationSettings, Target

log = logging.getLogger("pite.training.data")
DEFAULT_PROMPT = "Describe the image in detail."


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return start, end


def word_locations(caption: str, timed_caption: list[dict], traces: list[list[dict]],
                   counts: Counter | None = None) -> list[tuple[int, int, np.ndarray]]:
    """``(char_start, char_end, xy float32 (2,))`` of each located word of ``caption`` (see module docstring)."""
    counts = counts if counts is not None else Counter()
    points = np.array([(float(p["x"]), float(p["y"]), float(p["t"])) for trace in traces or [] for p in trace],
                      dtype=np.float64).reshape(-1, 3)
    lowered, cursor, words = caption.lower(), 0, []
    for word in timed_caption:
        utterance = str(word.get("utterance", "")).strip()
        if not utterance:
            continue
        where = caption.find(utterance, cursor)
        if where < 0:
            where = lowered.find(utterance.lower(), cursor)
        if where < 0:
            counts["unaligned_words"] += 1
            continue
        cursor = where + len(utterance)
        start, end = _trim(caption, where, cursor)
        if start == end:
            continue
        t0, t1 = float(word["start_time"]), float(word["end_time"])
        spoken = points[(points[:, 2] >= t0) & (points[:, 2] <= t1)]
        if not len(spoken):
            counts["words_without_trace"] += 1
            continue
        words.append((start, end, np.clip(spoken[:, :2].mean(0), 0.0, 1.0).astype(np.float32)))
    return words


def _records(paths: list[Path], skipped: Counter) -> Iterator[tuple[str, dict]]:
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    log.warning("%s line %d: not JSON (%s); skipped", path, line_no, exc)
                    skipped["bad_record"] += 1
                    continue
                yield f"{path.name}:{line_no}", record


def narrative_conversations(paths: Iterable[str | os.PathLike], *, prompt: str = DEFAULT_PROMPT,
                            feature_key: str = "{image_id}", skipped: Counter, counts: Counter
                            ) -> Iterator[Conversation]:
    """Conversations of Localized Narratives JSONL files; bad records are counted into ``skipped``."""
    for where, record in _records([Path(p) for p in paths], skipped):
        try:
            image_id = str(record["image_id"])
            caption = record["caption"]
            if not isinstance(caption, str):
                raise TypeError("caption is not a string")
            words = word_locations(caption, record.get("timed_caption") or [], record.get("traces") or [], counts)
            key = feature_key.format(image_id=image_id)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("%s: unusable Localized Narratives record (%s: %s); skipped", where, type(exc).__name__, exc)
            skipped["bad_record"] += 1
            continue
        answer = caption.strip()
        if not answer:
            skipped["empty_caption"] += 1
            continue
        lead = len(caption) - len(caption.lstrip())
        annotator = record.get("annotator_id")
        sample_id = f"{image_id}/{annotator}" if annotator is not None else f"{image_id}@{where}"
        targets = [Target(1, s - lead, e - lead, "loc", xy) for s, e, xy in words]
        counts["located_words"] += len(targets)
        yield Conversation(sample_id, [("user", f"{VIDEO_PLACEHOLDER}\n{prompt}"), ("assistant", answer)], key,
                           targets)


class Stage1Dataset(ConversationDataset):
    """Localized Narratives captions with word-location targets on a feature store of images (1, D).

    Args:
        annotations: one JSONL file or several.
        features: the image feature store (or its folder).
        tokenizer, video_token_id, conversation: as :class:`ConversationDataset`.
        prompt: the user's request.
        feature_key: store key of an image, formatted with ``image_id``.
    """

    head = "loc"

    def __init__(self, annotations: str | os.PathLike | Iterable[str | os.PathLike], features, tokenizer, *,
                 video_token_id: int, conversation: ConversationSettings | None = None,
                 prompt: str = DEFAULT_PROMPT, feature_key: str = "{image_id}"):
        paths = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations)
        skipped, counts = Counter(), Counter()
        conversations = narrative_conversations(paths, prompt=prompt, feature_key=feature_key, skipped=skipped,
                                                counts=counts)
        super().__init__(conversations, tokenizer, features, video_token_id=video_token_id, frames_per_video=1,
                         conversation=conversation, skipped=skipped, counts=counts)
