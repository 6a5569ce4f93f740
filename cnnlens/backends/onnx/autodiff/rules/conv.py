"""Convolutions: the gradient with respect to the input (weights never need one).

A convolution's input gradient is the transposed convolution of the output gradient with the
same weights. With unit strides it is also an ordinary convolution with the kernel flipped and
its in / out channels swapped per group: ONNX Runtime runs that as fast as the forward
convolution (its blocked NCHWc kernels), against 1.1-1.5x slower for ConvTranspose on dense
convolutions and 6-13x slower on depthwise ones (measured on ResNet-50 and MobileNet layer
shapes, batch 4, two cores). Strided convolutions keep ConvTranspose: the sub-pixel rewrite as a
convolution followed by DepthToSpace measured slower still.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import onnx

from ..context import Context, NoRule
from .base import rule
from .window import Window, scatter, window


def _flipped(weight: np.ndarray, group: int) -> np.ndarray:
    """(O, C/g, *k) conv weights -> (C, O/g, *k): the adjoint convolution's weights for unit strides."""
    out, per_group = weight.shape[:2]
    kernel = weight.shape[2:]
    grouped = weight.reshape((group, out // group, per_group) + kernel).swapaxes(1, 2)
    flipped = grouped[(Ellipsis,) + (slice(None, None, -1),) * len(kernel)]
    return np.ascontiguousarray(flipped.reshape((group * per_group, out // group) + kernel))


def _adjoint_conv(ctx: Context, g: str, weight: np.ndarray, geometry: Window, group: int) -> Optional[str]:
    """The input gradient as a unit-stride convolution, or None when the pads do not allow it."""
    if any(s != 1 for s in geometry.strides):
        return None
    begin = [geometry.reach(i) - 1 - geometry.begin[i] for i in range(geometry.rank)]
    end = [geometry.reach(i) - 1 - geometry.end[i] for i in range(geometry.rank)]
    if min(begin + end) < 0:
        return None
    kernel = ctx.e.const(_flipped(weight, group), "adjoint_weight")
    return ctx.e.op("Conv", [g, kernel], kernel_shape=list(geometry.kernel), dilations=list(geometry.dilations),
                    pads=begin + end, group=int(group))


def _check_weights(ctx: Context, node: onnx.NodeProto) -> None:
    if any(ctx.needs(t) for t in node.input[1:]):
        raise NoRule(f"{node.op_type} whose weights depend on the input")


@rule("Conv")
def conv(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    _check_weights(ctx, node)
    g, (x, w) = grads[0], node.input[:2]
    rest = [None] * (len(node.input) - 1)
    if not ctx.needs(x):
        return [None] + rest
    group = int(ctx.attr(node, "group", 1))
    weight = ctx.constant(w)
    kernel = ctx.attr(node, "kernel_shape", None)
    if kernel is None:
        shape = weight.shape if weight is not None else ctx.shape(w)
        if shape is None or any(d is None for d in shape[2:]):
            raise NoRule("Conv without kernel_shape whose weight shape is unknown")
        kernel = list(shape[2:])
    geometry = window(ctx, node, x, kernel)
    adjoint = _adjoint_conv(ctx, g, weight, geometry, group) if weight is not None else None
    return [adjoint if adjoint is not None else scatter(ctx, g, w, geometry, group)] + rest


@rule("ConvTranspose")
def conv_transpose(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """The adjoint of a transposed convolution is the convolution with the same weights."""
    _check_weights(ctx, node)
    g, (x, w) = grads[0], node.input[:2]
    rest = [None] * (len(node.input) - 1)
    if not ctx.needs(x):
        return [None] + rest
    if ctx.attr(node, "output_shape") is not None or ctx.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NoRule("ConvTranspose with output_shape or auto_pad (give explicit pads)")
    weight_shape = ctx.shape(w)
    kernel = ctx.attr(node, "kernel_shape", None) or (list(weight_shape[2:]) if weight_shape else None)
    if kernel is None:
        raise NoRule("ConvTranspose without kernel_shape whose weight shape is unknown")
    rank = len(kernel)
    pads = list(ctx.attr(node, "pads", None) or [0] * (2 * rank))
    conv_g = ctx.e.op("Conv", [g, w], kernel_shape=list(kernel), strides=ctx.attr(node, "strides", None),
                      dilations=ctx.attr(node, "dilations", None), pads=pads, group=int(ctx.attr(node, "group", 1)))
    size = ctx.dims(x, range(2, rank + 2))
    got = ctx.shape(node.output[0])
    if got is not None and all(d is not None for d in got[2:]):
        # output_padding's extra rows never reach the input: the convolution covers exactly ``size``
        conv_g = ctx.e.slice(conv_g, [0] * rank, list(size), list(range(2, rank + 2)))
    return [conv_g] + rest
