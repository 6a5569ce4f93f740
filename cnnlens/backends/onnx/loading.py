"""Reading ONNX models (paths, bytes, protos) with clear errors, and making a fixed batch dynamic."""

from __future__ import annotations

import os

import onnx

from ...core.errors import ModelError


def read_model(source) -> onnx.ModelProto:
    """An ONNX model from a path, bytes or a ModelProto, with clear errors for bad files."""
    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            model = onnx.load_from_string(bytes(source))
        else:
            path = os.fspath(source)
            if os.path.getsize(path) == 0:
                raise ModelError(f"{path} is empty: export the model again")
            model = onnx.load(path)
    except ModelError:
        raise
    except Exception as error:
        where = "" if isinstance(source, (bytes, bytearray, memoryview)) else f"{os.fspath(source)} is "
        raise ModelError(f"{where}not a readable ONNX model ({type(error).__name__}: {error}): is the file "
                         f"complete? Export it again") from None
    if not model.graph.node:
        raise ModelError("the ONNX model has no nodes: is the file complete?")
    return model


def batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the input's and outputs' first dimension symbolic (and stale shape hints dropped)."""
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    initializers = {t.name for t in dynamic.graph.initializer}
    values = [i for i in dynamic.graph.input if i.name not in initializers][:1] + list(dynamic.graph.output)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].Clear()
            dims[0].dim_param = "N"
    del dynamic.graph.value_info[:]
    return dynamic
