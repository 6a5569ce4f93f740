"""The PyTorch backend: an ``nn.Module`` driven with forward hooks and ``torch.autograd.grad``.

Everything a call installs (hooks, ``eval()``) is owned by ``TorchBackend.call`` and removed or
restored when it ends (``hooks.py``); the ReLU-rule and head-recording function modes are active
only for the forward pass they watch. Parameter ``.grad`` is never touched because gradients are
taken with ``torch.autograd.grad`` w.r.t. the input and the requested activations only. The other
modules of this package call only the public members of :class:`TorchBackend`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
import weakref
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ...core.backend import BackendSpec, OcclusionScorer, seed_rows, spec_layout
from ...core.errors import InvalidInputError, LayerError, ModelError, unknown_layer
from ...core.relevance import Rules, is_relevance
from ...core.types import Layer, Pass
from .. import base
from .eval_state import evaluating
from .head import find_linear_head
from .host import numpy_of, to_host
from .hooks import Call, Captured, Hooks
from .outputs import remember, scores_in
from .randomise import own_float_parameters, reinitialise
from .relevance import relevance_pass
from .relu import ReluRuleMode
from .replace import run_replaced
from .tracing import Trace, trace

_CAPABILITIES = frozenset({
    base.FORWARD, base.ACTIVATIONS, base.INPUT_GRADIENTS, base.LAYER_GRADIENTS,
    base.RELU_RULES, base.RELEVANCE_RULES, base.WEIGHTS, base.LINEAR_HEAD,
    base.RANDOMISE, base.REPLACE_LAYER, base.INCREMENTAL_OCCLUSION,
})
#: What TorchScript allows: no hooks on compiled modules, and compiled code calls its ReLUs
#: without going through Python, so no activations, layer gradients or ReLU rules.
_SCRIPT_CAPABILITIES = frozenset({base.FORWARD, base.INPUT_GRADIENTS, base.WEIGHTS, base.RANDOMISE})

#: GPU batches: this fraction of the free memory, for the activations a pass keeps.
_GPU_MEMORY_FRACTION = 0.4
_GPU_MAX_BATCH = 256

#: Models that failed on channels-last input (so later backends on them start contiguous).
_NEEDS_CONTIGUOUS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _known_contiguous(model: nn.Module) -> bool:
    try:
        return model in _NEEDS_CONTIGUOUS
    except TypeError:  # an unhashable module class
        return False


def _layout(layout: str) -> str:
    if not isinstance(layout, str) or layout.upper() not in ("AUTO", "NCHW", "NHWC"):
        raise ModelError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}")
    return "NHWC" if layout.upper() == "NHWC" else "NCHW"


class TorchBackend:
    """An ``nn.Module`` behind the Backend protocol (see ``backends/base.py``)."""

    def __init__(self, model: nn.Module, device: Optional[str] = None, output: Union[None, int, str] = None,
                 layout: str = "auto"):
        if not isinstance(model, nn.Module):
            raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        #: which entry of a tuple / dict output holds the class scores (None: the first tensor)
        self.output = output
        self.scripted = isinstance(model, torch.jit.ScriptModule)
        self.name = "torchscript" if self.scripted else "torch"
        self.capabilities = _SCRIPT_CAPABILITIES if self.scripted else _CAPABILITIES
        if device is not None:
            try:
                model.to(torch.device(device))
            except (RuntimeError, AssertionError) as error:
                raise ModelError(f"cannot move the model to device {device!r}: {error}") from None
        tensors = list(model.parameters()) or list(model.buffers())
        self.device = tensors[0].device if tensors else torch.device("cpu")
        floats = [t.dtype for t in tensors if t.is_floating_point()]
        self.dtype = floats[0] if floats else torch.float32
        convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
        #: On the CPU, images go in channels-last (NHWC) layout when the model has convolutions:
        #: oneDNN's convolutions run 1.2-1.7x faster so. A model that cannot take it (a ``view``
        #: that needs contiguous memory) is retried contiguous, and stays so.
        self.channels_last = convolutional and self.device.type == "cpu" and not self.scripted and not _known_contiguous(model)
        #: "NCHW", or "NHWC" for a module that takes (N, H, W, C) images (said with layout="NHWC": a
        #: module's input layout cannot be read off it). Images are passed NCHW either way.
        self.layout = _layout(layout)
        if self.layout == "NHWC":
            self.channels_last = False
        #: layer traces of a model whose class is not hashable (the others share ``tracing``'s cache)
        self.own_traces: Dict[Tuple, Trace] = {}

    #: a torch module runs every method its capabilities name: no limits to explain
    limits: Mapping[str, str] = MappingProxyType({})
    #: a module declares no input shape (``ExportedBackend`` reads its program's)
    image_shape: Optional[Tuple[Optional[int], ...]] = None

    def __repr__(self) -> str:
        return f"TorchBackend({type(self.model).__name__}, device={self.device})"

    def spec(self) -> BackendSpec:
        """The module itself (pickled as it travels), or a TorchScript module's saved bytes (a
        ScriptModule does not pickle); the output choice and layout with it."""
        layout = spec_layout(self.layout)
        if self.scripted:
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 marks TorchScript deprecated
                torch.jit.save(self.model, buffer)
            return BackendSpec("torchscript", buffer.getvalue(), self.output, layout)
        return BackendSpec("module", self.model, self.output, layout)

    # ------------------------------------------------------------ inspection

    def modules(self) -> Dict[str, nn.Module]:
        """The model's named submodules (its layers), the model itself left out."""
        return {name: m for name, m in self.model.named_modules() if name}

    def resolve_layer(self, name: str) -> str:
        if not isinstance(name, str):
            raise LayerError(f"a layer name must be a string, got {name!r}")
        modules = self.modules()
        if name in modules:
            return name
        found = base.path_by_suffix(name, list(modules))  # a wrapper's module named without the wrapper
        if found is None:
            raise unknown_layer(name, modules)
        return found

    def module_of(self, layer: str) -> str:
        """A module's layer is the module itself."""
        return self.resolve_layer(layer)

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        """NCHW images as the model takes them: its device, dtype, layout and memory format; always a
        copy (a model that writes to its input must not change the caller's images)."""
        x = np.asarray(x)
        if self.layout == "NHWC" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        layout = torch.channels_last if self.channels_last and x.ndim == 4 else torch.contiguous_format
        return torch.from_numpy(np.asarray(x)).to(device=self.device, dtype=self.dtype, memory_format=layout, copy=True)

    def _guess_input_shape(self) -> Tuple[int, ...]:
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d):
                return (1, module.in_channels, 224, 224)
        return (1, 3, 224, 224)

    def _trace(self, input_shape: Tuple[int, ...]) -> Trace:
        return trace(self, input_shape)

    def layers(self, input_shape: Optional[Tuple[int, ...]] = None) -> List[Layer]:
        """Modules in the order the forward pass calls them, with output shapes (batch as None).
        For TorchScript (no hooks): the submodules in definition order, without shapes."""
        if self.scripted:
            return [Layer(n, getattr(m, "original_name", type(m).__name__), None) for n, m in self.modules().items()]
        if input_shape is None:
            shape = self._guess_input_shape()
        else:
            shape = tuple(int(v) for v in input_shape)
            shape = (1,) + shape if len(shape) == 3 else shape
        return list(self._trace(shape)[0])

    def default_layer(self, input_shape: Tuple[int, ...]) -> str:
        if self.scripted:
            raise LayerError("TorchScript modules cannot report layer outputs (no hooks): name no layer")
        layers, completion = self._trace(tuple(input_shape))
        spatial = {layer.name for layer in layers if layer.spatial}
        for name in reversed(completion):
            if name in spatial:
                return name
        raise LayerError(
            "the model has no layer with a spatial (N, K, h, w) output at this input size, so the CAM "
            "family has nothing to use: use saliency or occlusion, or a larger input"
        )

    def output_shape(self, x: np.ndarray) -> Tuple[int, ...]:
        """The output's shape (no batch axis) from the forward pass of ``x``'s first image: a module
        declares none, and may be changed between calls."""
        return tuple(self.forward(x[:1]).logits.shape[1:])

    def weights(self, layer: Optional[str] = None) -> np.ndarray:
        modules = self.modules()
        if layer is None:
            for name, module in modules.items():
                w = getattr(module, "weight", None)
                if isinstance(w, torch.Tensor) and w.ndim == 4:
                    return numpy_of(w).copy()
            raise LayerError("the model has no convolution with a 4-D weight: name a layer")
        module = modules[self.resolve_layer(layer)]
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor):
            raise LayerError(f"layer {layer!r} ({type(module).__name__}) has no weight tensor: name a Conv or Linear layer")
        return numpy_of(w).copy()

    def _layer_sizes(self, image_shape: Tuple[int, ...]) -> Optional[Dict[str, int]]:
        """Each traced layer's output elements per image; None when the model cannot be traced."""
        if self.scripted:
            return None
        try:
            layers, _ = self._trace((1,) + tuple(int(v) for v in image_shape))
        except (LayerError, ModelError):
            return None
        return {l.name: int(np.prod([d or 1 for d in l.shape[1:]])) for l in layers if l.shape}

    def batch_size(self, kind: str, image_shape: Tuple[int, ...]) -> int:
        """CPU: the batch whose largest layer output stays cache-sized. GPU: what fits in a share of
        the free memory (the whole trace's activations kept for a backward pass). Without a trace
        (TorchScript), the sizes are estimated from the image's."""
        pixels = int(np.prod(image_shape))
        sizes = self._layer_sizes(tuple(image_shape))
        largest = max(max(sizes.values(), default=pixels), pixels) if sizes is not None else 8 * pixels
        if self.device.type != "cuda":
            return base.cache_sized_batch(largest)
        if sizes is None:
            total = 64 * pixels
        else:
            leaves = [n for n in sizes if not any(other.startswith(n + ".") for other in sizes)]
            total = max(sum(sizes[n] for n in leaves), pixels)
        free, _ = torch.cuda.mem_get_info(self.device)
        item = torch.finfo(self.dtype).bits // 8
        per_image = item * (2 * total if kind == "backward" else 4 * largest)
        return int(max(1, min(_GPU_MAX_BATCH, free * _GPU_MEMORY_FRACTION // per_image)))

    # ------------------------------------------------------------ randomisation

    def parameter_layers(self) -> List[str]:
        """Modules that own a floating-point parameter themselves (Conv, Linear, BatchNorm, ...), in
        the order the forward pass calls them (traced at the guessed input shape). Modules the
        forward pass never calls (an auxiliary head in eval mode) are left out: randomising them
        would change nothing. TorchScript, and a model that cannot be traced so: definition order."""
        modules = self.modules()
        try:
            called = [layer.name for layer in self.layers()] if not self.scripted else []
        except ModelError:
            called = []
        order = called or list(modules)
        return [n for n in order if n in modules and own_float_parameters(modules[n])]

    def weighted_layers(self) -> List[str]:
        """Every module that owns a floating-point parameter itself, in definition order."""
        return [n for n, m in self.modules().items() if own_float_parameters(m)]

    def randomised(self, layers: Sequence[str], seed: int = 0) -> "TorchBackend":
        """A TorchBackend (same device, output choice and layout) over a deep copy of the model in
        which each named module ``layers[i]`` is re-initialised with seed ``seed + i``: by its own
        ``reset_parameters()`` (the initialisation it was built with; BatchNorm's also resets its
        running statistics to mean 0, variance 1). A module without one (every TorchScript module)
        has each own parameter drawn from N(0, the original's std), running statistics reset."""
        names = base.randomisation_layers(self, layers, seed)
        try:
            model = copy.deepcopy(self.model)
        except Exception as error:
            raise ModelError(f"the model cannot be copied to randomise it ({type(error).__name__}: {error})") from None
        modules = dict(model.named_modules())
        with torch.no_grad():
            for i, name in enumerate(names):
                reinitialise(modules[name], int(seed) + i, scripted=self.scripted)
        backend = TorchBackend(model, output=self.output, layout=self.layout)
        backend.channels_last = self.channels_last
        return backend

    # ------------------------------------------------------------ passes

    @contextlib.contextmanager
    def call(self, layers: Sequence[str] = (), grad: bool = False) -> Iterator[Call]:
        """The one scope of everything a call puts on the model: the model in eval mode (restored
        after), and a :class:`~.hooks.Hooks` every feature registers its hooks through (removed
        after, also on failure), capturing the outputs of ``layers`` (kept in the autograd graph
        when ``grad``)."""
        modules = self.modules() if layers else {}
        for n in layers:
            if n not in modules:
                self.resolve_layer(n)  # raises the unknown-layer error
        with evaluating(self.model):
            hooks = Hooks()
            try:
                yield Call(hooks, Captured(hooks, {n: modules[n] for n in layers}, grad))
            finally:
                hooks.remove()

    def forward(self, x: np.ndarray, layers: Sequence[str] = ()) -> Pass:
        with self.call(layers) as call, torch.no_grad():
            logits = self.scores_of(self.run_model(self.to_tensor(x)))
            host = to_host([logits] + [call.captured.get(n) for n in layers])
            return Pass(host[0], activations=dict(zip(layers, host[1:])))

    def _input_hint(self, x: torch.Tensor) -> str:
        """What to check when the model rejects the images."""
        channels = self._guess_input_shape()[1]
        if x.ndim == 4 and x.shape[1] != channels:
            return f"Its first convolution takes {channels} channels, the images have {x.shape[1]}: convert them"
        return "Check that the images have the size, channels and preprocessing the model expects"

    def occluder(self, image: np.ndarray, window: Tuple[int, int]) -> Tuple[Optional[OcclusionScorer], str]:
        """The incremental scorer of occluded copies of ``image`` (``incremental.py``), or ``(None,
        "brute force...: why")`` when brute force must or should run for this model, image size and
        window."""
        from .incremental import occluder_for

        return occluder_for(self, np.asarray(image, dtype=np.float32), window)

    def scores_of(self, output: Any) -> torch.Tensor:
        """The explained scores in one of the model's outputs (``outputs.scores_in``)."""
        return scores_in(output, self.output, self.model)

    def run_model(self, x: torch.Tensor) -> Any:
        """The model's output for a tensor from ``to_tensor``, with a clear error when the model rejects
        it (a model that fails only on channels-last memory is retried contiguous, and stays so)."""
        try:
            return self.model(x)
        except (LayerError, ModelError):
            raise
        except RuntimeError as error:
            if self.channels_last and not x.is_contiguous():
                # maybe the layout (a .view() that needs contiguous memory): retry contiguous, and
                # remember that only if it was the cause
                self.channels_last = False
                try:
                    output = self.run_model(x.contiguous())
                except BaseException:
                    self.channels_last = True
                    raise
                remember(_NEEDS_CONTIGUOUS, self.model)
                return output
            raise InvalidInputError(
                f"the model failed on images of shape {tuple(x.shape)}: {str(error).strip()}. {self._input_hint(x)}"
            ) from error

    def backward(self, x: np.ndarray, grad_logits: base.GradLogits, layers: Sequence[str] = (),
                 rules: Rules = "plain", input_grad: bool = True) -> Pass:
        """``rules`` are the rules for the input gradient; layer gradients are always the true ones.
        Both come from one forward pass (two backward passes when the rules differ). Relevance
        rules (LRP, DeepLIFT) run in their own mode (``relevance.py``), with no layers."""
        if is_relevance(rules):
            return relevance_pass(self, x, grad_logits, rules, layers)
        relu = str(rules)
        mode = ReluRuleMode(relu) if relu != "plain" else None
        with self.call(layers, grad=True) as call, torch.inference_mode(False), torch.enable_grad():
            xt = self.to_tensor(x)
            if input_grad:
                xt.requires_grad_(True)
            with mode if mode is not None else contextlib.nullcontext():
                logits = self.scores_of(self.run_model(xt))
            logits_np = numpy_of(logits)
            seed = seed_rows(grad_logits, logits_np)
            seed_t = torch.as_tensor(np.asarray(seed), device=logits.device, dtype=logits.dtype)
            if not logits.requires_grad:
                raise ModelError("the model's output does not depend on anything gradients can reach (for a model "
                             "with several outputs, choose the class scores with cnnlens.load(model, output=...))")
            result = Pass(logits_np)
            activations = [call.captured.get(n) for n in layers]
            if mode is not None and activations:  # true gradients to the layers first, keeping the graph
                mode.rule = "plain"
                layer_grads = self._grad(logits, activations, seed_t, retain=input_grad)
                mode.rule = relu
                wanted = [xt] if input_grad else []
            else:
                layer_grads = None
                wanted = ([xt] if input_grad else []) + activations
            grads = self._grad(logits, wanted, seed_t, retain=False) if wanted else []
            if input_grad:
                grad = grads.pop(0)
                result.input_grad = numpy_of(grad.permute(0, 3, 1, 2) if self.layout == "NHWC" else grad)
            layer_grads = layer_grads if layer_grads is not None else grads
            host = to_host(list(activations) + list(layer_grads))
            for i, n in enumerate(layers):
                result.activations[n] = host[i]
                result.gradients[n] = host[len(layers) + i]
            return result

    def replaced(self, x: np.ndarray, layer: str, values: np.ndarray) -> np.ndarray:
        """The outputs with layer ``layer``'s output replaced by ``values`` (B, K, h, w); ``x`` holds
        one image (shared by every replacement) or B."""
        name = self.resolve_layer(layer)
        return run_replaced(self, self.modules()[name], name, np.asarray(x), np.asarray(values, dtype=np.float32))

    @staticmethod
    def _grad(logits: torch.Tensor, wanted: List[torch.Tensor], seed: torch.Tensor, retain: bool) -> List[torch.Tensor]:
        grads = torch.autograd.grad(logits, wanted, grad_outputs=seed, allow_unused=True, retain_graph=retain)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(wanted, grads)]

    # ------------------------------------------------------------ CAM head

    def linear_head(self, x: np.ndarray, layer: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """Find GAP -> linear at the end of the model by watching the functions it calls (``head.py``)."""
        return find_linear_head(self, x, layer)
