"""Build the static viewer site of an annotation run: an index page and one page per video.

Layout of the site (``out/``)::

    index.html                  every video, the failures table and stats.json as a summary
    videos/<slug>.html          one page per video: the video with its overlays on a canvas
    media/<slug>.<ext>          the source video (a copy, or a relative symlink)
    media/<slug>.overlay.mp4    the pre-rendered fallback (overlays burned in), or .gif
    assets/                     viewer.css, common.js, index.js, video.js

Pages embed their data as JSON in ``<script type="application/json">`` blocks (``<``, ``>``,
``&`` escaped as ``\\u003c`` and so on, so no text can close the block), and the scripts put
text on the page with ``textContent`` only. Everything is local: the site works from ``file://``
and from any static web server.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pite.masks import decode_mask
from pite.schema import MISSING, Failure, VideoRecord, read_failures, read_shards
from pite.viewer.render import (
    FALLBACK_FORMATS,
    RenderError,
    event_frames,
    mask_hold_frames,
    phrase_colors,
    render_overlay_video,
)

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = ("viewer.css", "common.js", "index.js", "video.js")
MARKER = ".pite-viewer"
"""File that marks a folder as a viewer site, so a rebuild may clear its old pages."""


class SiteError(ValueError):
    """The run folder or the output folder is not usable; the message says why."""


@dataclass
class SiteSettings:
    """How to build the site.

    Attributes:
        video_root: folder the records' ``video_path`` are relative to; None tries the run
            folder, its parents and the working directory.
        copy_videos: copy each video into the site (portable); False links it with a relative symlink.
        fallback: pre-rendered overlay format for browsers that cannot play the source:
            "mp4" (H.264), "gif" or "none".
        fallback_max_width: the fallback is scaled down to at most this width.
        limit: build pages for at most this many videos (0: all).
        title: heading of the index page (default: "PiTe viewer: <run folder name>").
    """

    video_root: str | None = None
    copy_videos: bool = True
    fallback: str = "mp4"
    fallback_max_width: int = 480
    limit: int = 0
    title: str | None = None


@dataclass
class SiteSummary:
    """What :func:`build_site` wrote."""

    out: Path
    video_root: Path | None
    pages: int = 0
    failed_videos: int = 0
    fallbacks: int = 0
    missing_videos: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.out / "index.html"


# --- reading the run ----------------------------------------------------------------------------


def find_run(shards: str | os.PathLike) -> tuple[Path, Path]:
    """``(run folder, shards folder)`` of ``shards``, which may be either of them."""
    path = Path(shards)
    if not path.is_dir():
        raise SiteError(f"--shards {path}: no such folder (give the run folder or its shards/ folder)")
    if (path / "shards").is_dir():
        return path, path / "shards"
    if any(path.glob("*.parquet")):
        return (path.parent if path.name == "shards" else path), path
    raise SiteError(f"--shards {path}: found neither a shards/ folder nor .parquet files in it")


def _add_counts(into: dict, more: dict) -> dict:
    for key, n in more.items():
        into[key] = into.get(key, 0) + n
    return into


def load_stats(run: Path) -> dict:
    """``run/stats.json``, else the per-shard ``run/stats/*.json`` added up, else empty."""
    merged: dict = {"totals": {}, "failures": {}, "steps": {}}
    if (run / "stats.json").is_file():
        return {**merged, **json.loads((run / "stats.json").read_text())}
    for path in sorted((run / "stats").glob("*.json")) if (run / "stats").is_dir() else []:
        part = json.loads(path.read_text())
        for key in ("totals", "failures"):
            _add_counts(merged[key], part.get(key, {}))
        for name, step in part.get("steps", {}).items():
            into = merged["steps"].setdefault(name, {"seconds": 0.0, "counts": {}, "drops": {}})
            into["seconds"] = round(into["seconds"] + float(step.get("seconds", 0.0)), 4)
            for key in ("counts", "drops"):
                _add_counts(into[key], step.get(key, {}))
    return merged


def resolve_video_root(run: Path, records: list[VideoRecord], explicit: str | None) -> Path | None:
    """The folder where most of ``records``' videos exist: ``explicit`` if given, else the best
    of the run folder, its parent and grandparent, the working directory, and the ``videos/``
    folder of each (None when no video is found)."""
    if explicit is not None:
        root = Path(explicit)
        if not root.is_dir():
            raise SiteError(f"--video-root {root}: no such folder")
        return root
    near = [run, run.parent, run.parent.parent, Path.cwd()]
    candidates = near + [folder / "videos" for folder in near]
    best, best_found = None, 0
    for root in candidates:
        found = sum((root / r.video_path).is_file() for r in records)
        if found > best_found:
            best, best_found = root, found
    return best


def video_slug(video_id: str) -> str:
    """A file-name-safe, unique name for a video: its id's safe characters and a short hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id).strip("._")[:60] or "video"
    return f"{safe}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


def json_for_html(value: object) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` block: ``<``, ``>`` and
    ``&`` are written as ``\\u003c``, ``\\u003e``, ``\\u0026`` so no text can end the block or open
    a comment, and U+2028/U+2029 are escaped too."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escaped)
    return text


# --- page data -----------------------------------------------------------------------------------


def mask_rings(rle: dict, tolerance_px: float = 0.75) -> list[list[float]]:
    """Outlines of a COCO RLE mask as flat ``[x0, y0, x1, y1, ...]`` rings normalised to [0, 1]
    (outer borders and holes alike: fill them with the even-odd rule)."""
    import cv2

    mask = decode_mask(rle).astype(np.uint8)
    height, width = mask.shape
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in contours:
        pixels = contour.reshape(-1, 2).astype(np.float64)
        if len(pixels) < 3:  # a one- or two-pixel sliver: its pixels' bounding square
            (x0, y0), (x1, y1) = pixels.min(axis=0), pixels.max(axis=0) + 1
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        else:  # contour points are pixel indices: take the pixel centres
            points = cv2.approxPolyDP(contour, tolerance_px, True).reshape(-1, 2) + 0.5
        normalised = points / np.array([width, height], np.float64)
        rings.append(np.round(normalised, 4).reshape(-1).tolist())
    return rings


def trajectory_points(trajectory: np.ndarray) -> list[list[list[float] | None]]:
    """(3, 100, 2) float16 -> per trajectory, 100 ``[x, y]`` or None where (-1, -1)."""
    values = trajectory.astype(np.float64)
    missing = (values == MISSING).all(axis=-1).tolist()
    points = np.round(values, 4).tolist()
    return [[None if gone else point for point, gone in zip(track, gaps)] for track, gaps in zip(points, missing)]


def visibility_fraction(record: VideoRecord) -> float | None:
    """Mean over phrases of the visible share of their trajectory points inside their event."""
    shares = []
    for event in record.events:
        first, last = event_frames(event.start_s, event.end_s, record.duration_s)
        shares += [float(p.visibility[:, first:last + 1].mean()) for p in event.phrases]
    return float(np.mean(shares)) if shares else None


def video_page_data(record: VideoRecord, src: str | None, fallback: str | None, fallback_kind: str | None) -> dict:
    """Everything the video page draws, JSON-ready."""
    colors = phrase_colors(record)
    events = []
    for e, event in enumerate(record.events):
        first, last = event_frames(event.start_s, event.end_s, record.duration_s)
        phrases = [{"text": p.text, "char_start": int(p.char_start), "char_end": int(p.char_end),
                    "color": colors[e][k], "score": float(p.score), "box": [round(float(v), 4) for v in p.box],
                    "rings": mask_rings(p.mask_rle), "traj": trajectory_points(p.trajectory)}
                   for k, p in enumerate(event.phrases)]  # fmt: skip
        events.append({"start_s": float(event.start_s), "end_s": float(event.end_s), "caption": event.caption,
                       "first": first, "last": last, "phrases": phrases})
    return {"video_id": record.video_id, "video_path": record.video_path, "duration_s": float(record.duration_s),
            "fps": float(record.fps), "width": int(record.width), "height": int(record.height),
            "mask_hold_frames": mask_hold_frames(record.duration_s), "src": src, "fallback": fallback,
            "fallback_kind": fallback_kind, "events": events}  # fmt: skip


def reason_counts(stats: dict, failures: list[Failure]) -> list[dict]:
    """Bars of the reason chart, most frequent first: ``{"label": "stage/reason", "count", "kind"}``
    with kind "failure" (a video or event in the failures table, from ``stats["failures"]`` or
    counted from the table) or "drop" (a step's drop inside a video, ``stats["steps"][s]["drops"]``).
    A drop that repeats a failure of the same stage and reason is counted once."""
    failed = Counter(stats.get("failures") or Counter(f"{f.stage}/{f.reason}" for f in failures))
    dropped = Counter({f"{step}/{reason}": n for step, value in (stats.get("steps") or {}).items()
                       for reason, n in (value.get("drops") or {}).items()})  # fmt: skip
    bars = [{"label": k, "count": int(n), "kind": "failure"} for k, n in failed.items()]
    bars += [{"label": k, "count": int(n), "kind": "drop"} for k, n in dropped.items() if k not in failed]
    return sorted(bars, key=lambda bar: (-bar["count"], bar["label"]))


def index_row(record: VideoRecord, page: str | None, reasons: list[str]) -> dict:
    texts = sorted({p.text for event in record.events for p in event.phrases})
    caption = record.events[0].caption if record.events else ""
    visibility = visibility_fraction(record)
    return {"id": record.video_id, "page": page, "status": "ok", "duration": round(float(record.duration_s), 3),
            "events": len(record.events), "phrases": sum(len(e.phrases) for e in record.events),
            "visibility": None if visibility is None else round(visibility, 4),
            "caption": caption if len(caption) <= 140 else caption[:139] + "\u2026", "texts": texts,
            "reasons": reasons}  # fmt: skip


def failed_row(video_id: str, reasons: list[str], message: str) -> dict:
    return {"id": video_id, "page": None, "status": "failed", "duration": None, "events": None, "phrases": None,
            "visibility": None, "caption": message[:140], "texts": [], "reasons": reasons}  # fmt: skip


# --- writing -------------------------------------------------------------------------------------


def _template(name: str, title: str, payload: dict) -> str:
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    return text.replace("__TITLE__", html.escape(title)).replace("__DATA__", json_for_html(payload))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def prepare_out(out: Path) -> None:
    """Create ``out``, or clear the pages of an earlier build there (media are kept for reuse);
    refuse a non-empty folder that is not a viewer site."""
    if out.exists() and not out.is_dir():
        raise SiteError(f"--out {out} is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SiteError(f"--out {out} is not empty and is not a viewer site; choose a new or empty folder")
    for sub in ("videos", "assets"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("videos", "assets", "media"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("built by `pite view`; the folder is rewritten by the next build\n")
    for name in ASSETS:
        shutil.copyfile(STATIC_DIR / name, out / "assets" / name)


def place_video(source: Path, media: Path, slug: str, copy: bool) -> Path:
    """Copy (when missing or changed) or symlink ``source`` to ``media/<slug><ext>``."""
    target = media / f"{slug}{source.suffix.lower()}"
    if copy:
        if target.is_symlink():
            target.unlink()
        stat = source.stat()
        if not (target.is_file() and target.stat().st_size == stat.st_size and target.stat().st_mtime >= stat.st_mtime):
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
    else:
        target.unlink(missing_ok=True)
        os.symlink(os.path.relpath(source.resolve(), media.resolve()), target)
    return target


def place_fallback(source: Path, record: VideoRecord, media: Path, slug: str, settings: SiteSettings,
                   key: str) -> Path:
    """Render the overlay video unless one made from the same record and source is there."""
    target = media / f"{slug}.overlay.{settings.fallback}"
    stamp = media / f".{slug}.overlay.key"
    if target.is_file() and stamp.is_file() and stamp.read_text() == key:
        return target
    render_overlay_video(source, record, target, fmt=settings.fallback, max_width=settings.fallback_max_width)
    stamp.write_text(key)
    return target


def _fallback_key(page_data: dict, source: Path, settings: SiteSettings) -> str:
    """Changes whenever the overlay video would: the page's data, the source file, the format and size."""
    stat = source.stat()
    made_from = f"{stat.st_size}:{stat.st_mtime}:{settings.fallback}:{settings.fallback_max_width}:"
    return hashlib.sha1(made_from.encode() + json_for_html(page_data).encode()).hexdigest()


def _place_media(record: VideoRecord, source: Path, media: Path, slug: str, settings: SiteSettings, data: dict,
                 summary: SiteSummary) -> set[str]:
    """Put the video (and its fallback overlay) in ``media``, point the page ``data`` at them and
    return the names of the files used."""
    placed = place_video(source, media, slug, settings.copy_videos)
    data["src"] = f"../media/{placed.name}"
    if settings.fallback == "none":
        return {placed.name}
    try:
        rendered = place_fallback(source, record, media, slug, settings, _fallback_key(data, source, settings))
    except RenderError as error:
        summary.warnings.append(f"video {record.video_id!r}: no fallback overlay: {error}")
        return {placed.name}
    data["fallback"], data["fallback_kind"] = f"../media/{rendered.name}", settings.fallback
    summary.fallbacks += 1
    return {placed.name, rendered.name, f".{slug}.overlay.key"}


def _peek(records: Iterator[VideoRecord], n: int) -> tuple[list[VideoRecord], Iterator[VideoRecord]]:
    head = list(itertools.islice(records, n))
    return head, itertools.chain(head, records)


def build_site(shards: str | os.PathLike, out: str | os.PathLike, settings: SiteSettings | None = None,
               log=print) -> SiteSummary:
    """Write the viewer site of the run at ``shards`` (the run folder or its shards/) into ``out``.

    Records are streamed: one page is written per video, and only a small index row is kept.

    Raises:
        SiteError: a folder is missing or ``out`` is a non-empty folder that is not a viewer site.
    """
    settings = settings or SiteSettings()
    if settings.fallback not in FALLBACK_FORMATS:
        raise SiteError(f"fallback must be one of {', '.join(FALLBACK_FORMATS)}, got {settings.fallback!r}")
    run, shards_dir = find_run(shards)
    out = Path(out)
    prepare_out(out)
    failures = read_failures(run / "failures") if (run / "failures").is_dir() else []
    stats = load_stats(run)
    records: Iterable[VideoRecord] = read_shards(shards_dir)
    if settings.limit:
        records = itertools.islice(records, settings.limit)
    head, records = _peek(iter(records), 20)
    video_root = resolve_video_root(run, head, settings.video_root)
    summary = SiteSummary(out=out, video_root=video_root)
    if video_root is None and head:
        summary.warnings.append("no video files found next to the run; pass --video-root (pages show overlays only)")

    reasons_of: dict[str, list[str]] = {}
    for failure in failures:
        reasons_of.setdefault(failure.video_id, [])
        if failure.reason not in reasons_of[failure.video_id]:
            reasons_of[failure.video_id].append(failure.reason)
    rows, seen, media_used = [], set(), set()
    for record in records:
        slug = video_slug(record.video_id)
        data = video_page_data(record, src=None, fallback=None, fallback_kind=None)
        source = video_root / record.video_path if video_root is not None else None
        if source is not None and source.is_file():
            media_used |= _place_media(record, source, out / "media", slug, settings, data, summary)
        else:
            summary.missing_videos.append(record.video_id)
        page = _template("video.html", f"{record.video_id} \u00b7 PiTe viewer", data)
        _write_text(out / "videos" / f"{slug}.html", page)
        rows.append(index_row(record, f"videos/{slug}.html", reasons_of.get(record.video_id, [])))
        seen.add(record.video_id)
        summary.pages += 1
        if summary.pages % 500 == 0:
            log(f"viewer: {summary.pages} video pages written")

    whole_failures = {f.video_id: f for f in failures if f.event == -1 and f.video_id not in seen}
    for video_id, failure in whole_failures.items():
        rows.append(failed_row(video_id, reasons_of[video_id], f"{failure.stage}: {failure.message}"))
    summary.failed_videos = len(whole_failures)
    if summary.missing_videos and video_root is not None:
        summary.warnings.append(f"{len(summary.missing_videos)} video files not found under {video_root}")

    index = {"run": str(run), "generated": time.strftime("%Y-%m-%d %H:%M"), "videos": rows,
             "failures": [_failure_dict(f) for f in failures], "stats": stats,
             "reasons": reason_counts(stats, failures)}
    title = settings.title or f"PiTe viewer: {run.resolve().name}"
    _write_text(out / "index.html", _template("index.html", title, index))
    for path in (out / "media").iterdir():  # media of earlier builds that no page uses any more
        if path.name not in media_used:
            path.unlink()
    return summary


def _failure_dict(failure: Failure) -> dict:
    return {"video_id": failure.video_id, "event": int(failure.event), "stage": failure.stage,
            "reason": failure.reason, "message": failure.message}  # fmt: skip
