"""Class activation maps: Grad-CAM, CAM, Guided Grad-CAM and Score-CAM weights (NumPy, batch-first)."""

from __future__ import annotations

import numpy as np


def gradcam_weights(gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM channel weights (Selvaraju et al. 2017): mean of (N, K, h, w) gradients over space -> (N, K)."""
    return np.asarray(gradients, dtype=np.float32).mean(axis=(2, 3), dtype=np.float64).astype(np.float32)


def weighted_sum(activations: np.ndarray, weights: np.ndarray, relu: bool = True) -> np.ndarray:
    """``ReLU(sum_k w_k A_k)`` for activations (N, K, h, w) and weights (N, K) -> (N, h, w)."""
    activations = np.asarray(activations, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    n, k = activations.shape[:2]
    if weights.shape != (n, k):
        raise ValueError(f"weights must have shape {(n, k)}, got {weights.shape}")
    # (N, 1, K) @ (N, K, h*w): one BLAS call per image instead of a broadcast temporary.
    summed = np.matmul(weights[:, None, :], activations.reshape(n, k, -1)).reshape(
        (n,) + activations.shape[2:]
    )
    return np.maximum(summed, 0) if relu else summed


def gradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM at layer resolution: ``ReLU(sum_k mean(dy/dA_k) A_k)`` -> (N, h, w)."""
    return weighted_sum(activations, gradcam_weights(gradients))


def cam(activations: np.ndarray, head_weights: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """CAM (Zhou et al. 2016) for a GAP -> linear head: ``ReLU(sum_k W[c, k] A_k)`` -> (N, h, w)."""
    head_weights = np.asarray(head_weights, dtype=np.float32)
    return weighted_sum(activations, head_weights[np.asarray(classes)])


def guided_gradcam(guided: np.ndarray, upsampled_cam: np.ndarray) -> np.ndarray:
    """Guided Grad-CAM: guided-backprop gradients (N, C, H, W) times the CAM (N, H, W) over channels.

    A CAM with a layer axis (N, L, H, W) gives (N, L, C, H, W).
    """
    guided = np.asarray(guided, dtype=np.float32)
    upsampled_cam = np.asarray(upsampled_cam, dtype=np.float32)
    if upsampled_cam.ndim == 4:
        return guided[:, None] * upsampled_cam[:, :, None]
    return guided * upsampled_cam[:, None]


def normalize_masks(upsampled: np.ndarray) -> np.ndarray:
    """Score-CAM masks: each channel of (..., H, W) min-max scaled to [0, 1]; constant channels become 0."""
    upsampled = np.asarray(upsampled, dtype=np.float32)
    low = upsampled.min(axis=(-2, -1), keepdims=True)
    high = upsampled.max(axis=(-2, -1), keepdims=True)
    span = high.astype(np.float64) - low  # per channel: cheap in float64, and never overflows
    if (span > np.finfo(np.float32).max).any():  # a span beyond float32's range: scale in float64
        wide = (upsampled - low.astype(np.float64)) / np.where(span > 0, span, 1.0)
        return np.where(span > 0, wide, 0).astype(np.float32)
    span = span.astype(np.float32)
    safe = np.where(span > 0, span, np.float32(1))
    out = np.subtract(upsampled, low)
    np.divide(out, safe, out=out)
    out *= span > 0  # constant channels -> 0
    return out


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)
