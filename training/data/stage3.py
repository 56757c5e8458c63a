"""Stage 3: instruction data (VTimeLLM stage-3 JSON and Video-ChatGPT VideoInstruct), no head targets.

Formats, told apart per item:

- **VTimeLLM**: ``{id, source, conversations: [{from: human|gpt, value}], meta: {duration, token: {"<s0>": 3.2,
  "<e0>": 9.8, ...}}}``. Every ``<sK>`` / ``<eK>`` in the text becomes the two-digit frame index of its
  seconds, ``pite.timeline.seconds_to_index(seconds, duration)``, at load time; a placeholder missing from
  ``meta.token`` makes the item a ``bad_record``. Features are stored under ``id``.
- **Video-ChatGPT**: ``{video_id, q, a}`` -> one single-turn sample per item (id ``{video_id}#{n}``, n its
  position in the file); features under ``video_id``.

Files are a JSON list or JSONL. Turn texts are stripped; the one ``<video>`` must be in the first user turn
and is added there ("<video>\\n" in front) when an item has none; two or more make the item a ``bad_record``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from pite.timeline import NUM_FRAMES, format_index, seconds_to_index
from training.data.base import ConversationDataset
from training.data.conversation import VIDEO_PLACEHOLDER, Conversation, ConversationSettings

log = logging.getLogger("pite.training.data")
TIME_TOKEN = re.compile(r"<[se]\d+>")
_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def fill_time_tokens(text: str, tokens: dict[str, float], duration: float) -> str:
    """Replace each ``<sK>`` / ``<eK>`` by the index of its seconds; KeyError for an unknown placeholder."""
    def index(match: re.Match) -> str:
        name = match.group(0)
        if name not in tokens:
            raise KeyError(f"{name} is not in meta.token")
        return format_index(seconds_to_index(float(tokens[name]), duration))

    return TIME_TOKEN.sub(index, text)


def _with_video(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    count = sum(text.count(VIDEO_PLACEHOLDER) for _, text in turns)
    if count > 1 or any(VIDEO_PLACEHOLDER in text for _, text in turns[1:]):
        raise ValueError(f"expected one {VIDEO_PLACEHOLDER}, in the first turn; found {count}")
    if count == 0:
        turns = [(turns[0][0], f"{VIDEO_PLACEHOLDER}\n{turns[0][1]}"), *turns[1:]]
    return turns


def vtimellm_conversation(item: dict) -> Conversation:
    """One VTimeLLM item; KeyError / TypeError / ValueError when it is malformed."""
    meta = item.get("meta") or {}
    tokens, duration = meta.get("token") or {}, meta.get("duration")
    turns = []
    for turn in item["conversations"]:
        text = str(turn["value"])
        if TIME_TOKEN.search(text):
            if duration is None:
                raise KeyError("time placeholders but no meta.duration")
            text = fill_time_tokens(text, tokens, float(duration))
        turns.append((_ROLE[turn["from"]], text.strip()))
    return Conversation(str(item["id"]), _with_video(turns), str(item["id"]))


def videochatgpt_conversation(item: dict, position: int) -> Conversation:
    """One Video-ChatGPT ``{video_id, q, a}`` item."""
    video_id = str(item["video_id"])
    turns = [("user", str(item["q"]).strip()), ("assistant", str(item["a"]).strip())]
    return Conversation(f"{video_id}#{position}", _with_video(turns), video_id)


def _items(path: Path, skipped: Counter) -> Iterator[tuple[int, object]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    log.warning("%s line %d: not JSON (%s); skipped", path, n, exc)
                    skipped["bad_record"] += 1
        return
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of items (or .jsonl), got {type(data).__name__}")
    yield from enumerate(data)


def instruction_conversations(paths: Iterable[str | os.PathLike], *, skipped: Counter) -> Iterator[Conversation]:
    """Conversations of VTimeLLM / Video-ChatGPT files; malformed items are counted into ``skipped``."""
    for path in map(Path, paths):
        for n, item in _items(path, skipped):
            try:
                if not isinstance(item, dict):
                    raise TypeError(f"item is a {type(item).__name__}, not an object")
                if "conversations" in item:
                    yield vtimellm_conversation(item)
                elif {"video_id", "q", "a"} <= item.keys():
                    yield videochatgpt_conversation(item, n)
                else:
                    raise KeyError("neither VTimeLLM (conversations) nor Video-ChatGPT (video_id, q, a)")
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s item %d: unusable (%s: %s); skipped", path, n, type(exc).__name__, exc)
                skipped["bad_record"] += 1


class Stage3Dataset(ConversationDataset):
    """Instruction samples (CE only) on a feature store of videos (100, D).

    Args:
        sources: one or several JSON / JSONL files, VTimeLLM or Video-ChatGPT items (mixed freely).
        features, tokenizer, video_token_id, conversation: as :class:`ConversationDataset`.
        num_frames: frames per video (video tokens per sample).
    """

    head = None

    def __init__(self, sources: str | os.PathLike | Iterable[str | os.PathLike], features, tokenizer, *,
                 video_token_id: int, conversation: ConversationSettings | None = None,
                 num_frames: int = NUM_FRAMES):
        paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
        skipped = Counter()
        super().__init__(instruction_conversations(paths, skipped=skipped), tokenizer, features,
                         video_token_id=video_token_id, frames_per_video=num_frames, conversation=conversation,
                         skipped=skipped)
