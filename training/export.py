"""``pite export``: a trained stage (or checkpoint) folder -> one plain Hugging Face model folder.

The export merges the stage's LoRA chain into the LLM and writes

- the merged LLM (``save_pretrained``: ``config.json``, ``model.safetensors``) and its tokenizer,
- ``pite_heads.safetensors``: the vision adapter and both heads (``adapter.*``, ``loc_head.*``, ``traj_head.*``),
- ``pite_config.json``: what is needed to rebuild PiTe around the LLM (frame-feature size, P, N, the video
  token and its id) and where the weights came from.

:func:`load_exported` reads it back; the LLM also loads alone with ``AutoModelForCausalLM.from_pretrained``.
The folder is written next to ``--out`` and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HEADS_FILE = "pite_heads.safetensors"
CONFIG_FILE = "pite_config.json"
DTYPES = ("bf16", "fp16", "fp32")


def torch_dtype(name: str):
    """"bf16" / "fp16" / "fp32" -> the torch dtype."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def export_merged(checkpoint: str | Path, out: str | Path, dtype: str = "bf16") -> Path:
    """Merge ``checkpoint``'s LoRA chain (in float32) and write the export into ``out`` in ``dtype``."""
    import torch
    from safetensors.torch import save_file

    from training.stage_weights import load_stage_model, read_stage_meta, stage_chain

    checkpoint, out = Path(checkpoint), Path(out)
    target = torch_dtype(dtype)
    meta = read_stage_meta(checkpoint)
    model, tokenizer = load_stage_model(checkpoint, dtype=torch.float32, merge=True)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    llm = model.llm.to(target)
    llm.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    heads = {name: param.detach().to(target).contiguous()
             for name, param in model.named_parameters() if not name.startswith("llm.")}
    save_file(heads, str(tmp / HEADS_FILE))
    config = {
        "format": "pite-export",
        "version": 1,
        "stage": meta["stage"],
        "step": meta.get("step"),
        **{k: meta["model"][k] for k in ("vision_dim", "num_trajectories", "num_frames", "video_token",
                                         "video_token_id")},
        "dtype": dtype,
        "base_llm": meta["llm"],
        "merged_stages": [str(p) for p in stage_chain(checkpoint)],
    }
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_exported(folder: str | Path, dtype=None):
    """``(PiTeModel, tokenizer)`` from an export folder, in eval mode (``dtype`` None: as saved)."""
    from safetensors.torch import load_file

    from pite.model import PiTeSettings, build_pite

    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a PiTe export: {CONFIG_FILE} is missing (run `pite export`)")
    config = json.loads(config_path.read_text())
    settings = PiTeSettings(vision_dim=config["vision_dim"], num_trajectories=config["num_trajectories"],
                            num_frames=config["num_frames"], video_token_id=config["video_token_id"])
    model, tokenizer = build_pite(str(folder), settings, dtype=dtype)
    missing, unexpected = model.load_state_dict(load_file(str(folder / HEADS_FILE)), strict=False)
    if unexpected or any(not name.startswith("llm.") for name in missing):
        raise ValueError(f"{folder / HEADS_FILE} does not fit the model: unexpected {unexpected}, "
                         f"missing {[n for n in missing if not n.startswith('llm.')]}")
    return model.eval(), tokenizer


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pite export``."""
    parser.add_argument("--checkpoint", required=True,
                        help="a stage output folder or one of its checkpoints/step-* folders")
    parser.add_argument("--out", required=True, help="folder to write the merged model into (replaced)")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="dtype of the saved weights")


def run_export(args: argparse.Namespace) -> int:
    """``pite export --checkpoint DIR --out DIR [--dtype bf16]``; returns an exit code (2: not a stage folder)."""
    import sys

    try:
        out = export_merged(args.checkpoint, args.out, getattr(args, "dtype", "bf16"))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out}", flush=True)
    return 0
