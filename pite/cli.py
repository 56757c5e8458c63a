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
    import logging

    from pipeline.config import PipelineConfig

    logging.basicConfig(level=logging.INFO if args.no_progress else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pite.config import load_config

    cfg = load_config(args.config, PipelineConfig, overrides=args.set)
    from pipeline.annotate import annotate, summary_lines

    stats = annotate(cfg, out=args.out, progress=not args.no_progress, executor=args.executor, address=args.address)
    print("\n".join(summary_lines(stats)))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from pite.features import run_features

    return run_features(args.config, args.set)


def _cmd_train(args: argparse.Namespace) -> int:
    from training.train import run_train

    return run_train(args.config, args.set)


def _cmd_export(args: argparse.Namespace) -> int:
    from training.export import run_export

    return run_export(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from pite.eval.run import EvalError, run_eval
    from pite.eval.videoqa import JudgeFatalError
    from pite.infer import make_eval_predictor

    try:
        return run_eval(args.config, args.set, make_predictor=make_eval_predictor)
    except (EvalError, JudgeFatalError) as exc:
        raise UserError(str(exc)) from None


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
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="where to run (default: the config's run.executor, else local)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or 'ray://host:10001' (default: run.address, else an "
                        "in-process local Ray); implies --executor ray")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("features", help="extract CLIP frame features (100 per video, 1 per image) into a store")
    p.add_argument("--config", required=True, help="features config, e.g. configs/features/demo.yaml")
    _add_set(p)
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser("train", help="train one PiTe stage (LoRA on DeepSpeed; several GPUs: "
                                     "deepspeed --num_gpus N --module training.train --config ...)")
    p.add_argument("--config", required=True, help="train config, e.g. configs/train/stage2.yaml")
    _add_set(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="merge a trained stage's LoRA chain into a plain Hugging Face model folder")
    p.add_argument("--checkpoint", required=True, help="a stage output folder or one of its checkpoints/step-*")
    p.add_argument("--out", required=True, help="folder to write the merged model into (replaced)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("eval", help="evaluate a checkpoint: temporal grounding, dense captioning or VideoQA")
    p.add_argument("--config", required=True, help="eval config, e.g. configs/eval/demo_grounding.yaml")
    _add_set(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", help="run the end-to-end demo on the tiny-model kit and sample clips")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.set_defaults(func=_cmd_demo)

    from pite.infer import add_chat_commands
    from pite.viewer import add_view_command

    add_chat_commands(sub)
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
