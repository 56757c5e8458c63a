"""Offline tiny-model kit: deterministic builders that save real on-disk checkpoints.

Every tiny model is loaded back by the *same* code that loads the real one
(``from_pretrained(path)``, segment-anything checkpoints, SuPar parser files), so the
tests and ``make demo`` exercise the real loading paths without any download.

Configs refer to kit models as ``tinykit://<name>``; :func:`resolve` turns such a
reference into a local path, building the model on first use. Builds are cached by
the content of the builder sources (and the shipped treebank), so editing a builder
rebuilds exactly that model.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path

from pite.paths import cache_root

SCHEME = "tinykit://"

# name -> module that defines ``build(out_dir: Path) -> None``
BUILDERS: dict[str, str] = {
    "llm": "pite.tinykit.llm",
    "clip": "pite.tinykit.clip",
    "gdino": "pite.tinykit.gdino",
    "sam": "pite.tinykit.sam",
    "parser": "pite.tinykit.parser",
}

_DONE = ".complete"


def names() -> list[str]:
    """The kit's model names, e.g. ``["llm", "clip", ...]``."""
    return list(BUILDERS)


def is_ref(ref: str) -> bool:
    """True for ``tinykit://<name>`` references."""
    return isinstance(ref, str) and ref.startswith(SCHEME)


def _content_hash(name: str) -> str:
    """Hash of the builder module's source plus any data files it ships (treebank)."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted([here / f"{BUILDERS[name].rsplit('.', 1)[1]}.py", *_data_files(name)]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _data_files(name: str) -> list[Path]:
    here = Path(__file__).parent
    if name == "parser":
        return sorted((here / "treebank").glob("*")) + sorted(here.glob("*.ini"))
    if name == "sam":  # the tiny SAM is built by the same builder as real ones
        return [here.parent / "models.py"]
    return []


def kit_dir(name: str, root: Path | None = None) -> Path:
    """Directory that holds (or will hold) the build of ``name`` for the current sources."""
    if name not in BUILDERS:
        raise KeyError(f"unknown tiny-kit model {name!r}; known: {', '.join(BUILDERS)}")
    base = Path(root) if root is not None else cache_root() / "tinykit"
    return base / f"{name}-{_content_hash(name)}"


def is_built(name: str, root: Path | None = None) -> bool:
    return (kit_dir(name, root) / _DONE).exists()


def build(name: str, root: Path | None = None) -> Path:
    """Build ``name`` unless a build for the current sources exists; return its directory.

    The build goes to a temporary sibling directory and is renamed into place, so an
    interrupted build never leaves a half-written model behind.
    """
    out = kit_dir(name, root)
    if (out / _DONE).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        importlib.import_module(BUILDERS[name]).build(tmp)
        (tmp / _DONE).write_text("ok\n")
        if out.exists():  # a concurrent builder won; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve(ref: str, root: Path | None = None) -> str:
    """``tinykit://<name>[/sub/path]`` -> local path (built on demand); anything else unchanged."""
    if not is_ref(ref):
        return ref
    name, _, sub = ref[len(SCHEME):].partition("/")
    path = build(name, root)
    return str(path / sub) if sub else str(path)
