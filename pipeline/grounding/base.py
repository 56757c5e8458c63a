"""Grounding interface: one mask per noun phrase on an event's first frame.

A :class:`Grounder` takes a frame, uint8 (H, W, 3) RGB, and the event's noun phrases, and
returns one :class:`Grounding` per phrase, in order. A phrase is *grounded* when its
``reason`` is None; otherwise ``box`` and ``mask`` are None, ``score`` is 0 and ``reason``
is one of :data:`REASONS`, with a sentence for people in ``message``.

Grounders are cheap to construct and picklable (they can be shipped to a worker): models
load on the first :meth:`Grounder.ground` call and are not pickled. A new grounder (OWLv2,
SAM 2, GLaMM, ...) is one subclass of :class:`Grounder` registered in
:data:`pipeline.grounding.GROUNDERS`.

The helpers below are shared by every backend: frame checks, device choice, box-shaped
masks and the area filter that drops too-small or empty masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.config import GroundingSettings

NO_BOX = "no_box"
"""No detector box reached the thresholds for the phrase (or the phrase has no words)."""
MASK_TOO_SMALL = "mask_too_small"
"""The mask covers less than ``min_area_frac`` of the frame."""
EMPTY_MASK = "empty_mask"
"""The mask has no foreground pixel."""
REASONS = (NO_BOX, MASK_TOO_SMALL, EMPTY_MASK)


@dataclass
class Grounding:
    """The result for one phrase."""

    box: tuple[float, float, float, float] | None
    """Normalised (x0, y0, x1, y1) in [0, 1] on the frame; None = not grounded."""
    mask: np.ndarray | None
    """bool (H, W) at the frame's size; None = not grounded."""
    score: float
    """Detector confidence for this phrase (0 when not grounded)."""
    reason: str | None
    """None when grounded; else one of :data:`REASONS`."""
    message: str = ""
    """Why the phrase was not grounded, for people (the failures table's ``message``); empty when grounded."""

    @property
    def grounded(self) -> bool:
        return self.reason is None

    @classmethod
    def dropped(cls, reason: str, message: str) -> Grounding:
        """A not-grounded result: no box, no mask, score 0."""
        if reason not in REASONS:
            raise ValueError(f"unknown grounding drop reason {reason!r}; known: {', '.join(REASONS)}")
        return cls(box=None, mask=None, score=0.0, reason=reason, message=message)


class Grounder:
    """Base class of every grounder.

    Subclasses implement :meth:`load_models` (returns whatever they need; called once, on the
    first :meth:`ground`) and :meth:`ground`. ``self.models`` gives the loaded models.
    """

    def __init__(self, settings: GroundingSettings):
        self.settings = settings
        self._models: Any = None

    @property
    def models(self) -> Any:
        """The backend's models, loaded on first access."""
        if self._models is None:
            self._models = self.load_models()
        return self._models

    def load_models(self) -> Any:
        raise NotImplementedError

    def ground(self, frame: np.ndarray, phrases: list[str]) -> list[Grounding]:
        """frame: uint8 (H, W, 3) RGB, the event's first frame; phrases: the event's noun phrases.

        Returns one :class:`Grounding` per phrase, in the order of ``phrases``.
        """
        raise NotImplementedError

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_models"] = None  # models reload lazily where the grounder lands
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"


# ----------------------------------------------------------------------------- shared helpers


def check_inputs(frame: Any, phrases: Any) -> None:
    """Raise a clear error unless ``frame`` is uint8 (H, W, 3) and ``phrases`` a list of str."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frame must be a uint8 (H, W, 3) RGB array, got {got}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame must not be empty, got shape {frame.shape}")
    if isinstance(phrases, str) or not all(isinstance(p, str) for p in phrases):
        raise TypeError(f"phrases must be a list of str, got {phrases!r}")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; other values unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def box_to_pixels(box: tuple[float, float, float, float], height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel bounds (c0, r0, c1, r1), end-exclusive, of the pixels a normalised xyxy box touches:
    columns floor(x0·W) .. ceil(x1·W), rows likewise, clipped to the frame."""
    x0, y0, x1, y1 = box
    c0, c1 = max(0, math.floor(x0 * width)), min(width, math.ceil(x1 * width))
    r0, r1 = max(0, math.floor(y0 * height)), min(height, math.ceil(y1 * height))
    return c0, r0, max(c0, c1), max(r0, r1)


def box_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """bool (height, width) mask that is True on the pixels of :func:`box_to_pixels`."""
    c0, r0, c1, r1 = box_to_pixels(box, height, width)
    mask = np.zeros((height, width), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def with_mask(box: tuple[float, float, float, float], mask: np.ndarray, score: float,
              min_area_frac: float) -> Grounding:
    """A grounded result, or a dropped one when ``mask`` (bool (H, W)) is empty ("empty_mask") or
    covers less than ``min_area_frac`` of the frame ("mask_too_small")."""
    area = int(np.count_nonzero(mask))
    if area == 0:
        return Grounding.dropped(EMPTY_MASK, f"the mask of the box {_fmt_box(box)} (score {score:.3f}) is empty")
    frac = area / mask.size
    if frac < min_area_frac:
        return Grounding.dropped(
            MASK_TOO_SMALL,
            f"the mask covers {frac:.4%} of the frame ({area} px), below min_area_frac {min_area_frac:.4%}",
        )
    return Grounding(box=box, mask=mask, score=score, reason=None)


def _fmt_box(box: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in box) + ")"
