"""The PyTorch backend: an ``nn.Module`` driven with forward hooks and ``torch.autograd.grad``.

Everything a call installs (hooks, the ReLU-rule mode, ``eval()``) is removed or restored in
``finally``; parameter ``.grad`` is never touched because gradients are taken with
``torch.autograd.grad`` w.r.t. the input and the requested activations only.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..core.errors import InvalidInputError, LayerError, ModelError, unknown_layer
from ..core.types import Layer, Pass
from . import base
from ._torch_eval import _EvalState, evaluating  # noqa: F401  (evaluating: the backends' public helper)
from ._torch_head import HeadRecorder
from ._torch_relu import ReluRuleMode
from ._torch_replace import run_replaced

_CAPABILITIES = frozenset({
    base.FORWARD, base.ACTIVATIONS, base.INPUT_GRADIENTS, base.LAYER_GRADIENTS,
    base.RELU_RULES, base.WEIGHTS, base.LINEAR_HEAD,
    base.RANDOMISE, base.REPLACE_LAYER, base.INCREMENTAL_OCCLUSION,
})
#: What TorchScript allows: no hooks on compiled modules, and compiled code calls its ReLUs
#: without going through Python, so no activations, layer gradients or ReLU rules.
_SCRIPT_CAPABILITIES = frozenset({base.FORWARD, base.INPUT_GRADIENTS, base.WEIGHTS, base.RANDOMISE})

#: GPU batches: this fraction of the free memory, for the activations a pass keeps.
_GPU_MEMORY_FRACTION = 0.4
_GPU_MAX_BATCH = 256

#: Layer traces per model, shared by every backend on it (so ``explain(model, ...)`` called
#: again and again traces once). Keyed weakly: the cache never keeps a model alive.
_TRACES: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple, Tuple[List[Layer], List[str]]]]" = weakref.WeakKeyDictionary()
_TRACES_LOCK = threading.Lock()
_TRACES_PER_MODEL = 16
#: Models that failed on channels-last input (so later backends on them start contiguous).
_NEEDS_CONTIGUOUS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


# ---------------------------------------------------------------- model state


#: Models whose several outputs were explained by their first tensor, already warned about.
_WARNED_OUTPUTS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _output_entries(output: Any) -> List[Tuple[str, Any]]:
    """(label, value) for each entry of a tuple, list, dict or output object."""
    if isinstance(output, dict):
        return [(repr(k), v) for k, v in output.items()]
    if isinstance(output, (tuple, list)):
        return [(str(i), v) for i, v in enumerate(output)]
    return [("logits", getattr(output, "logits", None))]


def _scores(output: Any, choice: Union[None, int, str], model: nn.Module) -> torch.Tensor:
    """The class scores in the model's output: the output itself, the entry ``choice`` names (an
    index or a key) of a tuple, list or dict, or by default its first tensor."""
    if isinstance(output, torch.Tensor):
        scores = output
    elif choice is not None:
        try:
            scores = output[choice] if isinstance(output, (dict, tuple, list)) else getattr(output, str(choice))
        except (KeyError, IndexError, TypeError, AttributeError):
            entries = ", ".join(label for label, _ in _output_entries(output))
            raise ModelError(f"the model's output has no entry {choice!r} (it has: {entries}): choose one of those "
                             f"with output=...") from None
        if not isinstance(scores, torch.Tensor):
            raise ModelError(f"the model's output entry {choice!r} is a {type(scores).__name__}, not a tensor")
    else:
        tensors = [(label, v) for label, v in _output_entries(output) if isinstance(v, torch.Tensor)]
        if not tensors:
            raise ModelError(
                f"the model returned {type(output).__name__} with no tensor in it: cnnlens explains a "
                f"model that returns class scores (N, classes); wrap it in a module that returns them"
            )
        label, scores = tensors[0]
        if len(tensors) > 1 and _first_warning(model):
            warnings.warn(
                f"the model returns a {type(output).__name__} of {len(tensors)} tensors; cnnlens explains the "
                f"first, {label} (shape {tuple(scores.shape)}). To explain another, load the model with "
                f"cnnlens.load(model, output=KEY_OR_INDEX) (command line: --output)", UserWarning, stacklevel=2)
    if scores.ndim < 1 or not scores.is_floating_point():
        raise ModelError(f"the model's output is a {scores.dtype} tensor of shape {tuple(scores.shape)}, not float "
                         f"scores with a batch axis: wrap the model so that it returns them")
    return scores


def _first_warning(model: nn.Module) -> bool:
    return _remember(_WARNED_OUTPUTS, model)


def _remember(models: "weakref.WeakSet[nn.Module]", model: nn.Module) -> bool:
    """Add ``model`` to a weak set of models; True when it was not there yet (an unhashable
    module class is never remembered, so always counts as new)."""
    try:
        if model in models:
            return False
        models.add(model)
    except TypeError:
        pass
    return True


class _Capture:
    """Forward hooks on the requested modules, active only for the thread that installed them.

    Each hook keeps the module's output (the last call's, for a module run several times)
    and hands the rest of the model a clone, so later in-place operations cannot change
    the captured value or reroute its gradient.
    """

    def __init__(self, modules: Dict[str, nn.Module], grad: bool):
        self.outputs: Dict[str, torch.Tensor] = {}
        self.grad = grad
        self.thread = threading.get_ident()
        self.handles = []
        try:
            for name, module in modules.items():
                self.handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if threading.get_ident() != self.thread:
                return None
            if not isinstance(output, torch.Tensor):
                raise LayerError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor: pick one of its "
                    f"sub-layers (`cnnlens.layers(model)` lists them)"
                )
            if not self.grad:
                self.outputs[name] = output.detach().clone()
                return None
            if not output.requires_grad:  # nothing upstream needs gradients: start the graph here
                output = output.detach().requires_grad_(True)
            self.outputs[name] = output
            return output.clone()
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def get(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            raise LayerError(f"layer {name!r} exists but the model's forward pass never ran it: pick a layer that runs")
        return self.outputs[name]


def _known_contiguous(model: nn.Module) -> bool:
    try:
        return model in _NEEDS_CONTIGUOUS
    except TypeError:  # an unhashable module class
        return False


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def _to_host(tensors: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """NumPy copies of ``tensors``; from a GPU in one transfer rather than one per tensor."""
    if len(tensors) < 2 or tensors[0].device.type == "cpu":
        return [_numpy(t) for t in tensors]
    flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors]).cpu().numpy()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape))
        start += t.numel()
    return out


def _own_float_parameters(module: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """The floating-point parameters a module owns itself (not its children's)."""
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.is_floating_point()]


