"""Tensor shapes of :class:`OnnxBackend`'s model for an image size: by ONNX shape inference, and
where that cannot tell, off quiet trial runs (the values computed from the input's shape alone
included), cached per image size."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from . import layout as layouts, runtime
from .graph import node_name
from .shapes import TensorTypes, fill_from_runs, infer


class ShapeReading:
    """The shape half of :class:`OnnxBackend` (which provides the model, the lock and the caches)."""

    def _types_at(self, image: Tuple[int, ...]) -> TensorTypes:
        """Every tensor's shape and type for images of shape ``image`` (model layout), the batch axis
        free; shapes that inference cannot work out are read off two trial runs."""
        with self._lock:
            if image not in self._types:
                if len(self._types) >= runtime.SESSIONS_KEPT:
                    self._types.pop(next(iter(self._types)))
                model = self._base_model()
                types = infer(model, (None,) + tuple(image))
                if all(isinstance(d, int) for d in image):
                    types = fill_from_runs(types, self._base_graph(), lambda tensors, batch: self._trial(
                        model, tensors, (batch,) + tuple(image)))
                self._types[image] = types
            return self._types[image]

    def _shape_values(self, image: Tuple[int, ...], batch: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Tensors computed from the input's shape alone that the pixel computation reads (Slice bounds,
        Pad amounts, Gather indices), valued for images of ``image``: those the batch size does not
        change (``batch`` None), or their values for a batch of ``batch`` (1 or 2). Read off trial
        runs with batches of 1 and 2, once per image size."""
        with self._lock:
            if image not in self._shape_derived:
                if len(self._shape_derived) >= runtime.SESSIONS_KEPT:
                    self._shape_derived.pop(next(iter(self._shape_derived)))
                self._shape_derived[image] = self._read_shape_values(image)
            one, two = self._shape_derived[image]
            if batch is not None:
                return one if batch == 1 else two
            return {t: a for t, a in one.items() if t in two and np.array_equal(a, two[t])}

    def _read_shape_values(self, image: Tuple[int, ...]) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        graph, model = self._base_graph(), self._base_model()
        wanted = sorted({i for n in graph.data_nodes() for i in n.input if i in graph.producer
                         and node_name(graph.producer[i]) in graph.dynamic
                         and node_name(graph.producer[i]) not in graph.data})
        if not wanted or not all(isinstance(d, int) for d in image):
            return {}, {}
        try:
            one = dict(zip(wanted, self._trial(model, wanted, (1,) + tuple(image))))
        except Exception:  # a shape the model cannot take: nothing is known
            return {}, {}
        try:
            two = dict(zip(wanted, self._trial(model, wanted, (2,) + tuple(image))))
        except Exception:  # a batch fixed at 1: only batches of 1 ever run
            two = one
        return one, two

    def _trial(self, model: onnx.ModelProto, tensors: Sequence[str], shape: Tuple[int, ...]) -> List[np.ndarray]:
        """The values of ``tensors`` for zero images of ``shape`` (a throwaway, quiet session)."""
        augmented = onnx.ModelProto()
        augmented.CopyFrom(model)
        del augmented.graph.output[:]
        augmented.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
        session = runtime.new_session(augmented, ["CPUExecutionProvider"], quiet=True)
        return session.run(list(tensors), {self.input_name: np.zeros(shape, dtype=self.input_dtype)},
                           runtime.run_options(True))

    def _model_image(self, input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
        """One image's shape in the model's layout, from an NCHW ``(C, H, W)`` or ``(N, C, H, W)``
        (by default the graph's own, where it fixes one)."""
        if input_shape is None:
            image = tuple(d if isinstance(d, int) and d > 0 else None for d in self.input_shape[1:])
            return image  # type: ignore[return-value]
        shape = tuple(int(v) for v in input_shape)
        if len(shape) == len(self.input_shape):
            shape = shape[1:]
        return layouts.to_model((1,) + shape, self._layout)[1:]

    def _shape(self, tensor: str, image: Tuple) -> Optional[Tuple[Optional[int], ...]]:
        """A tensor's shape as cnnlens reports it: batch axis None, NHWC tensors as NCHW."""
        shape = self._types_at(image).shapes.get(tensor)
        if shape is None or len(shape) == 0:
            return shape
        shape = (None,) + tuple(shape[1:])
        return layouts.to_nchw(shape, layouts.NHWC) if tensor in self._nhwc else shape
