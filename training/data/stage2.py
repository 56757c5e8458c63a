"""Stage 2: PiTe-143k shards -> dense video captions whose noun phrases carry their trajectories.

Sample (one per video): user ``<video>\\n{question}``, the question one of ``questions`` picked by a seeded
hash of the video id (the same on every run, process and epoch); assistant every event in time order,
"From 05 to 23, a man rides a bike. From 24 to 60, ..." (:func:`pite.timeline.format_event`, indices by
:func:`pite.timeline.seconds_to_index` of the event's seconds on the video's duration).

Each grounded phrase carries its (3, 100, 2) trajectory on **all of its tokens** (``traj_pos`` /
``traj_target``): the phrase's characters ``[char_start, char_end)`` of the caption, moved by where the
(stripped) caption sits in the answer, then mapped to tokens through the tokenizer's offsets. All tokens
rather than the last one: the paper attaches the trajectory to the phrase, and each of its tokens is then
trained to point at the object. Phrases whose trajectory is (-1, -1) everywhere carry no target
(``counts["phrases_without_points"]``). Features come from the store under the video id (100, D).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator

from pite.schema import MISSING, VideoRecord, read_shards
from pite.timeline import NUM_FRAMES, format_event, format_segment, seconds_to_index
from training.data.base import ConversationDataset
from training.data.conversation import VIDEO_PLACEHOLDER, Conversation, ConversationSettings, Target

log = logging.getLogger("pite.training.data")

DEFAULT_QUESTIONS = (
    "Could you please detail the events that took place during different time segments in the video?",
    "Describe the events of the video, with the start and end of each.",
    "What happens in the video? List each event with its time segment.",
    "Can you break the video down into its events and say when each one happens?",
    "Please give a timeline of the video: each event and the frames it spans.",
)


def pick(options: tuple[str, ...] | list[str], key: str, seed: int) -> str:
    """One of ``options`` chosen by a hash of (seed, key): deterministic across runs and processes."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return options[int.from_bytes(digest[:8], "little") % len(options)]


def video_conversation(record: VideoRecord, question: str, counts: Counter) -> Conversation:
    """The stage-2 conversation of one video record; ValueError when it cannot be written."""
    if not record.events:
        raise ValueError("the video has no events")
    duration = record.duration_s
    answer, targets = "", []
    for event in sorted(record.events, key=lambda e: (e.start_s, e.end_s)):
        start, end = seconds_to_index(event.start_s, duration), seconds_to_index(event.end_s, duration)
        if answer:
            answer += " "
        caption_at = len(answer) + len(format_segment(start, end)) + len(", ")
        answer += format_event(start, end, event.caption)  # ValueError on an empty caption
        lead = len(event.caption) - len(event.caption.lstrip())
        for phrase in event.phrases:
            a, b = caption_at + phrase.char_start - lead, caption_at + phrase.char_end - lead
            if phrase.char_start < lead or answer[a:b] != phrase.text:
                raise ValueError(f"phrase {phrase.text!r} is not at [{phrase.char_start}, {phrase.char_end}) "
                                 f"of the caption {event.caption!r}")
            if (phrase.trajectory == MISSING).all():
                counts["phrases_without_points"] += 1
                continue
            targets.append(Target(1, a, b, "traj", phrase.trajectory))
    counts["phrases_with_trajectory"] += len(targets)
    return Conversation(record.video_id, [("user", f"{VIDEO_PLACEHOLDER}\n{question}"), ("assistant", answer)],
                        record.video_id, targets)


def shard_conversations(records: Iterable[VideoRecord], *, questions, seed: int, skipped: Counter,
                        counts: Counter) -> Iterator[Conversation]:
    """Conversations of video records; unusable records are counted into ``skipped`` as ``bad_record``."""
    for record in records:
        try:
            yield video_conversation(record, pick(questions, record.video_id, seed), counts)
        except ValueError as exc:
            log.warning("video %r: %s; skipped", record.video_id, exc)
            skipped["bad_record"] += 1


class Stage2Dataset(ConversationDataset):
    """PiTe-143k dense captions with trajectory targets on a feature store of videos (100, D).

    Args:
        shards: a shard file, a folder of shards, or a list of shard files (``pite.schema.read_shards``);
            or the records themselves.
        features: the video feature store (or its folder).
        tokenizer, video_token_id, conversation: as :class:`ConversationDataset`.
        questions: the user requests to pick from; seed: seed of the pick.
        num_frames: frames per video (video tokens per sample).
    """

    head = "traj"

    def __init__(self, shards: str | os.PathLike | Iterable, features, tokenizer, *, video_token_id: int,
                 conversation: ConversationSettings | None = None, questions=DEFAULT_QUESTIONS, seed: int = 0,
                 num_frames: int = NUM_FRAMES):
        if not questions:
            raise ValueError("questions must not be empty")
        records = shards if _is_records(shards) else read_shards(shards)
        skipped, counts = Counter(), Counter()
        conversations = shard_conversations(records, questions=list(questions), seed=seed, skipped=skipped,
                                            counts=counts)
        super().__init__(conversations, tokenizer, features, video_token_id=video_token_id,
                         frames_per_video=num_frames, conversation=conversation, skipped=skipped, counts=counts)


def _is_records(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], VideoRecord)

