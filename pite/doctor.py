"""`pite doctor`: what is installed, what hardware is there, and which model weights are missing.

It never touches the network: Hugging Face lookups run with ``HF_HUB_OFFLINE=1`` and only
read the local cache. Missing weights are reported with how to get them; they do not
make the command fail (the demo runs on the tiny-model kit). A missing or broken core
dependency does.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# distribution name -> why PiTe needs it; "core" ones make doctor fail when missing
DEPENDENCIES: list[tuple[str, str, bool]] = [
    ("torch", "tensors, models", True),
    ("torchvision", "RAFT, image ops", True),
    ("transformers", "LLM, CLIP, GroundingDINO", True),
    ("numpy", "arrays", True),
    ("pyarrow", "Parquet shards", True),
    ("pycocotools", "mask RLE", True),
    ("opencv-python-headless", "optical flow, resizing", True),
    ("av", "video decode fallback, writing", True),
    ("decord", "fast video decode", False),
    ("supar", "constituency parsing (pipeline)", False),
    ("nltk", "tokenizing, trees (pipeline)", False),
    ("segment-anything", "SAM masks (pipeline)", False),
    ("ray", "distributed annotation", False),
    ("peft", "LoRA (training)", False),
    ("deepspeed", "training engine", False),
    ("accelerate", "HF model loading helpers", False),
    ("pycocoevalcap", "CIDEr / METEOR (evaluation)", False),
    ("tensorboard", "training logs", False),
]


@dataclass
class Check:
    """One line of the report."""

    section: str
    name: str
    ok: bool
    detail: str
    hint: str = ""


def check_dependencies() -> list[Check]:
    checks = [Check("python", "python", sys.version_info[:2] == (3, 11),
                    f"{platform.python_version()} ({sys.executable})",
                    "" if sys.version_info[:2] == (3, 11) else "PiTe is tested on Python 3.11")]
    for dist, why, _core in DEPENDENCIES:
        try:
            checks.append(Check("packages", dist, True, f"{md.version(dist)}  — {why}"))
        except md.PackageNotFoundError:
            checks.append(Check("packages", dist, False, f"not installed — {why}",
                                "pip install -c constraints.txt -e '.[all]'"))
    return checks


def check_hardware() -> list[Check]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - report, don't crash
        return [Check("hardware", "torch", False, f"cannot import torch: {exc}")]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return [Check("hardware", "gpu", True, f"{torch.cuda.device_count()} CUDA device(s): {names}")]
    return [Check("hardware", "gpu", True, f"none (CPU only, {os.cpu_count()} cores)",
                  "training and annotation at scale need CUDA GPUs; tests and the demo run on CPU")]


def check_java() -> list[Check]:
    java = shutil.which("java")
    if not java:
        return [Check("tools", "java", False, "not found (METEOR in pycocoevalcap needs it)",
                      "apt-get install default-jre-headless")]
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=15)
        first = (out.stderr or out.stdout).strip().splitlines()[0]
        return [Check("tools", "java", out.returncode == 0, f"{first} ({java})")]
    except (subprocess.TimeoutExpired, OSError, IndexError) as exc:
        return [Check("tools", "java", False, f"{java} does not run: {exc}")]


def model_refs(config_paths: list[Path]) -> list[tuple[str, str, str, str]]:
    """``(config, field, kind, ref)`` for every model-weights field set in the given configs."""
    from pite.config import ConfigError, iter_fields
    from pite.registry import load_any_config

    refs = []
    for path in config_paths:
        try:
            cfg = load_any_config(path, check_paths=False)
        except (ConfigError, KeyError) as exc:
            refs.append((str(path), "", "error", str(exc).splitlines()[0]))
            continue
        for name, value, meta in iter_fields(cfg):
            if meta.get("model") and isinstance(value, str) and value:
                refs.append((str(path), name, meta["model"], value))
    return refs


def check_models(config_paths: list[Path]) -> list[Check]:
    from pite.models import locate

    checks = []
    for config, field, kind, ref in model_refs(config_paths):
        label = f"{Path(config).name}: {field}" if field else Path(config).name
        if kind == "error":
            checks.append(Check("models", label, False, ref))
            continue
        found = locate(ref, kind)
        if found.found:
            checks.append(Check("models", f"{label} ({kind})", True, f"{ref} -> {found.where}"))
        elif ref.startswith("tinykit://"):  # built offline on first use: nothing to fetch
            checks.append(Check("models", f"{label} ({kind})", True, f"{ref}: tiny kit, built on first use"))
        else:
            checks.append(Check("models", f"{label} ({kind})", False, f"{ref}: not found locally", found.hint))
    return checks


def run_doctor(config_paths: list[Path]) -> list[Check]:
    """All checks, in report order. Forces offline mode for the Hugging Face hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return check_dependencies() + check_hardware() + check_java() + check_models(config_paths)


def exit_code(checks: list[Check]) -> int:
    """1 when a core dependency is missing; model weights and optional parts only warn."""
    core = {dist for dist, _why, is_core in DEPENDENCIES if is_core}
    broken = [c for c in checks if not c.ok and c.section == "packages" and c.name in core]
    return 1 if broken else 0


def print_report(checks: list[Check]) -> None:
    """A table of every check, then one "how to fix" paragraph per problem."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title="pite doctor", show_lines=False)
    for col in ("", "section", "check", "result"):
        table.add_column(col, overflow="fold")
    todo = [c for c in checks if not c.ok or c.hint]
    for c in checks:
        mark = "[green]ok[/]" if c.ok else "[yellow]!![/]"
        ref = f" [dim]({todo.index(c) + 1})[/]" if c in todo else ""
        table.add_row(mark, c.section, escape(c.name), escape(c.detail) + ref)
    console.print(table)
    for i, c in enumerate(todo, 1):
        console.print(f"({i}) [bold]{escape(c.name)}[/]: {escape(c.hint or c.detail)}", highlight=False)
    missing = sum(not c.ok for c in checks)
    console.print(f"{len(checks) - missing} ok, {missing} to look at. Missing model weights are expected until you "
                  "download them; the demo and the tests use the tiny-model kit.")
