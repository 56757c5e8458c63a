"""Manifest readers: InternVid rows (JSONL, CSV, Parquet) and VTimeLLM items, bad rows, safe paths."""

from __future__ import annotations

import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ManifestSettings
from pipeline.manifest import (EventSpec, ManifestError, ManifestFormatError, UnsafePathError, VideoTask,
                               parse_timestamp, read_manifest, resolve_video_path, split_into_shards,
                               vtimellm_events)

COLUMNS = ["YoutubeID", "Start_timestamp", "End_timestamp", "Caption", "UMT_Score", "Aesthetic_Score"]
ROWS = [  # video "vid_b" appears first; its events are not in time order; captions are kept raw
    ["vid_b", "00:00:12.500", "00:00:20.000", "a man, holding \"a cup\", walks", 0.41, 4.9],
    ["vid_a", "00:01:02.000", "00:01:05.250", "a dog runs on the grass", 0.38, 5.1],
    ["vid_b", "00:00:01.000", "00:00:05.000", "  a woman counts money  ", 0.40, 5.0],
    ["vid_c", "00:00:00.000", "00:00:03.000", "", 0.30, 4.0],
    ["vid_a", "00:00:10.000", "00:00:12.000", "a cat sleeps", 0.35, 4.2],
]


def settings(tmp_path, path, fmt="internvid", **kw) -> ManifestSettings:
    root = tmp_path / "videos"
    root.mkdir(exist_ok=True)
    return ManifestSettings(path=str(path), format=fmt, video_root=str(root), **kw)


def write_rows(tmp_path, ext: str, rows=ROWS, columns=COLUMNS):
    path = tmp_path / f"manifest.{ext}"
    if ext == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows))
    elif ext == "csv":
        table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    else:
        pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}), path)
    return path


# --- InternVid -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_internvid_groups_and_orders(tmp_path, ext):
    result = read_manifest(settings(tmp_path, write_rows(tmp_path, ext)))
    assert result.errors == [] and result.rows == 5
    assert [t.video_id for t in result.tasks] == ["vid_b", "vid_a", "vid_c"]
    b, a, c = result.tasks
    assert b.events == (EventSpec(1.0, 5.0, "  a woman counts money  "),
                        EventSpec(12.5, 20.0, 'a man, holding "a cup", walks'))
    assert [(e.start_s, e.end_s) for e in a.events] == [(10.0, 12.0), (62.0, 65.25)]
    assert c.events == (EventSpec(0.0, 3.0, ""),)  # empty caption passed through
    first_line = {"jsonl": 1, "csv": 2, "parquet": 1}[ext]
    assert (b.source_line, b.video_path) == (first_line, "vid_b.mp4")


def test_tasks_are_plain_and_picklable(tmp_path):
    tasks = read_manifest(settings(tmp_path, write_rows(tmp_path, "jsonl"))).tasks
    assert pickle.loads(pickle.dumps(tasks)) == tasks
    with pytest.raises(AttributeError):
        tasks[0].video_id = "other"


@pytest.mark.parametrize("text, seconds", [
    ("00:00:12.500", 12.5), ("01:02:03.004", 3723.004), ("1:00:00", 3600.0), ("02:03.5", 123.5),
    ("00:00:00.000", 0.0), (" 00:00:01.000 ", 1.0), (12, 12.0), (7.25, 7.25), ("7.25", 7.25), ("-1.5", -1.5),
])
def test_parse_timestamp(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "00:61:00.000", "00:00:75.0", "1:2:3:4", "", None, True, "nan",
                                  float("inf"), "12:", "00-00-01"])
