"""The PiTe-143k dataset record: one row per video, written by the pipeline, read by the
trainer and the viewer, and the failures table that lists every video that did not make it.

A shard is a Parquet file (zstd) with :data:`VIDEO_SCHEMA`; failures use :data:`FAILURE_SCHEMA`.
Both carry ``pite.kind`` and ``pite.schema_version`` in the file metadata.

Storage choices (the pipeline aims at <= 4 KB per phrase on average):

* ``trajectory`` is a ``fixed_size_binary(1200)``: the (3, 100, 2) float16 array as raw
  little-endian bytes in C order (trajectory, frame, xy). A list of 600 floats would cost
  definition levels per element and decode 600 Python objects per phrase.
* ``visibility`` is a ``fixed_size_binary(38)``: the (3, 100) bools as a bitset, C order, most
  significant bit first (``np.packbits``), padded with 4 zero bits; 38 bytes instead of 300.
* ``mask_rle`` keeps the compressed COCO counts string (``pite.masks``), ``box`` is four
  float64 (x0, y0, x1, y1) normalised by the frame width and height.

Readers get back ``np.float16`` (3, 100, 2) and ``bool`` (3, 100) arrays. Trajectory points are
(x, y) normalised to [0, 1] by the video's width and height, on the global 100-frame timeline of
``pite.timeline``; (-1, -1) marks frames outside the event and points that are not visible.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pite.atomic import atomic_file
from pite.masks import decode_mask, encode_mask  # noqa: F401  (re-exported)
from pite.timeline import NUM_FRAMES

NUM_TRAJECTORIES = 3
"""Key trajectories per phrase (P in the paper)."""
MISSING = -1.0
"""Coordinate value of an absent or invisible trajectory point; both x and y are MISSING."""
SCHEMA_VERSION = "1"
END_EPSILON_S = 1e-3
"""Slack allowed when an event's end_s exceeds duration_s through float rounding."""

TRAJECTORY_SHAPE = (NUM_TRAJECTORIES, NUM_FRAMES, 2)
VISIBILITY_SHAPE = (NUM_TRAJECTORIES, NUM_FRAMES)
_TRAJECTORY_BYTES = NUM_TRAJECTORIES * NUM_FRAMES * 2 * 2
_VISIBILITY_BYTES = (NUM_TRAJECTORIES * NUM_FRAMES + 7) // 8
_REASON_CODE = re.compile(r"[a-z0-9_]+")


