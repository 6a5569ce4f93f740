"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

MaxPool sends each window's gradient to the element ONNX Runtime's own ``Indices`` output
names: the first maximum in scan order, as PyTorch picks it, so ties (all-zero windows after a
ReLU are common) go where PyTorch sends them. Overlapping windows add up: from opset 16 with a
ScatterElements that adds; before, with a grouped ConvTranspose whose one-hot kernel puts each
window offset's share in place (3x slower on ResNet-50's pool, and the only way opset 9 has).
AveragePool's scatter is a grouped ConvTranspose with a kernel of ones after dividing by each
window's divisor, which is read off ONNX Runtime's own AveragePool of ones (constant-folded when
the session loads), so ``ceil_mode`` and ``count_include_pad`` mean exactly what the runtime
makes them mean.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx

from ..context import Context
from .base import only_first, rule
from .window import Window, scatter, window


def _grid(geometry: Window, axis: int, values: np.ndarray) -> np.ndarray:
    """``values`` (one per output position along ``axis``) shaped to broadcast over (N, C, *out)."""
    shape = [1, 1] + [1] * geometry.rank
    shape[axis + 2] = len(values)
    return values.reshape(shape)


def _window_offset(ctx: Context, indices: str, geometry: Window) -> str:
    """Which element of its window each output took, as a flat offset into the kernel (int64)."""
    e = ctx.e
    plane = int(np.prod(geometry.size))
    flat = e.op("Sub", [indices, e.op("Mul", [e.op("Div", [indices, e.ints([plane])]), e.ints([plane])])])
    offset = None
    for axis in range(geometry.rank):
        inner = int(np.prod(geometry.size[axis + 1:]))
        coord = e.op("Div", [flat, e.ints([inner])]) if inner > 1 else flat
        if axis > 0:
            size = e.ints([geometry.size[axis]])
            coord = e.op("Sub", [coord, e.op("Mul", [e.op("Div", [coord, size]), size])])
        starts = np.arange(geometry.out[axis], dtype=np.int64) * geometry.strides[axis] - geometry.begin[axis]
        step = e.op("Sub", [coord, e.const(_grid(geometry, axis, starts), "window_start")])
        if geometry.dilations[axis] > 1:
            step = e.op("Div", [step, e.ints([geometry.dilations[axis]])])
        weight = int(np.prod(geometry.kernel[axis + 1:]))
        term = e.op("Mul", [step, e.ints([weight])]) if weight > 1 else step
        offset = term if offset is None else e.op("Add", [offset, term])
    return offset  # type: ignore[return-value]


def _one_hot_kernel(channels: int, kernel, dtype: np.dtype) -> np.ndarray:
    """(C*K, 1, *kernel): input channel c*K + k puts its value at kernel offset k of channel c."""
    size = int(np.prod(kernel))
    eye = np.eye(size, dtype=dtype).reshape((size, 1) + tuple(kernel))
    return np.tile(eye, (channels,) + (1,) * (len(kernel) + 1))


def _same_pool(node: onnx.NodeProto) -> Dict[str, object]:
    """The pool's attributes, to run the same pool again (MaxPool for its indices, AveragePool on ones)."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name != "storage_order"}


@rule("MaxPool")
def max_pool(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    e, dtype = ctx.e, ctx.dtype(x)
    kernel = list(ctx.attr(node, "kernel_shape"))
    geometry = window(ctx, node, x, kernel)
    _, indices = e.op("MaxPool", [x], outputs=2, **_same_pool(node))
    if ctx.opset >= 16:  # flat indices into the whole input: add each window's gradient there
        flat = e.op("Reshape", [e.zeros_like(x, dtype), e.ints([-1])])
        spread = e.op("ScatterElements", [flat, e.op("Reshape", [indices, e.ints([-1])]),
                                          e.op("Reshape", [g, e.ints([-1])])], axis=0, reduction="add")
        return only_first(node, e.reshape_like(spread, x))
    channels = ctx.dims(x, [1])[0]
    offset = _window_offset(ctx, indices, geometry)
    size = int(np.prod(kernel))
    one_hot = e.op("OneHot", [offset, e.ints([size]), e.const(np.array([0, 1], dtype=dtype), "on_off")], axis=2)
    spread = e.mul(one_hot, e.unsqueeze(g, [2]))  # (N, C, K, *out)
    stacked = e.op("Reshape", [spread, e.ints([0, channels * size] + list(geometry.out))])
    weight = e.const(_one_hot_kernel(channels, kernel, dtype), "one_hot_kernel")
    return only_first(node, scatter(ctx, stacked, weight, geometry, channels))


@rule("AveragePool")
def average_pool(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    e, dtype = ctx.e, ctx.dtype(x)
    kernel = list(ctx.attr(node, "kernel_shape"))
    geometry = window(ctx, node, x, kernel)
    channels = ctx.dims(x, [1])[0]
    # the runtime's average of ones over each window, divided by how many input elements the window
    # covers, is 1 / the runtime's divisor for that window
    ones = e.const(np.ones((1, 1) + geometry.size, dtype=dtype), "ones")
    covered = _covered(geometry).astype(dtype)
    mean_of_ones = e.op("AveragePool", [ones], **_same_pool(node))
    inverse = e.op("Where", [e.const(covered > 0, "covered"), e.op("Div", [mean_of_ones, e.const(np.maximum(covered, 1), "count")]),
                             e.scalar(0.0, dtype)])
    weight = e.const(np.ones((channels, 1) + tuple(kernel), dtype=dtype), "ones_kernel")
    return only_first(node, scatter(ctx, e.mul(g, inverse), weight, geometry, channels))


def _covered(geometry: Window) -> np.ndarray:
    """(1, 1, *out): how many input elements (padding excluded) each window covers."""
    total = np.ones((1, 1) + geometry.out)
    for axis in range(geometry.rank):
        starts = np.arange(geometry.out[axis]) * geometry.strides[axis] - geometry.begin[axis]
        taps = starts[:, None] + np.arange(geometry.kernel[axis])[None, :] * geometry.dilations[axis]
        inside = ((taps >= 0) & (taps < geometry.size[axis])).sum(axis=1)
        total = total * _grid(geometry, axis, inside.astype(np.float64))
    return total


@rule("GlobalAveragePool")
def global_average_pool(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    rank = ctx.rank(x)
    positions = int(np.prod(ctx.dims(x, range(2, rank))))
    spread = ctx.e.op("Expand", [g, ctx.e.shape(x)])
    return [ctx.e.scale(spread, 1.0 / positions, ctx.dtype(x))]


@rule("GlobalMaxPool")
def global_max_pool(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """To the first maximum of each channel (as PyTorch's adaptive max pooling)."""
    g, x = grads[0], node.input[0]
    e, dtype = ctx.e, ctx.dtype(x)
    rank = ctx.rank(x)
    positions = int(np.prod(ctx.dims(x, range(2, rank))))
    first = e.op("ArgMax", [e.op("Reshape", [x, e.ints([0, 0, -1])])], axis=2, keepdims=1)
    one_hot = e.op("OneHot", [first, e.ints([positions]), e.const(np.array([0, 1], dtype=dtype), "on_off")], axis=-1)
    return [e.mul(e.reshape_like(one_hot, x), g)]
