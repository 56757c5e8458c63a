"""Binary masks as COCO run-length encoding (RLE) with compressed string counts.

An RLE is ``{"size": [h, w], "counts": str}``: column-major (Fortran order) run lengths,
alternating background/foreground starting with background, written in the compact ASCII form
of the COCO API. Encoding and decoding use pycocotools; the counts are checked in Python first
(:func:`rle_problem`), because pycocotools' C decoder writes past its buffer when the runs add
up to more than ``h * w``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

# Characters of the compressed counts string: 48 + a 6-bit group (5 data bits + continue bit).
_FIRST_CHAR, _LAST_CHAR = 48, 48 + 63
_MAX_GROUPS = 7  # 35 bits: far more than any h * w


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a 2-D mask.

    Args:
        mask: (H, W) array, bool (or 0/1 integers); nonzero is foreground.

    Returns:
        ``{"size": [H, W], "counts": str}`` with plain Python ints and a str (JSON-ready).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"mask must not be empty, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict) -> np.ndarray:
    """The (H, W) bool mask of a COCO RLE made by :func:`encode_mask`.

    Raises:
        ValueError: the RLE is malformed (see :func:`rle_problem`).
    """
    problem = rle_problem(rle)
    if problem is not None:
        raise ValueError(f"invalid mask RLE: {problem}")
    with warnings.catch_warnings():
        # pycocotools' Cython array wrapper predates NumPy 2's copy keyword; harmless here.
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
        decoded = coco_mask.decode(_to_coco(rle))
    return decoded.astype(bool)


def mask_area(rle: dict) -> int:
    """Number of foreground pixels of a COCO RLE, without decoding it."""
    problem = rle_problem(rle)
    if problem is not None:
        raise ValueError(f"invalid mask RLE: {problem}")
    return int(coco_mask.area(_to_coco(rle)))


def _to_coco(rle: dict) -> dict:
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].encode("ascii")}


def counts_to_runs(counts: str) -> np.ndarray:
    """Run lengths of a compressed COCO counts string (the inverse of the COCO API's
    ``rleToString``: 5 data bits per character, least significant first, a continue bit, the
    last group sign-extended; runs from the fourth on are stored as the difference to the run
    two before).

    Returns:
        int64 array of shape (number of runs,).

    Raises:
        ValueError: a character is outside the alphabet, a number is longer than 7 characters,
            or the string ends in the middle of a number.
    """
    if not counts.isascii():
        position = next(i for i, char in enumerate(counts) if not char.isascii())
        raise ValueError(f"counts has an invalid character {counts[position]!r} at position {position}")
    groups = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - _FIRST_CHAR
    bad = np.flatnonzero((groups < 0) | (groups > _LAST_CHAR - _FIRST_CHAR))
    if bad.size:
        raise ValueError(f"counts has an invalid character {counts[bad[0]]!r} at position {bad[0]}")
    if groups.size == 0:
        return np.zeros(0, np.int64)
    last = np.flatnonzero((groups & 0x20) == 0)
    if last.size == 0 or last[-1] != groups.size - 1:
        raise ValueError("counts string ends in the middle of a number")
    first = np.concatenate([[0], last[:-1] + 1])
    lengths = last - first + 1
    if lengths.max() > _MAX_GROUPS:
        raise ValueError(f"counts has a number longer than {_MAX_GROUPS} characters")
    position = np.arange(groups.size) - np.repeat(first, lengths)
    values = np.add.reduceat((groups & 0x1F) << (5 * position), first)
    negative = (groups[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * lengths[negative])
    runs = values.copy()
    if runs.size > 3:
        runs[3::2] = values[1] + np.cumsum(values[3::2])
    if runs.size > 4:
        runs[4::2] = values[2] + np.cumsum(values[4::2])
    return runs


def rle_problem(rle: Any) -> str | None:
    """What is wrong with ``rle`` as ``{"size": [h, w], "counts": str}``, or None if it is
    well-formed: positive integer size, decodable counts, non-negative runs summing to h * w."""
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        keys = sorted(rle) if isinstance(rle, dict) else type(rle).__name__
        return f"mask_rle must be a dict with exactly the keys 'counts' and 'size', got {keys}"
    size, counts = rle["size"], rle["counts"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        return f"mask_rle size must be two integers [h, w] > 0, got {size!r}"
    if not isinstance(counts, str):
        return f"mask_rle counts must be a str (compressed COCO RLE), got {type(counts).__name__}"
    try:
        runs = counts_to_runs(counts)
    except ValueError as error:
        return f"mask_rle counts do not decode: {error}"
    if (runs < 0).any():
        return "mask_rle counts do not decode: a run length is negative"
    height, width = int(size[0]), int(size[1])
    if int(runs.sum()) != height * width:
        return f"mask_rle counts cover {int(runs.sum())} pixels, expected h * w = {height * width}"
    return None
