"""Activations: Relu (with the guided and deconvnet rules), LeakyRelu, PRelu, Clip, Sigmoid,
HardSigmoid, HardSwish, Tanh, Erf, Gelu, Elu, Selu, Celu, Softplus, Softsign, Mish,
ThresholdedRelu.

Each follows PyTorch's derivative, including where it is not unique: Relu's gradient at 0 is
0 (``threshold_backward``), Clip / HardSigmoid pass the gradient only strictly inside their
range (``hardtanh_backward``, which also serves ReLU6), HardSwish is ``x/3 + 1/2`` strictly
inside (-3, 3).
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import onnx

from ..context import Context, NoRule
from .base import only_first, rule
from .elementwise import _unary


@rule("Relu")
def relu(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """plain ``1{s>0} g``; guided ``1{s>0} 1{g>0} g``; deconvnet ``1{g>0} g`` (seed 003)."""
    g, y = grads[0], node.output[0]
    e, dtype = ctx.e, ctx.dtype(y)
    if ctx.relu == "deconv":
        return [e.op("Relu", [g])]
    if ctx.relu == "guided":
        g = e.op("Relu", [g])
    return [e.where_positive(y, g, dtype)]


def _where(ctx: Context, condition: str, then: str, otherwise: str) -> str:
    return ctx.e.op("Where", [condition, then, otherwise])


@rule("LeakyRelu")
def leaky_relu(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    dtype = ctx.dtype(x)
    alpha = float(ctx.attr(node, "alpha", 0.01))
    positive = ctx.e.op("Greater", [x, ctx.e.scalar(0.0, dtype)])
    return [_where(ctx, positive, g, ctx.e.scale(g, alpha, dtype))]


@rule("PRelu")
def prelu(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, (x, slope) = grads[0], node.input
    if ctx.needs(slope):
        raise NoRule("PRelu whose slope depends on the input")
    positive = ctx.e.op("Greater", [x, ctx.e.scalar(0.0, ctx.dtype(x))])
    return [_where(ctx, positive, g, ctx.e.mul(g, slope)), None]


def _bound(ctx: Context, node: onnx.NodeProto, index: int, attr: str) -> Optional[float]:
    """Clip's min (index 1) or max (index 2): an attribute before opset 11, an input after."""
    if ctx.opset < 11:
        value = ctx.attr(node, attr)
        return None if value is None else float(value)
    if len(node.input) <= index or not node.input[index]:
        return None
    constant = ctx.constant(node.input[index])
    if constant is None:
        raise NoRule(f"Clip whose {attr} is computed from the input")
    return float(np.asarray(constant).reshape(-1)[0])


