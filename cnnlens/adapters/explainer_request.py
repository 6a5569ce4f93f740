"""What ``export_explainer`` is asked for, checked against the registry and the model: the methods
(each exportable, and runnable on the model), their options (a keyword goes to every exported
method that declares it; ``options={method: {...}}`` sets one method's) and their layers."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..core.errors import InvalidInputError, LayerError, UnsupportedError
from ..core.methods import HEAD_LAYER, LAYERS, ONE_LAYER, check_options_apply, exportable_methods, lookup, method_list
from ..core.methods.registry import Method

#: the methods the explainer runs in a Loop, each with the kind of pass (``backend.batch_size(kind,
#: image)``) whose size cnnlens.explain takes for it: by default a pass of the Loop takes as many
#: (image, item) pairs as one of cnnlens.explain's batches. Elsewhere ``batch_size`` means nothing in
#: a file (the runtime's batch is the input's).
LOOP_PASSES = {"integrated_gradients": "backward", "scorecam": "forward"}


def method_names(methods: Union[str, Sequence[str]]) -> List[str]:
    """``"gradcam,saliency"`` or a list, as known method names (in order, once each); "all" is
    every exportable method."""
    names = method_list(methods, exportable_methods())
    if not names:
        raise InvalidInputError(f"no method given: name one or more of {', '.join(exportable_methods())}")
    for name in names:
        method = lookup(name)
        if not method.exportable:
            raise UnsupportedError(f"{name} cannot be written into an explainer file: {method.not_exportable}. "
                                   f"Methods that export: {', '.join(exportable_methods())}")
    return names


def resolve_options(names: Sequence[str], shared: Mapping[str, Any],
                   per_method: Optional[Mapping[str, Mapping[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """Each method's checked options (``layer`` kept apart, unchecked) from the shared keywords and
    the per-method dicts."""
    per_method = dict(per_method or {})
    for key, value in per_method.items():
        if key not in names:
            raise InvalidInputError(f"options names {key!r}, which is not among the exported methods "
                                    f"({', '.join(names)})")
        if not isinstance(value, Mapping):
            raise InvalidInputError(f"options[{key!r}] must be a dict of {key}'s options, got {value!r}")
    check_options_apply(names, shared, lambda key: f"option {key!r}", among=exportable_methods())
    found: Dict[str, Dict[str, Any]] = {}
    for name in names:
        method = lookup(name)
        given = {k: v for k, v in shared.items() if k in method.defaults}
        own = dict(per_method.get(name, {}))
        layer = own.pop("layer", None)
        given.update(own)
        checked = {**method.defaults, **method.check_options(given, context=f"options[{name!r}]: ")}
        if layer is not None:
            if not method.layered:
                raise LayerError(f"{name} explains the input and takes no layer")
            checked["layer"] = layer
        found[name] = checked
    return found


def layers_of(method: Method, given: Any, backend: Any, image: Sequence[int]) -> tuple:
    """(canonical layer names, whether a list was given) for a method that takes layers."""
    if method.layer == HEAD_LAYER:
        if given is not None and not isinstance(given, str):
            raise LayerError("cam takes one layer (the tensor the head pools), not a list")
        return (), False
    if given is None:
        names, as_list = [backend.default_layer((1,) + tuple(image))], False
    elif isinstance(given, str):
        names, as_list = [backend.resolve_layer(given)], False
    else:
        names = list(given)
        if not names or not all(isinstance(n, str) for n in names):
            raise LayerError(f"layer must be a layer name or a non-empty list of names, got {given!r}")
        names, as_list = [backend.resolve_layer(n) for n in names], True
    if method.layer == ONE_LAYER and len(names) != 1:
        raise LayerError(f"{method.name} takes one layer at a time")
    if method.layer not in (ONE_LAYER, LAYERS):
        raise LayerError(f"{method.name} takes no layer")
    shapes = {found.name: found.shape for found in backend.layers(tuple(image))}
    for name in names:
        shape = shapes.get(name)
        if shape is None or len(shape) not in (3, 4):  # maps, or tokens the build lays out as maps
            raise LayerError(f"layer {name!r} outputs shape {shape}, not a (N, K, h, w) map or a token tensor, "
                             f"so {method.name} cannot use it: pick a convolutional or transformer-block layer "
                             f"(`cnnlens.layers(model)` shows output shapes)")
    return tuple(dict.fromkeys(names)), as_list


def pass_size(name: str, given: Optional[int], backend: Any, image: Sequence[int]) -> Optional[int]:
    """The ``batch_size`` a looped method's passes take: ``given``, else cnnlens.explain's choice for
    images of ``image`` (NCHW (C, H, W)); None for a method that is not looped."""
    if name not in LOOP_PASSES:
        return given
    return int(given) if given is not None else max(1, int(backend.batch_size(LOOP_PASSES[name], tuple(image))))
