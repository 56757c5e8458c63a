"""Pre-rendered overlay videos: the fallback the viewer shows when a browser cannot play the
source video.

The overlay video has one frame per global timeline frame (``pite.timeline``: frame ``i`` at
``i / 100 * duration``), played at ``100 / duration`` frames per second so that its clock runs
with the source's. On each frame it draws what the page draws on its canvas: each phrase's mask
around its event's first frame, the three key trajectories as polylines with the current point,
and the caption of the current event. H.264 MP4 through PyAV, or an animated GIF.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from pite.masks import decode_mask
from pite.schema import VideoRecord
from pite.timeline import NUM_FRAMES, frame_times, seconds_to_index

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#469990", "#9a6324", "#800000", "#000075")  # fmt: skip
"""Phrase colours, in order of the phrases of a video (events in order, phrases in order)."""
MASK_HOLD_S = 0.5
"""Seconds a mask stays on screen from its event's first frame (one timeline frame at least)."""
FALLBACK_FORMATS = ("mp4", "gif", "none")
MIN_WIDTH = 320
"""Smaller videos are scaled up to this width in the overlay video."""


class RenderError(RuntimeError):
    """The source video could not be decoded or the overlay video could not be written."""


def phrase_colors(record: VideoRecord) -> list[list[str]]:
    """Hex colour of every phrase, as ``colors[event][phrase]``."""
    colors, k = [], 0
    for event in record.events:
        colors.append([PALETTE[(k + j) % len(PALETTE)] for j in range(len(event.phrases))])
        k += len(event.phrases)
    return colors


def event_frames(start_s: float, end_s: float, duration_s: float) -> tuple[int, int]:
    """First and last global frame index of an event."""
    return seconds_to_index(start_s, duration_s), seconds_to_index(end_s, duration_s)


