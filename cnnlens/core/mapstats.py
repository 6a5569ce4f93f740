"""Numbers a reviewer sorts explanation maps by, and the small fixed-size map an audit stores.

Every function takes a batch of maps as the methods return them: (N, H, W), or (N, C, H, W)
for the input-gradient methods (summed as ``|g|`` over channels, as everywhere in cnnlens).
The *heat* of a map is that per-pixel importance after a ReLU: the evidence for the explained
class. All statistics are computed on the full-size heat; an all-zero heat (e.g. a Grad-CAM
that the ReLU cleared) has no peak and no distribution, and its statistics are NaN.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .faithfulness import importance
from .resize import resize_area

#: The image border, as a fraction of each side: ``border_share`` is the heat in the outer
#: band this wide (at least one pixel). A uniform map puts 1 - 0.8 * 0.8 = 36 % there.
BORDER_FRACTION = 0.1


def heat(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) float64: ``max(importance, 0)`` (|g| summed over channels for (N, C, H, W))."""
    return np.maximum(importance(maps), 0.0)


def small_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) float32 in [0, 1]: the heat area-averaged to ``size`` x ``size`` and divided
    by its maximum, per image (all-zero heat stays zero)."""
    small = resize_area(heat(maps), (size, size)).astype(np.float64)
    peak = small.reshape(len(small), -1).max(axis=1)[:, None, None]
    return np.where(peak > 0, small / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def _border_mask(h: int, w: int) -> np.ndarray:
    band_h, band_w = max(1, int(np.ceil(BORDER_FRACTION * h))), max(1, int(np.ceil(BORDER_FRACTION * w)))
    mask = np.ones((h, w), dtype=bool)
    mask[band_h:h - band_h, band_w:w - band_w] = False
    return mask


def statistics(maps: np.ndarray, boxes: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Per-map statistics of the full-size heat, each an (N,) array:

    - ``peak_y``, ``peak_x``: the heat's arg-max in input pixels (the first in row-major order);
      -1 when the heat is all zero;
    - ``border_share``: the share of the heat in the border band (:data:`BORDER_FRACTION`);
    - ``entropy``: Shannon entropy of the heat as a distribution over pixels, divided by
      ``log(H * W)``: 0 when one pixel holds it all, 1 when it is spread evenly;
    - ``energy_in_box`` (when ``boxes`` (N, 4) is given, (top, left, bottom, right) in input
      pixels, bottom/right exclusive; NaN rows for images without a box): the share of the heat
      inside the box (the "energy-based pointing game" of Score-CAM). An empty box scores 0;
      an all-zero heat is NaN.
    """
    values = heat(maps)
    n, h, w = values.shape
    flat = values.reshape(n, -1)
    mass = flat.sum(axis=1)
    live = mass > 0
    safe = np.where(live, mass, 1.0)
    peak = flat.argmax(axis=1)
    out = {
        "peak_y": np.where(live, peak // w, -1).astype(np.int32),
        "peak_x": np.where(live, peak % w, -1).astype(np.int32),
        "border_share": np.where(live, flat[:, _border_mask(h, w).ravel()].sum(axis=1) / safe, np.nan),
    }
    p = flat / safe[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    out["entropy"] = np.where(live, -terms.sum(axis=1) / np.log(h * w) if h * w > 1 else 0.0, np.nan)
    if boxes is not None:
        out["energy_in_box"] = energy_in_box(values, boxes, mass)
    return out


def energy_in_box(values: np.ndarray, boxes: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """The share of each heat map ``values`` (N, H, W) inside its box (NaN box rows -> NaN)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    result = np.full(len(values), np.nan)
    for i, box in enumerate(boxes):
        if np.isnan(box).any() or mass[i] <= 0:
            continue
        top, left, bottom, right = (int(v) for v in box)
        inside = values[i, max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)].sum()
        result[i] = inside / mass[i]
    return result

