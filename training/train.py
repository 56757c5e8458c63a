"""Entry point of a training stage.

Single process (CPU or one GPU)::

    pite train --config configs/train/stage2.yaml [--set optim.lr=2e-4 ...]

Several GPUs or nodes, with DeepSpeed's launcher (it passes ``--local_rank=N`` and the rank variables)::

    deepspeed --num_gpus 8 --module training.train --config configs/train/stage2.yaml

Without a launcher the single-process DeepSpeed environment is set here: ``RANK=0 WORLD_SIZE=1
LOCAL_RANK=0``, ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, and ``DS_ACCELERATOR=cpu`` when there is
no CUDA device. ``TORCH_EXTENSIONS_DIR`` defaults to PiTe's cache so DeepSpeed's ops compile once.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from pite.config import ConfigError, load_config
from pite.paths import cache_root
from training.config import TrainConfig


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_distributed_env(local_rank: int | None = None) -> bool:
    """Set the variables DeepSpeed needs unless a launcher did; returns True when it set them (one process)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", "0")
        return False
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    return True


def build_data(cfg: TrainConfig, tokenizer, model):
    """``(dataset, collate_fn, batch_sampler or None)`` for the stage: generated samples when
    ``data.synthetic_samples`` is set, else the stage datasets of ``training.data``."""
    if cfg.data.synthetic_samples:
        from training.synthetic import SyntheticCollator, SyntheticStageDataset

        dataset = SyntheticStageDataset(
            cfg.data.synthetic_samples, stage=cfg.stage, vocab_size=model.llm.get_input_embeddings().num_embeddings,
            video_token_id=model.video_token_id, num_frames=cfg.model.num_frames, vision_dim=cfg.model.vision_dim,
            num_trajectories=cfg.model.num_trajectories, text_length=cfg.data.synthetic_length, seed=cfg.seed)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return dataset, SyntheticCollator(cfg.stage, pad_id), None
    from training.data import build_stage_data

    return build_stage_data(cfg, tokenizer, video_token_id=model.video_token_id)


def train(cfg: TrainConfig):
    """Build the model and data, then ``setup -> fit``. Needs the distributed environment (see above)."""
    from training.trainer import build_model, fit, setup

    model, tokenizer = build_model(cfg)
    dataset, collate_fn, batch_sampler = build_data(cfg, tokenizer, model)
    session = setup(cfg, model, dataset, collate_fn, batch_sampler)
    return fit(session)


def run_train(config_path: str | Path, overrides: Sequence[str] = (), local_rank: int | None = None) -> int:
    """Load the config, set the environment, train, and tear the process group down. Returns an exit code.

    Raises :class:`pite.config.ConfigError` for a bad config (the CLI prints it and exits with 2).
    """
    cfg = load_config(config_path, TrainConfig, overrides=overrides)
    ensure_distributed_env(local_rank)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    import torch.distributed as dist

    try:
        result = train(cfg)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"trained stage {cfg.stage} to step {result.step}; weights in {result.out_dir}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="train config, e.g. configs/train/stage2.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=2e-4 (repeatable)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_train(args.config, args.set, args.local_rank)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
