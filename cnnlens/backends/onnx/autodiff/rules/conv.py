"""Convolutions: the gradient with respect to the input (weights never need one).

A convolution's input gradient is the transposed convolution of the output gradient with the
same weights. With unit strides it is also an ordinary convolution with the kernel flipped and
its in / out channels swapped per group: ONNX Runtime runs that as fast as the forward
convolution (its blocked NCHWc kernels), against 1.1-1.5x slower for ConvTranspose on dense
convolutions and 6-13x slower on depthwise ones (measured on ResNet-50 and MobileNet layer
shapes, batch 4, two cores). Strided convolutions keep ConvTranspose: the sub-pixel rewrite as a
convolution followed by DepthToSpace measured slower still.

The flipped kernel is computed in the graph from the model's own weight tensor (Reshape,
Transpose, Gather with reversed indices: ops of every opset), never stored: ONNX Runtime folds
it into a constant when the session starts, so it costs nothing per run, and a gradient or
explainer model stays the size of the model it was built from.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import onnx

from ..context import Context, NoRule
from .base import rule
from .window import Window, scatter, window


def _flipped(ctx: Context, w: str, shape: Sequence[int], group: int) -> str:
    """The adjoint convolution's weights for unit strides, (C, O/g, *k), from the (O, C/g, *k) weight
    tensor ``w``: in / out channels swapped per group and every spatial axis reversed, in the graph."""
    e = ctx.e
    out, per_group = int(shape[0]), int(shape[1])
    kernel = [int(k) for k in shape[2:]]
    rank = len(kernel)
    if group == 1:
        swapped = e.op("Transpose", [w], perm=[1, 0] + list(range(2, rank + 2)))
        spatial = list(range(2, rank + 2))
    else:
        grouped = e.op("Reshape", [w, e.ints([group, out // group, per_group] + kernel)])
        swapped = e.op("Transpose", [grouped], perm=[0, 2, 1] + list(range(3, rank + 3)))
        spatial = list(range(3, rank + 3))
    for axis, size in zip(spatial, kernel):
        if size > 1:
            swapped = e.op("Gather", [swapped, e.ints(range(size - 1, -1, -1))], axis=axis)
    if group == 1:
        return swapped
    return e.op("Reshape", [swapped, e.ints([group * per_group, out // group] + kernel)])


def _adjoint_conv(ctx: Context, g: str, w: str, shape: Sequence[int], geometry: Window, group: int) -> Optional[str]:
    """The input gradient as a unit-stride convolution, or None when the pads do not allow it."""
    if any(s != 1 for s in geometry.strides):
        return None
    begin = [geometry.reach(i) - 1 - geometry.begin[i] for i in range(geometry.rank)]
    end = [geometry.reach(i) - 1 - geometry.end[i] for i in range(geometry.rank)]
    if min(begin + end) < 0:
        return None
    return ctx.e.op("Conv", [g, _flipped(ctx, w, shape, group)], kernel_shape=list(geometry.kernel),
                    dilations=list(geometry.dilations), pads=begin + end, group=int(group))


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
    weight = ctx.constant(w)
    return [input_gradient(ctx, node, g, w, weight.shape if weight is not None else None)] + rest


def input_gradient(ctx: Context, node: onnx.NodeProto, g: str, w: str, weight_shape: Optional[Sequence[int]]) -> str:
    """The gradient with respect to a Conv node's input for output gradient ``g``, with the weights
    ``w`` (the node's own, or other weights of its shape: LRP's modified ones); ``weight_shape``:
    their shape when they are constant (None: computed in the graph)."""
    group = int(ctx.attr(node, "group", 1))
    kernel = ctx.attr(node, "kernel_shape", None)
    if kernel is None:
        shape = weight_shape if weight_shape is not None else ctx.shape(w)
        if shape is None or any(d is None for d in shape[2:]):
            raise NoRule("Conv without kernel_shape whose weight shape is unknown")
        kernel = list(shape[2:])
    geometry = window(ctx, node, node.input[0], kernel)
    adjoint = _adjoint_conv(ctx, g, w, weight_shape, geometry, group) if weight_shape is not None else None
    return adjoint if adjoint is not None else scatter(ctx, g, w, geometry, group)


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
