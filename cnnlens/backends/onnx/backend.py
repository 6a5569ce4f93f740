"""The ONNX Runtime backend: every method, on CPU or CUDA, with no PyTorch.

Activations are read by adding the wanted tensors as graph outputs; gradients come from a
backward graph of standard ONNX ops built beside the forward one (``autodiff``), one model per
request (layers, ReLU rule, input gradient) and image size, its session cached. A model exported
with its batch fixed at 1 is made batch-dynamic when a trial run proves that safe, and otherwise
run image by image. Models laid out NHWC take and give NCHW arrays like every other model.
"""

from __future__ import annotations

import threading
import warnings
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from ...core.backend import BackendSpec, spec_layout
from ...core.errors import InvalidInputError, LayerError, ModelError, unknown_layer
from ...core.types import Layer
from .. import base
from . import gradients, layout as layouts, runtime
from .autodiff import GradientRequest
from .graph import Graph, attribute, node_name
from .loading import batch_dynamic
from .passes import Passes
from .randomise import randomised_model
from .shape_reading import ShapeReading
from .shapes import TensorTypes
from .view import ModelView

_BASE_CAPABILITIES = frozenset({base.FORWARD, base.ACTIVATIONS, base.WEIGHTS, base.LINEAR_HEAD, base.RANDOMISE,
                                base.REPLACE_LAYER})


def _choose_output(names: List[str], choice: Union[None, int, str]) -> str:
    """The graph output holding the class scores: ``choice`` (a name or an index), else the first."""
    if choice is None:
        if len(names) > 1:
            warnings.warn(f"the model has {len(names)} outputs ({', '.join(names)}); cnnlens explains the first, "
                          f"{names[0]!r}. To explain another: cnnlens.load(path, output=NAME) (command line: --output)",
                          UserWarning, stacklevel=5)
        return names[0]
    if isinstance(choice, int) and not isinstance(choice, bool) and -len(names) <= choice < len(names):
        return names[choice]
    if choice in names:
        return str(choice)
    raise ModelError(f"the model has no output {choice!r}: its outputs are {', '.join(names)} (give a name or an index)")


def _to_channels_last(node: onnx.NodeProto) -> bool:
    return node.op_type == "Transpose" and tuple(attribute(node, "perm", ()) or ()) == layouts.NHWC


