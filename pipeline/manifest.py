"""Manifest readers: which videos to annotate, and their events (a caption with a time span).

Two public formats (``ManifestSettings.format``):

* ``internvid`` -- InternVid-10M-FLT rows with ``YoutubeID, Start_timestamp, End_timestamp,
  Caption`` (other columns such as ``UMT_Score`` are ignored), read by file extension:
  ``.jsonl`` (one JSON object per line), ``.csv`` (pyarrow.csv) or ``.parquet``. Timestamps are
  ``HH:MM:SS.mmm`` strings; ``MM:SS.mmm`` and plain seconds (numbers or numeric strings) are
  accepted too. The rows of one YoutubeID form one video, wherever they are in the file.
* ``vtimellm`` -- VTimeLLM stage-2 JSON, a list of ``{id, source, conversations, meta}`` items
  (``.jsonl`` with one item per line also works); see :func:`vtimellm_events`.

Results are deterministic: videos keep the order of their first (valid) appearance and their
events are sorted by start time (then end time; ties keep file order). Captions are kept
exactly as written, empty ones included (the pipeline drops those and records why).

A bad row does not stop the read: it becomes a :class:`ManifestError` with its line, the video id
when known, a reason code and a message. Line numbers are 1-based: the physical line for JSONL;
for CSV the line counting the header as 1 and skipping blank lines (pyarrow's count); the row
number for Parquet; the item number for a VTimeLLM JSON list. A file that lacks a required
column altogether raises :class:`ManifestFormatError` instead.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ManifestSettings

INTERNVID_COLUMNS = ("YoutubeID", "Start_timestamp", "End_timestamp", "Caption")
ERROR_REASONS = ("bad_json", "bad_row", "missing_field", "bad_timestamp", "bad_item", "no_events", "unsafe_path")
"""``bad_json``: a line or file that is not JSON. ``bad_row``: a CSV row with the wrong number of
fields. ``missing_field``: a required value is absent or null. ``bad_timestamp``: a timestamp
that cannot be read. ``bad_item``: a VTimeLLM item without the expected structure or tokens.
``no_events``: a VTimeLLM item with no event that could be read. ``unsafe_path``: the video
path resolves outside the video root."""


@dataclass(frozen=True)
class EventSpec:
    """One event of a manifest video: seconds from the video's first frame and the raw caption."""

    start_s: float
    end_s: float
    caption: str


@dataclass(frozen=True)
class VideoTask:
    """One video to annotate; ``video_path`` is relative to the video root (POSIX)."""

    video_id: str
    video_path: str
    events: tuple[EventSpec, ...]
    source_line: int | None = None


@dataclass(frozen=True)
class ManifestError:
    """A manifest row or item that could not be used (see :data:`ERROR_REASONS`)."""

    line: int | None
    video_id: str | None
    reason: str
    message: str


@dataclass
class ManifestReadResult:
    """Tasks in manifest order, the rows that could not be used, and the number of rows (JSON items) read."""

    tasks: list[VideoTask]
    errors: list[ManifestError] = field(default_factory=list)
    rows: int = 0

    def lost_video_ids(self) -> list[str]:
        """Ids named by errors that have no task (every row of them failed), in order of first error."""
        have = {t.video_id for t in self.tasks}
        return list(dict.fromkeys(e.video_id for e in self.errors if e.video_id and e.video_id not in have))


class ManifestFormatError(ValueError):
    """The manifest as a whole cannot be read (unknown extension, missing column, not JSON)."""


class UnsafePathError(ValueError):
    """A video path that resolves outside the video root."""


# --- timestamps and paths --------------------------------------------------------------------

_CLOCK = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d*)?)")


def parse_timestamp(value: object) -> float:
    """Seconds of ``"HH:MM:SS.mmm"``, ``"MM:SS.mmm"``, a number of seconds or a numeric string.

    Raises:
        ValueError: anything else, a non-finite number, or minutes/seconds of 60 or more.
    """
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dt.time):
        return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _CLOCK.fullmatch(text)
        if match:
            hours, minutes, secs = int(match[1] or 0), int(match[2]), float(match[3])
            if minutes >= 60 or secs >= 60:
                raise ValueError(f"timestamp {value!r} has minutes or seconds >= 60")
            return hours * 3600 + minutes * 60 + secs
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is neither HH:MM:SS.mmm, MM:SS.mmm nor seconds") from None
    else:
        raise ValueError(f"timestamp {value!r} is neither HH:MM:SS.mmm, MM:SS.mmm nor seconds")
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp {value!r} is not a finite number")
    return seconds


