"""Shared test fixtures. Tiny models are built once per content hash into a repo-local
cache (``.cache/pite``), so every test file and the demo share one build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PITE_CACHE", str(REPO / ".cache" / "pite"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def kit_root() -> Path:
    """Root of the shared tiny-kit cache (pass as ``root=`` to ``pite.tinykit.build``)."""
    from pite.paths import cache_root

    return cache_root() / "tinykit"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
