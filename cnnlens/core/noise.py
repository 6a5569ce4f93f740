"""SmoothGrad noise (Smilkov et al. 2017) and running statistics of the noisy gradients."""

from __future__ import annotations

from typing import List, Optional

import numpy as np


def noise_sigma(images: np.ndarray, fraction: float) -> np.ndarray:
    """Per-image standard deviation: ``fraction * (max(x_i) - min(x_i))``, shape (N,)."""
    flat = np.asarray(images).reshape(len(images), -1)
    return (fraction * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float64)


def image_generators(seed: Optional[int], count: int) -> List[np.random.Generator]:
    """One independent generator per image, so each image's noise is the same whatever the batching."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


class RunningStats:
    """Per-image running mean, mean of squares and variance (Chan et al.'s parallel update)."""

    def __init__(self, shape: tuple):
        self.count = np.zeros(shape[0], dtype=np.int64)
        self.mean = np.zeros(shape, dtype=np.float64)
        self.mean_sq = np.zeros(shape, dtype=np.float64)
        self.m2 = np.zeros(shape, dtype=np.float64)

    def update(self, index: int, values: np.ndarray) -> None:
        """Add ``values`` (k, ...) as k more samples of image ``index``."""
        values = np.asarray(values, dtype=np.float64)
        k = len(values)
        if k == 0:
            return
        n = int(self.count[index])
        batch_mean = values.mean(axis=0)
        batch_m2 = ((values - batch_mean) ** 2).sum(axis=0)
        total = n + k
        delta = batch_mean - self.mean[index]
        self.mean[index] += delta * (k / total)
        self.m2[index] += batch_m2 + delta ** 2 * (n * k / total)
        self.mean_sq[index] += ((values ** 2).mean(axis=0) - self.mean_sq[index]) * (k / total)
        self.count[index] = total

    def variance(self) -> np.ndarray:
        """Population variance per element (Captum's VarGrad)."""
        counts = self.count.reshape((-1,) + (1,) * (self.mean.ndim - 1))
        return self.m2 / np.maximum(counts, 1)
