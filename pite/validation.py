"""Validation of dataset records: every problem of a record, each with where it is.

``validate(record)`` returns all problems (``[]`` when the record is valid);
``validate_or_raise`` raises :class:`~pite.schema.SchemaError` listing them. The checks:
shapes and dtypes of trajectories and visibility; coordinates in [0, 1] or exactly -1 (both
together), matching visibility, and -1 outside the event's frames; character offsets inside
the caption and equal to the phrase text; ``0 <= start_s < end_s <= duration_s``; positive
duration, fps and size; normalised boxes; decodable mask RLEs; finite scores.
"""

from __future__ import annotations

import math
import os

import numpy as np

from pite.masks import rle_problem
from pite.schema import (_REASON_CODE, END_EPSILON_S, MISSING, TRAJECTORY_SHAPE,
                         VISIBILITY_SHAPE, Event, Failure, Phrase, SchemaError, VideoRecord)
from pite.timeline import NUM_FRAMES, seconds_to_index

def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _finite_problem(name: str, value: object, positive: bool = False) -> str | None:
    if not _is_number(value) or not math.isfinite(value):
        return f"{name} is {value!r}, expected a finite number" + (" > 0" if positive else "")
    if positive and value <= 0:
        return f"{name} is {value!r}, expected a finite number > 0"
    return None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _first_point(mask: np.ndarray, trajectory: np.ndarray | None = None) -> str:
    p, f = (int(v) for v in np.argwhere(mask)[0])
    where = f"trajectory {p} frame {f}"
    if trajectory is None:
        return where
    return f"{where} = ({float(trajectory[p, f, 0])}, {float(trajectory[p, f, 1])})"


def _array_problems(name: str, value: object, dtype: type, shape: tuple[int, ...]) -> list[str]:
    if not isinstance(value, np.ndarray):
        return [f"{name} must be a numpy array, got {type(value).__name__}"]
    problems = []
    if value.dtype != dtype:
        problems.append(f"{name} has dtype {value.dtype}, expected {np.dtype(dtype)}")
    if value.shape != shape:
        problems.append(f"{name} has shape {value.shape}, expected {shape}")
    return problems


def _trajectory_problems(trajectory: object, visibility: object, frames: tuple[int, int] | None) -> list[str]:
    """Problems of a trajectory/visibility pair; ``frames`` is the event's first and last
    global frame index (None when the event's times are invalid), outside which every point
    must be (-1, -1)."""
    traj_problems = _array_problems("trajectory", trajectory, np.float16, TRAJECTORY_SHAPE)
    vis_problems = _array_problems("visibility", visibility, np.bool_, VISIBILITY_SHAPE)
    problems = traj_problems + vis_problems
    if traj_problems:
        return problems
    values = trajectory.astype(np.float32)
    if not np.isfinite(values).all():
        return problems + [f"trajectory has {_count(int((~np.isfinite(values)).sum()), 'non-finite value')}"]
    is_missing = values == MISSING
    missing = is_missing.all(axis=-1)
    half = is_missing.any(axis=-1) & ~missing
    outside = ((values < 0) | (values > 1)).any(axis=-1) & ~missing & ~half
    if half.any():
        problems.append(
            f"trajectory has {_count(int(half.sum()), 'point')} with only one coordinate at -1, expected both "
            f"(first: {_first_point(half, values)})"
        )
    if outside.any():
        problems.append(
            f"trajectory has {_count(int(outside.sum()), 'point')} outside [0, 1] that are not (-1, -1) "
            f"(first: {_first_point(outside, values)})"
        )
    if frames is not None:
        frame = np.arange(NUM_FRAMES)
        outside_event = ~missing & ((frame < frames[0]) | (frame > frames[1]))
        if outside_event.any():
            problems.append(
                f"trajectory has {_count(int(outside_event.sum()), 'point')} outside the event's frames "
                f"{frames[0]:02d}..{frames[1]:02d} not at (-1, -1) (first: {_first_point(outside_event, values)})"
            )
    if vis_problems:
        return problems
    visible_missing = visibility & missing
    invisible_present = ~visibility & ~missing
    if visible_missing.any():
        problems.append(
            f"visibility marks {_count(int(visible_missing.sum()), 'point')} visible whose trajectory point is "
            f"(-1, -1) (first: {_first_point(visible_missing)})"
        )
    if invisible_present.any():
        problems.append(
            f"visibility marks {_count(int(invisible_present.sum()), 'point')} invisible whose trajectory point "
            f"is not (-1, -1) (first: {_first_point(invisible_present, values)})"
        )
    return problems


def _phrase_problems(phrase: Phrase, caption: object, frames: tuple[int, int] | None) -> list[str]:
    problems = []
    if not isinstance(phrase.text, str) or not phrase.text:
        problems.append(f"text is {phrase.text!r}, expected a non-empty string")
    start, end = phrase.char_start, phrase.char_end
    if isinstance(caption, str) and _is_int(start) and _is_int(end):
        if not 0 <= start < end <= len(caption):
            problems.append(
                f"char_start {start} and char_end {end} must satisfy "
                f"0 <= char_start < char_end <= len(caption) = {len(caption)}"
            )
        elif caption[start:end] != phrase.text:
            problems.append(f"text {phrase.text!r} does not match caption[{start}:{end}] = {caption[start:end]!r}")
    elif not (_is_int(start) and _is_int(end)):
        problems.append(f"char_start and char_end must be integers, got {start!r} and {end!r}")
    box = phrase.box
    if not isinstance(box, (tuple, list)) or len(box) != 4 or not all(_is_number(v) for v in box):
        problems.append(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}")
    elif not all(math.isfinite(v) and 0 <= v <= 1 for v in box):
        problems.append(f"box {tuple(box)} has values outside [0, 1]")
    elif box[0] > box[2] or box[1] > box[3]:
        problems.append(f"box {tuple(box)} must have x0 <= x1 and y0 <= y1")
    mask_problem = rle_problem(phrase.mask_rle)
    if mask_problem:
        problems.append(mask_problem)
    score_problem = _finite_problem("score", phrase.score)
    if score_problem:
        problems.append(score_problem)
    return problems + _trajectory_problems(phrase.trajectory, phrase.visibility, frames)