class SchemaError(ValueError):
    """Records that break the schema; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], header: str = "invalid record"):
        self.problems = list(problems)
        super().__init__(header + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(eq=False)
class Phrase:
    """A grounded lowest-level noun phrase of an event caption, with its key trajectories.

    Attributes:
        text: the phrase, equal to ``caption[char_start:char_end]``.
        box: (x0, y0, x1, y1) normalised to [0, 1], on the first frame of the event.
        mask_rle: COCO RLE ``{"size": [h, w], "counts": str}`` of that first-frame mask.
        score: grounding confidence.
        trajectory: float16 (3, 100, 2) (x, y) in [0, 1] on the global timeline, or (-1, -1);
            always (-1, -1) outside the event's global frames ``seconds_to_index(start_s, D)``
            to ``seconds_to_index(end_s, D)`` (both included).
        visibility: bool (3, 100), True exactly where the trajectory point is not (-1, -1).
    """

    text: str
    char_start: int
    char_end: int
    box: tuple[float, float, float, float]
    mask_rle: dict
    score: float
    trajectory: np.ndarray
    visibility: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.box, list):
            self.box = tuple(self.box)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Phrase):
            return NotImplemented
        return all(
            np.array_equal(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else a == b
            for a, b in ((getattr(self, f.name), getattr(other, f.name)) for f in fields(self))
        )


@dataclass
class Event:
    """A captioned segment ``[start_s, end_s)`` of the video, in seconds."""

    start_s: float
    end_s: float
    caption: str
    phrases: list[Phrase] = field(default_factory=list)


@dataclass
class VideoRecord:
    """One video with its events; ``video_path`` is relative to the video root."""

    video_id: str
    video_path: str
    duration_s: float
    fps: float
    width: int
    height: int
    events: list[Event] = field(default_factory=list)


@dataclass
class Failure:
    """Why a video (``event == -1``) or one of its events did not make it into a shard.

    ``reason`` is a short machine-readable code (``"missing_file"``), ``message`` is for people.
    """

    video_id: str
    event: int
    stage: str
    reason: str
    message: str


def empty_trajectory() -> tuple[np.ndarray, np.ndarray]:
    """An all-missing trajectory: float16 (3, 100, 2) of -1 and bool (3, 100) of False."""
    return np.full(TRAJECTORY_SHAPE, MISSING, np.float16), np.zeros(VISIBILITY_SHAPE, bool)


def _required(*fields: tuple[str, pa.DataType]) -> list[pa.Field]:
    return [pa.field(name, dtype, nullable=False) for name, dtype in fields]


def _list_of(item: pa.DataType) -> pa.DataType:
    return pa.list_(pa.field("item", item, nullable=False))


_MASK_RLE_TYPE = pa.struct(_required(("size", pa.list_(pa.int32(), 2)), ("counts", pa.string())))
PHRASE_TYPE = pa.struct(
    _required(
        ("text", pa.string()), ("char_start", pa.int32()), ("char_end", pa.int32()),
        ("box", pa.list_(pa.float64(), 4)), ("mask_rle", _MASK_RLE_TYPE), ("score", pa.float64()),
        ("trajectory", pa.binary(_TRAJECTORY_BYTES)), ("visibility", pa.binary(_VISIBILITY_BYTES)),
    )
)  # fmt: skip
EVENT_TYPE = pa.struct(
    _required(
        ("start_s", pa.float64()), ("end_s", pa.float64()), ("caption", pa.string()),
        ("phrases", _list_of(PHRASE_TYPE)),
    )
)  # fmt: skip
VIDEO_SCHEMA = pa.schema(
    _required(
        ("video_id", pa.string()), ("video_path", pa.string()), ("duration_s", pa.float64()), ("fps", pa.float64()),
        ("width", pa.int32()), ("height", pa.int32()), ("events", _list_of(EVENT_TYPE)),
    ),
    metadata={"pite.kind": "videos", "pite.schema_version": SCHEMA_VERSION},
)  # fmt: skip
FAILURE_SCHEMA = pa.schema(
    _required(("video_id", pa.string()), ("event", pa.int32()), ("stage", pa.string()), ("reason", pa.string()),
              ("message", pa.string())),
    metadata={"pite.kind": "failures", "pite.schema_version": SCHEMA_VERSION},
)  # fmt: skip


# --- Parquet I/O ---------------------------------------------------------------------------


def _phrase_row(p: Phrase) -> dict:
    return {
        "text": p.text, "char_start": int(p.char_start), "char_end": int(p.char_end),
        "box": [float(v) for v in p.box], "mask_rle": p.mask_rle, "score": float(p.score),
        "trajectory": p.trajectory.astype("<f2", copy=False).tobytes(order="C"),
        "visibility": np.packbits(p.visibility.reshape(-1)).tobytes(),
    }  # fmt: skip


def _video_row(r: VideoRecord) -> dict:
    events = [
        {"start_s": float(e.start_s), "end_s": float(e.end_s), "caption": e.caption,
         "phrases": [_phrase_row(p) for p in e.phrases]}
        for e in r.events
    ]  # fmt: skip
    return {"video_id": r.video_id, "video_path": r.video_path, "duration_s": float(r.duration_s),
            "fps": float(r.fps), "width": int(r.width), "height": int(r.height), "events": events}  # fmt: skip


def _phrase_from_row(row: dict) -> Phrase:
    trajectory = np.frombuffer(row["trajectory"], dtype="<f2").astype(np.float16).reshape(TRAJECTORY_SHAPE)
    bits = np.unpackbits(np.frombuffer(row["visibility"], np.uint8), count=NUM_TRAJECTORIES * NUM_FRAMES)
    rle = row["mask_rle"]
    return Phrase(
        text=row["text"], char_start=row["char_start"], char_end=row["char_end"], box=tuple(row["box"]),
        mask_rle={"size": list(rle["size"]), "counts": rle["counts"]}, score=row["score"],
        trajectory=trajectory, visibility=bits.astype(bool).reshape(VISIBILITY_SHAPE),
    )  # fmt: skip


def _video_from_row(row: dict) -> VideoRecord:
    events = [
        Event(e["start_s"], e["end_s"], e["caption"], [_phrase_from_row(p) for p in e["phrases"]])
        for e in row["events"]
    ]
    return VideoRecord(row["video_id"], row["video_path"], row["duration_s"], row["fps"],
                       row["width"], row["height"], events)  # fmt: skip


def _write_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write ``table`` as zstd Parquet through :func:`pite.atomic.atomic_file`."""
    with atomic_file(path) as handle:
        pq.write_table(table, handle, compression="zstd")
    return Path(path)


