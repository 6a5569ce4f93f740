"""Randomised copies of an ONNX model for the model-parameter randomisation test (Adebayo et al. 2018)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import Graph


def _redrawn(tensor: onnx.TensorProto, rng: np.random.Generator, fill: Optional[float] = None) -> onnx.TensorProto:
    """An initializer's new value in its dtype and shape: N(0, the original's std), or ``fill``."""
    original = numpy_helper.to_array(tensor)
    if fill is not None:
        value = np.full(original.shape, fill)
    else:
        std = float(np.std(original.astype(np.float64))) if original.size else 0.0
        value = rng.normal(0.0, std, size=original.shape)
    return numpy_helper.from_array(value.astype(original.dtype), tensor.name)


def randomised_model(model: onnx.ModelProto, graph: Graph, layers: Sequence[str], seed: int) -> onnx.ModelProto:
    """A copy of ``model`` in which every initializer the named nodes take is re-drawn, for
    ``layers[i]`` from seed ``seed + i``: from N(0, the original values' std), dtype and shape
    kept; a BatchNormalization's mean and variance become 0 and 1 (as torch's reset). An
    initializer two nodes share is drawn once, by the first named; it changes for every node
    that takes it."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    targets = {t.name: t for t in copy.graph.initializer}
    done: set = set()
    for i, name in enumerate(layers):
        node = graph.by_name[name]
        rng = np.random.default_rng(int(seed) + i)
        statistics: Dict[Optional[str], float] = {}
        if node.op_type == "BatchNormalization":
            statistics = {graph.initializer_of(t): v for t, v in zip(node.input[3:5], (0.0, 1.0))}
        for tensor in graph.parameters(node):
            if tensor not in done:
                done.add(tensor)
                targets[tensor].CopyFrom(_redrawn(graph.initializers[tensor], rng, statistics.get(tensor)))
    return copy
