"""The dataset record: Parquet round trip, atomic writes, every validation error, mask RLE."""

import copy
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pite import masks, schema
from pite.masks import counts_to_runs, decode_mask, encode_mask, mask_area, rle_problem
from pite.schema import (
    FAILURE_SCHEMA,
    MISSING,
    NUM_FRAMES,
    NUM_TRAJECTORIES,
    VIDEO_SCHEMA,
    Event,
    Failure,
    Phrase,
    SchemaError,
    VideoRecord,
    empty_trajectory,
    read_failures,
    read_shard,
    read_shards,
    validate,
    validate_failure,
    validate_or_raise,
    write_failures,
    write_shard,
)
from pite.timeline import seconds_to_index

# --- builders ------------------------------------------------------------------------------


def make_trajectory(first: int = 0, last: int = 40, x: float = 0.5, y: float = 0.25):
    """Visible (x, y) on frames first..last-1 of every key trajectory, (-1, -1) elsewhere."""
    trajectory, visibility = empty_trajectory()
    trajectory[:, first:last] = (x, y)
    visibility[:, first:last] = True
    return trajectory, visibility


def make_phrase(caption: str, text: str, seed: int = 0, **changes) -> Phrase:
    rng = np.random.default_rng(seed)
    mask = np.zeros((48, 64), bool)
    mask[rng.integers(0, 20) :, rng.integers(0, 30) : 50] = True
    trajectory, visibility = make_trajectory()
    start = caption.index(text)
    values = dict(
        text=text,
        char_start=start,
        char_end=start + len(text),
        box=(0.125, 0.25, 0.75, 1.0),
        mask_rle=encode_mask(mask),
        score=0.875,
        trajectory=trajectory,
        visibility=visibility,
    )
    values.update(changes)
    return Phrase(**values)


def make_record(video_id: str = "vid") -> VideoRecord:
    first = "a man rides a bike"
    second = "Ein Mann fährt Fahrrad — 自行车 🚲"
    return VideoRecord(
        video_id=video_id,
        video_path=f"clips/{video_id}.mp4",
        duration_s=10.0,
        fps=25.0,
        width=64,
        height=48,
        events=[
            Event(0.0, 4.0, first, [make_phrase(first, "a man"), make_phrase(first, "a bike", seed=1)]),
            Event(4.0, 10.0, second, []),
        ],
    )


def realistic_record(video_id: str, rng: np.random.Generator) -> VideoRecord:
    """Several events with a mix of phrases: partly visible, all invisible, noisy tracks."""
    events = []
    for e in range(3):
        caption = f"event {e}: a woman is counting money with a pen on a white table ünd café"
        phrases = []
        for k, text in enumerate(["a woman", "money", "a pen", "a white table"]):
            mask = np.zeros((36, 64), bool)
            y0, x0 = rng.integers(0, 18), rng.integers(0, 32)
            mask[y0 : y0 + rng.integers(1, 18), x0 : x0 + rng.integers(1, 32)] = True
            if k == 3:
                trajectory, visibility = empty_trajectory()
            else:
                trajectory = rng.random((NUM_TRAJECTORIES, NUM_FRAMES, 2)).astype(np.float16)
                visibility = rng.random((NUM_TRAJECTORIES, NUM_FRAMES)) < 0.7
                visibility[:, : seconds_to_index(e * 3.0, 9.5)] = False
                visibility[:, seconds_to_index(e * 3.0 + 2.5, 9.5) + 1 :] = False
                trajectory[~visibility] = MISSING
            start = caption.index(text)
            phrases.append(
                Phrase(text, start, start + len(text), (0.0, 0.1, 0.5, 1.0), encode_mask(mask),
                       float(rng.random()), trajectory, visibility)
            )  # fmt: skip
        events.append(Event(e * 3.0, e * 3.0 + 2.5, caption, phrases))
    return VideoRecord(video_id, f"{video_id}.mp4", 9.5, 29.97, 64, 36, events)


