"""Which config class reads which YAML: ``configs/<kind>/...`` -> dataclass.

Used by ``pite doctor`` and by the test that loads every shipped config. Commands
that take ``--config`` know their own class and do not need this.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# folder under configs/ -> "module:Class"
CONFIG_KINDS: dict[str, str] = {
    "pipeline": "pipeline.config:PipelineConfig",
    "features": "pite.features:FeaturesConfig",
    "eval": "pite.eval.config:EvalConfig",
    "train": "training.config:TrainConfig",
}

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def config_class(kind: str) -> type:
    module, _, name = CONFIG_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def kind_of(path: Path) -> str:
    """The config kind of ``path``: the first folder name under ``configs/`` that is a known kind."""
    for part in Path(path).resolve().parts[::-1]:
        if part in CONFIG_KINDS:
            return part
    raise KeyError(f"{path}: not under configs/<kind>/ (kinds: {', '.join(CONFIG_KINDS)})")


def shipped_configs(root: Path = REPO_CONFIGS) -> list[Path]:
    """Every YAML file under ``configs/`` whose kind is known."""
    return sorted(p for p in root.rglob("*.yaml") if any(k in p.parts for k in CONFIG_KINDS))


def load_any_config(path: Path, check_paths: bool = True) -> Any:
    """Load ``path`` with the class of its kind. ``check_paths=False`` skips existence checks."""
    from pite.config import load_config

    return load_config(path, config_class(kind_of(path)), check_paths=check_paths)
