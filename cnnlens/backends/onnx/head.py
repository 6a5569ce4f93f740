"""Finding a CAM head in an ONNX graph: global average pooling -> [Flatten / Reshape ...] ->
one Gemm or MatMul [-> bias Add] [-> Softmax], and its weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Callable, Optional, Tuple

import numpy as np
import onnx

from ...core.errors import ModelError
from .graph import Graph, attribute

_PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity", "Unsqueeze"}
SCORE_OPS = {"Softmax", "LogSoftmax"}


def _is_global_pool(node: onnx.NodeProto, graph: Graph, nhwc: AbstractSet[str]) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type == "ReduceMean":
        axes = attribute(node, "axes")
        if axes is None and len(node.input) > 1:
            value = graph.constant(node.input[1])
            axes = None if value is None else value.tolist()
        spatial = [1, 2] if node.input[0] in nhwc else [2, 3]
        return axes is not None and sorted(int(a) % 4 for a in axes) == spatial
    return False


def _is_identity_gather(node: onnx.NodeProto, probe: Optional[Callable[[str], Optional[np.ndarray]]]) -> bool:
    """A Gather that takes every element of a flat tensor in order: the dynamo exporter's ``as_strided``
    where the strides describe the contiguous layout (its indices are computed from shapes, so they
    are read off ``probe``)."""
    if node.op_type != "Gather" or int(attribute(node, "axis", 0)) != 0 or probe is None:
        return False
    indices = probe(node.input[1])
    return indices is not None and np.array_equal(np.asarray(indices).reshape(-1), np.arange(np.asarray(indices).size))


@dataclass(frozen=True)
class Head:
    """A GAP -> linear head: the tensor it pools, and its weight as the graph holds it: tensor
    ``weight`` stored (classes, K) or, when ``transposed``, (K, classes), scaled by ``alpha``."""

    pooled: str
    weight: str
    transposed: bool
    alpha: float = 1.0

    def matrix(self, graph: Graph) -> np.ndarray:
        """The weights (classes, K) as an array."""
        value = np.asarray(graph.constant(self.weight), dtype=np.float32)
        return (value.T if self.transposed else value) * np.float32(self.alpha)


def find_head(graph: Graph, output: str, nhwc: AbstractSet[str] = frozenset(),
              probe: Optional[Callable[[str], Optional[np.ndarray]]] = None) -> Tuple[str, np.ndarray]:
    """(the tensor the head pools, the head's weights (classes, K)); a ModelError when the model
    has no such head. ``nhwc``: the tensors stored (N, H, W, C); ``probe``: the value of a tensor
    computed from the input's shape."""
    head = head_of(graph, output, nhwc, probe)
    return head.pooled, head.matrix(graph)


def head_of(graph: Graph, output: str, nhwc: AbstractSet[str] = frozenset(),
            probe: Optional[Callable[[str], Optional[np.ndarray]]] = None) -> Head:
    """The model's GAP -> linear head (see :func:`find_head`)."""
    fail = ModelError(
        "cam needs a model whose head is global average pooling followed by one Gemm or MatMul; "
        "this graph has none. Use gradcam, scorecam or occlusion, which work on any ONNX model"
    )
    node = graph.producer.get(output)
    if node is not None and node.op_type in SCORE_OPS:
        node = graph.producer.get(node.input[0])
    if node is not None and node.op_type == "Add":
        data = [i for i in node.input if graph.constant(i) is None]
        node = graph.producer.get(data[0]) if len(data) == 1 else None
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        raise fail
    weight = graph.constant(node.input[1])
    if weight is None or weight.ndim != 2:
        raise fail
    if node.op_type == "Gemm":
        if attribute(node, "transA", 0):
            raise fail
        transposed, alpha = not attribute(node, "transB", 0), float(attribute(node, "alpha", 1.0))
    else:
        transposed, alpha = True, 1.0
    tensor = node.input[0]
    pool = graph.producer.get(tensor)
    while pool is not None and (pool.op_type in _PASS_THROUGH or _is_identity_gather(pool, probe)):
        tensor = pool.input[0]
        pool = graph.producer.get(tensor)
    if pool is None or not _is_global_pool(pool, graph, nhwc):
        raise fail
    pooled = pool.input[0]
    relaid = graph.producer.get(pooled)
    if relaid is not None and relaid.op_type == "Transpose" and pooled in nhwc and relaid.input[0] not in nhwc:
        pooled = relaid.input[0]  # tf2onnx lays the last map out NHWC just to pool it: the map itself
    return Head(pooled, node.input[1], transposed, alpha)
