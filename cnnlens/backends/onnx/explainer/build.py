"""One ONNX file that is the model and its explainer: the original input and outputs, unchanged,
plus one output ``map_<method>`` per method, all from one forward pass (and one backward chain per
ReLU rule), in the model's own opset and sharing its weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import onnx
from onnx import TensorProto, helper

from ....core.errors import UnsupportedError
from ....core.methods import LAYER_MAP, INPUT, lookup
from ..autodiff import UnsupportedOp
from ..view import ModelView
from . import heads
from .context import TARGETS, Build, MethodRequest
from .recipes import HEADS, compute_gradients

#: the prefix of every map output: ``map_gradcam``, ``map_saliency``, ...
MAP_PREFIX = "map_"


@dataclass
class ExplainerModel:
    """The built model and what it holds: for each method, its output's name and shape ("N" the
    batch) and the layer(s) it explains; the inputs added for the target."""

    model: onnx.ModelProto
    outputs: Dict[str, str]
    shapes: Dict[str, Tuple[Union[int, str], ...]]
    layers: Dict[str, Union[None, str, List[str]]] = field(default_factory=dict)
    target_inputs: List[str] = field(default_factory=list)


def map_shape(kind: str, request: MethodRequest, build: Build, normalize: bool) -> Tuple[Union[int, str], ...]:
    """The shape of a method's map output ("N" for the batch)."""
    c, h, w = build.image
    layers = (len(request.layers),) if request.as_list else ()
    if kind == LAYER_MAP:
        return ("N",) + layers + build.layer_shape(request.layers[0])
    if kind == INPUT and not normalize:
        return ("N",) + layers + (c, h, w)
    return ("N",) + layers + (h, w)


def _displayed(e, kind: str, maps: str, rank: int) -> str:
    """What an app overlays: a CAM min-max scaled per map; an input attribution as the sum of |g|
    over channels, then min-max; activations min-max per channel."""
    if kind == INPUT:
        maps, rank = heads.grayscale(e, maps, axis=rank - 3), rank - 1
    return heads.normalize_minmax(e, maps, [rank - 2, rank - 1])


def build_explainer(view: ModelView, requests: Sequence[MethodRequest], target: str = "predicted",
                    normalize: bool = False) -> ExplainerModel:
    """The explainer model for ``requests`` (methods with their layers and checked options)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    build = Build(view, target)
    for request in requests:
        if "reshape" in request.options:  # the methods that read layers as maps
            for layer in request.layers:
                build.read_layer(layer, request.options["reshape"], request.name)
    try:
        compute_gradients(build, requests)
        maps: Dict[str, Tuple[str, Tuple]] = {}
        for request in requests:
            kind = lookup(request.name).kind
            raw = HEADS[request.name](build, request)
            shape = map_shape(kind, request, build, normalize)
            value = _displayed(build.e, kind, raw, len(shape) + (kind == INPUT)) if normalize else raw
            maps[request.name] = (build.guard(value, len(shape)), shape)
    except UnsupportedOp as error:
        raise UnsupportedError(f"cannot write the explainer: the gradient cannot pass {error}") from None
    return _assemble(view, build, requests, maps)


def _batch_dim(view: ModelView) -> Union[int, str]:
    dims = next(i for i in view.model.graph.input if i.name == view.input_name).type.tensor_type.shape.dim
    first = dims[0] if len(dims) else None
    if first is not None and first.HasField("dim_param") and first.dim_param:
        return first.dim_param
    return 1 if view.per_image else "N"


def _assemble(view: ModelView, build: Build, requests: Sequence[MethodRequest],
              maps: Dict[str, Tuple[str, Tuple]]) -> ExplainerModel:
    model = onnx.ModelProto()
    model.CopyFrom(view.model)
    graph = model.graph
    batch = _batch_dim(view)
    initializers = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in initializers]  # weights listed as inputs could be fed
    del graph.input[:]
    graph.input.extend(kept)
    if model.ir_version < 4:  # from IR 4 on, initializers need not be inputs (and are then constants)
        model.ir_version = 4
    image = next(i for i in graph.input if i.name == view.input_name)
    dims = image.type.tensor_type.shape.dim
    for axis, size in enumerate(view.image, start=1):  # the size the maps were built for
        dims[axis].Clear()
        dims[axis].dim_value = int(size)
    dims[0].Clear()
    if isinstance(batch, int):
        dims[0].dim_value = batch
    else:
        dims[0].dim_param = batch
    for name, elem, rest in build.inputs:  # batch first, like the image input
        graph.input.append(helper.make_tensor_value_info(name, elem, [batch] + list(rest)))
    graph.node.extend(build.e.nodes)
    outputs, shapes = {}, {}
    for request in requests:
        tensor, shape = maps[request.name]
        name = MAP_PREFIX + request.name
        graph.node.append(helper.make_node("Identity", [tensor], [name], name=name))
        dims_out = [batch if d == "N" else int(d) for d in shape]
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims_out))
        outputs[request.name], shapes[name] = name, tuple(dims_out)
    graph.initializer.extend(build.e.initializers)
    del graph.value_info[:]  # shapes the exporter recorded for a batch of one no longer hold
    layers = {r.name: (list(r.layers) if r.as_list else r.layers[0]) if r.layers else None for r in requests}
    return ExplainerModel(model, outputs, shapes, layers, [name for name, _, _ in build.inputs])


def check_names(view: ModelView, methods: Sequence[str]) -> Optional[str]:
    """A method whose output name the model already uses, if any."""
    taken = {o.name for o in view.model.graph.output} | {o for n in view.model.graph.node for o in n.output}
    return next((m for m in methods if MAP_PREFIX + m in taken), None)
