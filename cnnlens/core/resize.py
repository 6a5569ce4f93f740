"""Batched bilinear resizing, identical to ``F.interpolate(mode="bilinear", align_corners=False)``.

Each axis is resized by a small (out, in) interpolation matrix built with PyTorch's own
source-index rule (``src = max(scale * (dst + 0.5) - 0.5, 0)``, ``scale = in / out``, rounded
to float32 exactly as PyTorch's CPU kernel does), so up- and down-sampling and non-integer ratios all agree with
the torch backend and with ONNX ``Resize`` (``half_pixel``, linear). No antialiasing, as in
PyTorch's default.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np


@lru_cache(maxsize=64)
def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix whose rows hold the two bilinear weights."""
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    # PyTorch computes scale in float32 and src with one fused multiply-add, rounded once.
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    dst = np.arange(out_size, dtype=np.float64)
    src = np.maximum((scale * (dst + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = np.float32(1) - w1
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), w0)
    np.add.at(matrix, (rows, i1), w1)
    matrix.setflags(write=False)
    return matrix


def resize_bilinear(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of ``maps`` (..., h, w) to ``size`` = (H, W), float32."""
    maps = np.asarray(maps, dtype=np.float32)
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = maps.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return maps.copy()
    rows = interpolation_matrix(in_h, out_h)
    cols = interpolation_matrix(in_w, out_w)
    resized: np.ndarray = np.matmul(np.matmul(rows, maps), cols.T)
    return resized


@lru_cache(maxsize=64)
def area_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix averaging the input over each output cell's span.

    Output cell ``j`` covers ``[j * in / out, (j + 1) * in / out)`` of the input axis; each input
    pixel is weighted by the length of its overlap with that span (exact area averaging, as
    Pillow's BOX filter), so rows sum to 1 and a downsized map keeps its mass distribution.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    edges = np.arange(out_size + 1, dtype=np.float64) * (in_size / out_size)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(in_size, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0, None)
    matrix: np.ndarray = overlap / overlap.sum(axis=1, keepdims=True)
    matrix.setflags(write=False)
    return matrix


def resize_area(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Shrink the last two axes of ``maps`` (..., h, w) to ``size`` by area averaging (no aliasing:
    every input pixel counts), float32. An axis that grows is resized bilinearly instead, as
    :func:`resize_bilinear`."""
    maps = np.asarray(maps, dtype=np.float32)
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = maps.shape[-2:]
    rows = area_matrix(in_h, out_h) if out_h <= in_h else interpolation_matrix(in_h, out_h)
    cols = area_matrix(in_w, out_w) if out_w <= in_w else interpolation_matrix(in_w, out_w)
    # float32 products, float64 weights rounded once; einsum, not matmul: BLAS threads spun up
    # between a backend's passes slow the next pass
    rows, cols = rows.astype(np.float32), cols.astype(np.float32)
    resized: np.ndarray = np.einsum("ij,...jk,lk->...il", rows, maps, cols, optimize=True).astype(np.float32)
    return resized