# --- round trip ----------------------------------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path):
    rng = np.random.default_rng(0)
    records = [make_record("a"), realistic_record("b", rng), VideoRecord("c", "c.webm", 3.5, 30.0, 8, 6, [])]
    path = write_shard(records, tmp_path / "00000.parquet")
    assert path == tmp_path / "00000.parquet"
    back = read_shard(path)
    assert back == records
    assert [r.video_id for r in back] == ["a", "b", "c"]
    assert back[0].events[1].caption == "Ein Mann fährt Fahrrad — 自行车 🚲"
    assert back[0].events[1].phrases == []
    assert back[2].events == []
    phrase = back[1].events[0].phrases[0]
    assert phrase.trajectory.dtype == np.float16 and phrase.trajectory.shape == (3, 100, 2)
    assert phrase.visibility.dtype == np.bool_ and phrase.visibility.shape == (3, 100)
    assert phrase.trajectory.flags.writeable and phrase.visibility.flags.writeable
    assert isinstance(phrase.box, tuple) and isinstance(phrase.mask_rle["counts"], str)
    for got, want in zip(back[1].events[0].phrases, records[1].events[0].phrases):
        assert np.array_equal(got.trajectory, want.trajectory)
        assert np.array_equal(got.visibility, want.visibility)
        assert np.array_equal(decode_mask(got.mask_rle), decode_mask(want.mask_rle))


def test_round_trip_all_invisible_trajectory(tmp_path):
    record = make_record()
    trajectory, visibility = empty_trajectory()
    record.events[0].phrases[0].trajectory = trajectory
    record.events[0].phrases[0].visibility = visibility
    [back] = read_shard(write_shard([record], tmp_path / "s.parquet"))
    phrase = back.events[0].phrases[0]
    assert (phrase.trajectory == MISSING).all()
    assert not phrase.visibility.any()


def test_empty_shard_round_trips(tmp_path):
    assert read_shard(write_shard([], tmp_path / "empty.parquet")) == []


def test_shard_is_zstd_with_compact_columns(tmp_path):
    path = write_shard([make_record()], tmp_path / "s.parquet")
    metadata = pq.ParquetFile(path).metadata
    codecs = {metadata.row_group(0).column(c).compression for c in range(metadata.num_columns)}
    assert codecs == {"ZSTD"}
    phrase_type = VIDEO_SCHEMA.field("events").type.value_type.field("phrases").type.value_type
    assert phrase_type.field("trajectory").type == pa.binary(1200)
    assert phrase_type.field("visibility").type == pa.binary(38)
    assert pq.read_schema(path).metadata[b"pite.kind"] == b"videos"


def test_storage_per_phrase_is_well_under_4_kb(tmp_path):
    rng = np.random.default_rng(1)
    records = [realistic_record(f"v{i:03d}", rng) for i in range(50)]
    path = write_shard(records, tmp_path / "s.parquet")
    num_phrases = sum(len(e.phrases) for r in records for e in r.events)
    assert os.path.getsize(path) / num_phrases < 2048


def test_phrase_equality_compares_arrays():
    a = make_phrase("a man rides a bike", "a man")
    b = copy.deepcopy(a)
    assert a == b
    b.trajectory[0, 0] = (0.75, 0.75)
    assert a != b
    assert a != "a man"


# --- files on disk -------------------------------------------------------------------------


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_shard([make_record("first")], tmp_path / "00000.parquet")
    write_shard([make_record("second")], tmp_path / "00000.parquet")  # replaces the old shard
    assert sorted(os.listdir(tmp_path)) == ["00000.parquet"]
    assert [r.video_id for r in read_shard(tmp_path / "00000.parquet")] == ["second"]


