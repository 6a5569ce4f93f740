"""SmoothGrad noise (Smilkov et al. 2017) and running statistics of the noisy gradients."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np


def noise_sigma(images: np.ndarray, fraction: float) -> np.ndarray:
    """Per-image standard deviation: ``fraction * (max(x_i) - min(x_i))``, shape (N,)."""
    flat = np.asarray(images).reshape(len(images), -1)
    sigma: np.ndarray = (fraction * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float64)
    return sigma


def image_generators(seed: Optional[int], count: int) -> List[np.random.Generator]:
    """One independent generator per image, so each image's noise is the same whatever the batching."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


class RunningStats:
    """Per-image running mean, mean of squares and variance (Chan et al.'s parallel update).

    ``track`` names the statistics to keep ("mean", "mean_sq", "variance"; all by default), so
    SmoothGrad's plain mean costs one float64 accumulator and no temporaries of the batch.
    """

    STATISTICS = ("mean", "mean_sq", "variance")

    def __init__(self, shape: Tuple[int, ...], track: Sequence[str] = STATISTICS):
        unknown = set(track) - set(self.STATISTICS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}: choose from {self.STATISTICS}")
        self.track = frozenset(track)
        self.count = np.zeros(shape[0], dtype=np.int64)
        self.mean = np.zeros(shape, dtype=np.float64) if self.track & {"mean", "variance"} else None
        self.mean_sq = np.zeros(shape, dtype=np.float64) if "mean_sq" in self.track else None
        self.m2 = np.zeros(shape, dtype=np.float64) if "variance" in self.track else None

    def update(self, index: int, values: np.ndarray) -> None:
        """Add ``values`` (k, ...) as k more samples of image ``index``."""
        values = np.asarray(values)
        k = len(values)
        if k == 0:
            return
        n = int(self.count[index])
        total = n + k
        if self.mean_sq is not None:
            squares = np.einsum("i...,i...->...", values, values, dtype=np.float64) / k
            self.mean_sq[index] += (squares - self.mean_sq[index]) * (k / total)
        if self.mean is not None:
            batch_mean = values.sum(axis=0, dtype=np.float64) / k
            delta = batch_mean - self.mean[index]
            if self.m2 is not None:
                centred = values - batch_mean
                self.m2[index] += np.einsum("i...,i...->...", centred, centred) + delta ** 2 * (n * k / total)
            self.mean[index] += delta * (k / total)
        self.count[index] = total

    def variance(self) -> np.ndarray:
        """Population variance per element (Captum's VarGrad)."""
        assert self.mean is not None and self.m2 is not None  # kept when "variance" is tracked
        counts = self.count.reshape((-1,) + (1,) * (self.mean.ndim - 1))
        return self.m2 / np.maximum(counts, 1)
