"""Turn finished work items into schema records and write one shard's outputs.

Output layout of a run (``out/``)::

    shards/shard-00007.parquet      one row per written video (pite.schema.VIDEO_SCHEMA)
    failures/shard-00007.parquet    failed videos (event = -1) and dropped events
    stats/shard-00007.json          that shard's RunStats
    completions/shard-00007         marker, written last: the shard is complete
    dense/shard-00007/<video>.npz   optional dense tracks per event
    stats.json                      all shards' stats merged (rewritten at the end of a run)

Every input video of a shard is in exactly one of its shard file (written) or its
failures file with ``event == -1`` (failed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pite.atomic import atomic_write_bytes, atomic_write_text
from pipeline.stats import RunStats
from pipeline.work import VideoWork
from pite.masks import encode_mask
from pite.schema import Event, Failure, Phrase, VideoRecord, write_failures, write_shard


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class ShardPaths:
    """Where shard ``index`` of a run in ``out`` keeps its files."""

    def __init__(self, out: str | Path, index: int):
        self.out, self.index, name = Path(out), index, shard_name(index)
        self.shard = self.out / "shards" / f"{name}.parquet"
        self.failures = self.out / "failures" / f"{name}.parquet"
        self.stats = self.out / "stats" / f"{name}.json"
        self.marker = self.out / "completions" / name
        self.dense = self.out / "dense" / name

    def is_complete(self) -> bool:
        return self.marker.exists()


def to_record(video: VideoWork) -> VideoRecord:
    """Schema record of a finished (not failed) video."""
    info = video.info
    events = []
    for ev in video.events:
        phrases = [Phrase(text=p.text, char_start=p.char_start, char_end=p.char_end,
                          box=tuple(float(v) for v in p.box), mask_rle=encode_mask(p.mask), score=float(p.score),
                          trajectory=p.trajectory, visibility=p.visibility)
                   for p in ev.phrases]
        events.append(Event(start_s=float(ev.start_s), end_s=float(ev.end_s), caption=ev.caption, phrases=phrases))
    return VideoRecord(video_id=video.video_id, video_path=video.task.video_path, duration_s=float(info.duration_s),
                       fps=float(info.fps), width=int(info.width), height=int(info.height), events=events)


def save_dense_tracks(video: VideoWork, folder: Path) -> None:
    """Dense tracks of every event as one compressed ``.npz`` (float16 positions, packed visibility)."""
    arrays = {}
    for ev in video.events:
        if ev.track_xy is None:
            continue
        arrays[f"event{ev.index}_xy"] = ev.track_xy.astype(np.float16)
        arrays[f"event{ev.index}_visible"] = np.packbits(ev.track_visible, axis=-1)
        arrays[f"event{ev.index}_queries"] = ev.track_queries.astype(np.float32)
        arrays[f"event{ev.index}_times"] = ev.times
    if arrays:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        safe = video.video_id.replace("/", "_")
        atomic_write_bytes(folder / f"{safe}.npz", buf.getvalue())


def write_shard_outputs(paths: ShardPaths, records: list[VideoRecord], failures: list[Failure],
                        stats: RunStats, marker: dict) -> None:
    """Write the shard, its failures and stats atomically, then the completion marker (JSON)."""
    write_shard(records, paths.shard)
    write_failures(failures, paths.failures)
    stats.save(paths.stats)
    atomic_write_text(paths.marker, json.dumps(marker) + "\n")