def _reinitialise(module: nn.Module, seed: int, scripted: bool) -> None:
    """Re-draw one module's own parameters in place, reproducibly for ``seed``, leaving the global
    random state as it was."""
    reset = None if scripted else getattr(module, "reset_parameters", None)
    if callable(reset):
        with _seeded(module, seed):
            reset()
        return
    generator = torch.Generator().manual_seed(seed)
    for _, p in _own_float_parameters(module):
        std = float(p.detach().double().std(correction=0)) if p.numel() else 0.0
        draw = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std
        p.copy_(draw.to(device=p.device, dtype=p.dtype))
    for name, buffer in module.named_buffers(recurse=False):  # a BatchNorm's running statistics
        if name in ("running_mean", "running_var", "num_batches_tracked"):
            buffer.fill_(1 if name == "running_var" else 0)


@contextlib.contextmanager
def _seeded(module: nn.Module, seed: int) -> Iterator[None]:
    """The default generators of the devices ``module`` lives on seeded with ``seed`` inside, restored
    after. Not ``torch.manual_seed``: without CUDA started, it queues a seed for every GPU that would
    replace the user's own when CUDA starts later."""
    tensors = list(module.parameters()) + list(module.buffers())
    cuda = sorted({t.device.index if t.device.index is not None else torch.cuda.current_device()
                   for t in tensors if t.device.type == "cuda"})
    other = any(t.device.type not in ("cpu", "cuda") for t in tensors)
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        if other:  # another accelerator's generator: only torch.manual_seed reaches it
            torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------- the backend


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

    def __repr__(self) -> str:
        return f"TorchBackend({type(self.model).__name__}, device={self.device})"

    # ------------------------------------------------------------ inspection

    def _modules(self) -> Dict[str, nn.Module]:
        return {name: m for name, m in self.model.named_modules() if name}

    def resolve_layer(self, name: str) -> str:
        if not isinstance(name, str):
            raise LayerError(f"a layer name must be a string, got {name!r}")
        if name not in self._modules():
            raise unknown_layer(name, self._modules())
        return name

    def _input(self, x: np.ndarray) -> torch.Tensor:
        # Always a copy: a model that writes to its input must not change the caller's images.
        x = np.asarray(x)
        if self.layout == "NHWC" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        layout = torch.channels_last if self.channels_last and x.ndim == 4 else torch.contiguous_format
        return torch.from_numpy(np.asarray(x)).to(device=self.device, dtype=self.dtype, memory_format=layout, copy=True)

    def _traces(self) -> Dict[Tuple, Tuple[List[Layer], List[str]]]:
        with _TRACES_LOCK:
            try:
                return _TRACES.setdefault(self.model, {})
            except TypeError:  # a module class that is not hashable: no sharing
                if not hasattr(self, "_own_traces"):
                    self._own_traces: Dict[Tuple, Tuple[List[Layer], List[str]]] = {}
                return self._own_traces

    def _guess_input_shape(self) -> Tuple[int, ...]:
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d):
                return (1, module.in_channels, 224, 224)
        return (1, 3, 224, 224)

    def _trace(self, input_shape: Tuple[int, ...]) -> Tuple[List[Layer], List[str]]:
        """Run one image of ``input_shape`` with hooks on every module: (layers in call order,
        names in order of completion)."""
        modules = self._modules()
        key = tuple(int(v) for v in input_shape[1:])
        # the structure and placement are part of the key, so a model changed since is traced again
        cache_key = (key, str(self.device), str(self.dtype), tuple(id(m) for m in modules.values()))
        traces = self._traces()
        with _TRACES_LOCK:
            if cache_key in traces:
                return traces[cache_key]
        called: Dict[str, None] = {}
        shapes: Dict[str, Optional[Tuple[Optional[int], ...]]] = {}
        finished: List[str] = []
        thread = threading.get_ident()
        handles = []

        def pre(name):
            def hook(module, inputs):
                if threading.get_ident() == thread:
                    called.setdefault(name, None)
            return hook

        def post(name):
            def hook(module, inputs, output):
                if threading.get_ident() != thread:
                    return
                shapes[name] = (None,) + tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
                finished.append(name)
            return hook

        try:
            for name, module in modules.items():
                handles.append(module.register_forward_pre_hook(pre(name)))
                handles.append(module.register_forward_hook(post(name)))
            with _EvalState.evaluating(self.model), torch.no_grad():
                self.model(self._input(np.zeros((1,) + key, dtype=np.float32)))
        except LayerError:
            raise
        except Exception as error:
            raise ModelError(
                f"the model failed on an input of shape {(1,) + key}: {type(error).__name__}: {error}. "
                f"Pass input_shape=(C, H, W) the model accepts"
            ) from None
        finally:
            for handle in handles:
                handle.remove()
        layers = [Layer(n, type(modules[n]).__name__, shapes.get(n)) for n in called]
        order: Dict[str, int] = {}
        for i, n in enumerate(finished):
            order[n] = i
        completion = sorted(order, key=order.__getitem__)
        with _TRACES_LOCK:
            while len(traces) >= _TRACES_PER_MODEL:  # a service seeing many image sizes stays bounded
                traces.pop(next(iter(traces)))
            traces[cache_key] = (layers, completion)
        return layers, completion

    def layers(self, input_shape: Optional[Tuple[int, ...]] = None) -> List[Layer]:
        """Modules in the order the forward pass calls them, with output shapes (batch as None).
        For TorchScript (no hooks): the submodules in definition order, without shapes."""
        if self.scripted:
            return [Layer(n, getattr(m, "original_name", type(m).__name__), None) for n, m in self._modules().items()]
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

    def weights(self, layer: Optional[str] = None) -> np.ndarray:
        modules = self._modules()
        if layer is None:
            for name, module in modules.items():
                w = getattr(module, "weight", None)
                if isinstance(w, torch.Tensor) and w.ndim == 4:
                    return _numpy(w).copy()
            raise LayerError("the model has no convolution with a 4-D weight: name a layer")
        module = modules[self.resolve_layer(layer)]
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor):
            raise LayerError(f"layer {layer!r} ({type(module).__name__}) has no weight tensor: name a Conv or Linear layer")
        return _numpy(w).copy()

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
        modules = self._modules()
        try:
            called = [layer.name for layer in self.layers()] if not self.scripted else []
        except ModelError:
            called = []
        order = called or list(modules)
        return [n for n in order if n in modules and _own_float_parameters(modules[n])]

    def weighted_layers(self) -> List[str]:
        """Every module that owns a floating-point parameter itself, in definition order."""
        return [n for n, m in self._modules().items() if _own_float_parameters(m)]

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
                _reinitialise(modules[name], int(seed) + i, scripted=self.scripted)
        backend = TorchBackend(model, output=self.output, layout=self.layout)
        backend.channels_last = self.channels_last
        return backend

    # ------------------------------------------------------------ passes

    @contextlib.contextmanager
    def _call(self, layers: Sequence[str], grad: bool) -> Iterator[_Capture]:
        modules = self._modules() if layers else {}
        for n in layers:
            if n not in modules:
                self.resolve_layer(n)  # raises the unknown-layer error
        wanted = {n: modules[n] for n in layers}
        with _EvalState.evaluating(self.model):
            capture = _Capture(wanted, grad=grad)
            try:
                yield capture
            finally:
                capture.remove()

    def forward(self, x: np.ndarray, layers: Sequence[str] = ()) -> Pass:
        with self._call(layers, grad=False) as capture, torch.no_grad():
            logits = self._scores(self._run(self._input(x)))
            host = _to_host([logits] + [capture.get(n) for n in layers])
            return Pass(host[0], activations=dict(zip(layers, host[1:])))

    def _input_hint(self, x: torch.Tensor) -> str:
        """What to check when the model rejects the images."""
        channels = self._guess_input_shape()[1]
        if x.ndim == 4 and x.shape[1] != channels:
            return f"Its first convolution takes {channels} channels, the images have {x.shape[1]}: convert them"
        return "Check that the images have the size, channels and preprocessing the model expects"

    def occluder(self, image: np.ndarray, window: Tuple[int, int]) -> Tuple[Optional[Callable[..., np.ndarray]], str]:
        """``(score, "incremental")``: ``score(top, left, values)`` gives the outputs for ``image``
        (C, H, W) with ``values[b]`` pasted at (top[b], left[b]), computed incrementally
        (``_torch_incremental``); or ``(None, "brute force...: why")`` when brute force must or
        should run for this model, image size and window."""
        from ._torch_incremental import occluder_for

        return occluder_for(self, np.asarray(image, dtype=np.float32), window)

    def _scores(self, output: Any) -> torch.Tensor:
        return _scores(output, self.output, self.model)

    def _run(self, x: torch.Tensor) -> Any:
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
                    output = self._run(x.contiguous())
                except BaseException:
                    self.channels_last = True
                    raise
                _remember(_NEEDS_CONTIGUOUS, self.model)
                return output
            raise InvalidInputError(
                f"the model failed on images of shape {tuple(x.shape)}: {str(error).strip()}. {self._input_hint(x)}"
            ) from error

    def backward(self, x: np.ndarray, grad_logits: base.GradLogits, layers: Sequence[str] = (),
                 relu: str = "plain", input_grad: bool = True) -> Pass:
        """``relu`` is the rule for the input gradient; layer gradients are always the true ones.
        Both come from one forward pass (two backward passes when the rules differ)."""
        mode = ReluRuleMode(relu) if relu != "plain" else None
        with self._call(layers, grad=True) as capture, torch.inference_mode(False), torch.enable_grad():
            xt = self._input(x)
            if input_grad:
                xt.requires_grad_(True)
            with mode if mode is not None else contextlib.nullcontext():
                logits = self._scores(self._run(xt))
            logits_np = _numpy(logits)
            seed = grad_logits(logits_np) if callable(grad_logits) else grad_logits
            seed_t = torch.as_tensor(np.asarray(seed), device=logits.device, dtype=logits.dtype)
            if not logits.requires_grad:
                raise ModelError("the model's output does not depend on anything gradients can reach (for a model "
                             "with several outputs, choose the class scores with cnnlens.load(model, output=...))")
            result = Pass(logits_np)
            activations = [capture.get(n) for n in layers]
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
                result.input_grad = _numpy(grad.permute(0, 3, 1, 2) if self.layout == "NHWC" else grad)
            layer_grads = layer_grads if layer_grads is not None else grads
            host = _to_host(list(activations) + list(layer_grads))
            for i, n in enumerate(layers):
                result.activations[n] = host[i]
                result.gradients[n] = host[len(layers) + i]
            return result

    def replaced(self, x: np.ndarray, layer: str, values: np.ndarray) -> np.ndarray:
        """The outputs with layer ``layer``'s output replaced by ``values`` (B, K, h, w); ``x`` holds
        one image (shared by every replacement) or B."""
        name = self.resolve_layer(layer)
        with _EvalState.evaluating(self.model):
            return run_replaced(self, self._modules()[name], name, np.asarray(x), np.asarray(values, dtype=np.float32))

    @staticmethod
    def _grad(logits: torch.Tensor, wanted: List[torch.Tensor], seed: torch.Tensor, retain: bool) -> List[torch.Tensor]:
        grads = torch.autograd.grad(logits, wanted, grad_outputs=seed, allow_unused=True, retain_graph=retain)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(wanted, grads)]

    # ------------------------------------------------------------ CAM head

    def linear_head(self, x: np.ndarray, layer: Optional[str] = None):
        """Find GAP -> linear at the end of the model by watching the functions it calls."""
        recorder = HeadRecorder()
        modules = self._modules()
        with self._call([], grad=False), torch.no_grad():
            outputs: Dict[str, torch.Tensor] = {}
            thread = threading.get_ident()
            handles = []

            def keep(name):
                def hook(module, inputs, output):
                    if threading.get_ident() == thread and isinstance(output, torch.Tensor):
                        outputs[name] = output
                return hook

            try:
                for name, module in modules.items():
                    handles.append(module.register_forward_hook(keep(name)))
                with recorder:
                    logits = self._scores(self._run(self._input(x)))
            finally:
                for handle in handles:
                    handle.remove()
            pooled, weight = recorder.head(logits)
            if pooled is None:
                raise ModelError(
                    "cam needs a model whose head is global average pooling followed by one linear layer "
                    "(ResNet, DenseNet, ...); this model has none. Use gradcam, which works on any layer"
                )
            producers = [n for n, t in outputs.items() if t is pooled]
            used = producers[-1] if producers else "<global pooling input>"
            if layer is not None:
                name = self.resolve_layer(layer)
                if not (name in outputs and outputs[name].shape == pooled.shape and torch.equal(outputs[name], pooled)):
                    raise LayerError(
                        f"cam can only use the tensor the head pools ({used!r}), not {name!r}: "
                        f"leave layer unset, or use gradcam for other layers"
                    )
                used = name
            return _numpy(logits), _numpy(pooled), _numpy(weight), used
