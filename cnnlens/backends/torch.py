"""The PyTorch backend: an ``nn.Module`` driven with forward hooks and ``torch.autograd.grad``.

Everything a call installs (hooks, the ReLU-rule mode, ``eval()``) is removed or restored in
``finally``; parameter ``.grad`` is never touched because gradients are taken with
``torch.autograd.grad`` w.r.t. the input and the requested activations only.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.errors import InvalidInputError, LayerError, ModelError, unknown_layer
from ..core.types import Layer, Pass
from . import base
from ._torch_relu import ReluRuleMode

_CAPABILITIES = frozenset({
    base.FORWARD, base.ACTIVATIONS, base.INPUT_GRADIENTS, base.LAYER_GRADIENTS,
    base.RELU_RULES, base.WEIGHTS, base.LINEAR_HEAD,
})
#: What TorchScript allows: no hooks on compiled modules, and compiled code calls its ReLUs
#: without going through Python, so no activations, layer gradients or ReLU rules.
_SCRIPT_CAPABILITIES = frozenset({base.FORWARD, base.INPUT_GRADIENTS, base.WEIGHTS})


# ---------------------------------------------------------------- model state


class _EvalState:
    """Puts a model in eval mode for the duration of calls, restoring every module's own flag
    when the last concurrent call on that model leaves (so threads sharing a model agree)."""

    _lock = threading.Lock()
    _active: Dict[int, Tuple[int, List[Tuple[nn.Module, bool]]]] = {}

    @classmethod
    @contextlib.contextmanager
    def evaluating(cls, model: nn.Module) -> Iterator[None]:
        key = id(model)
        with cls._lock:
            count, saved = cls._active.get(key, (0, []))
            if count == 0:
                saved = [(m, m.training) for m in model.modules()]
                model.eval()
            cls._active[key] = (count + 1, saved)
        try:
            yield
        finally:
            with cls._lock:
                count, saved = cls._active[key]
                if count == 1:
                    del cls._active[key]
                    for module, flag in saved:
                        module.training = flag
                else:
                    cls._active[key] = (count - 1, saved)


def evaluating(model: nn.Module):
    """Context manager: ``model`` in eval mode inside, every module's own flag restored after."""
    return _EvalState.evaluating(model)


def _first_tensor(output: Any) -> torch.Tensor:
    """The model's scores: the output itself, or the first tensor of a tuple, list or dict."""
    if isinstance(output, torch.Tensor):
        scores = output
    else:
        values = list(output.values()) if isinstance(output, dict) else (
            list(output) if isinstance(output, (tuple, list)) else [getattr(output, "logits", None)])
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if not tensors:
            raise ModelError(
                f"the model returned {type(output).__name__} with no tensor in it: cnnlens explains a "
                f"model that returns class scores (N, classes); wrap it in a module that returns them"
            )
        scores = tensors[0]
    if scores.ndim != 2:
        raise ModelError(
            f"the model's output has shape {tuple(scores.shape)}, not (N, classes): wrap the model in a "
            f"module that returns one row of class scores per image"
        )
    return scores


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


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


# ---------------------------------------------------------------- the backend


