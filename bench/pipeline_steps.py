"""Benchmark of the annotation pipeline's steps on the demo config (CPU).

Prints, per step, seconds per event and per video and clips per hour, the average stored
bytes per phrase in the shards, and the time of dense DIS tracking of one 100-frame event
at 256 px on its short side on one core — compared with the goals (<= 1.5 s per event,
<= 4 KB per phrase). The last line is one JSON object with the figures.

    .venv/bin/python bench/pipeline_steps.py [--out DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

GOAL_DIS_S = 1.5
GOAL_BYTES_PER_PHRASE = 4096


def time_dis_event(backend: str, repeats: int) -> float:
    """Median seconds to track every pixel of a 100-frame 256-px-short-side event, one thread."""
    import cv2
    import torch

    from pipeline.synthetic import render_square_clip
    from pipeline.tracking import TrackerSettings, make_tracker

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    clip = render_square_clip(num_frames=100, height=256, width=320, occluder=True, seed=1)
    tracker = make_tracker(TrackerSettings(backend=backend, short_side=256))
    tracker.track(clip.frames[:5])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tracks = tracker.track(clip.frames)
        times.append(time.perf_counter() - start)
    assert tracks.xy.shape == (100, 256 * 320, 2)
    return float(np.median(times))


def run_demo(out: Path) -> tuple[dict, dict]:
    """Annotate the demo manifest once (models already built); returns (stats dict, shard sizes)."""
    from pipeline.annotate import annotate
    from pipeline.config import PipelineConfig
    from pipeline.demo_data import prepare_demo_videos
    from pite.config import load_config
    from pite.schema import read_shards

    prepare_demo_videos()
    cfg = load_config("configs/pipeline/demo.yaml", PipelineConfig)
    annotate(cfg, out=out / "warmup", progress=False)  # builds tiny models, imports, caches
    stats = annotate(cfg, out=out / "run", progress=False)
    shard_bytes = sum(p.stat().st_size for p in (out / "run" / "shards").glob("*.parquet"))
    phrases = sum(len(e.phrases) for r in read_shards(out / "run" / "shards") for e in r.events)
    return stats.to_dict(), {"shard_bytes": shard_bytes, "phrases": phrases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    dis_s = time_dis_event("dis_chain", args.repeats)
    from pipeline.tracking import DEFAULT_TRACKER

    default_s = dis_s if DEFAULT_TRACKER == "dis_chain" else time_dis_event(DEFAULT_TRACKER, args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        stats, sizes = run_demo(Path(args.out or tmp))
    totals = stats["totals"]
    videos, events = totals.get("videos_written", 0), totals.get("events_written", 0)
    print(f"demo run: {videos} videos, {events} events, {sizes['phrases']} phrases written "
          f"(1 video fails on purpose)\n")
    print(f"{'step':<12} {'s total':>8} {'s/event':>8} {'s/video':>8} {'clips/h':>9}")
    per_step = {}
    total_s = 0.0
    for name, st in stats["steps"].items():
        s = st["seconds"]
        total_s += s
        per_step[name] = {"seconds": round(s, 3), "s_per_event": round(s / max(events, 1), 4),
                          "s_per_video": round(s / max(videos, 1), 4)}
        print(f"{name:<12} {s:8.2f} {s / max(events, 1):8.3f} {s / max(videos, 1):8.3f} "
              f"{3600 / max(s / max(videos, 1), 1e-9):9.0f}")
    print(f"{'all steps':<12} {total_s:8.2f} {total_s / max(events, 1):8.3f} {total_s / max(videos, 1):8.3f} "
          f"{3600 / max(total_s / max(videos, 1), 1e-9):9.0f}")
    bytes_per_phrase = sizes["shard_bytes"] / max(sizes["phrases"], 1)
    print(f"\nDIS chain, 100-frame event at 256 px short side, 1 core: {dis_s:.3f} s "
          f"(goal <= {GOAL_DIS_S} s: {'met' if dis_s <= GOAL_DIS_S else 'NOT met'})")
    if DEFAULT_TRACKER != "dis_chain":
        print(f"default tracker ({DEFAULT_TRACKER}), same event, 1 core: {default_s:.3f} s")
    print(f"stored bytes per phrase: {bytes_per_phrase:.0f} "
          f"(goal <= {GOAL_BYTES_PER_PHRASE}: {'met' if bytes_per_phrase <= GOAL_BYTES_PER_PHRASE else 'NOT met'})")
    print(json.dumps({"dis_s_per_event": round(dis_s, 4), "default_tracker": DEFAULT_TRACKER,
                      "default_tracker_s_per_event": round(default_s, 4),
                      "bytes_per_phrase": round(bytes_per_phrase, 1), "videos": videos, "events": events,
                      "phrases": sizes["phrases"], "clips_per_hour": round(3600 / max(total_s / max(videos, 1), 1e-9), 1),
                      "steps": per_step}))


if __name__ == "__main__":
    main()
