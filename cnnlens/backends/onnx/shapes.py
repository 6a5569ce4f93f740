"""Tensor shapes and element types of an ONNX graph, by ONNX shape inference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

Shape = Tuple[Optional[int], ...]


def shape_of(value_info: onnx.ValueInfoProto) -> Optional[Shape]:
    """A value's shape with unknown or symbolic dimensions as None."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def _dtype(elem_type: int) -> Optional[np.dtype]:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else None
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class TensorTypes:
    """Every tensor's shape (None for an unknown or symbolic dimension) and element type."""

    shapes: Dict[str, Shape] = field(default_factory=dict)
    dtypes: Dict[str, np.dtype] = field(default_factory=dict)


def infer(model: onnx.ModelProto, input_shape: Optional[Sequence[Optional[int]]] = None) -> TensorTypes:
    """Shapes and types of every tensor, with the input set to ``input_shape`` if given (a None
    entry stays symbolic: ``(None, 3, 224, 224)`` keeps the batch axis free)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    initializers = {t.name: t for t in probe.graph.initializer}
    if input_shape is not None:
        first = next(i for i in probe.graph.input if i.name not in initializers)
        dims = first.type.tensor_type.shape.dim
        for axis, (dim, value) in enumerate(zip(dims, input_shape)):
            dim.Clear()
            if value is None:
                dim.dim_param = "N" if axis == 0 else f"cnnlens_d{axis}"
            else:
                dim.dim_value = int(value)
    recorded = list(probe.graph.value_info)
    del probe.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is best effort: custom ops and odd graphs stop it
        inferred = probe
    found = TensorTypes()
    for info in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        shape = shape_of(info)
        if shape is not None:
            found.shapes[info.name] = shape
        dtype = _dtype(info.type.tensor_type.elem_type)
        if dtype is not None:
            found.dtypes[info.name] = dtype
    for info in recorded:  # what inference could not work out, as the exporter recorded it
        shape = shape_of(info)
        if info.name not in found.shapes and shape is not None:
            found.shapes[info.name] = shape
        dtype = _dtype(info.type.tensor_type.elem_type)
        if info.name not in found.dtypes and dtype is not None:
            found.dtypes[info.name] = dtype
    for name, tensor in initializers.items():
        found.shapes[name] = tuple(int(d) for d in tensor.dims)
        dtype = _dtype(tensor.data_type)
        if dtype is not None:
            found.dtypes[name] = dtype
    return found


def _complete(shape: Optional[Shape]) -> bool:
    return shape is not None and all(d is not None for d in shape[1:])


def fill_from_runs(types: TensorTypes, graph, run: Callable[[List[str], int], List[np.ndarray]]) -> TensorTypes:
    """``types`` with the shapes inference left open (of every tensor the pixel computation makes or
    reads: ViT's class token is expanded from the batch size) read off the tensors' values for a
    batch of 1 and of 2 zero images (``run(tensors, batch)``): an axis whose size follows the batch
    stays None. Unchanged when the runs fail (a shape the model cannot take)."""
    data = graph.data_nodes()
    tensors = [o for n in data for o in n.output] + [i for n in data for i in n.input if i in graph.producer]
    wanted = list(dict.fromkeys(t for t in tensors if t and not _complete(types.shapes.get(t))))
    if not wanted:
        return types
    try:
        first = run(wanted, 1)
    except Exception:
        return types
    try:
        second: Optional[List[np.ndarray]] = run(wanted, 2)
    except Exception:  # a batch fixed at 1: the leading axis is the batch
        second = None
    for tensor, a, b in zip(wanted, first, second or first):
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim != b.ndim:
            continue
        shape = [None if (second is None and axis == 0) or da != db else int(da)
                 for axis, (da, db) in enumerate(zip(a.shape, b.shape))]
        types.shapes[tensor] = tuple(shape)
        types.dtypes.setdefault(tensor, a.dtype)
    return types
