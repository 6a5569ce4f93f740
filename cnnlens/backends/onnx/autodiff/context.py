"""What a backward rule sees: the emitter, tensor shapes and types, constants, which inputs need a gradient."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Set, Tuple

import numpy as np
import onnx

from ..graph import Graph, attribute, node_name
from ..shapes import Shape
from .emit import Emitter


class NoRule(Exception):
    """A node cannot be differentiated; the message says why (the builder adds the node)."""


class Context:
    """Everything a rule may ask about the forward graph while it writes backward nodes."""

    def __init__(self, emitter: Emitter, graph: Graph, shapes: Dict[str, Shape], dtypes: Dict[str, np.dtype],
                 relu: str, needed: Set[str], probe: Optional[Callable[[str], Optional[np.ndarray]]] = None):
        self.e = emitter
        self.graph = graph
        self._shapes = shapes
        self._dtypes = dtypes
        #: the ReLU rule for Relu nodes: "plain", "guided" or "deconv"
        self.relu = relu
        self._needed = needed
        self._probe = probe

    @property
    def opset(self) -> int:
        return self.e.opset

    def needs(self, tensor: str) -> bool:
        """Whether a gradient must flow into ``tensor`` (it lies between a source and the output)."""
        return bool(tensor) and tensor in self._needed

    def shape(self, tensor: str) -> Optional[Shape]:
        """The tensor's shape from shape inference (the batch axis and unknown dims as None)."""
        return self._shapes.get(tensor)

    def rank(self, tensor: str) -> int:
        shape = self.shape(tensor)
        if shape is None:
            raise NoRule(f"the rank of tensor {tensor!r} is unknown (shape inference could not work it out)")
        return len(shape)

    def dims(self, tensor: str, axes: Sequence[int]) -> Tuple[int, ...]:
        """Static sizes of ``tensor`` along ``axes``, or NoRule when one is unknown."""
        shape = self.shape(tensor)
        if shape is None:
            raise NoRule(f"the shape of tensor {tensor!r} is unknown (shape inference could not work it out)")
        sizes = tuple(shape[a] for a in axes)
        if any(s is None for s in sizes):
            raise NoRule(f"tensor {tensor!r} has shape {shape}: its sizes along axes {list(axes)} must be known")
        return sizes  # type: ignore[return-value]

    def dtype(self, tensor: str) -> np.dtype:
        return self._dtypes.get(tensor, np.dtype(np.float32))

    def constant(self, tensor: str) -> Optional[np.ndarray]:
        """The value of a tensor that does not depend on the input's values (a weight, or a bound
        computed from the input's shape that is the same for every batch size), or None."""
        if not tensor or self.needs(tensor):
            return None
        value = self.graph.constant(tensor)
        producer = self.graph.producer.get(tensor)
        if value is None and self._probe is not None and producer is not None and \
                node_name(producer) not in self.graph.data:
            value = self._probe(tensor)
        return value

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default=None):
        return attribute(node, name, default)