@rule("Clip")
def clip(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """The gradient strictly inside (min, max), as ``hardtanh_backward`` (ReLU6) and TensorFlow's Relu6."""
    g, x = grads[0], node.input[0]
    e, dtype = ctx.e, ctx.dtype(x)
    low, high = _bound(ctx, node, 1, "min"), _bound(ctx, node, 2, "max")
    inside = None
    if low is not None:
        inside = e.op("Greater", [x, e.scalar(low, dtype)])
    if high is not None:
        below = e.op("Less", [x, e.scalar(high, dtype)])
        inside = below if inside is None else e.op("And", [inside, below])
    if inside is None:
        return only_first(node, g)
    return only_first(node, e.masked(g, inside, dtype))


rule("Sigmoid")(_unary(lambda c, g, x, y, t: c.e.mul(g, c.e.mul(y, c.e.op("Sub", [c.e.scalar(1.0, t), y])))))
rule("Tanh")(_unary(lambda c, g, x, y, t: c.e.mul(g, c.e.op("Sub", [c.e.scalar(1.0, t), c.e.mul(y, y)]))))
rule("Softplus")(_unary(lambda c, g, x, y, t: c.e.mul(g, c.e.op("Sigmoid", [x]))))
rule("Softsign")(_unary(lambda c, g, x, y, t: c.e.op(
    "Div", [g, c.e.op("Pow", [c.e.op("Add", [c.e.scalar(1.0, t), c.e.op("Abs", [x])]), c.e.scalar(2.0, t)])])))


@rule("Erf")
def erf(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    e, dtype = ctx.e, ctx.dtype(x)
    gauss = e.op("Exp", [e.op("Neg", [e.mul(x, x)])])
    return [e.mul(g, e.scale(gauss, 2.0 / math.sqrt(math.pi), dtype))]


@rule("HardSigmoid")
def hard_sigmoid(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, y = grads[0], node.output[0]
    e, dtype = ctx.e, ctx.dtype(y)
    alpha = float(ctx.attr(node, "alpha", 0.2))
    inside = e.op("And", [e.op("Greater", [y, e.scalar(0.0, dtype)]), e.op("Less", [y, e.scalar(1.0, dtype)])])
    return [e.masked(e.scale(g, alpha, dtype), inside, dtype)]


@rule("HardSwish")
def hard_swish(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """0 up to -3, ``g (x/3 + 1/2)`` in between, ``g`` from 3 on (PyTorch's ``hardswish_backward``)."""
    g, x = grads[0], node.input[0]
    e, dtype = ctx.e, ctx.dtype(x)
    slope = e.op("Add", [e.scale(x, 1.0 / 3.0, dtype), e.scalar(0.5, dtype)])
    upper = _where(ctx, e.op("GreaterOrEqual", [x, e.scalar(3.0, dtype)]), g, e.mul(g, slope))
    return [_where(ctx, e.op("LessOrEqual", [x, e.scalar(-3.0, dtype)]), e.scalar(0.0, dtype), upper)]


@rule("Gelu")
def gelu(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``Phi(x) + x phi(x)``; with ``approximate="tanh"``, PyTorch's tanh-form derivative."""
    g, x = grads[0], node.input[0]
    e, dtype = ctx.e, ctx.dtype(x)

    def k(v: float) -> str:
        return e.scalar(v, dtype)
    if ctx.attr(node, "approximate", b"none") in (b"tanh", "tanh"):
        beta, kappa = math.sqrt(2.0 / math.pi), 0.044715
        x2 = e.mul(x, x)
        inner = e.scale(e.op("Add", [x, e.scale(e.mul(x2, x), kappa, dtype)]), beta, dtype)
        t = e.op("Tanh", [inner])
        left = e.scale(e.op("Add", [k(1.0), t]), 0.5, dtype)
        right = e.mul(e.scale(x, 0.5 * beta, dtype),
                      e.mul(e.op("Sub", [k(1.0), e.mul(t, t)]), e.op("Add", [k(1.0), e.scale(x2, 3 * kappa, dtype)])))
        return [e.mul(g, e.op("Add", [left, right]))]
    cdf = e.scale(e.op("Add", [k(1.0), e.op("Erf", [e.scale(x, 1.0 / math.sqrt(2.0), dtype)])]), 0.5, dtype)
    pdf = e.scale(e.op("Exp", [e.scale(e.mul(x, x), -0.5, dtype)]), 1.0 / math.sqrt(2.0 * math.pi), dtype)
    return [e.mul(g, e.op("Add", [cdf, e.mul(x, pdf)]))]


def _exponential_linear(ctx: Context, node: onnx.NodeProto, g: str, scale: float, offset: float, divide: float):
    """``g * scale`` for x > 0, else ``g * (y / divide + offset)`` (Elu, Selu, Celu)."""
    x, y = node.input[0], node.output[0]
    e, dtype = ctx.e, ctx.dtype(x)
    negative = e.op("Add", [e.scale(y, 1.0 / divide, dtype), e.scalar(offset, dtype)])
    return [_where(ctx, e.op("Greater", [x, e.scalar(0.0, dtype)]), e.scale(g, scale, dtype), e.mul(g, negative))]


@rule("Elu")
def elu(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    return _exponential_linear(ctx, node, grads[0], 1.0, float(ctx.attr(node, "alpha", 1.0)), 1.0)


@rule("Selu")
def selu(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    alpha = float(ctx.attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr(node, "gamma", 1.05070102214813232421875))
    return _exponential_linear(ctx, node, grads[0], gamma, alpha * gamma, 1.0)


@rule("Celu")
def celu(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    alpha = float(ctx.attr(node, "alpha", 1.0))
    return _exponential_linear(ctx, node, grads[0], 1.0, 1.0, alpha)


@rule("Mish")
def mish(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)``, sp = softplus(x) (``mish_backward``)."""
    g, x = grads[0], node.input[0]
    e, dtype = ctx.e, ctx.dtype(x)
    t = e.op("Tanh", [e.op("Softplus", [x])])
    slope = e.mul(e.mul(x, e.op("Sigmoid", [x])), e.op("Sub", [e.scalar(1.0, dtype), e.mul(t, t)]))
    return [e.mul(g, e.op("Add", [t, slope]))]


@rule("ThresholdedRelu")
def thresholded_relu(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    dtype = ctx.dtype(x)
    above = ctx.e.op("Greater", [x, ctx.e.scalar(float(ctx.attr(node, "alpha", 1.0)), dtype)])
    return [ctx.e.masked(g, above, dtype)]