def mask_hold_frames(duration_s: float) -> int:
    """Timeline frames a mask stays visible: ``ceil(MASK_HOLD_S / (duration / 100))``, >= 1."""
    return max(1, math.ceil(MASK_HOLD_S * NUM_FRAMES / duration_s - 1e-9))


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def output_size(width: int, height: int, max_width: int, min_width: int = MIN_WIDTH) -> tuple[int, int]:
    """Even (width, height) keeping the aspect ratio (H.264 needs even sizes): scaled down to at most
    ``max_width``, and tiny videos scaled up to ``min_width`` so that the overlays stay legible."""
    scale = max_width / width if width > max_width else max(1.0, min(min_width, max_width) / width)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def decode_timeline_frames(video_file: Path, duration_s: float, size: tuple[int, int]) -> np.ndarray:
    """The frames nearest to the 100 global timeline times, resized to ``size`` = (w, h).

    Returns:
        uint8 (100, h, w, 3) RGB.

    Raises:
        RenderError: the file has no decodable video stream.
    """
    import av

    times = frame_times(duration_s)
    width, height = size
    frames = np.zeros((NUM_FRAMES, height, width, 3), np.uint8)
    filled = 0
    last = None
    try:
        with av.open(str(video_file)) as container:
            if not container.streams.video:
                raise RenderError(f"{video_file} has no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            half_frame = 0.5 / rate
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else 0.0
                take = 0
                while filled + take < NUM_FRAMES and times[filled + take] < t + half_frame:
                    take += 1
                if take:
                    rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
                    frames[filled:filled + take] = rgb
                    filled += take
                last = frame
                if filled == NUM_FRAMES:
                    break
    except (av.error.FFmpegError, OSError) as error:
        raise RenderError(f"cannot decode {video_file}: {error}") from error
    if last is None:
        raise RenderError(f"{video_file} has no decodable frames")
    if filled < NUM_FRAMES:
        frames[filled:] = frames[filled - 1] if filled else last.reformat(width=width, height=height,
                                                                           format="rgb24").to_ndarray()
    return frames


def draw_overlays(frames: np.ndarray, record: VideoRecord) -> np.ndarray:
    """Draw masks, trajectories and captions onto the (100, h, w, 3) RGB timeline frames, in place."""
    import cv2

    _, height, width, _ = frames.shape
    colors = phrase_colors(record)
    hold = mask_hold_frames(record.duration_s)
    scale = np.array([width - 1, height - 1], np.float32)
    thickness = max(2, round(width / 240))
    radius = max(4, round(width / 80))
    for e, event in enumerate(record.events):
        first, last = event_frames(event.start_s, event.end_s, record.duration_s)
        for k, phrase in enumerate(event.phrases):
            color = _rgb(colors[e][k])
            mask = cv2.resize(decode_mask(phrase.mask_rle).astype(np.uint8), (width, height),
                              interpolation=cv2.INTER_NEAREST).astype(bool)  # fmt: skip
            for i in range(first, min(first + hold, last + 1)):
                frames[i][mask] = (0.55 * frames[i][mask] + 0.45 * np.array(color)).astype(np.uint8)
            points = (phrase.trajectory.astype(np.float32) * scale).round().astype(np.int32)
            for p in range(points.shape[0]):
                visible = phrase.visibility[p]
                runs = np.split(np.flatnonzero(visible), np.flatnonzero(np.diff(np.flatnonzero(visible)) > 1) + 1)
                for i in range(first, last + 1):
                    for run in runs:
                        if len(run) > 1:
                            cv2.polylines(frames[i], [points[p, run]], False, color, thickness, cv2.LINE_AA)
                    if visible[i]:
                        cv2.circle(frames[i], tuple(int(v) for v in points[p, i]), radius, color, -1, cv2.LINE_AA)
                        cv2.circle(frames[i], tuple(int(v) for v in points[p, i]), radius, (255, 255, 255), 1,
                                   cv2.LINE_AA)  # fmt: skip
        text, font_scale = _fit_text(event.caption, width - 8)
        text_height = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)[0][1]
        top = (text_height + 10) * (e % 2)  # at the top; overlapping events alternate rows
        for i in range(first, last + 1):
            band = frames[i][top:top + text_height + 10]
            band[:] = (band * 0.4).astype(np.uint8)  # a dark band behind the white text
            cv2.putText(frames[i], text, (4, top + text_height + 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                        (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return frames


def _fit_text(caption: str, max_px: int) -> tuple[str, float]:
    """The caption as ASCII (OpenCV's fonts have no other characters) and a font scale such that it
    fits in ``max_px``, shortened with "..." when even the smallest scale is too wide."""
    import cv2

    text = caption.encode("ascii", "replace").decode()
    scale = max(0.35, min(0.6, max_px / 800))
    while cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > max_px and len(text) > 4:
        text = text[:-4].rstrip() + "..."
    return text, scale


def encode_frames(frames: np.ndarray, duration_s: float, path: Path, fmt: str) -> Path:
    """Write (100, h, w, 3) RGB frames as an H.264 MP4 (``fmt="mp4"``) or a GIF lasting ``duration_s``."""
    import av

    rate = Fraction(NUM_FRAMES / duration_s).limit_denominator(10_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        options = {"movflags": "+faststart"} if fmt == "mp4" else {}
        with av.open(str(tmp), "w", format="mp4" if fmt == "mp4" else "gif", options=options) as container:
            if fmt == "mp4":
                stream = container.add_stream("libx264", rate=rate)
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "26", "preset": "veryfast"}
            else:
                stream = container.add_stream("gif", rate=rate)
                stream.pix_fmt = "rgb8"
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            for image in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        tmp.replace(path)
    except (av.error.FFmpegError, ValueError) as error:
        tmp.unlink(missing_ok=True)
        raise RenderError(f"cannot write {path}: {error}") from error
    return path


def render_overlay_video(video_file: Path, record: VideoRecord, out_path: Path, fmt: str = "mp4",
                         max_width: int = 480) -> Path:
    """Render ``record``'s overlays onto the timeline frames of ``video_file`` into ``out_path``.

    Args:
        fmt: "mp4" (H.264) or "gif"; the suffix of ``out_path`` should match.
        max_width: frames wider than this are scaled down.

    Raises:
        RenderError: the video cannot be decoded or the output cannot be written.
    """
    if fmt not in ("mp4", "gif"):
        raise ValueError(f"fmt must be 'mp4' or 'gif', got {fmt!r}")
    size = output_size(record.width, record.height, max_width)
    frames = decode_timeline_frames(Path(video_file), record.duration_s, size)
    return encode_frames(draw_overlays(frames, record), record.duration_s, Path(out_path), fmt)
