"""``cnnlens.export_explainer``: write one ONNX file that is the model and its explainer.

The file takes the model's own input (name, layout, dtype; batch dynamic) and returns its own
outputs unchanged, plus ``map_<method>`` for every method asked: the array ``cnnlens.explain``
returns for that method and options (raw), or with ``normalize=True`` what an app overlays
directly. It runs in any ONNX Runtime (Python, C++, C#, Java, Node.js, the browser) with no
PyTorch and no Python. Built by ``backends/onnx/explainer``; this module checks the request,
gets an ONNX model for the source, writes the file atomically and, on request, the web page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..core.backend import Backend
from ..core.errors import InvalidInputError, LayerError, ModelError
from ..core.methods import HEAD_LAYER, exportable_methods, lookup
from ..core.methods.support import require
from .explainer_request import layers_of, method_names, pass_size, resolve_options
from .explainer_source import onnx_source
from .files import atomic_path

#: the file may be this much larger than the plain model (judged on models of 1 MB and more)
SIZE_ALLOWANCE = 1.05


@dataclass
class ExportedExplainer:
    """What ``export_explainer`` wrote: the file, its methods and their outputs (name, shape with
    the batch as a name), the inputs it takes, and its size beside the plain model's."""

    path: str
    methods: List[str]
    outputs: Dict[str, str]
    shapes: Dict[str, Tuple[Union[int, str], ...]]
    layers: Dict[str, Union[None, str, List[str]]]
    input_name: str
    input_shape: Tuple[Union[int, str], ...]
    layout: str
    inputs: List[str]
    target: str
    normalize: bool
    options: Dict[str, Dict[str, Any]]
    bytes: int
    plain_bytes: int
    opset: int
    output_names: List[str] = field(default_factory=list)
    #: the torch module each layer computes, as the exporter recorded it (for display)
    modules: Dict[str, str] = field(default_factory=dict)
    page: Optional[str] = None

    @property
    def size_ratio(self) -> float:
        """The file's size over the plain model's."""
        return self.bytes / max(1, self.plain_bytes)

    def __str__(self) -> str:
        lines = [f"wrote {self.path} ({self.bytes / 1e6:.1f} MB, {self.size_ratio:.3f}x the plain model; opset "
                 f"{self.opset})",
                 f"  input  {self.input_name} {self.input_shape} {self.layout}"]
        lines += [f"  input  {name}" for name in self.inputs]
        lines += [f"  output {name} (the model's)" for name in self.output_names]
        for method in self.methods:
            names = self.layers.get(method)
            names = [names] if isinstance(names, str) else list(names or [])
            shown = ", ".join(f"{n} ({self.modules[n]})" if n in self.modules and self.modules[n] != n else n
                              for n in names)
            layer = f" at {shown}" if shown else ""
            lines.append(f"  output {self.outputs[method]} {self.shapes[self.outputs[method]]}{layer}")
        if self.page:
            lines.append(f"  web page: {self.page} (serve the folder, e.g. python -m http.server -d {self.page})")
        return "\n".join(lines)


