"""The model as something to build on: what the explainer builder reads of an ONNX backend for
one image size (the runnable model, its graph, every tensor's shape and type, the layout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, FrozenSet, Optional, Tuple

import numpy as np
import onnx

from .autodiff import opset_of
from .graph import Graph
from .head import Head, head_of
from .shapes import TensorTypes


@dataclass
class ModelView:
    """One ONNX model at one image size, read-only.

    ``model`` / ``graph``: the model as the backend runs it (a batch fixed at 1 made dynamic when
    a trial proved that safe; ``per_image`` when it could not be); ``image``: one image's shape in
    the model's own layout; ``layout``: the permutation taking NCHW to the input as stored;
    ``nhwc``: the tensors stored (N, H, W, C); ``types``: shapes (batch axis None) and element
    types; ``probe(tensor)``: a tensor computed from the input's shape alone, when the batch size
    does not change it."""

    model: onnx.ModelProto
    graph: Graph
    input_name: str
    output_name: str
    image: Tuple[int, ...]
    layout: Tuple[int, ...]
    nhwc: FrozenSet[str]
    types: TensorTypes
    probe: Callable[[str], Optional[np.ndarray]]
    per_image: bool = False
    _head: Optional[Head] = field(default=None, repr=False)

    @property
    def input_dtype(self) -> np.dtype:
        return self.types.dtypes.get(self.input_name, np.dtype(np.float32))

    def dtype(self, tensor: str) -> np.dtype:
        return self.types.dtypes.get(tensor, np.dtype(np.float32))

    def shape(self, tensor: str) -> Optional[Tuple[Optional[int], ...]]:
        """A tensor's shape as stored (batch axis None)."""
        return self.types.shapes.get(tensor)

    def nchw_shape(self, tensor: str) -> Optional[Tuple[Optional[int], ...]]:
        """A tensor's shape as cnnlens reports it: an NHWC tensor as NCHW."""
        shape = self.shape(tensor)
        if shape is not None and len(shape) == 4 and tensor in self.nhwc:
            return (shape[0], shape[3], shape[1], shape[2])
        return shape

    def head(self) -> Head:
        """The GAP -> linear head (a ModelError when the model has none)."""
        if self._head is None:
            self._head = head_of(self.graph, self.output_name, self.nhwc, self.probe)
        return self._head

    @property
    def opset(self) -> int:
        return opset_of(self.model)
