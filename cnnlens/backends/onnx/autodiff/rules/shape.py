"""Ops that move values without computing on them: Reshape, Flatten, Squeeze, Unsqueeze,
Transpose, Concat, Split, Slice, Pad, Gather, Expand, Tile, GatherElements, ScatterND,
ScatterElements.

The reshaping ops take the gradient back to the input's runtime shape. Slice (unit steps) and
constant Pad (non-negative pads) are undone by padding and cropping. Everything else that
picks elements along an axis by fixed indices (Slice with steps, Gather with constant indices,
reflect / edge / wrap / negative padding) is one matrix product per axis with a constant 0/1
matrix, which also adds up elements that were picked more than once.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ...graph import attribute
from ..context import Context, NoRule
from .base import only_first, rule
from .elementwise import unbroadcast


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    return only_first(node, ctx.e.reshape_like(grads[0], node.input[0]))


@rule("Transpose")
def transpose(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    perm = ctx.attr(node, "perm", None)
    if perm is None:
        perm = list(range(ctx.rank(node.input[0])))[::-1]
    return [ctx.e.op("Transpose", [grads[0]], perm=[int(i) for i in np.argsort(perm)])]


@rule("Expand")
def expand(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    return only_first(node, unbroadcast(ctx, grads[0], node.input[0], node.output[0]))


@rule("Concat")
def concat(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g = grads[0]
    rank = ctx.rank(node.output[0])
    axis = int(ctx.attr(node, "axis")) % rank
    result: List[Optional[str]] = []
    offset = 0
    for x in node.input:
        size = ctx.dims(x, [axis])[0]
        result.append(ctx.e.slice(g, [offset], [offset + size], [axis]) if ctx.needs(x) else None)
        offset += size
    return result


@rule("Split")
def split(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    x = node.input[0]
    rank = ctx.rank(x)
    axis = int(ctx.attr(node, "axis", 0)) % rank
    dtype = ctx.dtype(x)
    parts = [grad if grad is not None else ctx.e.zeros_like(out, dtype) for grad, out in zip(grads, node.output)]
    return only_first(node, ctx.e.op("Concat", parts, axis=axis) if len(parts) > 1 else parts[0])


# ---------------------------------------------------------------- picking along axes


def _along(ctx: Context, g: str, axis: int, rank: int, picks: Sequence[Optional[int]], size: int,
           dtype: np.dtype) -> str:
    """The adjoint of ``y = x.take(picks, axis)``: ``g`` (len(picks) along ``axis``) spread back onto
    ``size`` positions, repeated picks adding up (a None pick took a constant: no gradient)."""
    matrix = np.zeros((len(picks), size), dtype=dtype)
    for row, index in enumerate(picks):
        if index is not None:
            matrix[row, index] += 1
    return contract(ctx, g, axis, rank, ctx.e.const(matrix, "pick_matrix"))


def contract(ctx: Context, g: str, axis: int, rank: int, matrix: str) -> str:
    """``g`` (out along ``axis``) times ``matrix`` (out, in): the adjoint of ``y = A x`` along one
    axis, one MatMul (with the axis moved last and back)."""
    e = ctx.e
    if axis == rank - 1:
        return e.op("MatMul", [g, matrix])
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = e.op("MatMul", [e.op("Transpose", [g], perm=perm), matrix])
    return e.op("Transpose", [moved], perm=[int(i) for i in np.argsort(perm)])


def _slice_bounds(ctx: Context, node: onnx.NodeProto) -> Tuple[List[int], List[int], List[int], List[int]]:
    """(starts, ends, axes, steps) of a Slice, as constants."""
    if ctx.opset < 10:
        starts, ends = list(ctx.attr(node, "starts")), list(ctx.attr(node, "ends"))
        axes = list(ctx.attr(node, "axes", None) or range(len(starts)))
        return starts, ends, axes, [1] * len(starts)
    values = []
    for i in range(1, 5):
        tensor = node.input[i] if len(node.input) > i and node.input[i] else None
        value = ctx.constant(tensor) if tensor else None
        if tensor and value is None:
            raise NoRule("Slice whose bounds are computed from the input")
        values.append(None if value is None else [int(v) for v in np.asarray(value).reshape(-1)])
    starts, ends, axes, steps = values
    axes = axes if axes is not None else list(range(len(starts)))
    return starts, ends, axes, steps if steps is not None else [1] * len(starts)


#: a Slice end at least this large keeps the rest of the axis whatever its size (exporters write
#: INT32_MAX or INT64_MAX)
_WHOLE_AXIS = 2 ** 31 - 1


def _picked(start: int, end: int, step: int, size: int) -> List[int]:
    """The indices a Slice takes along one axis (ONNX's clamping rules)."""
    if start < 0:
        start += size
    if end < 0:
        end += size
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
    else:
        start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return list(range(start, end, step))


@rule("Slice")
def slice_(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    rank = ctx.rank(x)
    starts, ends, axes, steps = _slice_bounds(ctx, node)
    pads = [0] * (2 * rank)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        if step == 1 and start == 0 and end >= _WHOLE_AXIS:
            continue  # the whole axis (the dynamo exporter's x[:, ...] on the batch): nothing to undo
        size = ctx.dims(x, [axis])[0]
        picks = _picked(start, end, step, size)
        if not picks:
            return only_first(node, ctx.e.zeros_like(x, ctx.dtype(x)))
        if step == 1:
            pads[axis], pads[rank + axis] = picks[0], size - picks[-1] - 1
        else:
            g = _along(ctx, g, axis, rank, picks, size, ctx.dtype(x))
    return only_first(node, ctx.e.pad(g, pads, dtype=ctx.dtype(x)))


def _pad_amounts(ctx: Context, node: onnx.NodeProto, rank: int) -> List[int]:
    """Pad's (begin..., end...) over all axes, from the attribute (opset < 11) or the inputs."""
    if ctx.opset < 11:
        return [int(p) for p in ctx.attr(node, "pads")]
    pads = ctx.constant(node.input[1])
    if pads is None:
        raise NoRule("Pad whose amounts are computed from the input")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes_input = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if axes_input is None:
        return pads
    axes = ctx.constant(axes_input)
    if axes is None:
        raise NoRule("Pad whose axes are computed from the input")
    full = [0] * (2 * rank)
    axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    return full


def _source(position: int, size: int, mode: str) -> Optional[int]:
    """The input index a padded position copies (None: the constant)."""
    if 0 <= position < size:
        return position
    if mode == "constant":
        return None
    if mode == "edge":
        return min(max(position, 0), size - 1)
    if mode == "wrap":
        return position % size
    period = 2 * (size - 1)  # reflect: mirror without repeating the edge
    if period == 0:
        return 0
    position %= period
    return position if position < size else period - position


@rule("Pad")
def pad(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    rank = ctx.rank(x)
    pads = _pad_amounts(ctx, node, rank)
    mode = ctx.attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "constant" and min(pads) >= 0:
        dims = [ctx.dims(x, [a])[0] if pads[a] or pads[rank + a] else None for a in range(rank)]
        axes = [a for a in range(rank) if dims[a] is not None]
        if not axes:
            return only_first(node, g)
        starts = [pads[a] for a in axes]
        return only_first(node, ctx.e.slice(g, starts, [s + dims[a] for s, a in zip(starts, axes)], axes))
    for axis in range(rank):
        if pads[axis] or pads[rank + axis]:
            size = ctx.dims(x, [axis])[0]
            length = size + pads[axis] + pads[rank + axis]
            picks = [_source(o - pads[axis], size, mode) for o in range(length)]
            g = _along(ctx, g, axis, rank, picks, size, ctx.dtype(x))
    return only_first(node, g)


@rule("Gather")
def gather(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """Constant indices: the 0/1 matrix product. Indices computed from shapes (the dynamo exporter's
    ``as_strided``): a ScatterElements that adds (opset 16)."""
    g, (x, indices) = grads[0], node.input
    if ctx.needs(indices):
        raise NoRule("Gather whose indices depend on the input's values")
    rank = ctx.rank(x)
    axis = int(ctx.attr(node, "axis", 0)) % rank
    index = ctx.constant(indices)
    index_rank = np.asarray(index).ndim if index is not None else ctx.rank(indices)
    if index_rank > 1:
        if rank != 1:
            raise NoRule("Gather with multi-dimensional indices on a tensor of rank > 1")
        g = ctx.e.op("Reshape", [g, ctx.e.ints([-1])])  # picking from a flat tensor: flatten both
        if index is None:
            indices = ctx.e.op("Reshape", [indices, ctx.e.ints([-1])])
        index_rank = 1
    if index_rank == 0:
        g = ctx.e.unsqueeze(g, [axis])
    if index is not None:
        size = ctx.dims(x, [axis])[0]
        picks = [int(i) % size for i in np.asarray(index).reshape(-1)]
        return [_along(ctx, g, axis, rank, picks, size, ctx.dtype(x)), None]
    if ctx.opset < 16:
        raise NoRule("Gather with computed indices needs opset 16 (ScatterElements with reduction)")
    e = ctx.e
    column = [1] * rank
    column[axis] = -1
    spread = e.op("Expand", [e.op("Reshape", [indices, e.ints(column)]), e.shape(g)])
    zeros = e.zeros_like(x, ctx.dtype(x))
    return [e.op("ScatterElements", [zeros, spread, g], axis=axis, reduction="add"), None]


@rule("Tile")
def tile(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """Each copy's gradient added back onto the input: the 0/1 matrix of ``i % size`` per tiled axis."""
    g, x = grads[0], node.input[0]
    repeats = ctx.constant(node.input[1])
    if repeats is None:
        raise NoRule("Tile whose repeats are computed from the input's values")
    rank = ctx.rank(x)
    for axis, times in enumerate(int(r) for r in np.asarray(repeats).reshape(-1)):
        if times != 1:
            size = ctx.dims(x, [axis])[0]
            g = _along(ctx, g, axis, rank, [i % size for i in range(size * times)], size, ctx.dtype(x))
    return [g, None]


@rule("GatherElements")
def gather_elements(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """The gradient added back where each element was taken from (a ScatterElements that adds)."""
    g, (x, indices) = grads[0], node.input
    if ctx.needs(indices):
        raise NoRule("GatherElements whose indices depend on the input's values")
    if ctx.opset < 16:
        raise NoRule("GatherElements needs opset 16 for its gradient (ScatterElements with reduction)")
    axis = int(ctx.attr(node, "axis", 0))
    zeros = ctx.e.zeros_like(x, ctx.dtype(x))
    return [ctx.e.op("ScatterElements", [zeros, indices, g], axis=axis, reduction="add"), None]


def _check_scatter(node: onnx.NodeProto, graph) -> Optional[str]:
    reduction = attribute(node, "reduction", b"none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    return None if reduction in ("none", "add") else f"{node.op_type} with reduction={reduction!r}"


@rule("ScatterND", "ScatterElements", check=_check_scatter)
def scatter(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``data`` with ``updates`` written at ``indices`` (each index once, as the exporters write a
    slice assignment): the data's gradient is ``g`` with zeros where it was overwritten (all of
    ``g`` with ``reduction="add"``), the updates' is ``g`` read at the indices."""
    g, (data, indices, updates) = grads[0], node.input
    if ctx.needs(indices):
        raise NoRule(f"{node.op_type} whose indices depend on the input's values")
    e = ctx.e
    elements = node.op_type == "ScatterElements"
    axis = {"axis": int(ctx.attr(node, "axis", 0))} if elements else {}
    reduction = ctx.attr(node, "reduction", b"none")
    overwritten = (reduction.decode() if isinstance(reduction, bytes) else reduction) == "none"
    data_grad = None
    if ctx.needs(data):
        data_grad = e.op(node.op_type, [g, indices, e.zeros_like(updates, ctx.dtype(updates))], **axis) \
            if overwritten else g
    updates_grad = None
    if ctx.needs(updates):
        updates_grad = e.op("GatherElements" if elements else "GatherND", [g, indices], **axis)
    return [data_grad, None, updates_grad]


# ---------------------------------------------------------------- sequences of a split (the dynamo exporter's split)
# The gradient of a sequence made by SplitToSequence is carried as a tensor of its source's shape:
# each SequenceAt puts its piece's gradient in place (zeros elsewhere), the consumers' sum is the
# source's gradient, and SplitToSequence passes it on.


def _split_piece(ctx: Context, split_node: onnx.NodeProto, position: int) -> Tuple[int, int, int, bool]:
    """(axis, start, end, axis kept) of piece ``position`` of a SplitToSequence."""
    x = split_node.input[0]
    rank = ctx.rank(x)
    axis = int(ctx.attr(split_node, "axis", 0)) % rank
    size = ctx.dims(x, [axis])[0]
    split = ctx.constant(split_node.input[1]) if len(split_node.input) > 1 and split_node.input[1] else None
    if len(split_node.input) > 1 and split_node.input[1] and split is None:
        raise NoRule("SplitToSequence whose split is computed from the input's values")
    if split is None:
        sizes, kept = [1] * size, bool(int(ctx.attr(split_node, "keepdims", 1)))
    elif np.asarray(split).ndim == 0:
        chunk = int(split)
        sizes, kept = [min(chunk, size - s) for s in range(0, size, chunk)], True
    else:
        sizes, kept = [int(v) for v in np.asarray(split).reshape(-1)], True
    position %= len(sizes)
    start = int(sum(sizes[:position]))
    return axis, start, start + sizes[position], kept


@rule("SequenceAt")
def sequence_at(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, (sequence, index) = grads[0], node.input
    producer = ctx.graph.producer.get(sequence)
    position = ctx.constant(index)
    if producer is None or producer.op_type != "SplitToSequence" or position is None:
        raise NoRule("SequenceAt of a sequence other than a SplitToSequence's, or at a computed position")
    x = producer.input[0]
    rank = ctx.rank(x)
    axis, start, end, kept = _split_piece(ctx, producer, int(np.asarray(position).reshape(-1)[0]))
    if not kept:
        g = ctx.e.unsqueeze(g, [axis])
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = start, ctx.dims(x, [axis])[0] - end
    return [ctx.e.pad(g, pads, dtype=ctx.dtype(x)), None]


@rule("SplitToSequence")
def split_to_sequence(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    return only_first(node, grads[0])  # already the source's gradient (see SequenceAt)