def test_failed_write_keeps_the_old_shard_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = write_shard([make_record("old")], tmp_path / "00000.parquet")

    def broken_write(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(schema.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_shard([make_record("new")], path)
    assert sorted(os.listdir(tmp_path)) == ["00000.parquet"]
    monkeypatch.undo()
    assert [r.video_id for r in read_shard(path)] == ["old"]


def test_write_creates_parent_directories(tmp_path):
    path = write_shard([make_record()], tmp_path / "deep" / "er" / "s.parquet")
    assert path.is_file()


def test_write_refuses_invalid_records_and_names_them(tmp_path):
    good, bad1, bad2 = make_record("good"), make_record("bad1"), make_record("bad2")
    bad1.fps = 0.0
    bad2.events[0].phrases[1].score = float("nan")
    with pytest.raises(SchemaError) as error:
        write_shard([good, bad1, bad2], tmp_path / "s.parquet")
    assert error.value.problems == [
        "video 'bad1': fps is 0.0, expected a finite number > 0",
        "video 'bad2' event 0 phrase 1: score is nan, expected a finite number",
    ]
    assert str(error.value).startswith(f"refusing to write shard {tmp_path / 's.parquet'}:\n")
    assert "  - video 'bad1': fps is 0.0" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_write_refuses_duplicate_video_ids(tmp_path):
    with pytest.raises(SchemaError, match=r"video 'x': duplicate video_id \(records 0 and 2\)"):
        write_shard([make_record("x"), make_record("y"), make_record("x")], tmp_path / "s.parquet")
    assert os.listdir(tmp_path) == []


def test_read_shards_from_directory_paths_and_single_file(tmp_path):
    write_shard([make_record("c"), make_record("d")], tmp_path / "00001.parquet")
    write_shard([make_record("a"), make_record("b")], tmp_path / "00000.parquet")
    write_failures([Failure("e", -1, "decode", "missing_file", "no such file")], tmp_path / "failures.parquet")
    (tmp_path / ".00002.parquet.abc.tmp").write_bytes(b"partial")
    (tmp_path / ".00002.parquet").write_bytes(b"hidden")
    (tmp_path / "stats.json").write_text("{}")
    assert [r.video_id for r in read_shards(tmp_path)] == ["a", "b", "c", "d"]
    assert [r.video_id for r in read_shards(str(tmp_path))] == ["a", "b", "c", "d"]
    paths = [tmp_path / "00001.parquet", str(tmp_path / "00000.parquet")]
    assert [r.video_id for r in read_shards(paths)] == ["c", "d", "a", "b"]
    assert [r.video_id for r in read_shards(tmp_path / "00001.parquet")] == ["c", "d"]
    with pytest.raises(FileNotFoundError, match="no such file: .*missing.parquet"):
        list(read_shards(tmp_path / "missing.parquet"))


def test_read_shards_is_lazy(tmp_path):
    write_shard([make_record("a")], tmp_path / "00000.parquet")
    iterator = read_shards(tmp_path)
    assert not isinstance(iterator, list)
    assert next(iterator).video_id == "a"


def test_read_errors_are_clear(tmp_path):
    failures = write_failures([], tmp_path / "failures.parquet")
    shard = write_shard([make_record()], tmp_path / "s.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(ValueError, match=r"is not a pite videos file \(pite.kind = 'failures'\)"):
        read_shard(failures)
    with pytest.raises(ValueError, match=r"is not a pite failures file \(pite.kind = 'videos'\)"):
        read_failures(shard)
    with pytest.raises(ValueError, match=r"foreign.parquet is not a pite videos file \(pite.kind = None\)"):
        list(read_shards(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_shard(tmp_path / "nope.parquet")


def test_read_refuses_other_schema_versions(tmp_path):
    future = VIDEO_SCHEMA.with_metadata({"pite.kind": "videos", "pite.schema_version": "2"})
    table = pa.Table.from_pylist([], schema=future)
    pq.write_table(table, tmp_path / "future.parquet")
    with pytest.raises(ValueError, match="has pite schema version 2, this code reads version 1"):
        read_shard(tmp_path / "future.parquet")


# --- failures ------------------------------------------------------------------------------


def test_failures_round_trip_and_directory(tmp_path):
    failures = [
        Failure("v1", -1, "decode", "missing_file", "clips/v1.mp4 does not exist"),
        Failure("v2", 2, "grounding", "no_phrase_grounded", "Keine Phrase — 没有"),
    ]
    write_failures(failures, tmp_path / "failures-0.parquet")
    write_failures(failures[:1], tmp_path / "failures-1.parquet")
    write_shard([make_record()], tmp_path / "00000.parquet")
    assert read_failures(tmp_path / "failures-0.parquet") == failures
    assert read_failures(tmp_path) == failures + failures[:1]
    assert FAILURE_SCHEMA.names == ["video_id", "event", "stage", "reason", "message"]


@pytest.mark.parametrize(
    "failure, expected",
    [
        (Failure("", -1, "decode", "x", "m"), "failure for video '': video_id is '', expected a non-empty string"),
        (
            Failure("v", -2, "decode", "x", "m"),
            "failure for video 'v': event is -2, expected -1 (whole video) or an event index >= 0",
        ),
        (Failure("v", 0, "", "x", "m"), "failure for video 'v': stage is '', expected a non-empty string"),
        (
            Failure("v", 0, "decode", "Missing File", "m"),
            "failure for video 'v': reason 'Missing File' must be a short code of lowercase letters, digits and '_'",
        ),
        (Failure("v", 0, "decode", "x", None), "failure for video 'v': message must be a string, got NoneType"),
    ],
)
def test_failure_validation(failure, expected, tmp_path):
    assert validate_failure(failure) == [expected]
    with pytest.raises(SchemaError, match="refusing to write failures"):
        write_failures([failure], tmp_path / "f.parquet")
    assert not (tmp_path / "f.parquet").exists()


# --- validation: one test per kind of error -----------------------------------------------


def test_valid_records_have_no_problems():
    assert validate(make_record()) == []
    validate_or_raise(make_record())
    trajectory, visibility = empty_trajectory()
    assert trajectory.dtype == np.float16 and trajectory.shape == (3, 100, 2) and (trajectory == -1).all()
    assert visibility.dtype == np.bool_ and visibility.shape == (3, 100) and not visibility.any()


def test_end_may_pass_duration_by_float_rounding():
    record = make_record()
    record.events[1].end_s = record.duration_s + 5e-4
    assert validate(record) == []


def _set(path: str, value):
    """A mutation setting ``record.<path>`` where path is like ``events.0.phrases.1.score``."""

    def mutate(record):
        *parents, last = path.split(".")
        target = record
        for part in parents:
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        if last.isdigit() or isinstance(target, dict):
            target[int(last) if last.isdigit() else last] = value
        else:
            setattr(target, last, value)

    return mutate


def _with_trajectory(values=None, visibility=None, point=(0, 3)):
    """A mutation of phrase 0 of event 0: set one trajectory point and/or its visibility."""

    def mutate(record):
        phrase = record.events[0].phrases[0]
        if values is not None:
            phrase.trajectory[point] = values
        if visibility is not None:
            phrase.visibility[point] = visibility

    return mutate


V, E0, E1, P0 = "video 'vid'", "video 'vid' event 0", "video 'vid' event 1", "video 'vid' event 0 phrase 0"
BAD_TRAJ_SHAPE = np.full((3, 99, 2), -1, np.float16)

VALIDATION_CASES = {
    "video_id empty": (_set("video_id", ""), ["video '': video_id is '', expected a non-empty string"]),
    "video_path empty": (_set("video_path", ""), [f"{V}: video_path is '', expected a non-empty relative path"]),
    "video_path absolute": (
        _set("video_path", "/data/vid.mp4"),
        [f"{V}: video_path '/data/vid.mp4' must be relative to the video root"],
    ),
    "duration not finite": (
        _set("duration_s", float("nan")),
        [f"{V}: duration_s is nan, expected a finite number > 0"],
    ),
    "fps not positive": (_set("fps", -25.0), [f"{V}: fps is -25.0, expected a finite number > 0"]),
    "fps not a number": (_set("fps", "25"), [f"{V}: fps is '25', expected a finite number > 0"]),
    "width zero": (_set("width", 0), [f"{V}: width is 0, expected an integer > 0"]),
    "height not integer": (_set("height", 48.0), [f"{V}: height is 48.0, expected an integer > 0"]),
    "events not a list": (_set("events", None), [f"{V}: events must be a list, got NoneType"]),
    "event not an Event": (_set("events.1", {"start_s": 0}), [f"{E1}: expected an Event, got dict"]),
    "start negative": (_set("events.0.start_s", -0.5), [f"{E0}: start_s is -0.5, expected >= 0"]),
    "start not finite": (_set("events.0.start_s", float("inf")), [f"{E0}: start_s is inf, expected a finite number"]),
    "end before start": (_set("events.1.end_s", 3.0), [f"{E1}: end_s 3.0 must be after start_s 4.0"]),
    "end equals start": (_set("events.1.end_s", 4.0), [f"{E1}: end_s 4.0 must be after start_s 4.0"]),
    "end after duration": (_set("events.1.end_s", 10.5), [f"{E1}: end_s 10.5 is after the video's duration_s 10.0"]),
    "caption empty": (_set("events.1.caption", " "), [f"{E1}: caption is ' ', expected a non-empty string"]),
    "phrases not a list": (_set("events.1.phrases", ()), [f"{E1}: phrases must be a list, got tuple"]),
    "phrase not a Phrase": (_set("events.0.phrases.0", "a man"), [f"{P0}: expected a Phrase, got str"]),
    "char offsets out of range": (
        _set("events.0.phrases.0.char_end", 30),
        [f"{P0}: char_start 0 and char_end 30 must satisfy 0 <= char_start < char_end <= len(caption) = 18"],
    ),
    "char offsets reversed": (
        _set("events.0.phrases.0.char_start", 5),
        [f"{P0}: char_start 5 and char_end 5 must satisfy 0 <= char_start < char_end <= len(caption) = 18"],
    ),
    "char offsets not integers": (
        _set("events.0.phrases.0.char_start", 0.0),
        [f"{P0}: char_start and char_end must be integers, got 0.0 and 5"],
    ),
    "text does not match caption": (
        _set("events.0.phrases.0.text", "a men"),
        [f"{P0}: text 'a men' does not match caption[0:5] = 'a man'"],
    ),
    "text empty": (
        _set("events.0.phrases.0.text", ""),
        [f"{P0}: text is '', expected a non-empty string", f"{P0}: text '' does not match caption[0:5] = 'a man'"],
    ),
    "box wrong length": (
        _set("events.0.phrases.0.box", (0.1, 0.2, 0.3)),
        [f"{P0}: box must be 4 numbers (x0, y0, x1, y1), got (0.1, 0.2, 0.3)"],
    ),
    "box outside [0, 1]": (
        _set("events.0.phrases.0.box", (0.1, 0.2, 1.5, 0.9)),
        [f"{P0}: box (0.1, 0.2, 1.5, 0.9) has values outside [0, 1]"],
    ),
    "box not finite": (
        _set("events.0.phrases.0.box", (0.1, 0.2, float("nan"), 0.9)),
        [f"{P0}: box (0.1, 0.2, nan, 0.9) has values outside [0, 1]"],
    ),
    "box corners swapped": (
        _set("events.0.phrases.0.box", (0.6, 0.2, 0.3, 0.9)),
        [f"{P0}: box (0.6, 0.2, 0.3, 0.9) must have x0 <= x1 and y0 <= y1"],
    ),
    "mask_rle missing key": (
        _set("events.0.phrases.0.mask_rle", {"counts": "0"}),
        [f"{P0}: mask_rle must be a dict with exactly the keys 'counts' and 'size', got ['counts']"],
    ),
    "mask_rle size bad": (
        _set("events.0.phrases.0.mask_rle.size", [0, 64]),
        [f"{P0}: mask_rle size must be two integers [h, w] > 0, got [0, 64]"],
    ),
    "mask_rle counts bytes": (
        _set("events.0.phrases.0.mask_rle.counts", b"PPYo1"),
        [f"{P0}: mask_rle counts must be a str (compressed COCO RLE), got bytes"],
    ),
    "mask_rle counts undecodable": (
        _set("events.0.phrases.0.mask_rle.counts", "0 1"),
        [f"{P0}: mask_rle counts do not decode: counts has an invalid character ' ' at position 1"],
    ),
    "mask_rle counts wrong total": (
        _set("events.0.phrases.0.mask_rle.size", [48, 65]),
        [f"{P0}: mask_rle counts cover 3072 pixels, expected h * w = 3120"],
    ),
    "score not finite": (
        _set("events.0.phrases.0.score", float("nan")),
        [f"{P0}: score is nan, expected a finite number"],
    ),
    "score not a number": (_set("events.0.phrases.0.score", None), [f"{P0}: score is None, expected a finite number"]),
    "trajectory not an array": (
        _set("events.0.phrases.0.trajectory", [[0.5, 0.5]]),
        [f"{P0}: trajectory must be a numpy array, got list"],
    ),
    "trajectory dtype": (
        lambda r: _set("events.0.phrases.0.trajectory", r.events[0].phrases[0].trajectory.astype(np.float32))(r),
        [f"{P0}: trajectory has dtype float32, expected float16"],
    ),
    "trajectory shape": (
        _set("events.0.phrases.0.trajectory", BAD_TRAJ_SHAPE),
        [f"{P0}: trajectory has shape (3, 99, 2), expected (3, 100, 2)"],
    ),
    "trajectory not finite": (
        _with_trajectory(values=(np.inf, 0.5)),
        [f"{P0}: trajectory has 1 non-finite value"],
    ),
    "trajectory half missing": (
        _with_trajectory(values=(-1, 0.5)),
        [f"{P0}: trajectory has 1 point with only one coordinate at -1, expected both "
         "(first: trajectory 0 frame 3 = (-1.0, 0.5))"],
    ),  # fmt: skip
    "trajectory outside [0, 1]": (
        _with_trajectory(values=(1.5, 0.25)),
        [f"{P0}: trajectory has 1 point outside [0, 1] that are not (-1, -1) "
         "(first: trajectory 0 frame 3 = (1.5, 0.25))"],
    ),  # fmt: skip
    "trajectory negative but not missing": (
        _with_trajectory(values=(-0.5, -0.5), point=(2, 10)),
        [f"{P0}: trajectory has 1 point outside [0, 1] that are not (-1, -1) "
         "(first: trajectory 2 frame 10 = (-0.5, -0.5))"],
    ),  # fmt: skip
    "trajectory present outside the event": (
        _with_trajectory(values=(0.5, 0.5), visibility=True, point=(2, 41)),
        [f"{P0}: trajectory has 1 point outside the event's frames 00..40 not at (-1, -1) "
         "(first: trajectory 2 frame 41 = (0.5, 0.5))"],
    ),  # fmt: skip
    "visibility dtype": (
        lambda r: _set("events.0.phrases.0.visibility", r.events[0].phrases[0].visibility.astype(np.uint8))(r),
        [f"{P0}: visibility has dtype uint8, expected bool"],
    ),
    "visibility shape": (
        _set("events.0.phrases.0.visibility", np.zeros((3, 100, 1), bool)),
        [f"{P0}: visibility has shape (3, 100, 1), expected (3, 100)"],
    ),
    "visibility not an array": (
        _set("events.0.phrases.0.visibility", None),
        [f"{P0}: visibility must be a numpy array, got NoneType"],
    ),
    "visible point is missing": (
        _with_trajectory(visibility=True, point=(1, 60)),
        [f"{P0}: visibility marks 1 point visible whose trajectory point is (-1, -1) (first: trajectory 1 frame 60)"],
    ),
    "invisible point is present": (
        _with_trajectory(visibility=False, point=(0, 3)),
        [f"{P0}: visibility marks 1 point invisible whose trajectory point is not (-1, -1) "
         "(first: trajectory 0 frame 3 = (0.5, 0.25))"],
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(VALIDATION_CASES))
def test_each_validation_error(case):
    mutate, expected = VALIDATION_CASES[case]
    record = make_record()
    mutate(record)
    assert validate(record) == expected
    with pytest.raises(SchemaError) as error:
        validate_or_raise(record)
    assert error.value.problems == expected


def test_duration_not_positive_also_flags_events_past_the_end():
    record = make_record()
    record.duration_s = 0.0
    assert validate(record) == [
        "video 'vid': duration_s is 0.0, expected a finite number > 0",
        "video 'vid' event 0: end_s 4.0 is after the video's duration_s 0.0",
        "video 'vid' event 1: end_s 10.0 is after the video's duration_s 0.0",
    ]


def test_validation_reports_every_problem_with_its_location():
    record = make_record()
    record.width = -1
    record.events[0].phrases[1].trajectory = BAD_TRAJ_SHAPE
    record.events[0].phrases[1].score = float("inf")
    record.events[1].start_s = -1.0
    expected = [
        "video 'vid': width is -1, expected an integer > 0",
        "video 'vid' event 0 phrase 1: score is inf, expected a finite number",
        "video 'vid' event 0 phrase 1: trajectory has shape (3, 99, 2), expected (3, 100, 2)",
        "video 'vid' event 1: start_s is -1.0, expected >= 0",
    ]
    assert validate(record) == expected
    with pytest.raises(SchemaError) as error:
        validate_or_raise(record)
    assert str(error.value) == "invalid video record 'vid':\n" + "\n".join(f"  - {p}" for p in expected)


def test_many_bad_points_are_summarised_not_listed():
    record = make_record()
    record.events[0].phrases[0].trajectory[:, :40] = (2.0, 2.0)
    assert validate(record) == [
        "video 'vid' event 0 phrase 0: trajectory has 120 points outside [0, 1] that are not (-1, -1) "
        "(first: trajectory 0 frame 0 = (2.0, 2.0))"
    ]


def test_validate_rejects_other_types():
    assert validate({"video_id": "x"}) == ["expected a VideoRecord, got dict"]
    assert validate_failure("x") == ["expected a Failure, got str"]


# --- masks ---------------------------------------------------------------------------------


def _runs_of(mask: np.ndarray) -> list[int]:
    """Reference run lengths: column-major, starting with a (possibly empty) background run."""
    runs, current, length = [], 0, 0
    for value in mask.flatten(order="F").astype(int):
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    return runs + [length]


def test_mask_round_trip_and_runs():
    rng = np.random.default_rng(0)
    for trial in range(60):
        height, width = (int(v) for v in rng.integers(1, 50, 2))
        mask = rng.random((height, width)) < rng.random()
        rle = encode_mask(mask)
        assert rle["size"] == [height, width] and all(type(v) is int for v in rle["size"])
        assert isinstance(rle["counts"], str)
        assert rle_problem(rle) is None
        assert counts_to_runs(rle["counts"]).tolist() == _runs_of(mask)
        decoded = decode_mask(rle)
        assert decoded.dtype == np.bool_ and np.array_equal(decoded, mask)
        assert mask_area(rle) == int(mask.sum())


def test_mask_large_runs_and_uint8_input():
    mask = np.zeros((1080, 1920), np.uint8)
    mask[100:900, 200:1700] = 1
    rle = encode_mask(mask)
    assert counts_to_runs(rle["counts"])[:3].tolist() == [200 * 1080 + 100, 800, 280]
    assert mask_area(rle) == 800 * 1500
    assert np.array_equal(decode_mask(rle), mask.astype(bool))


def test_mask_all_empty_and_all_full():
    for mask in (np.zeros((5, 7), bool), np.ones((5, 7), bool)):
        assert np.array_equal(decode_mask(encode_mask(mask)), mask)


def test_encode_mask_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"mask must have shape \(H, W\), got \(2, 3, 4\)"):
        encode_mask(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="mask must not be empty"):
        encode_mask(np.zeros((0, 3), bool))


UNDECODABLE = "mask_rle counts do not decode: "


@pytest.mark.parametrize(
    "rle, problem",
    [
        ({"size": [2, 2], "counts": "a"}, UNDECODABLE + "counts string ends in the middle of a number"),
        ({"size": [2, 2], "counts": "\u20ac"}, UNDECODABLE + "counts has an invalid character '€' at position 0"),
        ({"size": [2, 2], "counts": "oooooooo0"}, UNDECODABLE + "counts has a number longer than 7 characters"),
        ({"size": [2, 2], "counts": "@"}, UNDECODABLE + "a run length is negative"),
        ({"size": [2, 2], "counts": "0`0"}, "mask_rle counts cover 16 pixels, expected h * w = 4"),
        ({"size": [2, 2], "counts": ""}, "mask_rle counts cover 0 pixels, expected h * w = 4"),
        ({"size": [2, True], "counts": "04"}, "mask_rle size must be two integers [h, w] > 0, got [2, True]"),
        ([2, 2], "mask_rle must be a dict with exactly the keys 'counts' and 'size', got list"),
    ],
)  # fmt: skip
def test_malformed_rle_is_rejected_before_pycocotools_sees_it(rle, problem):
    # pycocotools' C decoder writes past its buffer when the runs cover more than h * w pixels.
    assert rle_problem(rle) == problem
    with pytest.raises(ValueError, match="invalid mask RLE"):
        decode_mask(rle)
    with pytest.raises(ValueError, match="invalid mask RLE"):
        mask_area(rle)


def test_schema_reexports_mask_helpers():
    assert schema.encode_mask is masks.encode_mask and schema.decode_mask is masks.decode_mask


def test_points_on_the_event_boundary_frames_are_allowed():
    # Event 0 runs 0-4 s of 10 s: global frames 00..40, both ends included.
    record = make_record()
    phrase = record.events[0].phrases[0]
    phrase.trajectory[:, 40] = (0.5, 0.5)
    phrase.visibility[:, 40] = True
    assert validate(record) == []
