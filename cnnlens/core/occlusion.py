"""Occlusion sensitivity (Zeiler & Fergus 2014): the window grid, occluded batches, and accumulation.

Windows start at 0 and step by ``stride``; when the last one does not reach the edge, one more
is placed flush with it, so every pixel is covered and nothing wraps around.
"""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np
from numpy.typing import DTypeLike

from .errors import InvalidInputError

Pair = Union[int, Tuple[int, int]]


def as_pair(value: Pair, name: str) -> Tuple[int, int]:
    """An int or (h, w) pair of positive ints, validated."""
    pair: Tuple[Any, ...] = (value, value) if np.isscalar(value) else tuple(value)  # type: ignore[arg-type]
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise InvalidInputError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) <= 0:
        raise InvalidInputError(f"{name} must be positive, got {value!r}")
    return int(pair[0]), int(pair[1])


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Start offsets along one axis: 0, stride, 2*stride, ... and one flush with the edge if needed.

    Examples:
        >>> window_starts(10, 4, 2).tolist()     # (10 - 4) is a multiple of 2: Captum's grid
        [0, 2, 4, 6]
        >>> window_starts(10, 4, 3).tolist()     # the last window, 6..10, already reaches the edge
        [0, 3, 6]
        >>> window_starts(11, 4, 3).tolist()     # the last window placed flush with the edge
        [0, 3, 6, 7]
    """
    if window > size:
        raise InvalidInputError(
            f"occlusion window {window} is larger than the image side {size}: choose a window <= {size}"
        )
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return np.asarray(starts, dtype=np.int64)


class OcclusionGrid:
    """All window positions over an (H, W) image, row-major."""

    def __init__(self, size: Tuple[int, int], window: Pair, stride: Pair):
        self.size = (int(size[0]), int(size[1]))
        self.window = as_pair(window, "window")
        self.stride = as_pair(stride, "stride")
        if self.stride[0] > self.window[0] or self.stride[1] > self.window[1]:
            raise InvalidInputError(
                f"occlusion stride {self.stride} is larger than the window {self.window}, which would leave "
                f"pixels no window covers: use a stride <= the window"
            )
        self.rows = window_starts(self.size[0], self.window[0], self.stride[0])
        self.cols = window_starts(self.size[1], self.window[1], self.stride[1])

    @property
    def shape(self) -> Tuple[int, int]:
        """(number of row positions, number of column positions)."""
        return len(self.rows), len(self.cols)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def corners(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(top, left) pixel of each window number in ``positions``."""
        r, c = np.divmod(np.asarray(positions, dtype=np.int64), len(self.cols))
        return self.rows[r], self.cols[c]

    def box(self, position: int) -> Tuple[slice, slice]:
        """The (row, column) slices of window number ``position``."""
        top, left = (int(v[0]) for v in self.corners(np.array([position])))
        return slice(top, top + self.window[0]), slice(left, left + self.window[1])

    def occlude(self, images: np.ndarray, image_index: np.ndarray, positions: np.ndarray,
                baseline: np.ndarray) -> np.ndarray:
        """A batch (B, C, H, W): ``images[image_index[b]]`` with window ``positions[b]`` set to baseline.

        ``baseline`` broadcasts to (C, H, W). Built in one vectorised pass over the batch.
        """
        r, c = np.divmod(np.asarray(positions, dtype=np.int64), len(self.cols))
        inside = (self._cover(self.rows, self.window[0], self.size[0], bool)[r][:, :, None]
                  & self._cover(self.cols, self.window[1], self.size[1], bool)[c][:, None, :])  # (B, H, W)
        full = np.broadcast_to(np.asarray(baseline, dtype=images.dtype), images.shape[1:])
        return np.where(inside[:, None], full, images[np.asarray(image_index)])

    @staticmethod
    def _cover(starts: np.ndarray, window: int, size: int, dtype: DTypeLike = np.float64) -> np.ndarray:
        """(positions, size): 1 where the window starting at each start covers the pixel."""
        pixels = np.arange(size)
        return ((pixels >= starts[:, None]) & (pixels < starts[:, None] + window)).astype(dtype)

    def accumulate(self, drops: np.ndarray) -> np.ndarray:
        """Mean score drop per pixel over the windows covering it: drops (N, P) -> maps (N, H, W)."""
        drops = np.asarray(drops, dtype=np.float64).reshape((-1,) + self.shape)
        row_cover = self._cover(self.rows, self.window[0], self.size[0])
        col_cover = self._cover(self.cols, self.window[1], self.size[1])
        sums: np.ndarray = np.matmul(np.matmul(row_cover.T, drops), col_cover)
        counts = np.outer(row_cover.sum(axis=0), col_cover.sum(axis=0))
        return (sums / counts).astype(np.float32)


def as_baseline(baseline: Union[float, np.ndarray], shape: Tuple[int, int, int]) -> np.ndarray:
    """A scalar, a per-channel (C,) vector or a (C, H, W) array, as an array that broadcasts to ``shape``."""
    try:
        value = np.asarray(baseline, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"baseline must be a number, one value per channel, or an array of shape {shape}; got {baseline!r}: "
            f"give a number (e.g. 0.0)"
        ) from None
    if value.ndim == 1 and value.shape[0] == shape[0]:
        value = value.reshape(-1, 1, 1)
    try:
        np.broadcast_to(value, shape)
    except ValueError:
        raise InvalidInputError(
            f"baseline of shape {value.shape} does not fit images of shape {shape}: give a number, "
            f"one value per channel ({shape[0]},), or an array of shape {shape}"
        ) from None
    return value
