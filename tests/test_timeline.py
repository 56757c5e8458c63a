"""Seconds <-> 00..99 frame indices, and formatting/parsing of segments as text."""

import numpy as np
import pytest

from pite import schema, timeline
from pite.timeline import (
    NUM_FRAMES,
    ParsedEvent,
    ParsedSegment,
    find_segments,
    format_event,
    format_events,
    format_index,
    format_segment,
    frame_times,
    index_to_seconds,
    parse_events,
    parse_segment,
    seconds_to_index,
    segment_to_seconds,
)

DURATIONS = [0.37, 7.3, 10.0, 52.123, 3600.5]


def test_one_source_of_truth_for_the_frame_count():
    assert NUM_FRAMES == 100
    assert schema.NUM_FRAMES is timeline.NUM_FRAMES


# --- seconds_to_index -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t, duration, expected",
    [
        (0.0, 10.0, 0),
        (10.0, 10.0, 99),  # the very end clamps to the last index
        (10.0001, 10.0, 99),  # slightly after the end
        (1e9, 10.0, 99),
        (-0.5, 10.0, 0),  # before the start
        (5.0, 10.0, 50),
        (26.0, 52.0, 50),
        (0.004, 1.0, 0),  # 0.4 rounds down
        (0.006, 1.0, 1),  # 0.6 rounds up
        (9.85, 10.0, 99),  # 98.5 -> 99
        (9.84, 10.0, 98),
        (float("inf"), 10.0, 99),
        (float("-inf"), 10.0, 0),
    ],
)
def test_seconds_to_index(t, duration, expected):
    assert seconds_to_index(t, duration) == expected
    assert isinstance(seconds_to_index(t, duration), int)


@pytest.mark.parametrize(
    "t, duration, expected",
    [
        (0.125, 1.0, 13),  # 12.5: half up gives 13, Python's round() gives 12
        (0.005, 1.0, 1),  # 0.5 -> 1 (round() gives 0)
        (0.025, 1.0, 3),  # 2.5 -> 3 (round() gives 2)
        (0.135, 1.0, 14),  # 13.5 -> 14
        (0.285, 1.0, 29),  # 28.499999999999996 in floating point, meant as 28.5
        (1.25, 10.0, 13),
    ],
)
def test_seconds_to_index_rounds_half_up(t, duration, expected):
    assert seconds_to_index(t, duration) == expected


def test_seconds_to_index_differs_from_bankers_rounding():
    assert round(12.5) == 12
    assert seconds_to_index(12.5, 100.0) == 13


@pytest.mark.parametrize("duration", [0.0, -1.0, float("nan"), float("inf")])
def test_seconds_to_index_rejects_bad_duration(duration):
    with pytest.raises(ValueError, match="duration must be a finite number of seconds > 0"):
        seconds_to_index(1.0, duration)


def test_seconds_to_index_rejects_nan_time():
    with pytest.raises(ValueError, match="t must be a number of seconds, got nan"):
        seconds_to_index(float("nan"), 10.0)


def test_seconds_to_index_accepts_numpy_scalars():
    assert seconds_to_index(np.float32(5.0), np.float64(10.0)) == 50


# --- index_to_seconds, segment_to_seconds --------------------------------------------------


def test_index_to_seconds():
    assert index_to_seconds(0, 50.0) == 0.0
    assert index_to_seconds(5, 50.0) == 2.5
    assert index_to_seconds(99, 100.0) == 99.0
    assert index_to_seconds(np.int64(10), 20.0) == 2.0


@pytest.mark.parametrize("duration", DURATIONS)
def test_index_round_trip_is_stable(duration):
    for i in range(NUM_FRAMES):
        assert seconds_to_index(index_to_seconds(i, duration), duration) == i


@pytest.mark.parametrize("duration", DURATIONS)
def test_seconds_round_trip_error_is_at_most_half_a_bin(duration):
    times = np.linspace(0, duration * 0.985, 997)
    for t in times:
        back = index_to_seconds(seconds_to_index(t, duration), duration)
        assert abs(back - t) <= duration / 200 + 1e-9


