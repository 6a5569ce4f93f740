"""Agreement and quality measures on maps (NumPy only)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .errors import InvalidInputError


def _floats(values: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be an array of numbers, got {type(values).__name__}") from None


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties given their average rank (as scipy.stats.rankdata)."""
    values = np.asarray(values).reshape(-1)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of equal size.

    Two constant maps count as perfectly correlated (1.0) when equal and uncorrelated (0.0)
    otherwise; one constant map against a varying one gives 0.0.
    """
    a = _floats(a, "the first map").reshape(-1)
    b = _floats(b, "the second map").reshape(-1)
    if a.shape != b.shape:
        raise InvalidInputError(f"maps must have the same size, got {a.size} and {b.size}")
    if a.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InvalidInputError("maps must be non-empty and hold finite numbers")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b and np.array_equal(a, b) else 0.0
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def agreement(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    """How far map ``b`` is from reference map ``a``: max absolute difference, relative error
    (max |a - b| / max |a|; 0 when both are zero) and Spearman rank correlation."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(a).max()) if a.size else 0.0
    relative = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return {"max_abs_diff": diff, "relative_error": relative, "rank_correlation": spearman(a, b)}


def pointing_hits(maps: np.ndarray, boxes: np.ndarray, tolerance: float = 15 / 224) -> np.ndarray:
    """Pointing game (Zhang et al. 2018), one bool per image: does the map's arg-max lie inside
    the object's box grown by ``tolerance`` (a fraction of the image side; the paper's 15 px
    at 224 px)?

    ``maps`` (N, H, W) (a channel axis (N, C, H, W) is summed as |g|); ``boxes`` (N, 4) as
    (top, left, bottom, right) in pixels, bottom/right exclusive. Ties: the first maximum in
    row-major order.
    """
    maps = _floats(maps, "maps")
    if maps.ndim == 4:
        maps = np.abs(maps).sum(axis=1)
    if maps.ndim != 3 or 0 in maps.shape:
        raise InvalidInputError(f"maps must be (N, H, W) or (N, C, H, W), got shape {maps.shape}")
    boxes = _floats(boxes, "boxes")
    if boxes.size % 4 or boxes.ndim > 2 or (boxes.ndim == 2 and boxes.shape[1] != 4):
        raise InvalidInputError(f"boxes must be (N, 4) as (top, left, bottom, right), got shape {boxes.shape}")
    boxes = boxes.reshape(-1, 4)
    if len(boxes) != len(maps):
        raise InvalidInputError(f"{len(boxes)} boxes for {len(maps)} maps: give one box per map")
    if not np.isfinite(boxes).all():
        raise InvalidInputError("boxes contain NaN or infinite values")
    n, h, w = maps.shape
    peak = maps.reshape(n, -1).argmax(axis=1)
    rows, cols = np.divmod(peak, w)
    grow_r, grow_c = tolerance * h, tolerance * w
    top, left, bottom, right = boxes.T
    hits: np.ndarray = ((rows >= top - grow_r) & (rows < bottom + grow_r) &
                        (cols >= left - grow_c) & (cols < right + grow_c))
    return hits


def pointing_game(maps: np.ndarray, boxes: np.ndarray, tolerance: float = 15 / 224) -> float:
    """The fraction of images whose map points inside the (grown) box: see :func:`pointing_hits`."""
    return float(pointing_hits(maps, boxes, tolerance).mean())