def export_explainer(model: Any, path: str, methods: Union[str, Sequence[str]] = "gradcam", *,
                     target: str = "predicted", layer: Any = None, normalize: bool = False,
                     options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     input_shape: Optional[Sequence[int]] = None, output: Any = None, layout: str = "auto",
                     opset: Optional[int] = None, exporter: str = "dynamo", trust_pickle: bool = False,
                     **method_options: Any) -> ExportedExplainer:
    """Write ``path``: one ONNX file returning the model's outputs and ``map_<method>`` per method.

    ``model``: anything ``cnnlens.load`` reads (a torch module, program or TorchScript module is
    exported to ONNX first, at ``input_shape`` (C, H, W), by default 224 x 224; ``exporter`` and
    ``opset`` as ``adapters.export.to_onnx``). ``methods``: a name, "a,b", a list, or "all" (every
    method that exports). ``target``: "predicted" (each image's top class), "input" (an int64 input
    ``target`` (N,) is added; a class out of range gives that image a map of NaN) or "weights" (a
    float input ``target_weights`` of the batch's output shape: the explained score is
    ``sum(weights * output)``). ``layer``: for the methods that take one, a name or a list (a list
    gives a layer axis); ``options={"integrated_gradients": {"steps": 16, "layer": ...}}`` sets one
    method's; other keywords go to every exported method that declares them. ``normalize``: maps an
    app overlays directly: CAMs min-max scaled to [0, 1] per image, input attributions as the sum of
    |g| over channels, min-max scaled, (N, H, W); feature maps min-max per channel. ``input_shape``
    also fixes the size of an ONNX model whose height and width are open. Returns what was written.
    """
    if target not in ("predicted", "input", "weights"):
        raise InvalidInputError(f"target must be 'predicted', 'input' or 'weights', got {target!r}")
    if not isinstance(normalize, bool):
        raise InvalidInputError(f"normalize must be True or False, got {normalize!r}")
    names = method_names(methods)
    checked = resolve_options(names, method_options, options)
    source = onnx_source(model, input_shape, output=output, layout=layout, opset=opset, exporter=exporter,
                         trust_pickle=trust_pickle)
    backend = source.backend
    for name in names:  # of the methods that run on this model, the alternatives that export
        require(backend, name, among=exportable_methods())
    image = _image_shape(backend, input_shape)
    from ..backends.onnx.explainer import MethodRequest, build_explainer, check_names

    view = backend.view(image)
    clash = check_names(view, names)
    if clash:
        raise ModelError(f"the model already has a tensor named map_{clash}: rename it before exporting")
    requests = []
    for name in names:
        own, method = dict(checked[name]), lookup(name)
        given = own.pop("layer", None if method.layer == HEAD_LAYER else layer)  # the head's layer is the head's
        layers, as_list = layers_of(method, given, backend, image) if method.layered else ((), False)
        if method.layer == HEAD_LAYER and given is not None:
            pooled = view.graph.producer.get(view.head().pooled)
            if pooled is None or backend.resolve_layer(given) != pooled.name:
                raise LayerError(f"cam can only use the tensor the head pools ({pooled.name if pooled else '?'!r}), "
                                 f"not {given!r}: leave its layer unset")
        if "batch_size" in own:
            own["batch_size"] = pass_size(name, own["batch_size"], backend, image)
        requests.append(MethodRequest(name, layers, as_list, own))
    built = build_explainer(view, requests, target=target, normalize=normalize)
    data = _checked_bytes(built.model, backend)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
    declared = next(i for i in built.model.graph.input if i.name == view.input_name).type.tensor_type.shape.dim
    return ExportedExplainer(
        path=path, methods=names, outputs=built.outputs, shapes=built.shapes, layers=built.layers,
        input_name=view.input_name, input_shape=tuple(d.dim_param or d.dim_value for d in declared),
        layout=backend.layout, inputs=built.target_inputs, target=target, normalize=normalize,
        options={r.name: dict(r.options) for r in requests}, bytes=len(data), plain_bytes=source.plain_bytes,
        opset=view.opset, output_names=[o.name for o in view.model.graph.output],
        modules=_modules(backend, [n for r in requests for n in r.layers]))


def _modules(backend: Backend, layers: Sequence[str]) -> Dict[str, str]:
    """The torch module path of each layer, where the exporter recorded one."""
    found = {}
    for name in layers:
        try:
            found[name] = backend.module_of(name)
        except (LayerError, KeyError):
            continue
    return found


def _image_shape(backend: Backend, input_shape: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    """The NCHW (C, H, W) the explainer is built for: the model's own, else ``input_shape``."""
    known = tuple(backend.image_shape)
    if input_shape is not None:
        shape = tuple(int(v) for v in input_shape)
        if len(shape) != 3 or min(shape) <= 0:
            raise InvalidInputError(f"input_shape must be (C, H, W), got {input_shape!r}")
        for axis, (want, got) in enumerate(zip(known, shape)):
            if want is not None and want != got:
                raise InvalidInputError(f"the model takes images of shape {known} (NCHW), so input_shape {shape} "
                                        f"does not fit it (axis {axis})")
        return shape  # type: ignore[return-value]
    if len(known) != 3 or any(d is None for d in known):
        raise InvalidInputError(
            f"the model's input size is open ({known}, NCHW): the maps are resized to the input, so the explainer "
            f"is built for one size: give input_shape=(C, H, W) (command line: --size H W)")
    return known  # type: ignore[return-value]


def _checked_bytes(model: Any, backend: Any) -> bytes:
    """The model serialised, once ONNX Runtime has accepted it (so a file is never written that no
    runtime can load)."""
    from ..backends.onnx.runtime import new_session

    data = model.SerializeToString()
    try:
        new_session(model, ["CPUExecutionProvider"], quiet=True)
    except ModelError as error:
        raise ModelError(f"the explainer built for this model does not load in onnxruntime ({error}); please "
                         f"report it with the model") from None
    return data
