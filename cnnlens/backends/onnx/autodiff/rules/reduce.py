"""Reductions (ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceL2, ReduceSumSquare) and
Softmax / LogSoftmax, TopK.

ReduceMax / ReduceMin split the gradient evenly among tied maxima, as PyTorch's ``amax`` /
``amin``. Before opset 13, Softmax and LogSoftmax normalise over all axes from ``axis`` on
(the input coerced to 2-D); from 13 over ``axis`` alone.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import onnx

from ..context import Context, NoRule
from .base import only_first, rule
from .elementwise import equal

#: Opsets from which each reduction takes its axes as an input.
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _axes(ctx: Context, node: onnx.NodeProto, rank: int) -> Optional[List[int]]:
    """The reduced axes (sorted, non-negative); None when the node reduces nothing."""
    if ctx.opset >= _AXES_INPUT_SINCE.get(node.op_type, 18):
        tensor = node.input[1] if len(node.input) > 1 and node.input[1] else None
        value = ctx.constant(tensor) if tensor else None
        if tensor and value is None:
            raise NoRule(f"{node.op_type} whose axes are computed from the input")
        axes = None if value is None or value.size == 0 else [int(a) for a in value.reshape(-1)]
        if axes is None and int(ctx.attr(node, "noop_with_empty_axes", 0)):
            return None
    else:
        axes = ctx.attr(node, "axes", None)
    axes = list(range(rank)) if axes is None else axes
    return sorted(int(a) % rank for a in axes)


def _spread(ctx: Context, node: onnx.NodeProto, g: str, axes: List[int]) -> str:
    """``g`` (the reduced shape) broadcast back to the input's shape."""
    if not int(ctx.attr(node, "keepdims", 1)):
        g = ctx.e.unsqueeze(g, axes)
    return ctx.e.op("Expand", [g, ctx.e.shape(node.input[0])])


def _kept(ctx: Context, node: onnx.NodeProto, y: str, axes: List[int]) -> str:
    """The output with the reduced axes kept (size 1)."""
    return y if int(ctx.attr(node, "keepdims", 1)) else ctx.e.unsqueeze(y, axes)


@rule("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare")
def reduce(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x, y = grads[0], node.input[0], node.output[0]
    e, dtype = ctx.e, ctx.dtype(x)
    rank = ctx.rank(x)
    axes = _axes(ctx, node, rank)
    if axes is None:
        return only_first(node, g)
    spread = _spread(ctx, node, g, axes)
    op = node.op_type
    if op == "ReduceSum":
        return only_first(node, spread)
    if op == "ReduceMean":
        count = int(np.prod(ctx.dims(x, axes)))
        return only_first(node, e.scale(spread, 1.0 / count, dtype))
    if op == "ReduceSumSquare":
        return only_first(node, e.mul(spread, e.scale(x, 2.0, dtype)))
    kept = _kept(ctx, node, y, axes)
    if op == "ReduceL2":  # x / |x|, 0 where |x| == 0
        zero = e.scalar(0.0, dtype)
        ratio = e.op("Where", [e.op("Greater", [kept, zero]), e.op("Div", [x, kept]), zero])
        return only_first(node, e.mul(spread, ratio))
    hits = e.op("Cast", [equal(ctx, x, kept)], to=onnx.helper.np_dtype_to_tensor_dtype(dtype))
    count = e.reduce("ReduceSum", hits, axes, keepdims=True)
    return only_first(node, e.mul(spread, e.op("Div", [hits, count])))


def _softmax_axes(ctx: Context, node: onnx.NodeProto, rank: int) -> List[int]:
    if ctx.opset >= 13:
        return [int(ctx.attr(node, "axis", -1)) % rank]
    return list(range(int(ctx.attr(node, "axis", 1)) % rank, rank))


@rule("Softmax")
def softmax(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``y (g - sum(g y))``."""
    g, y = grads[0], node.output[0]
    e = ctx.e
    axes = _softmax_axes(ctx, node, ctx.rank(y))
    inner = e.reduce("ReduceSum", e.mul(g, y), axes, keepdims=True)
    return [e.mul(y, e.op("Sub", [g, inner]))]


@rule("LogSoftmax")
def log_softmax(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``g - exp(y) sum(g)``."""
    g, y = grads[0], node.output[0]
    e = ctx.e
    axes = _softmax_axes(ctx, node, ctx.rank(y))
    total = e.reduce("ReduceSum", g, axes, keepdims=True)
    return [e.op("Sub", [g, e.mul(e.op("Exp", [y]), total)])]


@rule("TopK")
def top_k(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """The values' gradient back to the elements they were taken from, the choice held fixed (as
    PyTorch's ``topk``); the indices carry none."""
    g, x = grads[0], node.input[0]
    if g is None:
        return [None] * len(node.input)
    if ctx.opset < 11:
        raise NoRule("TopK's gradient needs opset 11 (ScatterElements)")
    axis = int(ctx.attr(node, "axis", -1))
    zeros = ctx.e.zeros_like(x, ctx.dtype(x))
    indices = node.output[1]  # distinct along the axis: a plain scatter adds nothing twice
    return only_first(node, ctx.e.op("ScatterElements", [zeros, indices, g], axis=axis))
