"""Resampling: Resize (opset 10 on) and Upsample (opsets 7 to 9).

Every mode ONNX Runtime runs — nearest with each rounding mode, linear, cubic, with every
coordinate transformation, antialiasing, ``exclude_outside`` — resamples each axis on its own:
along a resized axis ``y = A x`` with a constant matrix ``A`` (out x in) that depends only on the
sizes, the scale and the attributes. The input gradient is ``g A`` along each resized axis. ``A``
is computed in the graph by the node's own op, with the node's own attributes, resizing an
identity along that one axis (ONNX Runtime folds it once when the session starts), so the
gradient is the exact adjoint of the forward that runs, whatever the runtime's reading of a mode.
``tf_crop_and_resize`` (a region of interest) and a ``keep_aspect_ratio_policy`` other than
``stretch`` have no rule.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import onnx

from ...graph import attribute
from ..context import Context, NoRule
from .base import only_first, rule
from .shape import contract

#: attributes of Resize that the probe node does not copy (it states every axis's scale itself)
_NOT_COPIED = ("axes", "keep_aspect_ratio_policy")


def _check_resize(node: onnx.NodeProto, graph) -> Optional[str]:
    mode = attribute(node, "coordinate_transformation_mode", b"half_pixel")
    if (mode.decode() if isinstance(mode, bytes) else mode) == "tf_crop_and_resize":
        return f"{node.op_type} with tf_crop_and_resize (a region of interest)"
    policy = attribute(node, "keep_aspect_ratio_policy", b"stretch")
    if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
        return f"{node.op_type} with keep_aspect_ratio_policy={policy!r}"
    return None


def _given(ctx: Context, node: onnx.NodeProto, rank: int) -> Tuple[str, np.ndarray]:
    """("scales", per-axis scales) or ("sizes", per-axis output sizes), over all ``rank`` axes. Sizes
    computed from the input's shape (``F.interpolate(x, size=y.shape[2:])``: they hold the batch
    size too) are read off the output's shape at this image size."""
    if node.op_type == "Upsample" and ctx.opset < 9:
        return "scales", np.asarray(ctx.attr(node, "scales"), dtype=np.float64)
    inputs = {"scales": 1, "sizes": None} if ctx.opset < 11 else {"scales": 2, "sizes": 3}
    for kind, position in inputs.items():
        tensor = node.input[position] if position is not None and len(node.input) > position else ""
        if not tensor:
            continue
        value = ctx.constant(tensor)
        if value is None and not ctx.needs(tensor):
            return "sizes", _output_sizes(ctx, node, rank)
        if value is None:
            raise NoRule(f"{node.op_type} whose {kind} are computed from the input's values")
        value = np.asarray(value).reshape(-1)
        if value.size == 0:  # an empty scales tensor beside the sizes
            continue
        axes = ctx.attr(node, "axes", None)
        if axes is not None:  # opset 18: scales / sizes for these axes only
            full = np.ones(rank) if kind == "scales" else np.asarray(ctx.dims(node.input[0], range(rank)))
            full = full.astype(value.dtype)
            full[[int(a) % rank for a in axes]] = value
            value = full
        return kind, value
    raise NoRule(f"{node.op_type} with neither scales nor sizes")


def _output_sizes(ctx: Context, node: onnx.NodeProto, rank: int) -> np.ndarray:
    """The output's size along every axis (an axis of unknown size — the batch — kept as it is)."""
    x, y = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if x is None or y is None:
        raise NoRule(f"{node.op_type} whose sizes are computed and whose output shape is unknown")
    sizes = []
    for axis in range(rank):
        if y[axis] is None and x[axis] is not None or y[axis] is not None and x[axis] is None:
            raise NoRule(f"{node.op_type} whose output size along axis {axis} is unknown")
        sizes.append(-1 if y[axis] is None else int(y[axis]))
    return np.asarray(sizes, dtype=np.int64)


def _axis_matrix(ctx: Context, node: onnx.NodeProto, kind: str, size: int, target: float, dtype: np.dtype) -> str:
    """(out, in): the node's op, with its attributes, resizing an identity along its last axis only."""
    e = ctx.e
    identity = e.const(np.eye(size, dtype=dtype).reshape(size, 1, 1, size), "resize_identity")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name not in _NOT_COPIED}
    if node.op_type == "Upsample" and ctx.opset < 9:
        resized = e.op("Upsample", [identity], **{**attrs, "scales": [1.0, 1.0, 1.0, float(target)]})
    elif kind == "scales":
        scales = e.const(np.array([1, 1, 1, target], dtype=np.float32), "resize_scales")
        inputs = [identity, scales] if ctx.opset < 11 else [identity, e.const(np.zeros(0, np.float32), "roi"), scales]
        resized = e.op(node.op_type, inputs, **attrs)
    else:
        sizes = e.const(np.array([size, 1, 1, int(target)], dtype=np.int64), "resize_sizes")
        empty = e.const(np.zeros(0, np.float32), "roi")
        resized = e.op(node.op_type, [identity, empty, empty, sizes], **attrs)
    columns = e.op("Reshape", [resized, e.ints([size, -1])])  # (in, out): column i is A e_i
    return e.op("Transpose", [columns], perm=[1, 0])


@rule("Resize", "Upsample", check=_check_resize)
def resize(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    g, x = grads[0], node.input[0]
    rank = ctx.rank(x)
    kind, given = _given(ctx, node, rank)
    dtype = ctx.dtype(x)
    for axis in range(rank):
        target = float(given[axis])
        if (kind == "scales" and target == 1.0) or (kind == "sizes" and (
                int(target) == -1 or int(target) == ctx.dims(x, [axis])[0])):
            continue  # an axis left as it is (the batch, whose size is open): the identity
        size = ctx.dims(x, [axis])[0]
        g = contract(ctx, g, axis, rank, _axis_matrix(ctx, node, kind, size, target, dtype))
    return only_first(node, g)