def resolve_video_path(video_root: str | os.PathLike, filename_pattern: str, video_id: str) -> Path:
    """Absolute path of a video: ``video_root / filename_pattern`` with ``{video_id}`` replaced.

    The path must stay inside the root after resolving ``..`` and symbolic links (the root itself
    may be a link). The file need not exist: missing files are the decoder's business.

    Raises:
        UnsafePathError: the path leaves the root (``../../etc/passwd``, an absolute id, a link out).
    """
    root = os.path.realpath(video_root)
    return Path(root, _relative_video_path(root, filename_pattern, video_id))


def _relative_video_path(root: str, filename_pattern: str, video_id: str) -> str:
    """POSIX path of a video relative to ``root`` (already resolved); see :func:`resolve_video_path`."""
    name = filename_pattern.replace("{video_id}", video_id)
    if "\x00" in name:
        raise UnsafePathError(f"video {video_id!r}: the file name contains a NUL byte")
    candidate = os.path.normpath(os.path.join(root, name))
    try:
        resolved = os.path.realpath(candidate)
    except (OSError, ValueError) as exc:
        raise UnsafePathError(f"video {video_id!r}: {candidate} cannot be resolved ({exc})") from None
    inside = lambda p: p.startswith(root.rstrip(os.sep) + os.sep)  # noqa: E731
    if candidate == root or resolved == root:
        raise UnsafePathError(f"video {video_id!r}: {name!r} names the video root itself")
    if not (inside(candidate) and inside(resolved)):
        raise UnsafePathError(f"video {video_id!r}: {name!r} resolves to {resolved}, outside the video root {root}")
    return Path(os.path.relpath(candidate, root)).as_posix()


# --- InternVid rows --------------------------------------------------------------------------

# A row: (line, video_id, start, end, caption) with raw values, or a ManifestError.
Row = tuple[int, object, object, object, object]


def _columns_error(path: Path, found: Iterable[str]) -> ManifestFormatError:
    missing = [c for c in INTERNVID_COLUMNS if c not in set(found)]
    return ManifestFormatError(f"{path}: missing column(s) {', '.join(missing)}; an InternVid manifest needs "
                               f"{', '.join(INTERNVID_COLUMNS)}; found: {', '.join(found) or 'none'}")


def _internvid_jsonl(path: Path) -> Iterator[Row | ManifestError]:
    seen_keys: set[str] = set()
    first_keys: list[str] | None = None
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield ManifestError(line_no, None, "bad_json", f"line {line_no} is not JSON: {exc.msg}")
                continue
            if not isinstance(row, dict):
                yield ManifestError(line_no, None, "bad_json", f"line {line_no} is not a JSON object")
                continue
            first_keys = list(row) if first_keys is None else first_keys
            seen_keys.update(row)
            yield (line_no, *(row.get(c) for c in INTERNVID_COLUMNS))
    if first_keys is not None and not set(INTERNVID_COLUMNS) <= seen_keys:
        raise _columns_error(path, first_keys)


def _internvid_table_rows(batches: Iterable, first_line: Iterator[int]) -> Iterator[Row]:
    for batch in batches:
        columns = [batch.column(c).to_pylist() for c in INTERNVID_COLUMNS]
        for values in zip(*columns):
            yield (next(first_line), *values)


def _internvid_csv(path: Path) -> Iterator[Row | ManifestError]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    bad: dict[int | None, str] = {}

    def on_invalid(row) -> str:
        bad[row.number] = f"{row.actual_columns} fields where the header has {row.expected_columns}"
        return "skip"

    try:
        table = pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(use_threads=False),  # row numbers need one thread
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in INTERNVID_COLUMNS},
                                                strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise ManifestFormatError(f"{path}: not a readable CSV file ({exc})") from None
    if not set(INTERNVID_COLUMNS) <= set(table.column_names):
        raise _columns_error(path, table.column_names)
    lines = (n for n in range(2, 1 << 62) if n not in bad)
    yield from _internvid_table_rows(table.to_batches(), lines)
    for number, message in bad.items():
        yield ManifestError(number, None, "bad_row", f"line {number}: {message}")


