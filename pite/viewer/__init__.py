"""`pite view`: a static HTML site that shows a run's masks and trajectories on its videos.

``add_view_command(subparsers)`` registers the sub-command; the heavy modules (``site``,
``render``) are imported only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_view_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``pite view`` on the CLI's sub-parsers; returns its parser."""
    p = subparsers.add_parser(
        "view", help="write a static HTML site that shows masks and trajectories on the videos of a run",
        description="Build a static viewer site (works from file:// and any static server) for an annotation run.")
    p.add_argument("--shards", required=True, help="the run folder (from `pite annotate`) or its shards/ folder")
    p.add_argument("--out", default=None, help="site folder (default: <run>/viewer)")
    p.add_argument("--video-root", default=None,
                   help="folder the records' video_path are relative to (default: found next to the run)")
    copy = p.add_mutually_exclusive_group()
    copy.add_argument("--copy-videos", dest="copy_videos", action="store_true", default=True,
                      help="copy the videos into the site, so it can be moved anywhere (default)")
    copy.add_argument("--link-videos", dest="copy_videos", action="store_false",
                      help="link the videos with relative symlinks instead of copying them")
    p.add_argument("--fallback", choices=("mp4", "gif", "none"), default="mp4",
                   help="pre-rendered overlay for browsers that cannot play a video (default: mp4)")
    p.add_argument("--limit", type=int, default=0, help="pages for at most this many videos (default: all)")
    p.add_argument("--serve", action="store_true", help="then serve the site on http://127.0.0.1:PORT/")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (default: 8000; 0 picks a free one)")
    p.set_defaults(func=run_view)
    return p


def run_view(args: argparse.Namespace) -> int:
    """Build the site (and serve it with ``--serve``); returns a process exit code."""
    from pite.cli import UserError
    from pite.viewer.site import SiteError, SiteSettings, build_site, find_run

    if args.limit < 0:
        raise UserError(f"--limit must be >= 0, got {args.limit}")
    try:
        run, _ = find_run(args.shards)
        out = Path(args.out) if args.out else run / "viewer"
        settings = SiteSettings(video_root=args.video_root, copy_videos=args.copy_videos, fallback=args.fallback,
                                limit=args.limit)
        summary = build_site(args.shards, out, settings)
    except SiteError as error:
        raise UserError(str(error)) from error
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {summary.pages} video pages ({summary.failed_videos} failed videos listed, "
          f"{summary.fallbacks} fallback overlays) to {out}")
    print(f"open {summary.index.resolve().as_uri()}")
    if args.serve:
        from pite.viewer.serve import serve

        try:
            serve(out, port=args.port)
        except OSError as error:
            raise UserError(f"cannot serve on 127.0.0.1:{args.port}: {error}") from error
    return 0
