"""Numbers a reviewer sorts explanation maps by, and the small fixed-size map an audit stores.

Every function takes a batch of maps as the methods return them: (N, H, W), or (N, C, H, W)
for the input-gradient methods (summed as ``|g|`` over channels, as everywhere in cnnlens:
:func:`cnnlens.core.faithfulness.importance`). The *heat* of a map is that per-pixel importance
after a ReLU: the evidence for the explained class. Peak, border share and energy in the box
are read off the full-size heat; the entropy off the small map, so that it means the same at
any input size. An all-zero heat (e.g. a Grad-CAM that the ReLU cleared) has no peak and no
distribution: its statistics are NaN (peaks -1).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from .faithfulness import box_share, importance
from .resize import resize_area

#: The image border, as a fraction of each side: ``border_share`` is the heat in the outer
#: band this wide (at least one pixel). A uniform map puts 1 - 0.8 * 0.8 = 36 % there.
BORDER_FRACTION = 0.1


def heat(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) float32: ``max(importance, 0)`` (|g| summed over channels for (N, C, H, W))."""
    heated: np.ndarray = np.maximum(importance(maps, np.float32), np.float32(0))
    return heated


def _scaled(small: np.ndarray) -> np.ndarray:
    peak = small.reshape(len(small), -1).max(axis=1)[:, None, None]
    return np.where(peak > 0, small / np.where(peak > 0, peak, 1), 0).astype(np.float32)


def small_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) float32 in [0, 1]: the heat area-averaged to ``size`` x ``size`` and divided
    by its maximum, per image (all-zero heat stays zero)."""
    return _scaled(resize_area(heat(maps), (size, size)))


def _border_mask(h: int, w: int) -> np.ndarray:
    band_h, band_w = max(1, int(np.ceil(BORDER_FRACTION * h))), max(1, int(np.ceil(BORDER_FRACTION * w)))
    mask = np.ones((h, w), dtype=bool)
    mask[band_h:h - band_h, band_w:w - band_w] = False
    return mask


def entropy(values: np.ndarray) -> np.ndarray:
    """(N,) Shannon entropy of each non-negative map as a distribution over its pixels, divided by
    ``log(pixels)``: 0 when one pixel holds it all, 1 when it is spread evenly; NaN when all zero."""
    flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    mass = flat.sum(axis=1)
    p = flat / np.where(mass > 0, mass, 1.0)[:, None]
    terms = p * np.log(np.where(p > 0, p, 1.0))
    scale = np.log(flat.shape[1]) if flat.shape[1] > 1 else 1.0
    return np.where(mass > 0, -terms.sum(axis=1) / scale, np.nan)


def summarise(maps: np.ndarray, size: int, boxes: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """``(small_maps(maps, size), statistics)`` from one pass over the heat. The statistics, each (N,):

    - ``peak_y``, ``peak_x``: the heat's arg-max in input pixels (the first in row-major order);
    - ``border_share``: the share of the heat in the border band (:data:`BORDER_FRACTION`);
    - ``entropy``: :func:`entropy` of the small map;
    - ``energy_in_box`` (when ``boxes`` (N, 4) is given, (top, left, bottom, right) in input
      pixels, bottom/right exclusive; NaN rows for images without a box): the share of the heat
      inside the box (the "energy-based pointing game" of Score-CAM; ``faithfulness.box_share``);
      an empty box scores 0, an all-zero map NaN (as its other statistics).
    """
    values = heat(maps)
    n, h, w = values.shape
    flat = values.reshape(n, -1)
    mass = flat.sum(axis=1, dtype=np.float64)
    live = mass > 0
    safe = np.where(live, mass, 1.0)
    peak = flat.argmax(axis=1)
    small = resize_area(values, (size, size))
    stats = {
        "peak_y": np.where(live, peak // w, -1).astype(np.int32),
        "peak_x": np.where(live, peak % w, -1).astype(np.int32),
        "border_share": np.where(live, flat[:, _border_mask(h, w).ravel()].sum(axis=1, dtype=np.float64) / safe, np.nan),
        "entropy": entropy(small),
    }
    if boxes is not None:
        stats["energy_in_box"] = box_share(values, boxes, empty=np.nan)
    return _scaled(small), stats


def statistics(maps: np.ndarray, boxes: Optional[np.ndarray] = None, size: int = 56) -> Dict[str, np.ndarray]:
    """The statistics of :func:`summarise` alone."""
    return summarise(maps, size, boxes)[1]