def _internvid_parquet(path: Path) -> Iterator[Row | ManifestError]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ManifestFormatError(f"{path}: not a readable Parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    if not set(INTERNVID_COLUMNS) <= set(names):
        raise _columns_error(path, names)
    yield from _internvid_table_rows(parquet.iter_batches(batch_size=65536, columns=list(INTERNVID_COLUMNS)),
                                     iter(range(1, 1 << 62)))


_INTERNVID_READERS = {".jsonl": _internvid_jsonl, ".csv": _internvid_csv, ".parquet": _internvid_parquet}


def _video_id(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _internvid_events(rows: Iterable[Row | ManifestError]) -> Iterator[tuple[int, str, EventSpec] | ManifestError]:
    """Check each row: its event with line and video id, or a ManifestError."""
    for row in rows:
        if isinstance(row, ManifestError):
            yield row
            continue
        line, raw_id, start, end, caption = row
        video_id = _video_id(raw_id)
        missing = [c for c, v in zip(INTERNVID_COLUMNS, (video_id, start, end, caption))
                   if v is None or (c != "Caption" and isinstance(v, str) and not v.strip())]
        if missing:
            yield ManifestError(line, video_id, "missing_field", f"line {line}: no value for {', '.join(missing)}")
            continue
        if not isinstance(caption, str):
            yield ManifestError(line, video_id, "missing_field", f"line {line}: Caption is not text: {caption!r}")
            continue
        try:
            yield line, video_id, EventSpec(parse_timestamp(start), parse_timestamp(end), caption)
        except ValueError as exc:
            yield ManifestError(line, video_id, "bad_timestamp", f"line {line}: {exc}")


# --- VTimeLLM items --------------------------------------------------------------------------

_FROM_TO = re.compile(r"From\s+<s(\d+)>\s+to\s+<e(\d+)>\s*,?", re.IGNORECASE)
_START_TOKEN, _END_TOKEN = re.compile(r"<s(\d+)>"), re.compile(r"<e(\d+)>")


def vtimellm_events(item: dict) -> tuple[list[EventSpec], list[str]]:
    """Events of one VTimeLLM stage-2 item, and the problems met (one message each).

    Supported gpt turns:

    * dense captions, "From <s0> to <e0>, a man ... . From <s1> to <e1>, ...": one event per
      "From <sK> to <eK>", its caption being the text after it up to the next one (stripped of
      spaces and of the comma);
    * a single caption answering a human turn that names exactly one ``<sK>`` and one ``<eK>``
      ("What happens from <s1> to <e1>?"), the gpt turn having no token itself.

    Times are ``meta.token[...]`` seconds plus ``meta.split[0]`` when a split is given (token times
    count from the start of the split). A pair seen twice keeps its first caption; a pair without
    caption ("From <s2> to <e2>." answering a "when" question) gives no event.
    """
    meta, turns = item.get("meta"), item.get("conversations")
    if not isinstance(meta, dict) or not isinstance(meta.get("token"), dict):
        return [], ["no meta.token (a Video-ChatGPT item, not VTimeLLM stage 2?)"]
    if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
        return [], ["conversations is not a list of {from, value} turns"]
    split = meta.get("split")
    offset = split[0] if isinstance(split, (list, tuple)) and len(split) == 2 else 0
    pairs: dict[tuple[str, str], str] = {}
    previous = ""
    for turn in turns:
        text = turn["value"]
        if turn.get("from") == "gpt":
            matches = list(_FROM_TO.finditer(text))
            for k, match in enumerate(matches):
                stop = matches[k + 1].start() if k + 1 < len(matches) else len(text)
                caption = text[match.end():stop].strip()
                if caption and caption != ".":
                    pairs.setdefault((f"<s{match[1]}>", f"<e{match[2]}>"), caption)
            starts, ends = _START_TOKEN.findall(previous), _END_TOKEN.findall(previous)
            if not matches and not _START_TOKEN.search(text) and len(starts) == len(ends) == 1 and text.strip():
                pairs.setdefault((f"<s{starts[0]}>", f"<e{ends[0]}>"), text.strip())
        previous = text
    events, problems = [], []
    for (s_tok, e_tok), caption in pairs.items():
        try:
            start = parse_timestamp(meta["token"][s_tok]) + parse_timestamp(offset)
            end = parse_timestamp(meta["token"][e_tok]) + parse_timestamp(offset)
        except KeyError as exc:
            problems.append(f"token {exc.args[0]} has no time in meta.token")
            continue
        except ValueError as exc:
            problems.append(f"{s_tok}/{e_tok}: {exc}")
            continue
        events.append(EventSpec(start, end, caption))
    return events, problems


def _vtimellm_items(path: Path) -> Iterator[tuple[int, object]]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield line_no, exc
        return
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ManifestFormatError(f"{path}: not JSON ({exc})") from None
    if not isinstance(items, list):
        raise ManifestFormatError(f"{path}: a VTimeLLM manifest is a JSON list of items, got {type(items).__name__}")
    yield from enumerate(items, 1)


def _vtimellm_events(path: Path) -> Iterator[tuple[int, str, EventSpec] | ManifestError]:
    for number, item in _vtimellm_items(path):
        if isinstance(item, Exception):
            yield ManifestError(number, None, "bad_json", f"line {number} is not JSON: {item}")
            continue
        if not isinstance(item, dict):
            yield ManifestError(number, None, "bad_item", f"item {number} is not a JSON object")
            continue
        video_id = _video_id(item.get("id"))
        if video_id is None:
            yield ManifestError(number, None, "bad_item", f"item {number} has no id")
            continue
        events, problems = vtimellm_events(item)
        for problem in problems:
            yield ManifestError(number, video_id, "bad_item", f"item {number}: {problem}")
        if not events and not problems:
            yield ManifestError(number, video_id, "no_events", f"item {number}: no 'From <sK> to <eK>, caption' "
                                "answer and no caption of a '<sK> ... <eK>' question")
        for event in events:
            yield number, video_id, event


# --- the reader ------------------------------------------------------------------------------

def _events_of(settings: ManifestSettings, path: Path):
    if settings.format == "vtimellm":
        return _vtimellm_events(path)
    if settings.format != "internvid":
        raise ManifestFormatError(f"unknown manifest format {settings.format!r}; use internvid or vtimellm")
    reader = _INTERNVID_READERS.get(path.suffix.lower())
    if reader is None:
        raise ManifestFormatError(f"{path}: an InternVid manifest must end in {', '.join(_INTERNVID_READERS)}")
    return _internvid_events(reader(path))


def read_manifest(settings: ManifestSettings) -> ManifestReadResult:
    """Read the manifest into video tasks (with their paths checked) and the rows that failed.

    ``settings.limit`` keeps the first N videos; rows of later videos are neither kept nor checked.
    A video whose path leaves the video root becomes an ``unsafe_path`` error instead of a task.

    Raises:
        ManifestFormatError: the file as a whole cannot be read (see the module docstring).
    """
    path = Path(settings.path)
    if not path.is_file():
        raise ManifestFormatError(f"manifest {path} does not exist")
    grouped: dict[str, tuple[int, list[EventSpec]]] = {}
    errors: list[ManifestError] = []
    rows, last_line = 0, None
    for entry in _events_of(settings, path):
        line = entry.line if isinstance(entry, ManifestError) else entry[0]
        rows, last_line = rows + (line != last_line or line is None), line
        if isinstance(entry, ManifestError):
            if entry.video_id is None or entry.video_id in grouped or settings.limit is None \
                    or len(grouped) < settings.limit:
                errors.append(entry)
            continue
        line, video_id, event = entry
        if video_id not in grouped:
            if settings.limit is not None and len(grouped) >= settings.limit:
                continue
            grouped[video_id] = (line, [])
        grouped[video_id][1].append(event)
    tasks = []
    root = os.path.realpath(settings.video_root)
    for video_id, (line, events) in grouped.items():
        try:
            relative = _relative_video_path(root, settings.filename_pattern, video_id)
        except UnsafePathError as exc:
            errors.append(ManifestError(line, video_id, "unsafe_path", str(exc)))
            continue
        ordered = tuple(sorted(events, key=lambda e: (e.start_s, e.end_s)))
        tasks.append(VideoTask(video_id, relative, ordered, line))
    errors.sort(key=lambda e: (e.line is None, e.line or 0))
    return ManifestReadResult(tasks=tasks, errors=errors, rows=rows)


def split_into_shards(tasks: list[VideoTask], videos_per_shard: int) -> list[list[VideoTask]]:
    """Shard ``k`` holds ``tasks[k * n : (k + 1) * n]`` (manifest order); no empty shards."""
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    return [list(tasks[i:i + videos_per_shard]) for i in range(0, len(tasks), videos_per_shard)]
