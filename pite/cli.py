"""The ``pite`` command. Each sub-command imports its heavy dependencies only when run.

Bad input (a wrong config, a missing file) prints a clear message and exits with
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from pite.config import ConfigError

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input; printed without a traceback, exit code 2."""


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pite.doctor import exit_code, print_report, run_doctor
    from pite.registry import shipped_configs

    configs = [Path(p) for p in args.config] if args.config else shipped_configs()
    checks = run_doctor(configs)
    print_report(checks)
    return exit_code(checks)


def _cmd_annotate(args: argparse.Namespace) -> int:
    from pipeline.config import PipelineConfig
    from pite.config import load_config

    cfg = load_config(args.config, PipelineConfig, overrides=args.set)
    from pipeline.annotate import annotate, summary_lines

    stats = annotate(cfg, out=args.out, progress=not args.no_progress)
    print("\n".join(summary_lines(stats)))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from pite.features import run_features

    return run_features(args.config, args.set)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pite.demo import run_demo

    return run_demo(out=Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pite", description="PiTe: trajectory-grounded video-language data and a video LLM trained on it.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="check Python, packages, GPU, Java and model weights (offline)")
    p.add_argument("--config", action="append", default=[],
                   help="config(s) whose model weights to check (default: every shipped config)")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("annotate", help="annotate a manifest of videos into PiTe-143k-style shards")
    p.add_argument("--config", required=True, help="pipeline config, e.g. configs/pipeline/demo.yaml")
    p.add_argument("--out", default=None, help="output folder (default: the config's output.dir)")
    _add_set(p)
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a live progress bar")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("features", help="extract CLIP frame features (100 per video, 1 per image) into a store")
    p.add_argument("--config", required=True, help="features config, e.g. configs/features/demo.yaml")
    _add_set(p)
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser("demo", help="run the end-to-end demo on the tiny-model kit and sample clips")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.set_defaults(func=_cmd_demo)

    from pite.viewer import add_view_command

    add_view_command(sub)
    return parser


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set decode.short_side=128 (repeatable)")


def _version() -> str:
    from pite import __version__

    return f"pite {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except (ConfigError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
