"""Every exportable method as a graph: which gradients it reads (computed once for all methods of
a file: one plain backward chain serves every layer gradient and the plain input gradient, each
other ReLU rule gets its own) and its head, the graph twin of the method's body in
``core/methods``. The registry says which methods export; this table says how, one entry each."""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np

from ....core.errors import LayerError
from ..autodiff import backward_chain
from . import heads, integrated, relevance, scorecam
from .context import Build, MethodRequest

#: the ReLU rule of the input gradient a method reads (methods absent read none)
INPUT_RULES = {"saliency": "plain", "input_x_gradient": "plain", "guided_backprop": "guided",
               "deconvnet": "deconv", "guided_gradcam": "guided"}
#: the methods that read their layers' true gradients
LAYER_GRADIENTS = frozenset(heads.GRADIENT_CAMS) | {"guided_gradcam"}


def compute_gradients(build: Build, requests: Sequence[MethodRequest]) -> None:
    """Every gradient the methods read, into ``build.gradients`` as NCHW float32: one backward chain
    per ReLU rule, from one forward pass."""
    sources: Dict[str, List[str]] = {}
    for request in requests:
        rule = INPUT_RULES.get(request.name)
        if rule is not None:
            sources.setdefault(rule, []).append(build.x)
        if request.name in LAYER_GRADIENTS:
            sources.setdefault("plain", []).extend(build.tensor(layer) for layer in request.layers)
    view = build.view
    for rule, tensors in sources.items():
        tensors = list(dict.fromkeys(tensors))
        found = backward_chain(build.e, view.graph, view.output_name, build.seed, rule, tensors,
                               view.types.shapes, view.types.dtypes, view.probe)
        for tensor in tensors:
            build.gradients[(rule, tensor)] = build.like(found[tensor], tensor)


def _input_gradient(build: Build, request: MethodRequest) -> str:
    return build.gradients[(INPUT_RULES[request.name], build.x)]


def _input_x_gradient(build: Build, request: MethodRequest) -> str:
    return build.e.mul(build.nchw(build.x), _input_gradient(build, request))


def _stacked(build: Build, maps: List[str], as_list: bool) -> str:
    """One map, or a list of maps stacked along a new layer axis 1."""
    if not as_list:
        return maps[0]
    return build.e.op("Concat", [build.e.unsqueeze(m, [1]) for m in maps], axis=1)


def _cams(build: Build, request: MethodRequest, weighting: str) -> str:
    """The CAM ``weighting`` at each layer, resized to the input: (N, H, W) or (N, L, H, W)."""
    maps = []
    for layer in request.layers:
        tensor = build.tensor(layer)
        cam = heads.GRADIENT_CAMS[weighting](build.e, build.nchw(tensor), build.gradients[("plain", tensor)])
        maps.append(heads.resize_bilinear(build.e, cam, build.layer_shape(layer)[1:], build.image[1:]))
    return _stacked(build, maps, request.as_list)


def _gradient_cam(build: Build, request: MethodRequest) -> str:
    return _cams(build, request, request.name)


def _guided_gradcam(build: Build, request: MethodRequest) -> str:
    cams = _cams(build, request, "gradcam")
    return heads.guided_gradcam(build.e, _input_gradient(build, request), cams, layered=request.as_list)


def _cam(build: Build, request: MethodRequest) -> str:
    head, e = build.view.head(), build.e
    pooled = build.nchw(head.pooled)
    weight = e.op("Transpose", [head.weight], perm=[1, 0]) if head.transposed else head.weight
    weight = e.scale(weight, head.alpha, build.view.dtype(head.weight))
    if build.view.dtype(head.weight) != np.float32:
        weight = e.op("Cast", [weight], to=1)
    if build.weights is not None:  # output weights: the head's rows weighted by them
        rows = e.op("MatMul", [e.op("Reshape", [build.nchw(build.weights), e.ints([0, -1])]), weight])
        cam = heads.weighted_sum(e, pooled, rows)
    else:
        cam = heads.cam(e, pooled, weight, build.classes)
    size = build.view.nchw_shape(head.pooled)[2:]  # type: ignore[index]
    return heads.resize_bilinear(e, cam, size, build.image[1:])


def _feature_maps(build: Build, request: MethodRequest) -> str:
    shapes = {build.layer_shape(layer) for layer in request.layers}
    if len(shapes) != 1:
        raise LayerError(f"feature_maps of several layers need equal shapes to stack, got {sorted(shapes)}: "
                         f"export one layer")
    return _stacked(build, [build.nchw(build.tensor(layer)) for layer in request.layers], request.as_list)


#: method -> its head: (build, request) -> the raw map tensor, NCHW float32, as ``explain`` returns it
HEADS: Dict[str, Callable[[Build, MethodRequest], str]] = {
    "saliency": _input_gradient,
    "guided_backprop": _input_gradient,
    "deconvnet": _input_gradient,
    "input_x_gradient": _input_x_gradient,
    "integrated_gradients": integrated.integrated_gradients,
    "lrp": relevance.relevance,
    "deeplift": relevance.relevance,
    **{name: _gradient_cam for name in heads.GRADIENT_CAMS},
    "guided_gradcam": _guided_gradcam,
    "cam": _cam,
    "scorecam": scorecam.scorecam,
    "feature_maps": _feature_maps,
}
