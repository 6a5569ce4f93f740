"""The methods' heads as ONNX nodes: each function here is the graph twin of one NumPy function
of ``cnnlens.core`` (named the same, computing the same thing in float32) and appends its nodes
to an :class:`Emitter`. A test holds every head against its twin.

Tensors are batch first and NCHW; maps are float32.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from ....core.resize import interpolation_matrix
from ..autodiff import Emitter

F32 = np.dtype(np.float32)


def _positive(e: Emitter, x: str, dtype: np.dtype = F32) -> str:
    """1 where ``x > 0``, else 0, of ``dtype``."""
    return e.op("Cast", [e.op("Greater", [x, e.scalar(0.0, dtype)])], to=1 if dtype == F32 else 11)


def _scaled(e: Emitter, x: str, axes: Sequence[int]) -> Tuple[str, str]:
    """``(x - min) / (max - min)`` over ``axes`` (dividing by 1 where the span is 0), and ``varies``:
    1 where the span is positive, else 0 (the min-max scalings of Score-CAM's masks and of the maps)."""
    low = e.reduce("ReduceMin", x, list(axes), keepdims=True)
    span = e.op("Sub", [e.reduce("ReduceMax", x, list(axes), keepdims=True), low])
    varies = _positive(e, span)
    safe = e.op("Add", [e.mul(span, varies), e.op("Sub", [e.scalar(1.0, F32), varies])])  # span, or 1
    return e.op("Div", [e.op("Sub", [x, low]), safe]), varies


# ---------------------------------------------------------------- core/cam.py


def gradcam_weights(e: Emitter, gradients: str) -> str:
    """Grad-CAM channel weights: the mean of (N, K, h, w) gradients over space -> (N, K)."""
    return e.reduce("ReduceMean", gradients, [2, 3], keepdims=False)


def weighted_sum(e: Emitter, activations: str, weights: str, relu: bool = True) -> str:
    """``ReLU(sum_k w_k A_k)``: activations (N, K, h, w), weights (N, K) -> (N, h, w)."""
    summed = e.reduce("ReduceSum", e.mul(activations, e.unsqueeze(weights, [2, 3])), [1], keepdims=False)
    return e.op("Relu", [summed]) if relu else summed


def gradcam(e: Emitter, activations: str, gradients: str) -> str:
    return weighted_sum(e, activations, gradcam_weights(e, gradients))


def _double(e: Emitter, *tensors: str):
    """The tensors as float64: the core computes these channel weights in float64, and a float32 sum of
    signed activations (a layer before its ReLU) can cancel to nothing."""
    return [e.op("Cast", [t], to=11) for t in tensors]


def _single(e: Emitter, tensor: str) -> str:
    return e.op("Cast", [tensor], to=1)


def gradcampp_weights(e: Emitter, activations: str, gradients: str) -> str:
    """Grad-CAM++ channel weights (N, K): ``sum_ij alpha ReLU(g)``, ``alpha = g^2 / (2 g^2 + (sum_ij A) g^3 + 1e-6)``,
    0 where ``g = 0``; in float64."""
    F64 = np.dtype(np.float64)
    activations, gradients = _double(e, activations, gradients)
    sums = e.reduce("ReduceSum", activations, [2, 3], keepdims=True)
    g2 = e.mul(gradients, gradients)
    denominator = e.op("Add", [e.op("Add", [e.scale(g2, 2.0, F64), e.mul(sums, e.mul(g2, gradients))]),
                               e.scalar(1e-6, F64)])
    alpha = e.op("Div", [g2, denominator])
    nonzero = _positive(e, e.op("Abs", [gradients]), F64)  # g != 0 (Equal takes floats only from opset 11)
    return _single(e, e.reduce("ReduceSum", e.mul(e.op("Relu", [gradients]), e.mul(alpha, nonzero)), [2, 3],
                                keepdims=False))


def xgradcam_weights(e: Emitter, activations: str, gradients: str) -> str:
    """XGrad-CAM channel weights (N, K): ``sum_ij g A / (sum_ij A + 1e-7)``, in float64."""
    activations, gradients = _double(e, activations, gradients)
    top = e.reduce("ReduceSum", e.mul(gradients, activations), [2, 3], keepdims=False)
    sums = e.reduce("ReduceSum", activations, [2, 3], keepdims=False)
    return _single(e, e.op("Div", [top, e.op("Add", [sums, e.scalar(1e-7, np.dtype(np.float64))])]))


def elementwise_cam(e: Emitter, activations: str, weights: str) -> str:
    """``ReLU(sum_k W_k * A_k)`` with weights per position (N, K, h, w) -> (N, h, w)."""
    return e.op("Relu", [e.reduce("ReduceSum", e.mul(weights, activations), [1], keepdims=False)])


#: each CAM of Grad-CAM's pass at layer resolution (core.cam.GRADIENT_CAMS): (activations, gradients) -> (N, h, w)
GRADIENT_CAMS: Dict[str, Callable[[Emitter, str, str], str]] = {
    "gradcam": gradcam,
    "gradcampp": lambda e, a, g: weighted_sum(e, a, gradcampp_weights(e, a, g)),
    "xgradcam": lambda e, a, g: weighted_sum(e, a, xgradcam_weights(e, a, g)),
    "layercam": lambda e, a, g: elementwise_cam(e, a, e.op("Relu", [g])),
    "hirescam": lambda e, a, g: elementwise_cam(e, a, g),
}


def cam(e: Emitter, activations: str, head_weights: str, classes: str) -> str:
    """CAM: ``ReLU(sum_k W[c, k] A_k)``, head weights (classes, K), int64 classes (N,) -> (N, h, w)."""
    return weighted_sum(e, activations, e.op("Gather", [head_weights, classes], axis=0))


def guided_gradcam(e: Emitter, guided: str, upsampled_cam: str, layered: bool = False) -> str:
    """Guided gradients (N, C, H, W) times the CAM (N, H, W) over channels; a CAM with a layer
    axis (N, L, H, W) (``layered``) gives (N, L, C, H, W)."""
    if layered:
        return e.mul(e.unsqueeze(guided, [1]), e.unsqueeze(upsampled_cam, [2]))
    return e.mul(guided, e.unsqueeze(upsampled_cam, [1]))


def normalize_masks(e: Emitter, upsampled: str, rank: int) -> str:
    """Score-CAM masks: each (H, W) map of ``upsampled`` (rank ``rank``) min-max scaled to [0, 1],
    constant maps 0."""
    scaled, varies = _scaled(e, upsampled, [rank - 2, rank - 1])
    return e.mul(scaled, varies)


def softmax(e: Emitter, scores: str, axis: int) -> str:
    """Numerically stable softmax along ``axis``."""
    shifted = e.op("Exp", [e.op("Sub", [scores, e.reduce("ReduceMax", scores, [axis], keepdims=True)])])
    return e.op("Div", [shifted, e.reduce("ReduceSum", shifted, [axis], keepdims=True)])


# ---------------------------------------------------------------- core/resize.py


def resize_bilinear(e: Emitter, maps: str, in_size: Tuple[int, int], out_size: Tuple[int, int]) -> str:
    """The last two axes of ``maps`` (..., h, w) resized to (H, W) by the same interpolation
    matrices as ``core.resize.resize_bilinear``: ``rows @ maps @ cols.T``."""
    if tuple(in_size) == tuple(out_size):
        return maps
    rows = e.const(interpolation_matrix(int(in_size[0]), int(out_size[0])), "resize_rows")
    cols = e.const(np.ascontiguousarray(interpolation_matrix(int(in_size[1]), int(out_size[1])).T), "resize_cols")
    return e.op("MatMul", [e.op("MatMul", [rows, maps]), cols])


# ---------------------------------------------------------------- core/scaling.py


def normalize_minmax(e: Emitter, maps: str, axes: Sequence[int]) -> str:
    """Min-max scaling to [0, 1] over ``axes`` (per image, or per image and layer); a constant
    map becomes all zeros."""
    scaled, varies = _scaled(e, maps, axes)
    return e.mul(e.op("Min", [e.op("Max", [scaled, e.scalar(0.0, F32)]), e.scalar(1.0, F32)]), varies)


def grayscale(e: Emitter, gradients: str, axis: int = 1) -> str:
    """The sum of ``|g|`` over the channel axis: (N, C, H, W) -> (N, H, W)."""
    return e.reduce("ReduceSum", e.op("Abs", [gradients]), [axis], keepdims=False)
