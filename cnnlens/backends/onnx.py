"""The ONNX Runtime backend: forward-only methods and model inspection, on CPU or CUDA.

Activations are read by adding the wanted tensors as graph outputs (one session per set of
tensors, cached). A model exported with its batch fixed at 1 is made batch-dynamic when a trial
run proves that safe, and otherwise run image by image. On CUDA, batches go through IO binding.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ..core.errors import InvalidInputError, LayerError, ModelError, UnsupportedError, unknown_layer
from ..core.types import Layer, Pass
from . import base
from ._onnx_graph import Graph, attribute, inferred_shapes, node_name, shape_of

_CAPABILITIES = frozenset({base.FORWARD, base.ACTIVATIONS, base.WEIGHTS, base.LINEAR_HEAD, base.RANDOMISE})
_PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity", "Unsqueeze"}
_SCORE_OPS = {"Softmax", "LogSoftmax"}
#: Sessions with extra outputs (and shape tables) kept per backend: enough for a method's calls,
#: bounded for a process that browses many layers.
_SESSIONS_KEPT = 8


def _choose_providers(device: Optional[str]) -> Tuple[List, str]:
    """(providers to ask for, what was asked): CUDA first when available and not refused."""
    available = ort.get_available_providers()
    wants = (device or "auto").lower()
    if wants.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                f"device {device!r} asked for CUDA, but this onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}): install cnnlens[gpu] (onnxruntime-gpu) instead of onnxruntime"
            )
        index = int(wants.split(":")[1]) if ":" in wants else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], "cuda"
    if wants == "cpu":
        return ["CPUExecutionProvider"], "cpu"
    if wants != "auto":
        raise ModelError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"
    return ["CPUExecutionProvider"], "cpu"


def _choose_output(names: List[str], choice: Union[None, int, str]) -> str:
    """The graph output holding the class scores: ``choice`` (a name or an index), else the first."""
    if choice is None:
        if len(names) > 1:
            warnings.warn(f"the model has {len(names)} outputs ({', '.join(names)}); cnnlens explains the first, "
                          f"{names[0]!r}. To explain another: cnnlens.load(path, output=NAME) (command line: --output)",
                          UserWarning, stacklevel=4)
        return names[0]
    if isinstance(choice, int) and not isinstance(choice, bool) and -len(names) <= choice < len(names):
        return names[choice]
    if choice in names:
        return str(choice)
    raise ModelError(f"the model has no output {choice!r}: its outputs are {', '.join(names)} (give a name or an index)")


def session_options() -> ort.SessionOptions:
    """Quiet sessions whose idle threads do not spin: a backend keeps several sessions (one per set
    of extra outputs), and a spinning one steals the cores from the next (measured: two
    alternating sessions ran 1.7x slower with spinning, and no faster alone)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxBackend:
    """An ONNX model run by ONNX Runtime, behind the Backend protocol (forward-only)."""

    name = "onnx"
    capabilities: FrozenSet[str] = _CAPABILITIES

    def __init__(self, model: onnx.ModelProto, device: Optional[str] = None, io_binding: Optional[bool] = None,
                 output: Union[None, int, str] = None):
        self.graph = Graph(model)
        self.model = model
        self._providers, self.requested = _choose_providers(device)
        self._sessions: Dict[FrozenSet[str], ort.InferenceSession] = {}
        self._lock = threading.RLock()
        self._runnable: Optional[onnx.ModelProto] = None  # the model as run (batch made dynamic)
        self._per_image = False
        self._shapes: Dict[Tuple[int, ...], Dict[str, Tuple[Optional[int], ...]]] = {}
        elem = self.graph.input.type.tensor_type.elem_type
        self.input_name: str = self.graph.input.name
        self.input_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.float32)
        self.input_shape: Tuple = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in self.graph.input.type.tensor_type.shape.dim
        )
        self.output_name = _choose_output(self.graph.output_names, output)
        self._io_binding = io_binding
        session = self._session(frozenset())  # fail early, and learn the provider actually used
        self.providers: List[str] = session.get_providers()
        self.provider: str = self.providers[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        if self.requested == "cuda" and self.device != "cuda":
            warnings.warn("onnxruntime could not use CUDA and runs on the CPU", RuntimeWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"OnnxBackend(input={self.input_name!r} {self.input_shape}, provider={self.provider})"

    # ------------------------------------------------------------ sessions

    def _base_model(self) -> onnx.ModelProto:
        return self._runnable if self._runnable is not None else self.model

    def _session(self, extra: FrozenSet[str]) -> ort.InferenceSession:
        with self._lock:
            session = self._sessions.get(extra)
            if session is not None:
                return session
            model = self._base_model()
            missing = sorted(extra - set(self.graph.output_names))
            if missing:
                augmented = onnx.ModelProto()
                augmented.CopyFrom(model)
                for tensor in missing:
                    augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
                model = augmented
            options = session_options()
            try:
                session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                               providers=self._providers)
            except Exception as error:
                raise ModelError(f"onnxruntime cannot run this model: {error}") from None
            stale = [key for key in self._sessions if key]
            if len(stale) >= _SESSIONS_KEPT:  # one per set of extra outputs: keep the latest few
                del self._sessions[stale[0]]
            self._sessions[extra] = session
            return session

    def _run(self, x: np.ndarray, outputs: Sequence[str]) -> List[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        self._settle_batch(x)
        session = self._session(frozenset(outputs) - {self.output_name})
        if self._per_image and len(x) > 1:
            parts = [self._run_session(session, x[i:i + 1], outputs) for i in range(len(x))]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(outputs))]
        return self._run_session(session, x, outputs)

    def _run_session(self, session: ort.InferenceSession, x: np.ndarray, outputs: Sequence[str]) -> List[np.ndarray]:
        use_binding = self._io_binding if self._io_binding is not None else self.device == "cuda"
        try:
            if not use_binding:
                return session.run(list(outputs), {self.input_name: x})
            binding = session.io_binding()
            where = "cuda" if self.device == "cuda" else "cpu"
            binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, where, 0))
            for name in outputs:
                binding.bind_output(name, where)
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(
                f"onnxruntime failed on images of shape {x.shape} (the model takes {self.input_shape}): {error}"
            ) from None

    def _settle_batch(self, x: np.ndarray) -> None:
        """Decide once how batches run: as they are, made dynamic, or image by image."""
        if self._runnable is not None or self._per_image:
            return
        first = self.input_shape[0] if self.input_shape else None
        if first != 1 or len(x) == 1:
            if first != 1:
                self._runnable = self.model
            return
        with self._lock:
            if self._runnable is not None or self._per_image:
                return
            dynamic = _batch_dynamic(self.model)
            trial = x[:2]
            try:
                fixed = self._session(frozenset())
                expected = np.concatenate([fixed.run([self.output_name], {self.input_name: t[None]})[0] for t in trial])
                probe = ort.InferenceSession(dynamic.SerializeToString(), sess_options=session_options(),
                                             providers=self._providers)
                got = probe.run([self.output_name], {self.input_name: trial})[0]
                safe = got.shape == expected.shape and np.allclose(got, expected, rtol=1e-4, atol=1e-5)
            except Exception:
                safe = False
            if safe:
                self._runnable = dynamic
                self._sessions.clear()
            else:
                self._per_image = True

    # ------------------------------------------------------------ inspection

    def _shape_table(self, input_shape: Optional[Tuple[int, ...]]) -> Dict[str, Tuple[Optional[int], ...]]:
        key = tuple(int(v) for v in input_shape) if input_shape is not None else ()
        if key not in self._shapes:
            if len(self._shapes) >= _SESSIONS_KEPT:
                self._shapes.pop(next(iter(self._shapes)))
            self._shapes[key] = inferred_shapes(self.model, key or None)
        return self._shapes[key]

    def layers(self, input_shape: Optional[Tuple[int, ...]] = None) -> List[Layer]:
        """Nodes that compute on the input, in topological order, with inferred output shapes."""
        if input_shape is not None and len(input_shape) == len(self.input_shape) - 1:
            input_shape = (1,) + tuple(input_shape)
        shapes = self._shape_table(input_shape)
        result = []
        for node in self.graph.data_nodes():
            shape = shapes.get(node.output[0])
            if shape is not None and len(shape) > 0:
                shape = (None,) + tuple(shape[1:])
            result.append(Layer(node_name(node), node.op_type, shape))
        return result

    def resolve_layer(self, name: str) -> str:
        """Node names; torch module paths (as the exporter recorded them) and output tensor names
        are accepted too, in that order."""
        if not isinstance(name, str):
            raise LayerError(f"a layer name must be a string, got {name!r}")
        if name in self.graph.by_name and name in self.graph.data:
            return name
        node = self.graph.node_for_module(name)  # before tensor names: dynamo names tensors relu_1 ...
        if node is not None:
            return node_name(node)
        node = self.graph.producer.get(name)
        if node is not None and node_name(node) in self.graph.data:
            return node_name(node)
        known = [node_name(n) for n in self.graph.data_nodes()] + self.graph.module_paths()
        raise unknown_layer(name, known)

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
        for layer in reversed(self.layers(tuple(input_shape))):
            if layer.spatial:
                return layer.name
        raise LayerError(
            "the model has no node with a spatial (N, K, h, w) output at this input size, so the CAM "
            "family has nothing to use: use occlusion, or name a layer"
        )

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
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in self.input_shape)
        if tensor in self.graph.producer and node_name(self.graph.producer[tensor]) in self.graph.dynamic:
            raise LayerError(f"the weight {tensor!r} depends on the input, so it is not a filter bank")
        return self._run(np.zeros(shape, dtype=self.input_dtype), [tensor])[0]

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

    # ------------------------------------------------------------ randomisation

    def parameter_layers(self) -> List[str]:
        """Nodes that compute on the input with learned weights in initializers (Conv, Gemm, MatMul,
        BatchNormalization, ...), in topological order, named as ``layers()`` names them."""
        return [node_name(n) for n in self.graph.data_nodes() if self.graph.parameters(n)]

    def randomised(self, layers: Sequence[str], seed: int = 0) -> "OnnxBackend":
        """An OnnxBackend (same device, IO binding and output) over a copy of the model in which every
        initializer the named nodes take is re-drawn, for ``layers[i]`` from seed ``seed + i``:
        from N(0, the original values' std), dtype and shape kept; a BatchNormalization's mean
        and variance become 0 and 1 (as torch's reset). An initializer two nodes share is drawn
        once, by the first named; it changes for every node that takes it."""
        names = base.randomisation_layers(self, layers, seed)
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        targets = {t.name: t for t in model.graph.initializer}
        done: set[str] = set()
        for i, name in enumerate(names):
            node = self.graph.by_name[name]
            rng = np.random.default_rng(int(seed) + i)
            statistics: Dict[Optional[str], float] = {}  # a BatchNormalization's mean and variance: 0 and 1
            if node.op_type == "BatchNormalization":
                statistics = {self.graph.initializer_of(t): v for t, v in zip(node.input[3:5], (0.0, 1.0))}
            for tensor in self.graph.parameters(node):
                if tensor not in done:
                    done.add(tensor)
                    targets[tensor].CopyFrom(_redrawn(self.graph.initializers[tensor], rng, statistics.get(tensor)))
        return OnnxBackend(model, device=self._device_name(), io_binding=self._io_binding, output=self.output_name)

    def _device_name(self) -> str:
        """The device this backend runs on, as ``device=`` names it (with the CUDA device index)."""
        if self.device != "cuda":
            return "cpu"
        for provider in self._providers:
            if isinstance(provider, tuple) and provider[0] == "CUDAExecutionProvider":
                return f"cuda:{provider[1].get('device_id', 0)}"
        return "cuda"

    # ------------------------------------------------------------ passes

    def check_input(self, x: np.ndarray) -> None:
        """A clear error when images do not fit the model's fixed input dimensions."""
        expected = self.input_shape
        if len(expected) != x.ndim:
            raise InvalidInputError(f"the model takes inputs of rank {len(expected)} {expected}, got images of shape {x.shape}")
        for axis, (want, got) in enumerate(zip(expected[1:], x.shape[1:]), start=1):
            if isinstance(want, int) and want > 0 and want != got:
                raise InvalidInputError(
                    f"the model takes inputs of shape {expected} (axis {axis} must be {want}), got images of "
                    f"shape {x.shape}: "
                    + (f"convert them to {want} channels" if axis == 1 else "resize or crop them to the model's input size")
                )

    def forward(self, x: np.ndarray, layers: Sequence[str] = ()) -> Pass:
        self.check_input(x)
        tensors = [self._tensor(n) for n in layers]
        outputs = self._run(x, [self.output_name] + tensors)
        logits = _scores(outputs[0])
        return Pass(logits, activations={n: np.asarray(a, dtype=np.float32) for n, a in zip(layers, outputs[1:])})

    def backward(self, *args, **kwargs) -> Pass:
        raise UnsupportedError("onnxruntime computes no gradients")

    # ------------------------------------------------------------ CAM head

    def _head(self) -> Tuple[str, np.ndarray]:
        """(the pooled tensor, the head's weights (classes, K)) for GAP -> [Flatten] -> Gemm/MatMul [-> Softmax]."""
        g = self.graph
        fail = ModelError(
            "cam needs a model whose head is global average pooling followed by one Gemm or MatMul; "
            "this graph has none. Use scorecam or occlusion, which work on any ONNX model"
        )
        node = g.producer.get(self.output_name)
        if node is not None and node.op_type in _SCORE_OPS:
            node = g.producer.get(node.input[0])
        if node is not None and node.op_type == "Add":
            consts = [g.constant(i) is not None for i in node.input]
            data = [i for i, c in zip(node.input, consts) if not c]
            node = g.producer.get(data[0]) if len(data) == 1 else None
        if node is None or node.op_type not in ("Gemm", "MatMul"):
            raise fail
        weight = g.constant(node.input[1])
        if weight is None or weight.ndim != 2:
            raise fail
        if node.op_type == "Gemm":
            if attribute(node, "transA", 0):
                raise fail
            weight = weight if attribute(node, "transB", 0) else weight.T
            weight = weight * float(attribute(node, "alpha", 1.0))
        else:
            weight = weight.T
        tensor = node.input[0]
        pool = g.producer.get(tensor)
        while pool is not None and pool.op_type in _PASS_THROUGH:
            tensor = pool.input[0]
            pool = g.producer.get(tensor)
        if pool is None or not _is_global_pool(pool, g):
            raise fail
        return pool.input[0], np.asarray(weight, dtype=np.float32)

    def linear_head(self, x: np.ndarray, layer: Optional[str] = None):
        pooled, weight = self._head()
        producer = self.graph.producer.get(pooled)
        used = node_name(producer) if producer is not None else pooled
        if layer is not None and self.resolve_layer(layer) != used:
            raise LayerError(
                f"cam can only use the tensor the head pools (node {used!r}), not {layer!r}: leave layer unset"
            )
        self.check_input(x)
        outputs = self._run(x, [self.output_name, pooled])
        return _scores(outputs[0]), np.asarray(outputs[1], dtype=np.float32), weight, used