class OnnxBackend(Passes, ShapeReading):
    """An ONNX model run by ONNX Runtime, behind the Backend protocol (see ``backends/base.py``)."""

    name = "onnx"

    def __init__(self, model: onnx.ModelProto, device: Optional[str] = None, io_binding: Optional[bool] = None,
                 output: Union[None, int, str] = None, layout: str = "auto"):
        self.model = model
        try:
            self.graph = Graph(model)
        except ValueError as error:
            raise ModelError(f"cannot read the ONNX graph: {error}") from None
        self._providers, self.requested = runtime.choose_providers(device)
        self._sessions = runtime.SessionCache()
        self._lock = threading.RLock()
        self._runnable: Optional[onnx.ModelProto] = None  # the model as run (batch made dynamic)
        self._runnable_graph: Optional[Graph] = None
        self._per_image = False
        self._types: Dict[Tuple, TensorTypes] = {}
        self._shape_derived: Dict[Tuple, Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]] = {}
        self._default_layers: Dict[Tuple, str] = {}
        self._resolved: Dict[str, str] = {}  # layer names as given -> node names
        elem = self.graph.input.type.tensor_type.elem_type
        self.input_name: str = self.graph.input.name
        self.input_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.float32)
        #: the input's shape as the graph declares it, in the model's own layout (symbolic dims as names)
        self.input_shape: Tuple = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in self.graph.input.type.tensor_type.shape.dim
        )
        self._layout = layouts.input_layout(self.graph, self.input_shape, layout)
        #: "NCHW" or "NHWC": how the model's input is laid out (images are passed NCHW either way)
        self.layout = layouts.name(self._layout)
        self._nhwc = frozenset(layouts.tensor_layouts(self.graph, self._layout))
        #: the name of the output that holds the explained scores
        self.output: str = _choose_output(self.graph.output_names, output)
        self._io_binding = io_binding
        session = self._forward_session(frozenset())  # fail early, and learn the provider actually used
        self.providers: List[str] = session.get_providers()
        self.provider: str = self.providers[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        if self.requested == "cuda" and self.device != "cuda":
            warnings.warn("onnxruntime could not use CUDA and runs on the CPU", RuntimeWarning, stacklevel=3)
        allowed, self.limits = gradients.gradient_capabilities(self.graph, self.output)
        #: forward passes and activations always; gradients where the model's ops have rules
        self.capabilities: FrozenSet[str] = _BASE_CAPABILITIES | allowed

    def __repr__(self) -> str:
        return (f"OnnxBackend(input={self.input_name!r} {self.input_shape} {self.layout}, "
                f"provider={self.provider})")

    @property
    def output_name(self) -> str:
        """Deprecated: ``output``, the name every backend gives its output choice."""
        warnings.warn("OnnxBackend.output_name is deprecated: read backend.output (the same name)",
                      DeprecationWarning, stacklevel=2)
        return self.output

    def spec(self) -> BackendSpec:
        """The serialized model, its output and layout (``cnnlens.load(spec)`` builds it again)."""
        return BackendSpec("onnx", self.model.SerializeToString(), self.output, spec_layout(self.layout))

    @property
    def image_shape(self) -> Tuple[Optional[int], ...]:
        """(C, H, W) of one image as cnnlens takes it (NCHW), None where the graph leaves it open."""
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in self.input_shape)
        return layouts.to_nchw(dims, self._layout)[1:] if len(dims) == 4 else dims[1:]

    # ------------------------------------------------------------ sessions

    def _base_model(self) -> onnx.ModelProto:
        return self._runnable if self._runnable is not None else self.model

    def _base_graph(self) -> Graph:
        return self._runnable_graph if self._runnable_graph is not None else self.graph

    def _new_session(self, model: onnx.ModelProto, quiet: bool = False, spin: bool = False):
        return runtime.new_session(model, self._providers, quiet=quiet, spin=spin)

    def _forward_session(self, extra: FrozenSet[str]):
        """The model with ``extra`` tensors added as outputs."""
        def make():
            model = self._base_model()
            missing = sorted(extra - set(self.graph.output_names))
            if missing:
                augmented = onnx.ModelProto()
                augmented.CopyFrom(model)
                augmented.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in missing)
                model = augmented
            return self._new_session(model)
        return self._sessions.get(("forward", extra) if extra else None, make)

    def _gradient_session(self, request: GradientRequest, image: Tuple[int, ...]):
        """(session, gradient model) for ``request`` on images of shape ``image`` (model layout)."""
        def make():
            built = gradients.build(self._base_model(), self._base_graph(), self.output, request,
                                    self._types_at(image), self.capabilities,
                                    probe=lambda tensor: self._shape_values(image).get(tensor))
            return self._new_session(built.model, spin=True), built
        return self._sessions.get(("gradient", request, image), make)

    def _binding(self) -> bool:
        return self._io_binding if self._io_binding is not None else self.device == "cuda"

    def _run(self, session, feeds: Dict[str, np.ndarray], outputs: Sequence[str]) -> List[np.ndarray]:
        """Run a session on batched ``feeds`` (image by image for a model that needs it)."""
        where = "cuda" if self.device == "cuda" else "cpu"
        try:
            if self._per_image and len(feeds[self.input_name]) > 1:
                count = len(feeds[self.input_name])
                parts = [runtime.run(session, {k: v[i:i + 1] if len(v) == count else v for k, v in feeds.items()}, outputs,
                                     where, self._binding())
                         for i in range(count)]
                return [np.concatenate([p[k] for p in parts]) for k in range(len(outputs))]
            return runtime.run(session, feeds, outputs, where, self._binding())
        except Exception as error:  # onnxruntime raises its own exception types
            x = feeds[self.input_name]
            raise ModelError(
                f"onnxruntime failed on images of shape {x.shape} (the model takes {self.input_shape}): "
                f"{str(error).strip().splitlines()[0]}"
            ) from None

    def _settle_batch(self, x: np.ndarray) -> None:
        """Decide once how batches run: as they are, made dynamic, or image by image."""
        if self._runnable is not None or self._per_image:
            return
        first = self.input_shape[0] if self.input_shape else None
        if first != 1 or len(x) == 1:
            if first != 1:
                self._runnable, self._runnable_graph = self.model, self.graph
            return
        with self._lock:
            if self._runnable is not None or self._per_image:
                return
            dynamic = batch_dynamic(self.model)
            trial = x[:2]
            try:
                fixed = self._forward_session(frozenset())
                expected = np.concatenate([fixed.run([self.output], {self.input_name: t[None]})[0] for t in trial])
                probe = self._new_session(dynamic, quiet=True)
                got = probe.run([self.output], {self.input_name: trial}, runtime.run_options(True))[0]
                safe = got.shape == expected.shape and np.allclose(got, expected, rtol=1e-4, atol=1e-5)
            except Exception:
                safe = False
            if safe:
                self._runnable, self._runnable_graph = dynamic, Graph(dynamic)
                self._sessions.clear()
                self._types.clear()
                self._shape_derived.clear()
            else:
                self._per_image = True

    # ------------------------------------------------------------ inspection

    def layers(self, input_shape: Optional[Tuple[int, ...]] = None) -> List[Layer]:
        """Nodes that compute on the input, in topological order, with inferred output shapes
        (``input_shape``: one image's (C, H, W), NCHW as always)."""
        image = self._model_image(input_shape)
        return [Layer(node_name(n), n.op_type, self._shape(n.output[0], image)) for n in self.graph.data_nodes()]

    def resolve_layer(self, name: str) -> str:
        """Node names; torch module paths (as the exporter recorded them) and output tensor names
        are accepted too, in that order. Resolved once per name and backend (a module path's node
        takes a walk over the graph)."""
        if not isinstance(name, str):
            raise LayerError(f"a layer name must be a string, got {name!r}")
        found = self._resolved.get(name)
        if found is None:
            found = self._resolved[name] = self._find_layer(name)
        return found

    def _find_layer(self, name: str) -> str:
        if name in self.graph.by_name and name in self.graph.data:
            return name
        node = self.graph.node_for_module(name)  # before tensor names: dynamo names tensors relu_1 ...
        if node is not None:
            return node_name(node)
        node = self.graph.producer.get(name)
        if node is not None and node_name(node) in self.graph.data:
            return node_name(node)
        node = self._module_by_suffix(name)
        if node is not None:
            return node_name(node)
        known = [node_name(n) for n in self.graph.data_nodes()] + self.graph.module_paths()
        raise unknown_layer(name, known)

    def _module_by_suffix(self, name: str) -> Optional[onnx.NodeProto]:
        """The node of the one recorded module path ``name`` names up to leading containers
        (``base.path_by_suffix``): the legacy exporter records no scope for a container whose
        ``forward`` is never called (a wrapper calling ``self.detector.backbone`` records
        ``backbone...``). None when no path or several match."""
        path = base.path_by_suffix(name, self.graph.module_paths())
        return self.graph.node_for_module(path) if path is not None else None

    def module_of(self, layer: str) -> str:
        """The torch module whose output a layer computes, as the exporter recorded it."""
        node = self.graph.by_name[self.resolve_layer(layer)]
        module = self.graph.module_for_node(node)
        if module is None:
            inside = self.graph.enclosing_module(node)
            where = (f"lies inside module {inside!r} but is not its output (that is node "
                     f"{node_name(self.graph.node_for_module(inside))!r})" if inside else
                     "has no torch module recorded by the exporter")
            raise LayerError(f"node {node_name(node)!r} {where}, so no torch layer matches it: "
                             f"name a module's output node, or the module itself")
        return module

    def _tensor(self, layer: str) -> str:
        return self.graph.by_name[self.resolve_layer(layer)].output[0]

    def default_layer(self, input_shape: Tuple[int, ...]) -> str:
        """The last node whose output is still spatial, for images of ``input_shape`` (kept per image
        size; the batch size does not matter). In a graph exported from torch, the last such node
        that is a module's output, so that the default is the module's default (DenseNet's final
        functional ReLU has no module: its ``features`` is the default on both; Swin's ``permute``
        back to channels-first is one). A Transpose to channels-last (tf2onnx's NCHW -> NHWC before
        pooling) only re-lays the map before it out: that map is taken."""
        image = self._model_image(input_shape)
        if image not in self._default_layers:
            candidates = [l.name for l in self.layers(tuple(input_shape)) if l.spatial
                          and not _to_channels_last(self.graph.by_name[l.name])]
            if not candidates:
                raise LayerError(
                    "the model has no node with a spatial (N, K, h, w) output at this input size, so the CAM "
                    "family has nothing to use: use occlusion, or name a layer"
                )
            modules = [n for n in candidates if self.graph.module_for_node(self.graph.by_name[n]) is not None]
            self._default_layers[image] = (modules or candidates)[-1]
        return self._default_layers[image]

    def weights(self, layer: Optional[str] = None) -> np.ndarray:
        if layer is None:
            convs = [n for n in self.graph.data_nodes() if n.op_type == "Conv"]
            if not convs:
                raise LayerError("the model has no Conv node: name a layer")
            node = convs[0]
        else:
            node = self.graph.by_name[self.resolve_layer(layer)]
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            raise LayerError(
                f"layer {node_name(node)!r} ({node.op_type}) has no weight tensor: name a Conv, Gemm or MatMul node"
            )
        value = self.graph.constant(node.input[1])
        if value is None:
            value = self._evaluate(node.input[1])
        return np.array(value, dtype=np.float32)

    def _evaluate(self, tensor: str) -> np.ndarray:
        """A constant tensor the graph computes, read by running the graph on zeros."""
        if tensor in self.graph.producer and node_name(self.graph.producer[tensor]) in self.graph.dynamic:
            raise LayerError(f"the weight {tensor!r} depends on the input, so it is not a filter bank")
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in self.input_shape)
        return self._trial(self.model, [tensor], shape)[0]

    def batch_size(self, kind: str, image_shape: Tuple[int, ...]) -> int:
        """Cache-sized on the CPU, as for torch (from the largest inferred node output); on CUDA,
        up to 2**26 elements (256 MB of float32) per node output."""
        pixels = int(np.prod(image_shape))
        try:
            sizes = [int(np.prod(l.shape[1:])) for l in self.layers(tuple(image_shape)) if l.shape and all(l.shape[1:])]
        except Exception:  # shape inference is best effort
            sizes = []
        largest = max(sizes + [pixels]) if sizes else 8 * pixels
        if self.device == "cuda":
            return base.cache_sized_batch(largest, budget=2 ** 26, cap=256)
        return base.cache_sized_batch(largest)

    def view(self, image_shape: Tuple[int, int, int]) -> ModelView:
        """The model as the explainer builder reads it, for images of ``image_shape`` = (C, H, W)
        (NCHW): the batch settled first (made dynamic where a trial of two images proves it safe)."""
        image = self._model_image(image_shape)
        self._settle_batch(np.zeros((2,) + tuple(image), dtype=self.input_dtype))
        return ModelView(self._base_model(), self._base_graph(), self.input_name, self.output, tuple(image),
                         self._layout, self._nhwc, self._types_at(image),
                         lambda tensor: self._shape_values(image).get(tensor), self._per_image)

    # ------------------------------------------------------------ randomisation

    def parameter_layers(self) -> List[str]:
        """Nodes that compute on the input with learned weights in initializers (Conv, Gemm, MatMul,
        BatchNormalization, ...), in topological order, named as ``layers()`` names them."""
        return [node_name(n) for n in self.graph.data_nodes() if self.graph.parameters(n)]

    def weighted_layers(self) -> List[str]:
        """The nodes with learned parameters (every ONNX node runs: as ``parameter_layers``)."""
        return self.parameter_layers()

    def randomised(self, layers: Sequence[str], seed: int = 0) -> "OnnxBackend":
        """An OnnxBackend (same device, IO binding, output and layout) over a copy of the model in which
        every initializer the named nodes take is re-drawn (see ``randomise.randomised_model``)."""
        names = base.randomisation_layers(self, layers, seed)
        model = randomised_model(self.model, self.graph, names, seed)
        return OnnxBackend(model, device=self._device_name(), io_binding=self._io_binding, output=self.output,
                           layout=spec_layout(self.layout))

    def _device_name(self) -> str:
        """The device this backend runs on, as ``device=`` names it (with the CUDA device index)."""
        if self.device != "cuda":
            return "cpu"
        for provider in self._providers:
            if isinstance(provider, tuple) and provider[0] == "CUDAExecutionProvider":
                return f"cuda:{provider[1].get('device_id', 0)}"
        return "cuda"

    # ------------------------------------------------------------ input

    def check_input(self, x: np.ndarray) -> None:
        """A clear error when NCHW images do not fit the model's fixed input dimensions; it says which
        layout the model's input was taken to have, and how to say otherwise."""
        if len(self.input_shape) != x.ndim:
            raise InvalidInputError(f"the model takes inputs of rank {len(self.input_shape)} {self.input_shape}, "
                                    f"got images of shape {x.shape}")
        wanted = self.image_shape
        for axis, (want, got) in enumerate(zip(wanted, x.shape[1:]), start=1):
            if want is not None and want != got:
                fix = (f"convert them to {want} channels" if axis == 1
                       else "resize or crop them to the model's input size")
                other = "NCHW" if self.layout == "NHWC" else "NHWC"
                raise InvalidInputError(
                    f"the model takes images of shape (N, {', '.join(str(d) for d in wanted)}) (axis {axis} must be "
                    f"{want}), got images of shape {x.shape}: {fix}. Images are always passed (N, C, H, W); the "
                    f"model's input {self.input_shape} was read as {self.layout}: if it is {other}, load it with "
                    f"cnnlens.load(path, layout={other!r}) (command line: --layout {other})")

    def _to_model(self, x: np.ndarray) -> np.ndarray:
        """NCHW images as the model takes them: its layout and dtype, contiguous."""
        if self._layout != layouts.NCHW:
            x = x.transpose(self._layout)
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def _to_nchw(self, tensor: str, value: np.ndarray) -> np.ndarray:
        """A tensor's value (activation or gradient) as cnnlens reports it: float32, NHWC made NCHW."""
        value = np.asarray(value, dtype=np.float32)
        if value.ndim == 4 and tensor in self._nhwc:
            value = np.ascontiguousarray(value.transpose(layouts.nchw_axes(layouts.NHWC)))
        return value
