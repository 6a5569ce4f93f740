"""Element-wise arithmetic with NumPy broadcasting: Add, Sub, Mul, Div, Pow, Sum, Mean, Max, Min,
Where, the unary math ops, Cast, and the ops that pass the gradient through unchanged.

A broadcast input's gradient is the output gradient summed over the axes it was broadcast
along (PyTorch's ``sum_to_size``). Ties of Max / Min split the gradient evenly, as PyTorch's
``maximum`` / ``minimum`` do.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import onnx

from ..context import Context, NoRule, Shape
from .base import only_first, rule


def unbroadcast(ctx: Context, g: str, tensor: str, output: str, g_shape: Optional[Shape] = None) -> str:
    """``g`` (shaped like ``output``, or ``g_shape`` when given) summed down to the shape of ``tensor``."""
    shape = ctx.shape(tensor)
    out = g_shape if g_shape is not None else ctx.shape(output)
    if shape is None or out is None:
        unknown = tensor if shape is None else output
        raise NoRule(f"the shape of {unknown!r} is unknown, so a broadcast gradient cannot be summed")
    out_rank = len(out)
    lead = out_rank - len(shape)
    axes = list(range(lead))
    for i, d in enumerate(shape):
        if d == 1 and out[i + lead] != 1:
            axes.append(i + lead)
    if not axes:
        return g
    summed = ctx.e.reduce("ReduceSum", g, axes, keepdims=True)
    return ctx.e.reshape_like(summed, tensor) if lead else summed


def equal(ctx: Context, a: str, b: str) -> str:
    """A boolean ``a == b`` (float Equal needs opset 11; before, neither less nor greater)."""
    if ctx.opset >= 11:
        return ctx.e.op("Equal", [a, b])
    e = ctx.e
    return e.op("And", [e.op("Not", [e.op("Less", [a, b])]), e.op("Not", [e.op("Greater", [a, b])])])


def _each(ctx: Context, node: onnx.NodeProto, grad_of) -> List[Optional[str]]:
    """``grad_of(i)`` summed to input i's shape, for the inputs that need it."""
    return [unbroadcast(ctx, grad_of(i), x, node.output[0]) if ctx.needs(x) else None
            for i, x in enumerate(node.input)]


@rule("Add", "Sub")
def add_sub(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g = grads[0]
    negated = node.op_type == "Sub"
    return _each(ctx, node, lambda i: ctx.e.op("Neg", [g]) if negated and i == 1 else g)


@rule("Mul")
def mul(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g = grads[0]
    a, b = node.input
    return _each(ctx, node, lambda i: ctx.e.mul(g, b if i == 0 else a))


@rule("Div")
def div(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g = grads[0]
    a, b = node.input
    e = ctx.e

    def grad_of(i: int) -> str:
        if i == 0:
            return e.op("Div", [g, b])
        return e.op("Neg", [e.op("Div", [e.mul(g, a), e.mul(b, b)])])  # -g a / b^2, as PyTorch
    return _each(ctx, node, grad_of)


@rule("Pow")
def pow_(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g = grads[0]
    a, b = node.input
    e, dtype = ctx.e, ctx.dtype(node.output[0])

    def grad_of(i: int) -> str:
        if i == 0:
            exponent = ctx.constant(b)
            if exponent is not None and exponent.size == 1:
                c = float(exponent.reshape(-1)[0])
                if c == 0.0:
                    return e.zeros_like(g, dtype)
                if c == 1.0:
                    return g
                if c == 2.0:
                    return e.mul(g, e.scale(a, 2.0, dtype))
                power = e.op("Pow", [a, e.scalar(c - 1.0, ctx.dtype(b))])
                return e.mul(g, e.scale(power, c, dtype))
            b_minus_1 = e.op("Sub", [b, e.scalar(1.0, ctx.dtype(b))])
            return e.mul(g, e.mul(b, e.op("Pow", [a, b_minus_1])))
        # d(a^b)/db = a^b log a (0 where a == 0, as PyTorch)
        zero = e.scalar(0.0, dtype)
        log_a = e.op("Where", [e.op("Greater", [a, zero]), e.op("Log", [a]), zero])
        return e.mul(g, e.mul(node.output[0], log_a))
    return _each(ctx, node, grad_of)


@rule("Sum", "Mean")
def sum_mean(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g = grads[0]
    if node.op_type == "Mean":
        g = ctx.e.scale(g, 1.0 / len(node.input), ctx.dtype(node.output[0]))
    return _each(ctx, node, lambda i: g)


@rule("Max", "Min")
def max_min(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """To the inputs equal to the result, split evenly among ties."""
    g, y = grads[0], node.output[0]
    e, dtype = ctx.e, ctx.dtype(y)
    if len(node.input) == 1:
        return [g]
    hits = [e.op("Cast", [equal(ctx, x, y)], to=onnx.helper.np_dtype_to_tensor_dtype(dtype)) for x in node.input]
    share = e.op("Div", [g, e.total(hits)])
    return _each(ctx, node, lambda i: e.mul(share, hits[i]))


@rule("Where")
def where(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g = grads[0]
    condition, a, b = node.input
    zero = ctx.e.scalar(0.0, ctx.dtype(node.output[0]))
    picked = {1: lambda: ctx.e.op("Where", [condition, g, zero]), 2: lambda: ctx.e.op("Where", [condition, zero, g])}
    return [None] + [unbroadcast(ctx, picked[i](), x, node.output[0]) if ctx.needs(x) else None
                     for i, x in ((1, a), (2, b))]


# ---------------------------------------------------------------- unary math


def _unary(derivative):
    """A rule ``g * derivative(ctx, x, y)`` for a one-input op."""
    def backward(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
        x, y = node.input[0], node.output[0]
        return only_first(node, derivative(ctx, grads[0], x, y, ctx.dtype(y)))
    return backward


rule("Neg")(_unary(lambda c, g, x, y, t: c.e.op("Neg", [g])))
rule("Exp")(_unary(lambda c, g, x, y, t: c.e.mul(g, y)))
rule("Log")(_unary(lambda c, g, x, y, t: c.e.op("Div", [g, x])))
rule("Sqrt")(_unary(lambda c, g, x, y, t: c.e.op("Div", [g, c.e.scale(y, 2.0, t)])))
rule("Reciprocal")(_unary(lambda c, g, x, y, t: c.e.op("Neg", [c.e.mul(g, c.e.mul(y, y))])))
rule("Abs")(_unary(lambda c, g, x, y, t: c.e.mul(g, c.e.op("Sign", [x]))))
#: piecewise constant: zero gradient, as PyTorch
rule("Sign", "Floor", "Ceil", "Round")(_unary(lambda c, g, x, y, t: c.e.zeros_like(x, t)))
#: boolean and integer results: nothing flows back through them
rule("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
     "ArgMax", "ArgMin", "NonZero", "Shape", "Size")(lambda ctx, node, grads: [None] * len(node.input))
rule("Identity", "Dropout")(_unary(lambda c, g, x, y, t: g))


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating)


@rule("Cast", "CastLike")
def cast(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    x = node.input[0]
    if not (_is_float(ctx.dtype(x)) and _is_float(ctx.dtype(node.output[0]))):
        return [None] * len(node.input)
    back = ctx.e.op("Cast", [grads[0]], to=onnx.helper.np_dtype_to_tensor_dtype(ctx.dtype(x)))
    return only_first(node, back)