def write_shard(records: list[VideoRecord], path: str | os.PathLike) -> Path:
    """Validate every record and write them atomically as one zstd Parquet shard.

    Raises:
        SchemaError: some records are invalid or share a video_id; nothing is written.
    """
    records = list(records)
    from pite.validation import validate

    problems = [p for record in records for p in validate(record)]
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        video_id = getattr(record, "video_id", None)
        if isinstance(video_id, str) and video_id in seen:
            problems.append(f"video {video_id!r}: duplicate video_id (records {seen[video_id]} and {i})")
        elif isinstance(video_id, str):
            seen[video_id] = i
    if problems:
        raise SchemaError(problems, f"refusing to write shard {os.fspath(path)}")
    table = pa.Table.from_pylist([_video_row(r) for r in records], schema=VIDEO_SCHEMA)
    return _write_atomic(table, path)


def write_failures(failures: list[Failure], path: str | os.PathLike) -> Path:
    """Validate and write failures atomically as one zstd Parquet file."""
    failures = list(failures)
    from pite.validation import validate_failure

    problems = [p for failure in failures for p in validate_failure(failure)]
    if problems:
        raise SchemaError(problems, f"refusing to write failures {os.fspath(path)}")
    rows = [{f.name: getattr(failure, f.name) for f in fields(Failure)} for failure in failures]
    return _write_atomic(pa.Table.from_pylist(rows, schema=FAILURE_SCHEMA), path)


def _file_kind(path: Path) -> str | None:
    metadata = pq.read_schema(path).metadata or {}
    version = metadata.get(b"pite.schema_version", b"").decode()
    if version and version != SCHEMA_VERSION:
        raise ValueError(f"{path} has pite schema version {version}, this code reads version {SCHEMA_VERSION}")
    kind = metadata.get(b"pite.kind")
    return kind.decode() if kind else None


def _files_of_kind(path_or_paths: str | os.PathLike | Iterable, kind: str) -> list[Path]:
    """Files of ``kind``: a single file, a directory (its ``*.parquet`` files of that kind,
    by name, hidden temp files skipped), or an iterable of files."""
    if isinstance(path_or_paths, (str, os.PathLike)):
        root = Path(path_or_paths)
        if root.is_dir():
            found = [p for p in sorted(root.glob("*.parquet")) if not p.name.startswith(".")]
            other_kinds = {"videos", "failures"} - {kind}
            return [p for p in found if _file_kind(p) not in other_kinds]
        return [root]
    return [Path(p) for p in path_or_paths]


def _read_rows(path: Path, kind: str, schema: pa.Schema) -> Iterator[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    found = _file_kind(path)
    if found != kind:
        raise ValueError(f"{path} is not a pite {kind} file (pite.kind = {found!r})")
    parquet = pq.ParquetFile(path)
    if not parquet.schema_arrow.equals(schema, check_metadata=False):
        raise ValueError(f"{path} does not match the pite {kind} schema:\n{parquet.schema_arrow}")
    for batch in parquet.iter_batches(batch_size=256):
        yield from batch.to_pylist()


def read_shard(path: str | os.PathLike) -> list[VideoRecord]:
    """All video records of one shard, in file order."""
    return [_video_from_row(row) for row in _read_rows(Path(path), "videos", VIDEO_SCHEMA)]


def read_shards(dir_or_paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[VideoRecord]:
    """Video records of a shard file, of every video shard in a directory (sorted by name;
    failure files there are skipped), or of the given files, lazily, one batch at a time."""
    for path in _files_of_kind(dir_or_paths, "videos"):
        for row in _read_rows(path, "videos", VIDEO_SCHEMA):
            yield _video_from_row(row)


def read_failures(path_or_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Failure]:
    """Failures of one file, of every failures file in a directory, or of the given files."""
    paths = _files_of_kind(path_or_dir, "failures")
    return [Failure(**row) for path in paths for row in _read_rows(path, "failures", FAILURE_SCHEMA)]


def __getattr__(name: str):
    """``validate``, ``validate_or_raise`` and ``validate_failure`` live in :mod:`pite.validation`."""
    if name in ("validate", "validate_or_raise", "validate_failure"):
        import pite.validation

        return getattr(pite.validation, name)
    raise AttributeError(f"module 'pite.schema' has no attribute {name!r}")
