"""What every head reads while the explainer is built: the emitter, the model view, the explained
target (as gradient rows and, for classes, indices), and tensors re-laid out NCHW."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
from onnx import TensorProto, helper

from ....core.errors import LayerError, TargetError, UnsupportedError
from ....core.tokens import MapReading, ReshapeSpec, map_grids, parse_reshape, read_as_maps
from ..autodiff import Emitter, class_rows, predicted_classes, taken_names
from ..view import ModelView

#: how the explained target reaches the file: each image's predicted class, a class per image fed
#: as the int64 input ``target``, or output weights fed as the float input ``target_weights``
TARGETS = ("predicted", "input", "weights")
TARGET_INPUT, WEIGHTS_INPUT = "target", "target_weights"


@dataclass
class MethodRequest:
    """One method to write: its canonical layers (empty for input attributions) and checked options."""

    name: str
    layers: Tuple[str, ...] = ()
    as_list: bool = False
    options: Dict[str, object] = field(default_factory=dict)


class Build:
    """The explainer under construction (one per file)."""

    def __init__(self, view: ModelView, target: str):
        self.view = view
        self.e = Emitter(view.opset, taken_names(view.model), "cnnlens_explain/")
        self.x = view.input_name
        self.output = view.output_name
        #: the inputs the explainer adds: (name, element type, dimensions after the batch axis)
        self.inputs: List[Tuple[str, int, List]] = []
        #: the NCHW image size (C, H, W)
        self.image = tuple(int(view.image[view.layout.index(axis) - 1]) for axis in (1, 2, 3))
        self.classes: Optional[str] = None  # int64 (N,), safe to gather with
        self.valid: Optional[str] = None    # float (N,): 1 where the fed class is in range, else NaN
        self.weights: Optional[str] = None  # the fed output weights
        self._nchw: Dict[str, str] = {}
        #: the layers' tensors and how each reads as (N, K, h, w) maps (tokens, channels-last maps)
        self.readings: Dict[str, MapReading] = {}
        self.seed = self._target(target)
        self.gradients: Dict[Tuple[str, str], str] = {}  # (ReLU rule, tensor) -> gradient, NCHW

    # ------------------------------------------------------------ the target

    def class_count(self) -> int:
        shape = self.view.shape(self.output)
        if shape is None or not (len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1))) or shape[1] is None:
            raise TargetError(
                f"the model's output {self.output!r} has shape {shape}, not (N, classes), so a class does not say "
                f"what to explain: export with target='weights' (command line: --target weights), which adds an "
                f"input 'target_weights' of the output's shape (the explained score is sum(weights * output))")
        return int(shape[1])

    def _target(self, target: str) -> str:
        e, dtypes = self.e, self.view.types.dtypes
        if target == "weights":
            shape = self.view.shape(self.output) or (None,)
            elem = helper.np_dtype_to_tensor_dtype(self.view.dtype(self.output))
            dims = [d if d is not None else f"d{i}" for i, d in enumerate(shape[1:], 1)]
            self.inputs.append((WEIGHTS_INPUT, elem, dims))
            self.weights = WEIGHTS_INPUT
            return WEIGHTS_INPUT
        count = self.class_count()
        if target == "predicted":
            self.classes = predicted_classes(e, self.output)
            return class_rows(e, self.classes, self.output, dtypes)
        self.inputs.append((TARGET_INPUT, TensorProto.INT64, []))
        fed = TARGET_INPUT
        in_range = e.op("And", [e.op("Not", [e.op("Less", [fed, e.const(np.asarray(0, np.int64), "zero")])]),
                               e.op("Less", [fed, e.const(np.asarray(count, np.int64), "classes")])])
        nan = np.asarray(np.nan, dtype=np.float32)
        self.valid = e.op("Where", [in_range, e.scalar(1.0, np.dtype(np.float32)), e.const(nan, "nan")])
        self.classes = e.op("Where", [in_range, fed, e.const(np.asarray(0, np.int64), "zero")])
        return class_rows(e, self.classes, self.output, dtypes)

    def guard(self, maps: str, rank: int) -> str:
        """``maps`` as NaN for images whose fed class is out of range (nothing to do otherwise)."""
        if self.valid is None:
            return maps
        return self.e.mul(maps, self.e.unsqueeze(self.valid, list(range(1, rank))))

    # ------------------------------------------------------------ layouts

    def nchw(self, tensor: str) -> str:
        """``tensor`` as float32, an NHWC one transposed to NCHW (once per tensor)."""
        if tensor not in self._nchw:
            self._nchw[tensor] = self.like(tensor, tensor)
        return self._nchw[tensor]

    def like(self, value: str, tensor: str) -> str:
        """``value`` (laid out as ``tensor``: its activation or its gradient) as float32 NCHW."""
        if self.view.dtype(tensor) != np.float32:
            value = self.e.op("Cast", [value], to=TensorProto.FLOAT)
        if tensor in self.view.nhwc and len(self.view.shape(tensor) or ()) == 4:
            value = self.e.op("Transpose", [value], perm=[0, 3, 1, 2])
        reading = self.readings.get(tensor)
        return value if reading is None or reading.plain else self._as_maps(value, reading)

    def read_layer(self, layer: str, reshape: ReshapeSpec, method: str) -> None:
        """Decide how ``layer``'s output reads as maps (as ``cnnlens.explain`` does; ``reshape`` as
        there, but no function: a file holds no Python), before any head reads it."""
        tensor = self.tensor(layer)
        if parse_reshape(reshape).function is not None:
            raise UnsupportedError("a reshape function cannot be written into an ONNX file: state the layout "
                                   "(reshape='HxW,drop=D,channels=first|last') instead")
        shape = self.view.nchw_shape(tensor)
        if shape is None or any(d is None for d in shape[1:]):
            raise LayerError(f"layer {layer!r}'s output shape is not known ({shape}), so the explainer cannot lay "
                             f"it out as maps: name a layer with a fixed shape")
        reading = read_as_maps(layer, (1,) + tuple(int(d) for d in shape[1:]), self.image[1:], reshape, method,
                               self._model_grids)
        if self.readings.setdefault(tensor, reading) != reading:
            raise LayerError(f"layer {layer!r} is read two ways by the exported methods' reshape options: give "
                             f"them one")

    def _model_grids(self) -> Set[Tuple[int, int]]:
        """The (h, w) of every (N, K, h, w) map in the model (its patch embedding's among them)."""
        return map_grids(self.view.nchw_shape(node.output[0]) for node in self.view.graph.data_nodes())

    def _as_maps(self, value: str, reading: MapReading) -> str:
        """``MapReading.read`` as ONNX ops."""
        e, (h, w) = self.e, reading.grid
        if reading.layout == "NHWC":
            return e.op("Transpose", [value], perm=[0, 3, 1, 2])
        token_axis = 1 if reading.layout == "NTC" else 2
        if reading.drop:
            value = e.slice(value, [reading.drop], [2 ** 62], [token_axis])
        if reading.layout == "NTC":
            grid = e.op("Reshape", [value, e.ints([0, h, w, -1])])
            return e.op("Transpose", [grid], perm=[0, 3, 1, 2])
        return e.op("Reshape", [value, e.ints([0, -1, h, w])])

    def to_model_layout(self, images: str, e: Optional[Emitter] = None) -> str:
        """NCHW float32 images as the model takes them (its layout and dtype), written by ``e``
        (a Loop body's emitter; by default the explainer's)."""
        e = e or self.e
        if self.view.layout != (0, 1, 2, 3):
            images = e.op("Transpose", [images], perm=list(self.view.layout))
        if self.view.input_dtype != np.float32:
            images = e.op("Cast", [images], to=helper.np_dtype_to_tensor_dtype(self.view.input_dtype))
        return images

    def layer_shape(self, layer: str) -> Tuple[int, ...]:
        """A layer's (K, h, w) as maps (NCHW)."""
        tensor = self.tensor(layer)
        shape = self.view.nchw_shape(tensor)
        reading = self.readings.get(tensor)
        if reading is not None:
            return reading.map_shape((1,) + tuple(int(d) for d in shape[1:]))[1:]  # type: ignore[index,arg-type]
        return tuple(int(d) for d in shape[1:])  # type: ignore[union-attr,arg-type]

    def tensor(self, layer: str) -> str:
        return self.view.graph.by_name[layer].output[0]