@pytest.mark.parametrize("bad", [-1, 100, 5.0, True, "5"])
def test_index_to_seconds_rejects_bad_index(bad):
    with pytest.raises(ValueError, match="index must be"):
        index_to_seconds(bad, 10.0)


def test_index_to_seconds_rejects_bad_duration():
    with pytest.raises(ValueError, match="duration"):
        index_to_seconds(5, 0.0)


def test_segment_to_seconds():
    assert segment_to_seconds(5, 23, 100.0) == (5.0, 23.0)
    assert segment_to_seconds(0, 99, 50.0) == (0.0, 49.5)
    assert segment_to_seconds(7, 7, 10.0) == (0.7, 0.7)


@pytest.mark.parametrize("duration", DURATIONS)
def test_segment_round_trip_is_stable(duration):
    for s, e in [(0, 0), (0, 99), (5, 23), (42, 43), (98, 99), (99, 99)]:
        start, end = segment_to_seconds(s, e, duration)
        assert (seconds_to_index(start, duration), seconds_to_index(end, duration)) == (s, e)


def test_segment_to_seconds_rejects_reversed_and_out_of_range():
    with pytest.raises(ValueError, match="start_idx 23 is after end_idx 5"):
        segment_to_seconds(23, 5, 10.0)
    with pytest.raises(ValueError, match="end_idx must be in"):
        segment_to_seconds(5, 100, 10.0)
    with pytest.raises(ValueError, match="start_idx must be in"):
        segment_to_seconds(-1, 5, 10.0)


# --- frame_times -------------------------------------------------------------------------


@pytest.mark.parametrize("duration", DURATIONS)
def test_frame_times_are_the_starts_of_the_bins(duration):
    times = frame_times(duration)
    assert times.shape == (100,) and times.dtype == np.float64
    assert times[0] == 0.0
    assert np.allclose(np.diff(times), duration / 100)
    assert times[-1] == pytest.approx(0.99 * duration)
    assert (times < duration).all()
    for i, t in enumerate(times):
        assert t == pytest.approx(index_to_seconds(i, duration), abs=1e-12)
        assert seconds_to_index(t, duration) == i


def test_frame_times_custom_count():
    assert frame_times(8.0, n=4).tolist() == [0.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_frame_times_rejects_bad_count(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        frame_times(10.0, n=n)


def test_frame_times_rejects_bad_duration():
    with pytest.raises(ValueError, match="duration"):
        frame_times(-2.0)


# --- formatting ------------------------------------------------------------------------


def test_format_index():
    assert format_index(0) == "00"
    assert format_index(5) == "05"
    assert format_index(99) == "99"
    for bad in (-1, 100, 5.0):
        with pytest.raises(ValueError):
            format_index(bad)


def test_format_segment():
    assert format_segment(5, 23) == "From 05 to 23"
    assert format_segment(5, 23, capitalize=False) == "from 05 to 23"
    assert format_segment(0, 99) == "From 00 to 99"


def test_format_event():
    assert format_event(5, 23, "a man rides a bike.") == "From 05 to 23, a man rides a bike."
    assert format_event(5, 23, "  a man rides a bike ") == "From 05 to 23, a man rides a bike."
    assert format_event(5, 23, "who rides?") == "From 05 to 23, who rides?"
    assert format_event(5, 23, "John waves!", capitalize=False) == "from 05 to 23, John waves!"
    with pytest.raises(ValueError, match="caption is empty"):
        format_event(5, 23, "  ")


def test_format_events():
    text = format_events([(0, 15, "a man enters"), (16, 40, "he sits down.")])
    assert text == "From 00 to 15, a man enters. From 16 to 40, he sits down."


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("05 to 23", (5, 23, False, False)),
        ("from 5 to 23", (5, 23, False, False)),
        ("From 05 to 23", (5, 23, False, False)),
        ("FROM 05 TO 23", (5, 23, False, False)),
        ("The event happens from 05 to 23.", (5, 23, False, False)),
        ("between 05 and 23", (5, 23, False, False)),
        ("frames 5-23", (5, 23, False, False)),
        ("frame 5 to 7", (5, 7, False, False)),
        ("from frame 5 to frame 23", (5, 23, False, False)),
        ("5\u201323", (5, 23, False, False)),  # en dash
        ("05 until 23", (5, 23, False, False)),
        ("05 and 23", (5, 23, False, False)),
        ("From 07 to 07", (7, 7, False, False)),
        ("23 to 05", (5, 23, True, False)),
        ("From 40 to 12, he sits.", (12, 40, True, False)),
        ("05 to 120", (5, 99, False, True)),
        ("From 150 to 20", (20, 99, True, True)),
        ("From 100 to 120", (99, 99, False, True)),
        ("2 to 3 people", (2, 3, False, False)),  # ambiguous: read as a segment when nothing better
        ("2 to 3 people walk in from 05 to 23", (5, 23, False, False)),  # anchored pair wins
    ],
)
def test_parse_segment(text, expected):
    segment = parse_segment(text)
    assert segment is not None
    assert (segment.start, segment.end, segment.reversed, segment.clamped) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no numbers here",
        "at 05",
        "1.5 to 3",  # decimals are not frame indices
        "0:05 to 0:23",  # clock times
        "5s to 10s",  # numbers with a unit glued on
        "in 2020-05",  # years
        "1000 to 2000",
        "05to23",
    ],
)
def test_parse_segment_no_match(text):
    assert parse_segment(text) is None


