"""Class activation maps: Grad-CAM, CAM, Guided Grad-CAM and Score-CAM weights (NumPy, batch-first)."""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np


def gradcam_weights(gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM channel weights (Selvaraju et al. 2017): mean of (N, K, h, w) gradients over space -> (N, K)."""
    weights: np.ndarray = np.asarray(gradients, dtype=np.float32).mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
    return weights


def weighted_sum(activations: np.ndarray, weights: np.ndarray, relu: bool = True) -> np.ndarray:
    """``ReLU(sum_k w_k A_k)`` for activations (N, K, h, w) and weights (N, K) -> (N, h, w)."""
    activations = np.asarray(activations, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    n, k = activations.shape[:2]
    if weights.shape != (n, k):
        raise ValueError(f"weights must have shape {(n, k)}, got {weights.shape}")
    # (N, 1, K) @ (N, K, h*w): one BLAS call per image instead of a broadcast temporary.
    summed: np.ndarray = np.matmul(weights[:, None, :], activations.reshape(n, k, -1)).reshape(
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
        layered: np.ndarray = guided[:, None] * upsampled_cam[:, :, None]
        return layered
    product: np.ndarray = guided * upsampled_cam[:, None]
    return product


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
    out: np.ndarray = np.subtract(upsampled, low)
    np.divide(out, safe, out=out)
    out *= span > 0  # constant channels -> 0
    return out


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = np.exp(scores - scores.max(axis=axis, keepdims=True))
    probabilities: np.ndarray = (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)
    return probabilities


# ---------------------------------------------------------------- Grad-CAM's variants (pytorch-grad-cam 1.5)


def gradcampp_weights(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018) channel weights (N, K): ``sum_ij alpha_kij ReLU(g_kij)``,
    ``alpha = g^2 / (2 g^2 + (sum_ij A_k) g^3 + 1e-6)``, 0 where ``g = 0``."""
    g = np.asarray(gradients, dtype=np.float64)
    sums = np.asarray(activations, dtype=np.float64).sum(axis=(2, 3), keepdims=True)
    g2 = g * g
    alpha = g2 / (2 * g2 + sums * g2 * g + 1e-6)
    alpha = np.where(g != 0, alpha, 0)
    weights: np.ndarray = (np.maximum(g, 0) * alpha).sum(axis=(2, 3)).astype(np.float32)
    return weights


def xgradcam_weights(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """XGrad-CAM (Fu et al. 2020) channel weights (N, K): ``sum_ij g A / (sum_ij A + 1e-7)``."""
    a = np.asarray(activations, dtype=np.float64)
    sums = a.sum(axis=(2, 3))
    weighted = np.einsum("nkij,nkij->nk", np.asarray(gradients, dtype=np.float64), a)
    weights: np.ndarray = (weighted / (sums + 1e-7)).astype(np.float32)
    return weights


def elementwise_cam(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``ReLU(sum_k W_k * A_k)`` with weights per position (N, K, h, w) -> (N, h, w)."""
    summed = np.einsum("nkij,nkij->nij", np.asarray(weights, dtype=np.float32),
                       np.asarray(activations, dtype=np.float32))
    cams: np.ndarray = np.maximum(summed, 0)
    return cams


#: each CAM of Grad-CAM's pass, at layer resolution: (activations, gradients) -> ReLU'd (N, h, w)
GRADIENT_CAMS: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "gradcam": gradcam,
    "gradcampp": lambda a, g: weighted_sum(a, gradcampp_weights(a, g)),
    "xgradcam": lambda a, g: weighted_sum(a, xgradcam_weights(a, g)),
    "layercam": lambda a, g: elementwise_cam(a, np.maximum(g, 0)),
    "hirescam": lambda a, g: elementwise_cam(a, g),
}


def eigencam(activations: np.ndarray) -> np.ndarray:
    """Eigen-CAM (Muhammad & Yeasin 2020), (N, h, w): per image, the (h*w, K) activations centred over
    positions, projected on their first right singular vector, signed to correlate positively with
    the channel sum, ReLU'd.

    The projection is ``s_1 u_1``: the top eigenvector of the smaller of the two Gram matrices (K x K
    or hw x hw), for all images in one batched ``eigh``, in float64.
    """
    a = np.asarray(activations, dtype=np.float64)
    n, k, h, w = a.shape
    centred = a.reshape(n, k, h * w).transpose(0, 2, 1)  # (N, hw, K)
    centred = centred - centred.mean(axis=1, keepdims=True)
    if k <= h * w:
        _, vectors = np.linalg.eigh(np.matmul(centred.transpose(0, 2, 1), centred))  # (N, K, K), ascending
        projection = np.matmul(centred, vectors[:, :, -1:])[..., 0]  # (N, hw)
    else:
        values, vectors = np.linalg.eigh(np.matmul(centred, centred.transpose(0, 2, 1)))  # (N, hw, hw)
        projection = vectors[:, :, -1] * np.sqrt(np.maximum(values[:, -1:], 0))
    total = a.reshape(n, k, h * w).sum(axis=1)
    agree = np.einsum("ni,ni->n", projection - projection.mean(axis=1, keepdims=True),
                      total - total.mean(axis=1, keepdims=True))
    projection = np.where(agree[:, None] < 0, -projection, projection)
    cams: np.ndarray = np.maximum(projection, 0).reshape(n, h, w).astype(np.float32)
    return cams


def ablation_weights(clean: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy 2020) channel weights (N, K): ``(y - y_k) / y``; where the clean
    score is 0, the plain drop ``y - y_k``."""
    clean = np.asarray(clean, dtype=np.float64)[:, None]
    drop = clean - np.asarray(ablated, dtype=np.float64)
    return np.divide(drop, clean, out=drop.copy(), where=clean != 0).astype(np.float32)
