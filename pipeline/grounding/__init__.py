"""Phrase grounding: one mask per noun phrase on an event's first frame.

Usage::

    grounder = make_grounder(settings)          # cheap; models load on the first call
    results = grounder.ground(frame, ["a pen", "a white table"])

Backends (``GroundingSettings.backend``):

- ``gdino_sam``: GroundingDINO boxes, then segment-anything masks prompted with them (default);
- ``gdino_box``: GroundingDINO boxes used as rectangular masks (no SAM weights needed).

Adding a grounder (OWLv2, SAM 2, GLaMM, ...): subclass :class:`~pipeline.grounding.base.Grounder`
in its own module and add one line to :data:`GROUNDERS` (and its name to the ``backend`` choices
of ``GroundingSettings``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.grounding.base import REASONS, Grounder, Grounding

if TYPE_CHECKING:
    from pipeline.config import GroundingSettings

# backend name -> "module:Class"; imported only when chosen, so unused backends cost nothing.
GROUNDERS: dict[str, str] = {
    "gdino_sam": "pipeline.grounding.gdino_sam:GdinoSamGrounder",
    "gdino_box": "pipeline.grounding.gdino_sam:GdinoBoxGrounder",
}


def make_grounder(settings: GroundingSettings) -> Grounder:
    """The grounder of ``settings.backend``, built from ``settings`` (no model is loaded yet)."""
    if settings.backend not in GROUNDERS:
        raise ValueError(f"unknown grounding backend {settings.backend!r}; known: {', '.join(GROUNDERS)}")
    module, _, name = GROUNDERS[settings.backend].partition(":")
    return getattr(importlib.import_module(module), name)(settings)


__all__ = ["GROUNDERS", "REASONS", "Grounder", "Grounding", "make_grounder"]
