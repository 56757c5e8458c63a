"""Where PiTe keeps caches on disk. One function per location; nothing is created at import time."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Root of PiTe's on-disk cache: ``$PITE_CACHE`` or ``~/.cache/pite``."""
    env = os.environ.get("PITE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pite"