def test_parse_segment_span_points_into_the_text():
    text = "Sure! From 05 to 23, a man rides."
    segment = parse_segment(text)
    assert segment == ParsedSegment(5, 23, reversed=False, clamped=False, span=(6, 19))
    assert text[segment.span[0] : segment.span[1]] == "From 05 to 23"


def test_find_segments_returns_all_in_order():
    segments = find_segments("From 00 to 15, a. From 30 to 16, b. Between 40 and 140, c.")
    assert [(s.start, s.end, s.reversed, s.clamped) for s in segments] == [
        (0, 15, False, False),
        (16, 30, True, False),
        (40, 99, False, True),
    ]


def test_parse_events_dense_captioning_answer():
    text = "From 00 to 15, a man enters. From 16 to 40, he sits down."
    assert parse_events(text) == [(0, 15, "a man enters."), (16, 40, "he sits down.")]
    assert all(isinstance(event, ParsedEvent) for event in parse_events(text))


def test_parse_events_unpacks_as_triples():
    [(start, end, caption)] = parse_events("From 05 to 23, a man rides a bike.")
    assert (start, end, caption) == (5, 23, "a man rides a bike.")


def test_parse_events_round_trips_format_events():
    events = [(0, 15, "a man enters."), (16, 40, "2 to 3 people follow him."), (41, 99, "Ein Mann fährt.")]
    assert parse_events(format_events(events)) == events


def test_parse_events_ignores_preamble_and_strips_separators():
    text = "Sure! Here are the events: from 00 to 10: a dog barks;  From 11 to 20 - a cat runs"
    assert parse_events(text) == [(0, 10, "a dog barks;"), (11, 20, "a cat runs")]


def test_parse_events_sorts_reversed_and_clamps():
    assert parse_events("From 40 to 16, he sits. From 50 to 120, he leaves.") == [
        (16, 40, "he sits."),
        (50, 99, "he leaves."),
    ]


def test_parse_events_drops_segments_without_caption():
    assert parse_events("From 00 to 10. From 11 to 20, a cat runs.") == [(11, 20, "a cat runs.")]
    assert parse_events("From 00 to 10") == []


def test_parse_events_bare_pairs_when_nothing_is_anchored():
    assert parse_events("00 to 15, a man enters. 16 to 40, he sits.") == [
        (0, 15, "a man enters."),
        (16, 40, "he sits."),
    ]


def test_parse_events_numbers_inside_captions_do_not_split_anchored_answers():
    text = "From 00 to 15, 2 to 3 people enter. From 16 to 40, they sit."
    assert parse_events(text) == [(0, 15, "2 to 3 people enter."), (16, 40, "they sit.")]


def test_parse_events_nothing():
    assert parse_events("") == []
    assert parse_events("A man rides a bike.") == []