class TorchBackend:
    """An ``nn.Module`` behind the Backend protocol (see ``backends/base.py``)."""

    def __init__(self, model: nn.Module, device: Optional[str] = None):
        if not isinstance(model, nn.Module):
            raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
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
        self._traces: Dict[Tuple[int, ...], Tuple[List[Layer], List[str]]] = {}
        self._lock = threading.Lock()

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
        return torch.tensor(x, device=self.device, dtype=self.dtype)

    def _guess_input_shape(self) -> Tuple[int, ...]:
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d):
                return (1, module.in_channels, 224, 224)
        return (1, 3, 224, 224)

    def _trace(self, input_shape: Tuple[int, ...]) -> Tuple[List[Layer], List[str]]:
        """Run one image of ``input_shape`` with hooks on every module: (layers in call order,
        names in order of completion)."""
        key = tuple(int(v) for v in input_shape[1:])
        with self._lock:
            if key in self._traces:
                return self._traces[key]
        modules = self._modules()
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
                self.model(torch.zeros((1,) + key, device=self.device, dtype=self.dtype))
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
        with self._lock:
            self._traces[key] = (layers, completion)
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

    def batch_size(self, kind: str, image_shape: Tuple[int, ...]) -> int:
        elements = int(np.prod(image_shape))
        budget = 2 ** 23 if kind == "forward" else 2 ** 22
        return int(max(1, min(256, budget // max(elements, 1))))

    # ------------------------------------------------------------ passes

    @contextlib.contextmanager
    def _call(self, layers: Sequence[str], grad: bool) -> Iterator[_Capture]:
        modules = self._modules()
        wanted = {n: modules[self.resolve_layer(n)] for n in layers}
        with _EvalState.evaluating(self.model):
            capture = _Capture(wanted, grad=grad)
            try:
                yield capture
            finally:
                capture.remove()

    def forward(self, x: np.ndarray, layers: Sequence[str] = ()) -> Pass:
        with self._call(layers, grad=False) as capture, torch.no_grad():
            logits = _first_tensor(self._run(self._input(x)))
            activations = {n: _numpy(capture.get(n)) for n in layers}
            return Pass(_numpy(logits), activations=activations)

    def _run(self, x: torch.Tensor) -> Any:
        try:
            return self.model(x)
        except (LayerError, ModelError):
            raise
        except RuntimeError as error:
            raise InvalidInputError(
                f"the model failed on images of shape {tuple(x.shape)}: {error}"
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
                logits = _first_tensor(self._run(xt))
            logits_np = _numpy(logits)
            seed = grad_logits(logits_np) if callable(grad_logits) else grad_logits
            seed_t = torch.as_tensor(np.asarray(seed), device=logits.device, dtype=logits.dtype)
            if not logits.requires_grad:
                raise ModelError("the model's output does not depend on anything gradients can reach")
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
                result.input_grad = _numpy(grads.pop(0))
            for n, a, g in zip(layers, activations, layer_grads if layer_grads is not None else grads):
                result.activations[n] = _numpy(a)
                result.gradients[n] = _numpy(g)
            return result

    @staticmethod
    def _grad(logits: torch.Tensor, wanted: List[torch.Tensor], seed: torch.Tensor, retain: bool) -> List[torch.Tensor]:
        grads = torch.autograd.grad(logits, wanted, grad_outputs=seed, allow_unused=True, retain_graph=retain)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(wanted, grads)]

    # ------------------------------------------------------------ CAM head

    def linear_head(self, x: np.ndarray, layer: Optional[str] = None):
        """Find GAP -> linear at the end of the model by watching the functions it calls."""
        recorder = _HeadRecorder()
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
                    logits = _first_tensor(self._run(self._input(x)))
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


_POOLS = {F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean, torch.Tensor.mean}


class _HeadRecorder(TorchFunctionMode):
    """Records global average pools and linear maps the forward pass calls."""

    def __init__(self):
        super().__init__()
        self.pools: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.linears: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _POOLS and args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            if isinstance(out, torch.Tensor) and out.shape[:2] == args[0].shape[:2] and out[0, 0].numel() == 1:
                self.pools.append((args[0], out))
        elif func is F.linear and isinstance(out, torch.Tensor):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.linears.append((args[0] if args else kwargs["input"], weight, out))
        return out

    def head(self, logits: torch.Tensor):
        """(pooled activations, linear weight) when the logits come from linear(GAP(A)), else (None, None)."""
        for features, weight, out in reversed(self.linears):
            if not (out is logits or (out.shape == logits.shape and torch.equal(out, logits))):
                continue
            flat = features.reshape(features.shape[0], -1)
            for activations, pooled in reversed(self.pools):
                p = pooled.reshape(pooled.shape[0], -1)
                if p.shape == flat.shape and torch.equal(p, flat):
                    return activations, weight
            return None, None
        return None, None
