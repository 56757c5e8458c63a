"""Point-tracking benchmark: tracker × split × (AJ, <δ_avg, OA, s/video) on procedural videos.

    PYTHONPATH=. python bench/tracking_bench.py                 # 20 videos per split, all trackers
    PYTHONPATH=. python bench/tracking_bench.py --quick         # 4 videos per split, 128 queries
    PYTHONPATH=. python bench/tracking_bench.py --videos 30 --trackers dis_chain dis_layers

Runs single-threaded by default (OMP_NUM_THREADS=1, cv2.setNumThreads(1)) so s/video is one core's
time. Videos are rendered on the fly (~1.5 min for the full set); ``--cache`` keeps them under
``$PITE_CACHE/bench/tracking`` (about 16 MB per video). RAFT is timed only when ``--raft-weights`` is given (accuracy with real weights) or with
``--raft-random`` (speed only, random weights, on ``--raft-videos`` videos; its accuracy is meaningless).
The last line printed is one JSON object with every number in the table.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repository root
if "--threads" not in sys.argv:  # must happen before numpy / cv2 / torch start their pools
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.tracking import GENERATOR_VERSION, SPLITS, TrackingVideo, make_video  # noqa: E402
from pipeline.tracking import DEFAULT_TRACKER, TrackerSettings, make_tracker  # noqa: E402
from pite.eval.tracking import average_metrics, tapvid_metrics  # noqa: E402
from pite.paths import cache_root  # noqa: E402


def load_video(split: str, index: int, num_queries: int, cache: Path | None, seed: int = 0) -> TrackingVideo:
    """``make_video`` with an on-disk cache of frames and ground truth (the scene is not cached)."""
    if cache is None:
        return make_video(split, index, seed=seed, num_queries=num_queries)
    path = cache / f"v{GENERATOR_VERSION}_s{seed}_{split}_{index:03d}_q{num_queries}.npz"
    if path.exists():
        d = np.load(path)
        return TrackingVideo(f"{split}/{index:03d}", d["frames"], d["queries"], d["gt_xy"], d["gt_visible"],
                             d["query_layer"], None)
    video = make_video(split, index, seed=seed, num_queries=num_queries)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, frames=video.frames, queries=video.queries, gt_xy=video.gt_xy,
                        gt_visible=video.gt_visible, query_layer=video.query_layer)
    tmp.replace(path)
    return video


def evaluate(settings: TrackerSettings, videos: list[TrackingVideo], tracker=None) -> dict[str, float]:
    """Mean TAP-Vid metrics and seconds per video of one tracker over ``videos``."""
    tracker = tracker or make_tracker(settings)
    per_video, seconds = [], []
    for video in videos:
        start = time.perf_counter()
        tracks = tracker.track(video.frames, video.queries)
        seconds.append(time.perf_counter() - start)
        per_video.append(tapvid_metrics(tracks.xy, tracks.visible, video.gt_xy, video.gt_visible,
                                        frame_size=video.frames.shape[1:3]))
    mean = average_metrics(per_video)
    return {"AJ": mean["AJ"], "delta_avg": mean["delta_avg"], "OA": mean["OA"], "s_per_video": float(np.mean(seconds))}


def dis_calibration(video: TrackingVideo, repeats: int = 30) -> float:
    """Milliseconds per DIS "medium" flow between two frames of ``video``: how fast this machine is now."""
    from pipeline.tracking.flow import make_dis, to_gray

    gray = to_gray(video.frames[: repeats + 1])
    dis = make_dis("medium")
    start = time.perf_counter()
    for i in range(repeats):
        dis.calc(gray[i], gray[i + 1], None)
    return (time.perf_counter() - start) / repeats * 1000


def raft_random_timing(videos: list[TrackingVideo], settings: TrackerSettings) -> float:
    """Seconds per video of chained RAFT with random weights (speed only)."""
    from pipeline.tracking.raft import RaftChainTracker

    tracker = RaftChainTracker(replace(settings, backend="raft"), random_weights=True)
    return evaluate(settings, videos, tracker)["s_per_video"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=20, help="videos per split (default 20)")
    parser.add_argument("--quick", action="store_true", help="4 videos per split, 128 queries each")
    parser.add_argument("--queries", type=int, default=256, help="query points per video (default 256)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--trackers", nargs="+", default=["dis_chain", "dis_layers"])
    parser.add_argument("--raft-weights", default=None, help="local torchvision RAFT weights: adds 'raft'")
    parser.add_argument("--raft-model", default="raft_small", choices=["raft_small", "raft_large"])
    parser.add_argument("--raft-random", action="store_true", help="time RAFT with random weights")
    parser.add_argument("--raft-videos", type=int, default=2, help="videos for --raft-random timing")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed (0 = the reported set)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--cache", action="store_true", help="keep rendered videos on disk (~16 MB each)")
    args = parser.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    cv2.setNumThreads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    videos_per_split = 4 if args.quick else args.videos
    num_queries = 128 if args.quick else args.queries
    cache = cache_root() / "bench" / "tracking" if args.cache else None
    trackers = list(args.trackers) + (["raft"] if args.raft_weights else [])

    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in trackers}
    timing_only: dict[str, float] = {}
    first = load_video(args.splits[0], 0, num_queries, cache, args.seed)
    print(f"# {videos_per_split} videos per split, {num_queries} queries, {args.threads} thread(s); "
          f"DIS medium {dis_calibration(first):.1f} ms per 256x256 pair on this machine now")
    header = f"{'tracker':<12} {'split':<10} {'AJ':>6} {'<d_avg':>7} {'OA':>6} {'s/video':>8}"
    print(header)
    print("-" * len(header))
    for split in args.splits:
        videos = [load_video(split, i, num_queries, cache, args.seed) for i in range(videos_per_split)]
        for name in trackers:
            settings = TrackerSettings(backend=name, raft_weights=args.raft_weights, raft_model=args.raft_model)
            row = evaluate(settings, videos)
            results[name][split] = row
            print(f"{name:<12} {split:<10} {row['AJ']:6.1f} {row['delta_avg']:7.1f} {row['OA']:6.1f} "
                  f"{row['s_per_video']:8.2f}", flush=True)
        if args.raft_random and split == args.splits[0]:
            settings = TrackerSettings(backend="raft", raft_model=args.raft_model)
            timing_only[f"raft_random_{args.raft_model}"] = raft_random_timing(videos[: args.raft_videos], settings)
            print(f"{'raft(rand)':<12} {split:<10} {'-':>6} {'-':>7} {'-':>6} "
                  f"{timing_only[f'raft_random_{args.raft_model}']:8.2f}   (random weights: speed only)", flush=True)
    summary = {"default": DEFAULT_TRACKER, "results": results}
    if timing_only:
        summary["timing_only_s_per_video"] = timing_only
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