def test_parse_timestamp_rejects(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_jsonl_bad_rows_reported_with_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    good = {"YoutubeID": "v1", "Start_timestamp": "00:00:01.000", "End_timestamp": "00:00:02.000", "Caption": "x"}
    lines = [json.dumps(good), "", "{not json", json.dumps({**good, "Caption": None}),
             json.dumps({**good, "Start_timestamp": "1 min"}), "[1, 2]",
             json.dumps({k: v for k, v in good.items() if k != "YoutubeID"}), json.dumps({**good, "YoutubeID": "v2"})]
    path.write_text("\n".join(lines) + "\n")
    result = read_manifest(settings(tmp_path, path))
    assert [t.video_id for t in result.tasks] == ["v1", "v2"]
    assert [(e.line, e.video_id, e.reason) for e in result.errors] == [
        (3, None, "bad_json"), (4, "v1", "missing_field"), (5, "v1", "bad_timestamp"), (6, None, "bad_json"),
        (7, None, "missing_field")]
    assert "Caption" in result.errors[1].message and "1 min" in result.errors[2].message


def test_csv_bad_rows_reported_with_lines(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("YoutubeID,Start_timestamp,End_timestamp,Caption,UMT_Score\n"
                    "v1,00:00:01.000,00:00:02.000,\"a man, a dog\",0.4\n"
                    "v1,00:00:03.000\n"
                    "v2,00:00:99.000,00:00:02.000,bad time,0.3\n"
                    ",00:00:01.000,00:00:02.000,no id,0.3\n"
                    "v3,1.5,3,plain seconds,0.2\n")
    result = read_manifest(settings(tmp_path, path))
    assert [t.video_id for t in result.tasks] == ["v1", "v3"]
    assert result.tasks[1].events == (EventSpec(1.5, 3.0, "plain seconds"),)
    assert [(e.line, e.video_id, e.reason) for e in result.errors] == [
        (3, None, "bad_row"), (4, "v2", "bad_timestamp"), (5, None, "missing_field")]
    assert result.lost_video_ids() == ["v2"]


def test_parquet_null_values_reported_with_row_numbers(tmp_path):
    rows = [r[:] for r in ROWS]
    rows[1][3] = None
    rows[3][1] = None
    result = read_manifest(settings(tmp_path, write_rows(tmp_path, "parquet", rows)))
    assert [(e.line, e.video_id, e.reason) for e in result.errors] == [
        (2, "vid_a", "missing_field"), (4, "vid_c", "missing_field")]
    assert [t.video_id for t in result.tasks] == ["vid_b", "vid_a"]
    assert len(result.tasks[1].events) == 1


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_missing_column_is_a_clear_error(tmp_path, ext):
    columns = ["video", "Start_timestamp", "End_timestamp", "Caption", "UMT_Score", "Aesthetic_Score"]
    path = write_rows(tmp_path, ext, columns=columns)
    with pytest.raises(ManifestFormatError, match=r"missing column\(s\) YoutubeID.*found: video, Start_timestamp"):
        read_manifest(settings(tmp_path, path))


def test_unknown_extension_and_format(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("x")
    with pytest.raises(ManifestFormatError, match=".jsonl, .csv, .parquet"):
        read_manifest(settings(tmp_path, path))


def test_limit_keeps_first_videos(tmp_path):
    result = read_manifest(settings(tmp_path, write_rows(tmp_path, "csv"), limit=2))
    assert [t.video_id for t in result.tasks] == ["vid_b", "vid_a"]
    assert len(result.tasks[1].events) == 2  # a later row of a kept video still counts


def test_filename_pattern(tmp_path):
    path = write_rows(tmp_path, "jsonl")
    result = read_manifest(settings(tmp_path, path, filename_pattern="clips/{video_id}/v.webm"))
    assert result.tasks[0].video_path == "clips/vid_b/v.webm"


# --- safe paths ------------------------------------------------------------------------------------

def test_unsafe_paths_rejected(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (root / "escape.mp4").symlink_to(outside)
    (root / "inside.mp4").symlink_to(root / "sub")
    for video_id in ["../../etc/passwd", "../secret", "/etc/passwd", "escape", "sub/../../secret", "a\x00b"]:
        with pytest.raises(UnsafePathError):
            resolve_video_path(root, "{video_id}.mp4", video_id)
    with pytest.raises(UnsafePathError, match="outside the video root"):
        resolve_video_path(root, "{video_id}", "..")
    with pytest.raises(UnsafePathError, match="video root itself"):
        resolve_video_path(root, "{video_id}", ".")
    assert resolve_video_path(root, "{video_id}.mp4", "inside") == root.resolve() / "inside.mp4"
    assert resolve_video_path(root, "{video_id}.mp4", "sub/../ok") == root.resolve() / "ok.mp4"
    linked_root = tmp_path / "link_to_videos"
    linked_root.symlink_to(root)  # a root that is itself a link is fine
    assert resolve_video_path(linked_root, "{video_id}.mp4", "a") == root.resolve() / "a.mp4"


def test_unsafe_video_becomes_an_error(tmp_path):
    rows = [["../../etc/passwd", "1", "2", "x", 0, 0], ["ok", "1", "2", "y", 0, 0]]
    result = read_manifest(settings(tmp_path, write_rows(tmp_path, "jsonl", rows)))
    assert [t.video_id for t in result.tasks] == ["ok"]
    assert [(e.line, e.video_id, e.reason) for e in result.errors] == [(1, "../../etc/passwd", "unsafe_path")]


# --- VTimeLLM --------------------------------------------------------------------------------------

def _item(video_id, conversations, token, **meta):
    return {"id": video_id, "source": "internvid",
            "conversations": [{"from": f, "value": v} for f, v in conversations],
            "meta": {"duration": 60.0, "token": token, **meta}}


VTIMELLM = [
    _item("v1", [("human", "<video>\nCould you please detail the events in the video?"),
                 ("gpt", "From <s0> to <e0>, a man opens a door. From <s1> to <e1>, he sits down, then reads."),
                 ("human", "What happens from <s2> to <e2>?"), ("gpt", "A cat jumps on the table."),
                 ("human", "When does the man sit down?"), ("gpt", "From <s1> to <e1>.")],
          {"<s0>": 0.0, "<e0>": 10.5, "<s1>": 12.0, "<e1>": 30.0, "<s2>": 5.0, "<e2>": 8.0}),
    {"id": "chatgpt", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    _item("v2", [("human", "<video>\nDescribe"), ("gpt", "From <s0> to <e0>, a bird. From <s1> to <e1>, a tree.")],
          {"<s0>": 1.0, "<e0>": 2.0, "<s1>": 3.0}, split=[100.0, 160.0]),
    _item("v3", [("human", "<video>\nHi"), ("gpt", "Nothing with time here.")], {}),
    _item("v1", [("human", "<video>\nDescribe"), ("gpt", "From <s0> to <e0>, the end.")], {"<s0>": 50, "<e0>": 55}),
    "not an item",
]


def test_vtimellm_events_from_dense_and_single_turns():
    events, problems = vtimellm_events(VTIMELLM[0])
    assert problems == []
    assert events == [EventSpec(0.0, 10.5, "a man opens a door."), EventSpec(12.0, 30.0, "he sits down, then reads."),
                      EventSpec(5.0, 8.0, "A cat jumps on the table.")]


@pytest.mark.parametrize("ext", ["json", "jsonl"])
def test_vtimellm_manifest(tmp_path, ext):
    path = tmp_path / f"stage2.{ext}"
    text = json.dumps(VTIMELLM) if ext == "json" else "\n".join(json.dumps(i) for i in VTIMELLM)
    path.write_text(text)
    result = read_manifest(settings(tmp_path, path, fmt="vtimellm"))
    assert [t.video_id for t in result.tasks] == ["v1", "v2"]
    v1, v2 = result.tasks
    assert [e.start_s for e in v1.events] == [0.0, 5.0, 12.0, 50.0]  # items of one id merge, sorted
    assert v2.events == (EventSpec(101.0, 102.0, "a bird."),)  # split start added; <e1> unknown
    assert [(e.line, e.video_id, e.reason) for e in result.errors] == [
        (2, "chatgpt", "bad_item"), (3, "v2", "bad_item"), (4, "v3", "no_events"), (6, None, "bad_item")]
    assert "<e1>" in result.errors[1].message and "meta.token" in result.errors[0].message


def test_vtimellm_not_a_list(tmp_path):
    path = tmp_path / "stage2.json"
    path.write_text('{"id": "x"}')
    with pytest.raises(ManifestFormatError, match="JSON list"):
        read_manifest(settings(tmp_path, path, fmt="vtimellm"))


# --- shards ---------------------------------------------------------------------------------------

def test_split_into_shards():
    tasks = [VideoTask(f"v{i}", f"v{i}.mp4", (EventSpec(0, 1, "x"),), i + 1) for i in range(7)]
    shards = split_into_shards(tasks, 3)
    assert [[t.video_id for t in s] for s in shards] == [["v0", "v1", "v2"], ["v3", "v4", "v5"], ["v6"]]
    assert split_into_shards(tasks, 3) == shards and split_into_shards(tasks, 10) == [tasks]
    assert split_into_shards([], 3) == []
    with pytest.raises(ValueError):
        split_into_shards(tasks, 0)


def test_manifest_error_is_plain():
    error = ManifestError(3, "v", "bad_timestamp", "line 3: ...")
    assert pickle.loads(pickle.dumps(error)) == error
