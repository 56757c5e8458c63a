"""CLIP frame features: ``num_frames`` (100) per video, or one per image, into a :mod:`pite.feature_store`.

What is computed
    A video gives the frames at ``pite.timeline.frame_times(duration, 100)``: the global 100-frame timeline
    that the time tokens 00..99 refer to. A manifest row with clip bounds ``[start_s, end_s)`` gives
    ``start_s + frame_times(end_s - start_s, 100)`` instead (``end_s`` past the video's end is clamped to it).
    Frames are decoded by :mod:`pite.video`, downscaled while decoding to ``decode_short_side`` (so a 4K frame
    never sits in memory at full size; ``null`` keeps the native size), then go through the model's own CLIP
    image processor (resize shortest edge, centre crop, normalise) and ``CLIPVisionModelWithProjection``.
    The feature of a frame is the projected global embedding ``image_embeds`` (768-d for ViT-L/14, read from
    the model), stored as float16 (T, D). An image gives (1, D).

Inputs (``FeatureInputSettings``)
    Every video (or image) file under ``root`` (id = its path relative to ``root`` without the suffix), or the
    rows of a manifest (JSONL, or a JSON list): the id is the first of ``video_id``, ``id``, ``image_id``,
    ``YoutubeID`` a row has; the file is ``video_path`` / ``path`` / ``image_path`` under ``root``, else
    ``filename_pattern.format(id=...)``; clip bounds are ``start_s``/``end_s``, or ``split`` / ``meta.split``
    as ``[start, end]`` (VTimeLLM). Rows repeating an id with the same file and bounds are one input (InternVid
    lists a video once per event); an id with conflicting rows fails with reason ``bad_manifest``.

Nothing is skipped silently: every input ends in the store's index or in its ``failures.jsonl`` with a reason
(``pite.video.REASONS``, or ``bad_manifest``, ``unsafe_path``, ``bad_clip``, ``corrupt_image``).
Re-running skips ids already in the index. Decoding and preprocessing run ``workers`` items ahead of the model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pite.config import option
from pite.feature_store import FeatureStore, FeatureWriter  # noqa: F401  (FeatureStore re-exported)
from pite.timeline import NUM_FRAMES, frame_times

log = logging.getLogger("pite.features")

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_ID_KEYS, _PATH_KEYS = ("video_id", "id", "image_id", "YoutubeID"), ("video_path", "path", "image_path")
_CLIP_END_SLACK_S = 0.5


class FeatureInputError(Exception):
    """An input that gives no feature; ``reason`` is a short code, the message is for people."""

    def __init__(self, reason: str, message: str, item_id: str | None = None):
        super().__init__(message)
        self.reason, self.item_id = reason, item_id


# ----------------------------------------------------------------------------- settings


@dataclass
class FeatureInputSettings:
    root: str = option(doc="Folder holding the videos (or images).", exists="dir")
    kind: Literal["videos", "images"] = option("videos", "videos: num_frames features each; images: one each.")
    manifest: str = option("", "Optional JSONL / JSON list of rows with an id, an optional path and optional "
                           "clip bounds (see pite/features.py); empty: every matching file under root.", exists="file")
    filename_pattern: str = option("{id}.mp4", "File under root of a manifest row without a path; {id} (or "
                                   "{video_id}, {image_id}) is replaced by the row's id.")
    limit: int | None = option(None, "Only the first N inputs (for trials).", ge=1)


@dataclass
class ClipSettings:
    model: str = option("openai/clip-vit-large-patch14", "CLIP vision weights: HF repo id, local folder, or "
                        "tinykit://clip.", model="clip")
    num_frames: int = option(NUM_FRAMES, "Frames per video, uniform over the video (or clip).", ge=1)
    batch_size: int = option(100, "Frames per CLIP forward.", ge=1)
    device: str = option("auto", "auto (cuda when available), cpu, cuda or cuda:N; fp16 on GPU, fp32 on CPU.")
    decode_short_side: int | None = option(448, "Short side (px) frames are decoded at before the CLIP "
                                           "processor; null: native size.", ge=16)
    backend: Literal["auto", "decord", "pyav"] = option("auto", "Video decoder.")


@dataclass
class FeatureOutputSettings:
    dir: str = option("outputs/features", "Feature store folder (shards, index.json, failures.jsonl).")
    per_shard: int = option(256, "Videos (or images) per safetensors shard.", ge=1)


@dataclass
class FeaturesConfig:
    """A ``pite features`` run (``configs/features/*.yaml``)."""

    input: FeatureInputSettings
    clip: ClipSettings = option(default_factory=ClipSettings)
    output: FeatureOutputSettings = option(default_factory=FeatureOutputSettings)
    workers: int = option(2, "Threads decoding and preprocessing ahead of the model (0: inline).", ge=0)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class FeatureItem:
    """One input: an id, an absolute file path and optional clip bounds in seconds."""

    item_id: str
    path: str
    start_s: float | None = None
    end_s: float | None = None


def inside_root(root: str | Path, rel: str) -> Path | None:
    """``root / rel`` as an absolute path, or None when ``rel`` climbs out of ``root`` ("../x", "/x").

    Checked on the path as written, not on where symlinks point: a folder of links to videos elsewhere
    (the demo's) is fine, a manifest row naming ``../../etc/passwd`` is not.
    """
    base = Path(os.path.abspath(root))
    path = Path(os.path.normpath(base / rel))
    return path if path.is_relative_to(base) else None


def _manifest_rows(path: Path) -> list[tuple[int, object]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FeatureInputError("bad_manifest", f"{path}: not JSON ({exc})") from None
        return list(enumerate(data if isinstance(data, list) else [data], 1))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((n, exc))
    return rows


def _row_item(row: object, root: Path, pattern: str) -> FeatureItem:
    if not isinstance(row, dict):
        raise FeatureInputError("bad_manifest", f"not a JSON object: {row}")
    item_id = next((str(row[k]) for k in _ID_KEYS if row.get(k) not in (None, "")), None)
    if item_id is None:
        raise FeatureInputError("bad_manifest", f"row has none of the id keys {', '.join(_ID_KEYS)}")
    try:
        rel = next((str(row[k]) for k in _PATH_KEYS if row.get(k)), None) or \
            pattern.format(id=item_id, video_id=item_id, image_id=item_id)
    except (KeyError, IndexError, ValueError) as exc:
        raise FeatureInputError("bad_manifest", f"filename_pattern {pattern!r}: {exc!r}", item_id) from None
    path = inside_root(root, rel)
    if path is None:
        raise FeatureInputError("unsafe_path", f"{item_id}: {rel} climbs out of {root}", item_id)
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    bounds = row.get("split", meta.get("split"))
    start, end = row.get("start_s"), row.get("end_s")
    if bounds is not None:
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2):
            raise FeatureInputError("bad_manifest", f"{item_id}: split must be [start, end], got {bounds!r}", item_id)
        start, end = bounds
    if (start is None) != (end is None):
        raise FeatureInputError("bad_manifest", f"{item_id}: give both start_s and end_s, or neither", item_id)
    if start is not None:
        try:
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            raise FeatureInputError("bad_manifest", f"{item_id}: clip bounds are not numbers", item_id) from None
        if not (0 <= start < end < float("inf")):
            raise FeatureInputError("bad_clip", f"{item_id}: clip [{start}, {end}) needs 0 <= start < end", item_id)
    return FeatureItem(item_id, str(path), start, end)


def list_inputs(settings: FeatureInputSettings) -> tuple[list[FeatureItem], list[dict]]:
    """The inputs to extract, and the failures found while listing them (rows ``{id, reason, message}``)."""
    root = Path(settings.root)
    suffixes = VIDEO_EXTENSIONS if settings.kind == "videos" else IMAGE_EXTENSIONS
    items: dict[str, FeatureItem] = {}
    failures: dict[str, dict] = {}
    if not settings.manifest:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.suffix.lower() in suffixes and path.is_file() and not any(p.startswith(".") for p in rel.parts):
                item_id = rel.with_suffix("").as_posix()
                items.setdefault(item_id, FeatureItem(item_id, os.path.abspath(path)))
    else:
        for line, row in _manifest_rows(Path(settings.manifest)):
            try:
                if isinstance(row, Exception):
                    raise FeatureInputError("bad_manifest", f"not JSON ({row})")
                item = _row_item(row, root, settings.filename_pattern)
            except FeatureInputError as exc:
                where = exc.item_id or f"<{Path(settings.manifest).name} line {line}>"
                failures[where] = {"id": where, "reason": exc.reason, "message": f"line {line}: {exc}"}
                continue
            seen = items.get(item.item_id)
            if seen is not None and seen != item:
                failures[item.item_id] = {"id": item.item_id, "reason": "bad_manifest", "message":
                                          f"line {line}: conflicting rows for {item.item_id}: {seen} vs {item}"}
            elif item.item_id not in failures:
                items[item.item_id] = item
        for item_id in failures:
            items.pop(item_id, None)
    selected = list(items.values())
    return (selected[: settings.limit] if settings.limit else selected), list(failures.values())


# ----------------------------------------------------------------------------- the model


def resolve_device(device: str):
    """``torch.device`` for "auto" (cuda when available), "cpu", "cuda" or "cuda:N"."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but no CUDA GPU is available")
    return resolved


class ClipFeatureExtractor:
    """Frames -> CLIP ``image_embeds``. The model loads on first use; the object pickles without it.

    ``frames(item)`` uint8 (T, H, W, 3) -> ``preprocess(frames)`` float (T, 3, S, S) -> ``embed(pixels)``
    float16 (T, D). ``prepare(item)`` is the first two (thread-safe, run ahead in workers).
    """

    def __init__(self, settings: ClipSettings):
        self.settings = settings
        self._model = self._processor = self._device = None

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "_model": None, "_processor": None, "_device": None}

    def load(self) -> "ClipFeatureExtractor":
        if self._model is None:
            import torch

            from pite.models import load_clip_vision

            model, self._processor = load_clip_vision(self.settings.model)
            self._device = resolve_device(self.settings.device)
            dtype = torch.float16 if self._device.type == "cuda" else torch.float32
            self._model = model.to(device=self._device, dtype=dtype).eval()
        return self

    @property
    def dim(self) -> int:
        return int(self.load()._model.config.projection_dim)

    def frames(self, item: FeatureItem, kind: str = "videos") -> np.ndarray:
        """uint8 (T, H, W, 3) RGB: ``num_frames`` of a video (or its clip), or the one image."""
        if kind == "images":
            return _read_image(Path(item.path))
        from pite.video import open_video

        cfg = self.settings
        with open_video(item.path, cfg.decode_short_side, cfg.backend) as video:
            duration = video.info.duration_s
            start, end = (0.0, duration) if item.start_s is None else (item.start_s, item.end_s)
            if start >= duration:
                raise FeatureInputError("bad_clip", f"{item.item_id}: clip starts at {start:.3f}s, after the "
                                        f"video's end ({duration:.3f}s)")
            if end > duration + _CLIP_END_SLACK_S:
                log.warning("%s: clip end %.3fs is past the video's end %.3fs; clamped", item.item_id, end, duration)
            end = min(end, duration)
            return video.read_at(start + frame_times(end - start, cfg.num_frames))

    def preprocess(self, frames: np.ndarray):
        """uint8 (T, H, W, 3) -> float32 pixel_values (T, 3, S, S) by the model's own image processor."""
        processor = self.load()._processor
        return processor(images=list(frames), return_tensors="pt", input_data_format="channels_last")["pixel_values"]

    def prepare(self, item: FeatureItem, kind: str = "videos"):
        return self.preprocess(self.frames(item, kind))

    def embed(self, pixel_values) -> np.ndarray:
        """pixel_values (T, 3, S, S) -> float16 (T, D) ``image_embeds``, ``batch_size`` frames per forward."""
        import torch

        self.load()
        out = []
        with torch.no_grad():
            for chunk in pixel_values.split(self.settings.batch_size):
                chunk = chunk.to(self._device, self._model.dtype, non_blocking=True)
                out.append(self._model(pixel_values=chunk).image_embeds.float().cpu())
        return torch.cat(out).numpy().astype(np.float16)

    def __call__(self, item: FeatureItem, kind: str = "videos") -> np.ndarray:
        return self.embed(self.prepare(item, kind))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FeatureInputError("missing_file", f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))[None]
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FeatureInputError("corrupt_image", f"{path}: cannot read the image ({exc})") from None


# ----------------------------------------------------------------------------- running


@dataclass
class FeatureRunSummary:
    """What a run did: inputs listed, found done, written, failed (by reason), seconds."""

    inputs: int = 0
    already_done: int = 0
    written: int = 0
    failed: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        return [f"inputs {self.inputs}, already done {self.already_done}, written {self.written} "
                f"({rate:.2f}/s), failed {sum(self.failed.values())} ({failed}), {self.seconds:.1f}s"]


def extract_items(items: list[FeatureItem], extractor: ClipFeatureExtractor, writer: FeatureWriter,
                  kind: str = "videos", workers: int = 2) -> FeatureRunSummary:
    """Extract every item not yet in ``writer``'s store; failures are recorded, never dropped."""
    from pite.video import VideoError

    summary = FeatureRunSummary(inputs=len(items))
    todo = [item for item in items if item.item_id not in writer]
    summary.already_done = len(items) - len(todo)
    started = time.perf_counter()
    if todo:
        extractor.load()
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    pending: deque = deque()
    queue = iter(todo)

    def submit() -> None:
        item = next(queue, None)
        if item is not None:
            pending.append((item, pool.submit(extractor.prepare, item, kind) if pool else None))

    try:
        for _ in range(max(1, 2 * workers)):
            submit()
        while pending:
            item, future = pending.popleft()
            submit()
            try:
                pixels = future.result() if future else extractor.prepare(item, kind)
                features = extractor.embed(pixels)
                if not np.isfinite(features).all():
                    raise FeatureInputError("non_finite", f"{item.item_id}: CLIP gave inf/NaN features")
            except (VideoError, FeatureInputError) as exc:
                writer.fail(item.item_id, exc.reason, str(exc))
                summary.failed[exc.reason] += 1
                continue
            writer.add(item.item_id, features)
            summary.written += 1
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        writer.flush()
    summary.seconds = time.perf_counter() - started
    return summary


def extract_features(cfg: FeaturesConfig) -> FeatureRunSummary:
    """List the inputs of ``cfg``, extract the missing ones into ``cfg.output.dir``, record the failures."""
    items, listing_failures = list_inputs(cfg.input)
    extractor = ClipFeatureExtractor(cfg.clip)
    with FeatureWriter(cfg.output.dir, cfg.clip.model, cfg.output.per_shard) as writer:
        for row in listing_failures:
            writer.fail(row["id"], row["reason"], row["message"])
        summary = extract_items(items, extractor, writer, cfg.input.kind, cfg.workers)
    summary.inputs += len(listing_failures)
    summary.failed.update(row["reason"] for row in listing_failures)
    return summary


def run_features(config_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> int:
    """``pite features --config ...``: extract, print a summary; exit code 0 (failures are in the store)."""
    from pite.config import load_config

    cfg = load_config(config_path, FeaturesConfig, overrides=overrides)
    summary = extract_features(cfg)
    print("\n".join(summary.lines()))
    print(f"features: {Path(cfg.output.dir).resolve()} (failures listed in failures.jsonl)")
    return 0