def _event_problems(event: Event, duration: object) -> list[str]:
    problems = [p for p in (_finite_problem("start_s", event.start_s), _finite_problem("end_s", event.end_s)) if p]
    if not problems:
        if event.start_s < 0:
            problems.append(f"start_s is {event.start_s}, expected >= 0")
        if event.end_s <= event.start_s:
            problems.append(f"end_s {event.end_s} must be after start_s {event.start_s}")
        if _is_number(duration) and event.end_s > duration + END_EPSILON_S:
            problems.append(f"end_s {event.end_s} is after the video's duration_s {duration}")
    if not isinstance(event.caption, str) or not event.caption.strip():
        problems.append(f"caption is {event.caption!r}, expected a non-empty string")
    if not isinstance(event.phrases, list):
        problems.append(f"phrases must be a list, got {type(event.phrases).__name__}")
    return problems


def _event_frames(event: Event, duration: object) -> tuple[int, int] | None:
    """First and last global frame index of a well-formed event, else None."""
    numbers = [("duration", duration), ("start", event.start_s), ("end", event.end_s)]
    if any(_finite_problem(name, value) for name, value in numbers) or not 0 <= event.start_s < event.end_s:
        return None
    if duration <= 0:
        return None
    return seconds_to_index(event.start_s, duration), seconds_to_index(event.end_s, duration)


def validate(record: VideoRecord) -> list[str]:
    """Every problem of ``record``, each prefixed with where it is (``video 'abc' event 1
    phrase 0: ...``); an empty list means the record is valid."""
    if not isinstance(record, VideoRecord):
        return [f"expected a VideoRecord, got {type(record).__name__}"]
    where = f"video {record.video_id!r}"
    problems = []
    if not isinstance(record.video_id, str) or not record.video_id:
        problems.append(f"video_id is {record.video_id!r}, expected a non-empty string")
    if not isinstance(record.video_path, str) or not record.video_path:
        problems.append(f"video_path is {record.video_path!r}, expected a non-empty relative path")
    elif os.path.isabs(record.video_path):
        problems.append(f"video_path {record.video_path!r} must be relative to the video root")
    for name in ("duration_s", "fps"):
        problem = _finite_problem(name, getattr(record, name), positive=True)
        if problem:
            problems.append(problem)
    for name in ("width", "height"):
        value = getattr(record, name)
        if not _is_int(value) or value <= 0:
            problems.append(f"{name} is {value!r}, expected an integer > 0")
    problems = [f"{where}: {p}" for p in problems]
    if not isinstance(record.events, list):
        return problems + [f"{where}: events must be a list, got {type(record.events).__name__}"]
    for e, event in enumerate(record.events):
        if not isinstance(event, Event):
            problems.append(f"{where} event {e}: expected an Event, got {type(event).__name__}")
            continue
        problems += [f"{where} event {e}: {p}" for p in _event_problems(event, record.duration_s)]
        frames = _event_frames(event, record.duration_s)
        for k, phrase in enumerate(event.phrases if isinstance(event.phrases, list) else []):
            if not isinstance(phrase, Phrase):
                problems.append(f"{where} event {e} phrase {k}: expected a Phrase, got {type(phrase).__name__}")
                continue
            phrase_problems = _phrase_problems(phrase, event.caption, frames)
            problems += [f"{where} event {e} phrase {k}: {p}" for p in phrase_problems]
    return problems


def validate_or_raise(record: VideoRecord) -> None:
    """Raise :class:`SchemaError` listing every problem of ``record``, if it has any."""
    problems = validate(record)
    if problems:
        raise SchemaError(problems, f"invalid video record {getattr(record, 'video_id', None)!r}")


def validate_failure(failure: Failure) -> list[str]:
    """Every problem of a :class:`Failure`, prefixed with ``failure for video '...'``."""
    if not isinstance(failure, Failure):
        return [f"expected a Failure, got {type(failure).__name__}"]
    problems = []
    if not isinstance(failure.video_id, str) or not failure.video_id:
        problems.append(f"video_id is {failure.video_id!r}, expected a non-empty string")
    if not _is_int(failure.event) or failure.event < -1:
        problems.append(f"event is {failure.event!r}, expected -1 (whole video) or an event index >= 0")
    if not isinstance(failure.stage, str) or not failure.stage:
        problems.append(f"stage is {failure.stage!r}, expected a non-empty string")
    if not isinstance(failure.reason, str) or not _REASON_CODE.fullmatch(failure.reason):
        problems.append(f"reason {failure.reason!r} must be a short code of lowercase letters, digits and '_'")
    if not isinstance(failure.message, str):
        problems.append(f"message must be a string, got {type(failure.message).__name__}")
    return [f"failure for video {failure.video_id!r}: {p}" for p in problems]

