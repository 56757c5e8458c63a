"""A sharded, resumable store of fp16 frame features, keyed by video (or image) id.

Layout of a store folder::

    features-00000.safetensors   one float16 tensor (T, D) per id, the tensor named by the id
    features-00001.safetensors   ...
    index.json                   {"version": 1, "model": ref, "dim": D, "ids": {id: shard file name}}
    failures.jsonl               one {"id", "reason", "message"} per input that has no feature

Every file is written to a temp file and renamed into place, and writers merge into ``index.json`` under an
exclusive file lock (``.lock``), so a reader never sees half a shard and several writers (pipeline workers on
one machine) can fill one store. An id is in the index or in ``failures.jsonl``, never both: when a failed id
later succeeds its failure is removed. Shards are read through safetensors' memory map, one tensor at a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pite.atomic import atomic_write_bytes

INDEX_FILE = "index.json"
FAILURES_FILE = "failures.jsonl"
LOCK_FILE = ".lock"
SHARD_PATTERN = "features-{:05d}.safetensors"
STORE_VERSION = 1
_SHARD_NAME = re.compile(r"features-(\d{5,})\.safetensors$")


def _read_index(root: Path) -> dict:
    path = root / INDEX_FILE
    if not path.exists():
        return {"version": STORE_VERSION, "model": None, "dim": None, "ids": {}}
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("version") != STORE_VERSION:
        raise ValueError(f"{path}: feature store version {index.get('version')!r}; this code reads {STORE_VERSION}")
    return index


def _read_failures(root: Path) -> dict[str, dict]:
    path = root / FAILURES_FILE
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {row["id"]: row for row in rows}


class FeatureStore:
    """Read features written by :class:`FeatureWriter`.

    ``store[id]`` / ``store.get(id)`` -> ``np.float16`` (T, D): T = 100 frames for a video, 1 for an image.
    Picklable (open shard handles are dropped and reopened lazily), so DataLoader workers can share it.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not (self.root / INDEX_FILE).is_file():
            raise FileNotFoundError(f"no feature store at {self.root} ({INDEX_FILE} is missing); "
                                    f"extract features first: pite features --config configs/features/<name>.yaml")
        index = _read_index(self.root)
        self.model: str | None = index["model"]
        self.dim: int | None = index["dim"]
        self._ids: dict[str, str] = index["ids"]
        self._handles: dict[str, object] = {}

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """Every stored id, in the order they were written."""
        return list(self._ids)

    def get(self, video_id: str) -> np.ndarray:
        """float16 (T, D) features of ``video_id``; KeyError when it has none."""
        shard = self._ids.get(video_id)
        if shard is None:
            raise KeyError(f"no features for {video_id!r} in {self.root}")
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            handle = self._handles[shard] = safe_open(str(self.root / shard), framework="numpy")
        return handle.get_tensor(video_id)

    __getitem__ = get

    def failures(self) -> list[dict]:
        """Rows ``{"id", "reason", "message"}`` of the inputs that have no feature."""
        return list(_read_failures(self.root).values())

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


class FeatureWriter:
    """Buffer features and failures; write them as one shard per ``per_shard`` ids (and on :meth:`flush`).

    Args:
        root: store folder (created).
        model: the model reference the features come from; a store holds one model's features only.
        per_shard: ids per shard file.

    Raises ValueError when ``root`` holds features of another model or another dimension.
    Use as a context manager: leaving the block flushes what is buffered (also on errors: it is valid data).
    """

    def __init__(self, root: str | os.PathLike, model: str, per_shard: int = 256):
        if per_shard < 1:
            raise ValueError(f"per_shard must be >= 1, got {per_shard}")
        self.root, self.model, self.per_shard = Path(root), model, per_shard
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            index = _read_index(self.root)
        self._check(index)
        self.dim: int | None = index["dim"]
        self._done = set(index["ids"])
        self._features: dict[str, np.ndarray] = {}
        self._failures: dict[str, dict] = {}
        self.written = 0
        """Ids written to shards by this writer."""

    def _check(self, index: dict) -> None:
        if index["model"] not in (None, self.model):
            raise ValueError(f"{self.root} holds features of model {index['model']!r}, not {self.model!r}; "
                             f"use another output folder")

    @contextmanager
    def _locked(self):
        with open(self.root / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def __contains__(self, video_id: object) -> bool:
        """True when ``video_id`` is stored (before this run, or by this writer)."""
        return video_id in self._done or video_id in self._features

    def add(self, video_id: str, features: np.ndarray) -> None:
        """Buffer (T, D) features of ``video_id`` (cast to float16); flushes every ``per_shard`` ids."""
        features = np.ascontiguousarray(features, dtype=np.float16)
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"{video_id}: features must be (frames, dim), got shape {features.shape}")
        if self.dim is not None and features.shape[1] != self.dim:
            raise ValueError(f"{video_id}: features of dim {features.shape[1]}, but {self.root} holds dim {self.dim}")
        if not np.isfinite(features).all():
            raise ValueError(f"{video_id}: features hold inf or NaN")
        self.dim = int(features.shape[1])
        self._features[video_id] = features
        self._failures.pop(video_id, None)
        if len(self._features) >= self.per_shard:
            self.flush()

    def fail(self, video_id: str, reason: str, message: str) -> None:
        """Record that ``video_id`` has no feature (written at the next flush)."""
        self._failures[video_id] = {"id": video_id, "reason": reason, "message": message}

    def flush(self) -> None:
        """Write the buffered features as a new shard and merge the index and failures (atomic, locked)."""
        if not self._features and not self._failures:
            return
        from safetensors.numpy import save

        with self._locked():
            index = _read_index(self.root)  # other writers may have added shards since
            self._check(index)
            if index["dim"] not in (None, self.dim) and self._features:
                raise ValueError(f"{self.root} holds dim {index['dim']} features, this writer has dim {self.dim}")
            if self._features:
                numbers = [int(m.group(1)) for p in self.root.iterdir() if (m := _SHARD_NAME.match(p.name))]
                shard = SHARD_PATTERN.format(max(numbers, default=-1) + 1)
                atomic_write_bytes(self.root / shard, save(self._features, metadata={"model": self.model}))
                index["ids"].update(dict.fromkeys(self._features, shard))
                index.update(model=self.model, dim=self.dim)
            failures = _read_failures(self.root)
            failures.update(self._failures)
            failures = {k: v for k, v in failures.items() if k not in index["ids"]}
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in failures.values())
            atomic_write_bytes(self.root / FAILURES_FILE, text.encode("utf-8"))
            if self._features or not (self.root / INDEX_FILE).exists():
                atomic_write_bytes(self.root / INDEX_FILE, json.dumps(index, ensure_ascii=False).encode("utf-8"))
        self.written += len(self._features)
        self._done = set(index["ids"])
        self._features.clear()
        self._failures.clear()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
