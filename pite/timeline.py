"""The one conversion between seconds and the two-digit frame indices 00..99 used as text.

PiTe (like VTimeLLM) writes time as frame indices of a global timeline of ``NUM_FRAMES = 100``
frames sampled uniformly over the whole video: "From 05 to 23, a man rides a bike."
Everything that turns seconds into indices or back (training targets, trajectory resampling,
feature extraction, grounding and dense-captioning evaluation) goes through this module.

Conventions (one set, used everywhere):

* **Index i stands for the time** ``i / 100 * D`` (the start of its 1/100 bin). A second ``t``
  maps to ``min(round_half_up(t / D * 100), 99)``, so index ``i`` collects
  ``t / D * 100 in [i - 0.5, i + 0.5)``, and the last index 99 also absorbs ``[98.5, 100]``.
* ``frame_times(D)[i] == index_to_seconds(i, D)``: the feature of global frame ``i`` is taken at
  the very time that index ``i`` denotes, so ``seconds_to_index(frame_times(D)[i], D) == i``.
* ``segment_to_seconds(s, e, D) == (s / 100 * D, e / 100 * D)``: both ends use the same point
  convention, so ``seconds_to_index`` of either end gives the index back (a stable round trip).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

NUM_FRAMES = 100
"""Frames on the global timeline; indices run 0..NUM_FRAMES-1 and are written with two digits."""

# Added before flooring so that values meant to be exactly k + 0.5 (e.g. 0.285 * 100, which is
# 28.499999999999996 in binary floating point) round up as the decimal formula intends.
_HALF_UP_EPSILON = 1e-9


def _check_duration(duration: float) -> float:
    duration = float(duration)
    if not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"duration must be a finite number of seconds > 0, got {duration!r}")
    return duration


def _check_index(i: int, name: str = "index") -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in [0, {NUM_FRAMES - 1}], got {i!r}")
    if not 0 <= int(i) < NUM_FRAMES:
        raise ValueError(f"{name} must be in [0, {NUM_FRAMES - 1}], got {int(i)}")
    return int(i)


def seconds_to_index(t: float, duration: float) -> int:
    """Frame index 0..99 of second ``t`` in a video of ``duration`` seconds.

    ``min(round(t / duration * 100), 99)`` clamped to >= 0, where ``round`` is **round half up**
    (12.5 -> 13), the usual reading of the paper's formula, not Python's banker's rounding
    (``round(12.5) == 12``). Times before 0 give 0; times at or after the end give 99.

    Raises:
        ValueError: ``duration`` is not a finite number > 0, or ``t`` is NaN.
    """
    duration = _check_duration(duration)
    t = float(t)
    if math.isnan(t):
        raise ValueError("t must be a number of seconds, got nan")
    if math.isinf(t):
        return 0 if t < 0 else NUM_FRAMES - 1
    index = math.floor(t / duration * NUM_FRAMES + 0.5 + _HALF_UP_EPSILON)
    return min(max(index, 0), NUM_FRAMES - 1)


def index_to_seconds(i: int, duration: float) -> float:
    """The time ``i / 100 * duration`` that index ``i`` (0..99) denotes; inverse of
    :func:`seconds_to_index` (``seconds_to_index(index_to_seconds(i, D), D) == i``)."""
    i = _check_index(i)
    return i * _check_duration(duration) / NUM_FRAMES


def segment_to_seconds(start_idx: int, end_idx: int, duration: float) -> tuple[float, float]:
    """Seconds ``(start, end)`` of the index segment ``start_idx..end_idx``.

    Both ends use the point convention of :func:`index_to_seconds` (the end index maps to the
    *start* of its bin, not its end), so converting back with :func:`seconds_to_index` returns the
    same indices. "From 00 to 99" is therefore ``(0, 0.99 * D)``.

    Raises:
        ValueError: an index is outside 0..99 or ``start_idx > end_idx``.
    """
    start_idx = _check_index(start_idx, "start_idx")
    end_idx = _check_index(end_idx, "end_idx")
    if start_idx > end_idx:
        raise ValueError(f"start_idx {start_idx} is after end_idx {end_idx}")
    return index_to_seconds(start_idx, duration), index_to_seconds(end_idx, duration)


def frame_times(duration: float, n: int = NUM_FRAMES) -> np.ndarray:
    """Times in seconds of the ``n`` global frames: ``i / n * duration`` for i in 0..n-1.

    Frames start at 0 and are spaced ``duration / n`` apart (start of each bin, not its centre),
    so the last frame is at ``(n - 1) / n * duration`` and never at the very end of the file.
    With the default ``n = 100``, frame ``i`` is at ``index_to_seconds(i, duration)``.

    Returns:
        float64 array of shape (n,).
    """
    duration = _check_duration(duration)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return np.arange(int(n), dtype=np.float64) * duration / int(n)


def format_index(i: int) -> str:
    """Two-digit text of index ``i``: ``format_index(5) == "05"``."""
    return f"{_check_index(i):02d}"


def format_segment(start_idx: int, end_idx: int, capitalize: bool = True) -> str:
    """``"From 05 to 23"`` (or ``"from 05 to 23"`` with ``capitalize=False``)."""
    word = "From" if capitalize else "from"
    return f"{word} {format_index(start_idx)} to {format_index(end_idx)}"


def format_event(start_idx: int, end_idx: int, caption: str, capitalize: bool = True) -> str:
    """``"From 05 to 23, a man rides a bike."``: the segment, a comma and the caption.

    The caption is stripped and gets a final "." unless it already ends in ".", "!" or "?";
    its case is kept as given (lower-casing would also hit names such as "John").
    """
    caption = caption.strip()
    if not caption:
        raise ValueError("caption is empty")
    if caption[-1] not in ".!?":
        caption += "."
    return f"{format_segment(start_idx, end_idx, capitalize)}, {caption}"


def format_events(events: list[tuple[int, int, str]]) -> str:
    """Dense-captioning answer: ``"From 00 to 15, a man enters. From 16 to 40, he sits down."``"""
    return " ".join(format_event(s, e, caption) for s, e, caption in events)


# --- parsing -------------------------------------------------------------------------------

# A frame number: 1-3 digits, not part of a longer number, a decimal ("5.5"), a clock time
# ("0:05") or a count with a unit glued on ("5s"). Four-digit numbers (years) never match.
_NUM = r"(?<![\d:])(?<!\d[.,])(\d{1,3})(?!\d|[.,:]\d|[^\W\d])"
_FRAME = r"(?:frames?\s*)?"
_CONNECTOR = r"(?:\s+(?:to|and|until|till|through)\s+|\s*[-\u2013\u2014~]\s*)"
_PAIR = rf"{_FRAME}{_NUM}{_CONNECTOR}{_FRAME}{_NUM}"
# Tier 1: the pair is introduced by "from", "between" or "frame(s)".
_ANCHORED = re.compile(
    rf"\b(?:from|between)\s+{_PAIR}|\bframes?\s*{_NUM}{_CONNECTOR}{_FRAME}{_NUM}", re.IGNORECASE
)
# Tier 2: any bare pair ("05 to 23", "5-23", "05 and 23").
_BARE = re.compile(_PAIR, re.IGNORECASE)


@dataclass(frozen=True)
class ParsedSegment:
    """A segment found in text, as indices with ``0 <= start <= end <= 99``.

    Attributes:
        start, end: frame indices, sorted.
        reversed: the text gave the larger number first ("23 to 05").
        clamped: a number above 99 was clamped to 99 ("05 to 120").
        span: ``(begin, end)`` character offsets of the match in the text.
    """

    start: int
    end: int
    reversed: bool = False
    clamped: bool = False
    span: tuple[int, int] = (0, 0)


class ParsedEvent(NamedTuple):
    """One event of a dense-captioning answer; unpacks as ``start, end, caption``."""

    start: int
    end: int
    caption: str


def _to_segment(match: re.Match) -> ParsedSegment:
    a, b = (int(g) for g in match.groups() if g is not None)
    clamped = a > NUM_FRAMES - 1 or b > NUM_FRAMES - 1
    a, b = min(a, NUM_FRAMES - 1), min(b, NUM_FRAMES - 1)
    return ParsedSegment(min(a, b), max(a, b), reversed=a > b, clamped=clamped, span=match.span())


def find_segments(text: str) -> list[ParsedSegment]:
    """All non-overlapping segments in ``text``, in order of appearance.

    Two tiers: if any pair is introduced by "from", "between" or "frame(s)" ("From 05 to 23",
    "between 5 and 23", "frames 5-23", "from frame 5 to frame 23"), only those count; otherwise
    any bare pair "N to N", "N and N", "N-N" (also "until", "till", "through", en/em dash, "~").
    Case is ignored and numbers may have one to three digits ("5" reads as 05).

    Bare pairs are ambiguous: "2 to 3 people" reads as the segment 02..03 when the text holds
    no anchored pair, while "2 to 3 people from 05 to 23" gives only 05..23. Decimals ("1.5 to
    3"), clock times ("0:05 to 0:23"), numbers with a glued unit ("5s to 10s") and numbers of
    four or more digits never match. Numbers above 99 are clamped to 99 (``clamped=True``);
    a larger first number is swapped (``reversed=True``).
    """
    matches = list(_ANCHORED.finditer(text)) or list(_BARE.finditer(text))
    return [_to_segment(m) for m in matches]


def parse_segment(text: str) -> ParsedSegment | None:
    """The first segment in ``text`` under the rules of :func:`find_segments`, or None."""
    segments = find_segments(text)
    return segments[0] if segments else None


def parse_events(text: str) -> list[ParsedEvent]:
    """Events of a dense-captioning answer, e.g.
    ``"From 00 to 15, a man enters. From 16 to 40, he sits down."`` ->
    ``[(0, 15, "a man enters."), (16, 40, "he sits down.")]``.

    Segments are found by :func:`find_segments`; each caption is the text up to the next
    segment, stripped of surrounding spaces and of leading ",", ".", ":", ";" or dashes. Text before
    the first segment is ignored, and segments followed by no letter or digit are dropped. Use
    :func:`find_segments` to see the ``reversed``/``clamped`` flags.
    """
    segments = find_segments(text)
    events = []
    for k, segment in enumerate(segments):
        stop = segments[k + 1].span[0] if k + 1 < len(segments) else len(text)
        caption = text[segment.span[1] : stop].strip().lstrip(",.:;-\u2013\u2014 ").strip()
        if any(char.isalnum() for char in caption):
            events.append(ParsedEvent(segment.start, segment.end, caption))
    return events
