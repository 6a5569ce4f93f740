"""Normalisations: BatchNormalization (inference), LRN, LayerNormalization, InstanceNormalization,
GroupNormalization."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import onnx

from ...graph import attribute
from ..context import Context, NoRule
from .base import only_first, rule


def _check_batch_norm(node: onnx.NodeProto, graph) -> Optional[str]:
    if int(attribute(node, "training_mode", 0)) or len([o for o in node.output if o]) > 1:
        return "BatchNormalization in training mode (export the model in eval mode)"
    if int(attribute(node, "spatial", 1)) != 1:
        return "BatchNormalization with spatial=0"
    return None


def _per_channel(ctx: Context, value: str, rank: int) -> str:
    """A (C,) tensor shaped to broadcast over (N, C, *spatial)."""
    return ctx.e.unsqueeze(value, list(range(1, rank - 1))) if rank > 2 else value


@rule("BatchNormalization", check=_check_batch_norm)
def batch_norm(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``g * scale / sqrt(var + eps)`` per channel (the statistics are constants in inference). The
    factor is computed in the graph from the node's own parameters, never stored (ONNX Runtime folds
    it once when the session starts), and once per node however many backward chains use it."""
    g, x = grads[0], node.input[0]
    if any(ctx.needs(t) for t in node.input[1:]):
        raise NoRule("BatchNormalization whose parameters depend on the input")
    e, dtype = ctx.e, ctx.dtype(x)
    rank = ctx.rank(x)
    eps = float(ctx.attr(node, "epsilon", 1e-5))

    def factor() -> str:
        root = e.op("Sqrt", [e.op("Add", [node.input[4], e.scalar(eps, dtype)])])
        return _per_channel(ctx, e.op("Div", [node.input[1], root]), rank)
    return only_first(node, e.mul(g, e.shared(("bn_factor",) + tuple(node.input[1:5]) + (eps, rank), factor)))


@rule("LRN")
def lrn(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``y = x d^-b``, ``d = bias + alpha/size * sum of x^2 over a window of channels``:
    ``dx = g d^-b - (2 alpha b / size) x W^T(g y / d)``, with the window sums as 1x1 convolutions."""
    g, x, y = grads[0], node.input[0], node.output[0]
    e, dtype = ctx.e, ctx.dtype(x)
    rank = ctx.rank(x)
    channels = ctx.dims(x, [1])[0]
    size = int(ctx.attr(node, "size"))
    alpha, beta = float(ctx.attr(node, "alpha", 1e-4)), float(ctx.attr(node, "beta", 0.75))
    bias = float(ctx.attr(node, "bias", 1.0))
    lower, upper = (size - 1) // 2, size - 1 - (size - 1) // 2
    c = np.arange(channels)
    band = ((c[None, :] >= c[:, None] - lower) & (c[None, :] <= c[:, None] + upper)).astype(dtype)
    spatial = (1,) * (rank - 2)
    window = e.const(band.reshape((channels, channels) + spatial), "lrn_window")
    window_t = e.const(np.ascontiguousarray(band.T).reshape((channels, channels) + spatial), "lrn_window_t")
    squares = e.op("Conv", [e.mul(x, x), window], kernel_shape=list(spatial))
    d = e.op("Add", [e.scale(squares, alpha / size, dtype), e.scalar(bias, dtype)])
    d_pow = e.op("Pow", [d, e.scalar(-beta, dtype)])
    back = e.op("Conv", [e.op("Div", [e.mul(g, y), d]), window_t], kernel_shape=list(spatial))
    correction = e.scale(e.mul(x, back), 2.0 * alpha * beta / size, dtype)
    return [e.op("Sub", [e.mul(g, d_pow), correction])]


def _normalised(ctx: Context, x: str, g_scaled: str, axes: Sequence[int], eps: float) -> str:
    """The input gradient of ``(x - mean) / sqrt(var + eps)`` over ``axes`` given the gradient of
    that normalised value: ``inv * (h - mean(h) - xhat * mean(h * xhat))``."""
    e, dtype = ctx.e, ctx.dtype(x)
    centred = e.op("Sub", [x, e.reduce("ReduceMean", x, axes)])
    variance = e.reduce("ReduceMean", e.mul(centred, centred), axes)
    inv = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [variance, e.scalar(eps, dtype)])])])
    xhat = e.mul(centred, inv)
    inner = e.op("Sub", [e.op("Sub", [g_scaled, e.reduce("ReduceMean", g_scaled, axes)]),
                         e.mul(xhat, e.reduce("ReduceMean", e.mul(g_scaled, xhat), axes))])
    return e.mul(inv, inner)


def _normalised_over(ctx: Context, node: onnx.NodeProto, g_scaled: str, axes: List[int]) -> List[Optional[str]]:
    """LayerNormalization's and InstanceNormalization's input gradient (scale and bias constant)."""
    if any(ctx.needs(t) for t in node.input[1:]):
        raise NoRule(f"{node.op_type} whose scale or bias depends on the input")
    eps = float(ctx.attr(node, "epsilon", 1e-5))
    return only_first(node, _normalised(ctx, node.input[0], g_scaled, axes, eps))


@rule("LayerNormalization")
def layer_norm(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    rank = ctx.rank(x)
    axis = int(ctx.attr(node, "axis", -1)) % rank
    scaled = ctx.e.mul(g, node.input[1]) if len(node.input) > 1 and node.input[1] else g
    return _normalised_over(ctx, node, scaled, list(range(axis, rank)))


@rule("InstanceNormalization")
def instance_norm(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    rank = ctx.rank(x)
    return _normalised_over(ctx, node, ctx.e.mul(g, _per_channel(ctx, node.input[1], rank)), list(range(2, rank)))


@rule("GroupNormalization")
def group_norm(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """Instance normalisation over groups of channels: the input seen as (N, G, C/G * spatial),
    normalised over its last axis. The scale is per group at opset 18, per channel from 21."""
    g, x = grads[0], node.input[0]
    if any(ctx.needs(t) for t in node.input[1:]):
        raise NoRule("GroupNormalization whose scale or bias depends on the input")
    e = ctx.e
    rank = ctx.rank(x)
    groups = int(ctx.attr(node, "num_groups"))
    eps = float(ctx.attr(node, "epsilon", 1e-5))
    per_channel = ctx.opset >= 21
    scaled = e.mul(g, _per_channel(ctx, node.input[1], rank)) if per_channel else g
    grouped = e.ints([0, groups, -1])
    h = e.op("Reshape", [scaled, grouped])
    if not per_channel:
        h = e.mul(h, e.unsqueeze(node.input[1], [1]))  # (G,) -> (G, 1) against (N, G, rest)
    inner = _normalised(ctx, e.op("Reshape", [x, grouped]), h, [2], eps)
    return only_first(node, e.reshape_like(inner, x))
