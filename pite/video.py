"""Video decoding for the pipeline and the demo: probe, frames at given times, sample times.

Writing videos and finding the real sample clips live in :mod:`pite.footage`.

Two backends read videos: ``decord`` (fast random access) and PyAV; ``backend="auto"`` tries
decord and falls back to PyAV on any decord failure. Both give the same frames at the native
resolution, and the same frame for a given time (see :func:`nearest_frame_indices`).

Conventions:

* **Times are seconds from the first frame.** Frame ``i`` of a constant-rate stream starts at
  ``i / fps``; a time maps to the nearest frame start (halves round up) and is clipped into the
  video. Variable-rate streams use the backend's frame timestamps instead.
* **Duration** is the video stream's own length, ``num_frames / fps`` for constant-rate streams
  (a 1-frame video lasts ``1 / fps``), else the end of the last frame. The container's duration
  is not used: an audio track may outlast the picture.
* **Resizing only ever shrinks.** With ``short_side`` set and the video's short side larger,
  frames are resized so the short side is ``short_side`` (rounded down to even), the long side
  keeps the aspect ratio (rounded to even), with ``cv2.INTER_AREA``. Videos already that small
  keep their native size, odd or not. Sources more than twice the target size are first shrunk
  by the decoder itself to twice the target (decord's open-time ``width``/``height``, PyAV's
  ``reformat``), so a 4K frame never becomes a full-size RGB array; the final ``INTER_AREA``
  step is the same for both backends, which then agree within about one level on average.
* Frames are decoded one at a time (PyAV) or in small batches (decord, at most
  :data:`BATCH_BYTES` of decoded frames at once), and each is resized before the next.

Failures raise :class:`VideoError` with a ``reason`` code among :data:`REASONS`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from pite.timeline import frame_times

REASONS = ("missing_file", "corrupt_video", "no_frames", "too_few_frames", "unreadable")
"""``missing_file``: no such file. ``unreadable``: not a readable file (a folder, no permission,
an I/O error). ``corrupt_video``: empty, not a video container, or decoding fails. ``no_frames``:
no video stream, or a stream without frames. ``too_few_frames``: the stream ends before a
requested frame (fewer decodable frames than the file's index lists)."""

BATCH_BYTES = 64 * 2**20
"""Most bytes of decoded frames decord holds at once."""


class VideoError(Exception):
    """A video that cannot be used; ``reason`` is one of :data:`REASONS`, the message is for people."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown VideoError reason {reason!r}; expected one of {REASONS}")
        super().__init__(message)
        self.reason = reason


@dataclass
class VideoInfo:
    """What :func:`probe` learns about a video (native size, before any resizing)."""

    duration_s: float
    fps: float
    width: int
    height: int
    num_frames: int


# --- sizes and times -------------------------------------------------------------------------

def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """``(width, height)`` of frames read with ``short_side``: downscale only, aspect kept, even sizes."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    short = max(2, short_side - short_side % 2)
    scale = short / min(width, height)
    even = lambda x: max(2, 2 * round(x * scale / 2))  # noqa: E731
    return (short, even(height)) if width <= height else (even(width), short)


def _decoder_size(width: int, height: int, short_side: int | None) -> tuple[int, int] | None:
    """Size the decoder itself shrinks to before INTER_AREA, or None to decode at native size."""
    if short_side is None or min(width, height) <= 2 * short_side:
        return None
    return output_size(width, height, 2 * short_side)


def nearest_frame_indices(times_s: np.ndarray, frame_starts: np.ndarray, fps: float) -> np.ndarray:
    """Index of the frame nearest to each time (ties go to the later frame), clipped into the video.

    Args:
        times_s: float (T,) seconds from the first frame.
        frame_starts: float (N,) start of each frame, seconds from the first frame.
        fps: the stream's average frame rate; constant-rate streams (every start within a quarter
            frame of ``i / fps``) use the exact ``i / fps`` grid, so both backends agree to the bit.

    Returns:
        int64 (T,) frame indices in ``[0, N)``.
    """
    n = len(frame_starts)
    if n == 1 or np.all(np.abs(frame_starts - np.arange(n) / fps) <= 0.25 / fps):
        index = np.floor(times_s * fps + 0.5 + 1e-9)
    else:
        right = np.clip(np.searchsorted(frame_starts, times_s), 1, max(n - 1, 1))
        left = right - 1
        index = np.where(frame_starts[right] - times_s <= times_s - frame_starts[left], right, left)
    return np.clip(index, 0, n - 1).astype(np.int64)


def event_sample_times(start_s: float, end_s: float, fps: float, max_frames: int,
                       video_fps: float | None = None) -> np.ndarray:
    """Times at which an event is decoded for tracking; the first is ``start_s`` exactly.

    Samples run from ``start_s`` every ``1 / fps`` seconds up to ``end_s``. Beyond ``max_frames``
    they are spread evenly over ``[start_s, end_s]`` instead (both ends included). An event that
    gets a single sample this way but spans two distinct source frames gets ``[start_s, end_s]``.
    With ``video_fps``, ``fps`` is capped at the source rate (no duplicate frames) and "two
    distinct frames" means the nearest source frames of start and end differ; without it, any
    ``end_s > start_s`` counts.

    Returns:
        float64 (T,) seconds, ``1 <= T <= max_frames``, increasing.
    """
    start_s, end_s = float(start_s), float(end_s)
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or end_s < start_s:
        raise ValueError(f"event times must be finite with start <= end, got {start_s}..{end_s}")
    if not fps > 0 or max_frames < 1:
        raise ValueError(f"fps must be > 0 and max_frames >= 1, got {fps} and {max_frames}")
    rate = min(fps, video_fps) if video_fps else fps
    count = math.floor((end_s - start_s) * rate + 1e-9) + 1
    if count > max_frames:
        times = np.linspace(start_s, end_s, max_frames) if max_frames > 1 else np.array([start_s])
    else:
        times = start_s + np.arange(count) / rate
    if len(times) == 1 and max_frames >= 2 and end_s > start_s:
        distinct = (video_fps is None
                    or math.floor(end_s * video_fps + 0.5 + 1e-9) > math.floor(start_s * video_fps + 0.5 + 1e-9))
        if distinct:
            times = np.array([start_s, end_s])
    return times.astype(np.float64)


def sample_uniform_times(duration_s: float, n: int = 100) -> np.ndarray:
    """Times (float64 (n,)) of the video's global ``n``-frame timeline: ``pite.timeline.frame_times``."""
    return frame_times(duration_s, n)


# --- backends --------------------------------------------------------------------------------

def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _header_size(path: Path) -> tuple[int, int] | None:
    """Native (width, height) from the container header (cheap: nothing is decoded), or None."""
    try:
        with av.open(str(path)) as container:
            if container.streams.video:
                ctx = container.streams.video[0].codec_context
                if ctx.width > 0 and ctx.height > 0:
                    return ctx.width, ctx.height
    except Exception:  # noqa: BLE001 - the decoders report the real problem
        return None
    return None


def _info_from_starts(starts: np.ndarray, end: float, fps: float, width: int, height: int) -> VideoInfo:
    n = len(starts)
    grid_ok = np.all(np.abs(starts - np.arange(n) / fps) <= 0.25 / fps)
    duration = n / fps if grid_ok else max(end, starts[-1] + 1 / fps)
    return VideoInfo(duration_s=float(duration), fps=float(fps), width=int(width), height=int(height),
                     num_frames=n)


class _DecordReader:
    """decord backend; ``frames`` yields frames for sorted unique indices."""

    name = "decord"

    def __init__(self, path: Path, short_side: int | None):
        import decord

        size = _header_size(path)
        decode = _decoder_size(*size, short_side) if size else None
        kwargs = {"width": decode[0], "height": decode[1]} if decode else {}
        self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), **kwargs)
        n = len(self.reader)
        if n == 0:
            raise VideoError("no_frames", f"{path}: the video stream has no frames")
        if size is None:
            height, width = self.reader[0].shape[:2]
            size = (width, height)
        fps = float(self.reader.get_avg_fps())
        if not fps > 0:
            raise VideoError("corrupt_video", f"{path}: the stream reports no frame rate")
        stamps = self.reader.get_frame_timestamp(np.arange(n)).astype(np.float64)
        self.starts = stamps[:, 0] - stamps[0, 0]
        self.info = _info_from_starts(self.starts, stamps[-1, 1] - stamps[0, 0], fps, *size)
        self.out_size = output_size(*size, short_side)
        self.decoded_size = decode or size

    def frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        w, h = self.decoded_size
        per_batch = max(1, BATCH_BYTES // (3 * w * h))
        for begin in range(0, len(indices), per_batch):
            batch = self.reader.get_batch(indices[begin:begin + per_batch].tolist()).asnumpy()
            for rgb in batch:
                yield _resize(rgb, self.out_size)
            del batch

    def close(self) -> None:
        self.reader = None


def _timestamp(packet_or_frame) -> int | None:
    """Presentation timestamp, or the decoding one where a container (AVI) leaves it out."""
    return packet_or_frame.pts if packet_or_frame.pts is not None else packet_or_frame.dts


class _PyAVReader:
    """PyAV backend: demuxes once for frame timestamps, decodes sequentially, seeks over gaps."""

    name = "pyav"
    SEEK_GAP_S = 2.0

    def __init__(self, path: Path, short_side: int | None):
        self.path = path
        self.container = av.open(str(path))
        if not self.container.streams.video:
            raise VideoError("no_frames", f"{path}: the file has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        packets = [(_timestamp(p), p.duration) for p in self.container.demux(self.stream)
                   if p.size and _timestamp(p) is not None]
        if not packets:
            raise VideoError("no_frames", f"{path}: the video stream has no frames")
        if self.stream.frames and len(packets) < self.stream.frames:
            raise VideoError("corrupt_video", f"{path}: the file is cut short: it holds {len(packets)} of the "
                             f"{self.stream.frames} frames its header lists")
        packets.sort()
        tb = self.stream.time_base
        self.pts = np.array([p for p, _ in packets], dtype=np.int64)
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        span = float((self.pts[-1] - self.pts[0]) * tb)
        fps = float(rate) if rate else (len(packets) - 1) / span if span > 0 else 0.0
        if not fps > 0:
            raise VideoError("corrupt_video", f"{path}: the stream reports no frame rate")
        self.starts = (self.pts - self.pts[0]) * float(tb)
        last_duration = (packets[-1][1] or 0) * float(tb) or 1 / fps
        ctx = self.stream.codec_context
        self.info = _info_from_starts(self.starts, self.starts[-1] + last_duration, fps, ctx.width, ctx.height)
        self.decode_size = _decoder_size(ctx.width, ctx.height, short_side)
        self.out_size = output_size(ctx.width, ctx.height, short_side)
        self.seek_gap = int(self.SEEK_GAP_S / float(tb))

    def _rgb(self, frame) -> np.ndarray:
        if self.decode_size:
            w, h = self.decode_size
            rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()
        else:
            rgb = frame.to_ndarray(format="rgb24")
        return _resize(rgb, self.out_size)

    def frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """Every pass starts with a seek (to the keyframe at or before the next wanted frame) and
        decodes forward; a pass ends only to seek over a gap of more than ``SEEK_GAP_S``."""
        wanted = self.pts[indices]
        k, from_start = 0, False
        while k < len(wanted):
            self.container.seek(int(self.pts[0] if from_start else wanted[k]), stream=self.stream)
            first, reached = True, False
            for frame in self.container.decode(self.stream):
                pts = _timestamp(frame)
                if pts is None:
                    continue
                if first and pts > wanted[k] and not from_start:
                    break  # the seek overshot (an inexact index): decode from the start instead
                first = False
                while k < len(wanted) and pts >= wanted[k]:
                    yield self._rgb(frame)
                    k, reached = k + 1, True
                if k == len(wanted) or (reached and wanted[k] - pts > self.seek_gap):
                    break
            else:
                if k < len(wanted):
                    raise VideoError("too_few_frames", f"{self.path}: the stream ends before frame "
                                     f"{int(indices[k])} of the {len(self.pts)} listed in its index")
            from_start = first and not from_start

    def close(self) -> None:
        self.container.close()


_BACKENDS = {"decord": _DecordReader, "pyav": _PyAVReader}
_ORDER = {"auto": ("decord", "pyav"), "decord": ("decord",), "pyav": ("pyav",)}


def _as_video_error(backend: str, path: Path, exc: Exception) -> VideoError:
    if isinstance(exc, VideoError):
        return exc
    if isinstance(exc, (PermissionError, IsADirectoryError)):
        return VideoError("unreadable", f"{path}: {exc}")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return VideoError("corrupt_video", f"{path}: {backend} cannot decode it ({text[:300]})")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError("missing_file", f"{path}: no such video file")
    if not path.is_file():
        raise VideoError("unreadable", f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise VideoError("unreadable", f"{path}: no permission to read it")
    if path.stat().st_size == 0:
        raise VideoError("corrupt_video", f"{path}: the file is empty (0 bytes)")


class Video:
    """An open video: ``info`` and :meth:`read_at`. Use as a context manager (see :func:`open_video`)."""

    def __init__(self, path: str | os.PathLike, short_side: int | None = None, backend: str = "auto"):
        if backend not in _ORDER:
            raise ValueError(f"backend must be one of {sorted(_ORDER)}, got {backend!r}")
        self.path, self.short_side = Path(path), short_side
        self._todo = list(_ORDER[backend])
        self._errors: list[VideoError] = []
        self._reader = None
        _check_file(self.path)
        self._open_next()

    def _open_next(self) -> None:
        while self._todo:
            name = self._todo.pop(0)
            try:
                self._reader = _BACKENDS[name](self.path, self.short_side)
                return
            except ImportError as exc:  # a broken install is not a broken video: say so loudly
                if not self._todo:
                    raise ImportError(f"the {name} video backend cannot be imported: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - every failure becomes a VideoError
                self._errors.append(_as_video_error(name, self.path, exc))
        last = self._errors[-1]
        detail = "; ".join(str(e) for e in self._errors[:-1])
        raise VideoError(last.reason, str(last) + (f" (also tried: {detail})" if detail else ""))

    @property
    def info(self) -> VideoInfo:
        return self._reader.info

    @property
    def backend(self) -> str:
        return self._reader.name

    def read_at(self, times_s: np.ndarray) -> np.ndarray:
        """Frames nearest to ``times_s`` (float (T,) seconds, any order, repeats allowed).

        Returns:
            uint8 (T, H, W, 3) RGB at :func:`output_size` of the native size.
        """
        times = np.asarray(times_s, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(times)):
            raise ValueError("times_s must be finite seconds")
        while True:
            reader = self._reader
            unique, inverse = np.unique(nearest_frame_indices(times, reader.starts, reader.info.fps),
                                        return_inverse=True)
            w, h = reader.out_size
            out = np.empty((len(times), h, w, 3), dtype=np.uint8)
            try:
                got = 0
                for j, rgb in enumerate(reader.frames(unique)):
                    out[inverse == j] = rgb
                    got += 1
                if got < len(unique):
                    raise VideoError("too_few_frames", f"{self.path}: got {got} of {len(unique)} frames")
                return out
            except Exception as exc:  # noqa: BLE001 - fall back to the next backend, if any
                self._errors.append(_as_video_error(reader.name, self.path, exc))
                reader.close()
                self._open_next()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> "Video":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str | os.PathLike, short_side: int | None = None, backend: str = "auto") -> Video:
    """Open a video once to probe it and read several sets of frames (one demux, one index)."""
    return Video(path, short_side, backend)


def probe(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Duration, frame rate, native size and frame count of a video; raises :class:`VideoError`."""
    with open_video(path, None, backend) as video:
        return video.info


def read_frames_at(path: str | os.PathLike, times_s: np.ndarray, short_side: int | None,
                   backend: str = "auto") -> np.ndarray:
    """Frames nearest to ``times_s`` as uint8 (T, H, W, 3) RGB, downscaled to ``short_side``."""
    with open_video(path, short_side, backend) as video:
        return video.read_at(times_s)
