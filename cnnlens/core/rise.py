"""RISE masks (Petsiuk et al. 2018): random coarse binary grids, upsampled bilinearly and shifted.

Every mask comes from the seed alone (not from the images or the batching), so a map does not
depend on the batch size or on the other images; the masks are drawn up front as small grids and
shifts, and upsampled a batch at a time, so memory stays at one batch of masks.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .resize import resize_bilinear


class RiseMasks:
    """``count`` masks for (H, W) images: a ``cell`` x ``cell`` grid of Bernoulli(``p``) values
    upsampled to ``(cell + 1) * ceil(H / cell)`` (and likewise W) and cropped at a random shift of
    up to one grid cell."""

    def __init__(self, size: Tuple[int, int], count: int, cell: int, p: float, seed: Optional[int]):
        self.size = (int(size[0]), int(size[1]))
        self.count = int(count)
        self.p = float(p)
        rng = np.random.default_rng(seed)
        self.grids = (rng.random((count, cell, cell)) < p).astype(np.float32)
        self.cell_size = (int(np.ceil(size[0] / cell)), int(np.ceil(size[1] / cell)))
        self.up = ((cell + 1) * self.cell_size[0], (cell + 1) * self.cell_size[1])
        self.shifts = np.stack([rng.integers(0, self.cell_size[0], count),
                                rng.integers(0, self.cell_size[1], count)], axis=1)

    def __len__(self) -> int:
        return self.count

    def batch(self, index: np.ndarray) -> np.ndarray:
        """Masks ``index`` as (B, H, W) float32 in [0, 1]."""
        index = np.asarray(index)
        up = resize_bilinear(self.grids[index], self.up)
        h, w = self.size
        out = np.empty((len(index), h, w), dtype=np.float32)
        for b, (dy, dx) in enumerate(self.shifts[index]):
            out[b] = up[b, dy:dy + h, dx:dx + w]
        return out
