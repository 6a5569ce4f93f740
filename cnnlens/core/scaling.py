"""Turning raw maps into something to look at. Every function works per image (axis 0 is the batch).

The seeds' pictures: gradients shown as all / positive / negative parts, each scaled to
[0, 1], and again with outliers capped at the 99th percentile; grayscale as the sum of
``|g|`` over channels.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def _per_image(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim < 2:
        raise ValueError(f"maps must be batch-first with at least 2 axes, got shape {maps.shape}")
    return maps.reshape(maps.shape[0], -1)


def _expand(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return values.reshape((like.shape[0],) + (1,) * (like.ndim - 1))


def _scale(maps: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``clip((m - low) / (high - low), 0, 1)`` per image, 0 where ``high == low``; computed in
    float64 so spans wider than float32's range (e.g. -3e38..3e38) stay finite."""
    span = high.astype(np.float64) - low
    safe = np.where(span > 0, span, 1.0)
    scaled = np.clip((maps - low.astype(np.float64)) / safe, 0, 1)
    return np.where(span > 0, scaled, 0).astype(np.float32)


def normalize_minmax(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to [0, 1]; a constant image becomes all zeros.

    Examples:
        >>> import numpy as np
        >>> normalize_minmax(np.array([[[0.0, 1.0], [2.0, 4.0]]])).tolist()
        [[[0.0, 0.25], [0.5, 1.0]]]
        >>> normalize_minmax(np.full((1, 2, 2), 3.0)).tolist()
        [[[0.0, 0.0], [0.0, 0.0]]]
    """
    maps = np.asarray(maps, dtype=np.float32)
    flat = _per_image(maps)
    return _scale(maps, _expand(flat.min(axis=1), maps), _expand(flat.max(axis=1), maps))


def normalize_percentile(maps: np.ndarray, upper: float = 99.0) -> np.ndarray:
    """Per-image ``clip((m - min) / (p_upper - min), 0, 1)``: outliers above the percentile saturate.
    Where the percentile is the minimum (a sparse map), the maximum is used, so spikes still show."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = _per_image(maps)
    low = flat.min(axis=1)
    high = np.percentile(flat.astype(np.float64), upper, axis=1)
    high = np.where(high > low, high, flat.max(axis=1))
    return _scale(maps, _expand(low, maps), _expand(high, maps))


def split_sign(maps: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive, negative, absolute) parts, each per-image scaled by its own maximum to [0, 1]."""
    maps = np.asarray(maps, dtype=np.float32)
    parts = (np.maximum(maps, 0), np.maximum(-maps, 0), np.abs(maps))
    return tuple(_scale_by_max(p) for p in parts)  # type: ignore[return-value]


def _scale_by_max(part: np.ndarray) -> np.ndarray:
    peak = _expand(_per_image(part).max(axis=1), part)
    return np.where(peak > 0, part / np.where(peak > 0, peak, 1), 0).astype(np.float32)


def grayscale(gradients: np.ndarray) -> np.ndarray:
    """(N, C, H, W) gradients -> (N, H, W): the sum of ``|g|`` over channels.

    Examples:
        >>> import numpy as np
        >>> g = np.array([[[[1.0, -2.0]], [[-3.0, 0.5]]]])   # one image, 2 channels, 1 x 2 pixels
        >>> grayscale(g).tolist()
        [[[4.0, 2.5]]]
    """
    gradients = np.asarray(gradients, dtype=np.float32)
    if gradients.ndim != 4:
        raise ValueError(f"gradients must be (N, C, H, W), got shape {gradients.shape}")
    summed: np.ndarray = np.abs(gradients).sum(axis=1)
    return summed
