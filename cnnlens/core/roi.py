"""The region of interest of a CAM (seed 002): threshold the normalised map, box what survives."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

Box = Tuple[int, int, int, int]


def threshold_box(cam: np.ndarray, threshold: float = 0.5) -> Optional[Box]:
    """The bounding box (top, left, bottom, right; bottom/right exclusive) of the pixels whose
    min-max normalised value is at least ``threshold``; None for a constant map."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"cam must be (H, W), got shape {cam.shape}")
    low, high = cam.min(), cam.max()
    if high <= low:
        return None
    keep = (cam - low) / (high - low) >= threshold
    rows = np.flatnonzero(keep.any(axis=1))
    cols = np.flatnonzero(keep.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """``image`` (H, W, ...) cut to ``box``."""
    top, left, bottom, right = box
    return np.asarray(image)[top:bottom, left:right]