def _redrawn(tensor: onnx.TensorProto, rng: np.random.Generator, fill: Optional[float] = None) -> onnx.TensorProto:
    """An initializer's new value in its dtype and shape: N(0, the original's std), or ``fill``."""
    original = numpy_helper.to_array(tensor)
    if fill is not None:
        value = np.full(original.shape, fill)
    else:
        std = float(np.std(original.astype(np.float64))) if original.size else 0.0
        value = rng.normal(0.0, std, size=original.shape)
    return numpy_helper.from_array(value.astype(original.dtype), tensor.name)


def _is_global_pool(node: onnx.NodeProto, graph: Graph) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type == "ReduceMean":
        axes = attribute(node, "axes")
        if axes is None and len(node.input) > 1:
            value = graph.constant(node.input[1])
            axes = None if value is None else value.tolist()
        return axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]
    return False


def _scores(output: np.ndarray) -> np.ndarray:
    output = np.asarray(output, dtype=np.float32)
    if output.ndim > 2 and all(d == 1 for d in output.shape[2:]):  # (N, K, 1, 1) from a 1x1-conv head
        output = output.reshape(output.shape[:2])
    if output.ndim != 2:
        raise ModelError(
            f"the model's output has shape {output.shape}, not (N, classes): cnnlens explains classifiers. Wrap "
            f"the model so that it returns one row of class scores per image and export it again, or choose "
            f"another output with cnnlens.load(path, output=NAME)"
        )
    return output


def _batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the input's and outputs' first dimension symbolic (and stale shape hints dropped)."""
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    initializers = {t.name for t in dynamic.graph.initializer}
    values = [i for i in dynamic.graph.input if i.name not in initializers][:1] + list(dynamic.graph.output)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].Clear()
            dims[0].dim_param = "N"
    del dynamic.graph.value_info[:]
    return dynamic


def read_model(source) -> onnx.ModelProto:
    """An ONNX model from a path, bytes or a ModelProto, with clear errors for bad files."""
    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            model = onnx.load_from_string(bytes(source))
        else:
            path = os.fspath(source)
            if os.path.getsize(path) == 0:
                raise ModelError(f"{path} is empty: export the model again")
            model = onnx.load(path)
    except ModelError:
        raise
    except Exception as error:
        where = "" if isinstance(source, (bytes, bytearray, memoryview)) else f"{os.fspath(source)} is "
        raise ModelError(f"{where}not a readable ONNX model ({type(error).__name__}: {error}): is the file "
                         f"complete? Export it again") from None
    if not model.graph.node:
        raise ModelError("the ONNX model has no nodes: is the file complete?")
    return model
