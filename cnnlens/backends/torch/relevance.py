"""LRP and DeepLIFT on the torch backend: a ``TorchFunctionMode`` active for one forward pass swaps
the ops the forward actually calls — ``nn.Conv*`` / ``F.conv*``, ``nn.Linear`` / ``F.linear``,
BatchNorm, residual ``+``, average pools, elementwise activations, and their ATen forms in a
``torch.export`` program — for the autograd functions of ``relevance_rules``, so the user's
module is never touched (no hooks, no weights changed; modes are thread-local).

Canonization happens per call, as zennit's canonizers do per module: a BatchNorm whose input is a
Conv/Linear's output is merged into that layer (its output computed by the merged layer), a sum
of two computed tensors of one shape (a residual connection) gets the proportional rule, and so
do average pools, functional ones included. What was applied comes back as ``Pass.notes``.
"""

from __future__ import annotations

import collections
import functools
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ...core.backend import GradLogits, seed_rows
from ...core.errors import InvalidInputError, ModelError
from ...core.relevance import DeepLiftRules, LrpRules, describe
from ...core.types import Pass
from .host import numpy_of
from .relevance_rules import Elementwise, LayerRule, LinearOp, LinearRule, PoolRule, SumRule

_ATEN = torch.ops.aten
_T = torch.Tensor

# ---------------------------------------------------------------- which calls are which op, and their arguments

_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_CONVS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3, _ATEN.conv1d.default: 1, _ATEN.conv2d.default: 2,
          _ATEN.conv3d.default: 3}
_LINEARS = {F.linear, _ATEN.linear.default}
# BatchNorm's argument orders: F.batch_norm's, and torch.batch_norm's (= ATen's)
_BN_F = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BN_TORCH = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
_BN_LEGIT = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")
_BATCH_NORMS = {F.batch_norm: _BN_F, torch.batch_norm: _BN_TORCH, _ATEN.batch_norm.default: _BN_TORCH,
                _ATEN._native_batch_norm_legit_no_training.default: _BN_LEGIT}
_ADDS = {torch.add: False, _T.add: False, _T.__add__: False, _T.__radd__: False, _ATEN.add.Tensor: False,
         _T.__iadd__: True, _T.add_: True, _ATEN.add_.Tensor: True}
_POOLS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
          F.adaptive_avg_pool3d, _ATEN.avg_pool2d.default, _ATEN.adaptive_avg_pool2d.default,
          _ATEN._adaptive_avg_pool2d.default}
_MEANS = {torch.mean, _T.mean, _ATEN.mean.dim}
_SOFTMAXES = {F.softmax, torch.softmax, _T.softmax, _ATEN._softmax.default, _ATEN.softmax.int}
# elementwise activations: out-of-place ones, and in-place ones with their out-of-place twin
_ACTIVATIONS = {F.relu, torch.relu, _T.relu, _ATEN.relu.default, F.relu6, F.hardtanh, _ATEN.hardtanh.default,
                F.leaky_relu, _ATEN.leaky_relu.default, F.elu, _ATEN.elu.default, F.selu, F.celu, F.gelu,
                _ATEN.gelu.default, F.silu, _ATEN.silu.default, torch.sigmoid, _T.sigmoid, F.sigmoid,
                _ATEN.sigmoid.default, torch.tanh, _T.tanh, F.tanh, _ATEN.tanh.default, F.softplus,
                _ATEN.softplus.default, F.hardswish, _ATEN.hardswish.default, F.hardsigmoid,
                _ATEN.hardsigmoid.default, F.mish}
_IN_PLACE = {torch.relu_: torch.relu, _T.relu_: torch.relu, _ATEN.relu_.default: torch.relu,
             _ATEN.hardtanh_.default: _ATEN.hardtanh.default, _T.sigmoid_: torch.sigmoid, _T.tanh_: torch.tanh,
             _ATEN.silu_.default: F.silu, _ATEN.leaky_relu_.default: _ATEN.leaky_relu.default}


def _bind(names: Tuple[str, ...], defaults: Dict[str, Any], args: tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    values = dict(defaults)
    values.update(zip(names, args))
    values.update(kwargs)
    return values


def _ints(value: Any, n: int) -> List[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * n


def _conv_op(values: Dict[str, Any], n: int, weight: torch.Tensor) -> LinearOp:
    padding = values["padding"]
    dilation = _ints(values["dilation"], n)
    if isinstance(padding, str):
        stride = _ints(values["stride"], n)
        reach = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
        if padding == "valid":
            padding = [0] * n
        elif padding == "same" and all(s == 1 for s in stride) and all(r % 2 == 0 for r in reach):
            padding = [r // 2 for r in reach]
        else:
            raise ModelError(f"LRP cannot apply its rules to a convolution with padding={padding!r} and uneven "
                             f"padding: pad explicitly in the model")
    return LinearOp("conv", _ints(values["stride"], n), _ints(padding, n), dilation, int(values["groups"]))


#: an elementwise activation call: (its input, the out-of-place function of it, the call as made, in place?)
Activation = Tuple[_T, Callable[[_T], _T], Callable[[_T], _T], bool]


def _activation(func: Any, args: tuple, kwargs: Dict[str, Any]) -> Optional[Activation]:
    """The call, taken apart, if ``func`` is an elementwise activation (else None)."""
    rest = args[1:]
    if func in _IN_PLACE:
        twin = _IN_PLACE[func]
        return args[0], (lambda t: twin(t, *rest, **kwargs)), (lambda t: func(t, *rest, **kwargs)), True
    if func not in _ACTIVATIONS:
        return None
    if not inspect.isfunction(func):  # a builtin or an ATen operator: no in-place argument
        plain = lambda t: func(t, *rest, **kwargs)  # noqa: E731
        return args[0], plain, plain, False
    signature = _signature(func)
    arguments = dict(signature.bind(*args, **kwargs).arguments)
    s = arguments.pop(next(iter(signature.parameters)))
    inplace = bool(arguments.pop("inplace", False))
    if inplace:
        return s, (lambda t: func(t, **arguments)), (lambda t: func(t, **arguments, inplace=True)), True
    plain = lambda t: func(t, **arguments)  # noqa: E731
    return s, plain, plain, False


@functools.lru_cache(maxsize=None)
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(func)


def _first(result: Any) -> _T:
    return result[0] if isinstance(result, tuple) else result


def _computed(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.grad_fn is not None


class RelevanceMode(TorchFunctionMode):
    """While active, the calls of one forward pass go through the relevance rules: LRP's composite
    (``rules`` an ``LrpRules``) or DeepLIFT's Rescale rule. For DeepLIFT the mode first runs in
    ``record`` mode on the baseline (each activation's input and output kept, in call order), then
    replays them, call by call, on the images."""

    def __init__(self, rules: Any, record: bool = False, references: Optional[List[Tuple[_T, _T]]] = None):
        super().__init__()
        self.rules = rules
        self.lrp = isinstance(rules, LrpRules)
        self.record = record
        self.references: List[Tuple[_T, _T]] = references if references is not None else []
        self._next = 0
        self._layers: Dict[int, Tuple[_T, _T, Optional[_T], LayerRule, _T]] = {}
        self.counts: Dict[str, int] = collections.Counter()
        self.first: Optional[str] = None
        self.softmax: Optional[Tuple[_T, _T]] = None

    # ------------------------------------------------------------ the dispatch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SOFTMAXES:  # remembered: a model's final Softmax is skipped (relevance starts at its input)
            out = func(*args, **kwargs)
            self.softmax = (args[0] if args else kwargs["input"], out)
            return out
        activation = _activation(func, args, kwargs)
        if activation is not None:
            return self._elementwise(*activation)
        if not self.lrp:
            return func(*args, **kwargs)
        if func in _CONVS or func is _ATEN.convolution.default or func in _LINEARS:
            return self._linear(func, args, kwargs)
        if func in _BATCH_NORMS:
            return self._batch_norm(func, args, kwargs)
        if func in _ADDS:
            return self._add(func, args, kwargs)
        if func in _POOLS or func in _MEANS:
            return self._pool(func, args, kwargs)
        return func(*args, **kwargs)

    def _elementwise(self, s: _T, f: Callable[[_T], _T], original: Callable[[_T], _T], inplace: bool) -> _T:
        if self.lrp:
            return Elementwise.apply(s, f, original, inplace, None)
        if self.record:
            out = f(s)
            self.references.append((s.detach().clone(), out.detach().clone()))
            if inplace:
                return s.copy_(out)
            return out
        if self._next >= len(self.references):
            raise ModelError("DeepLIFT: the model called more activations on the images than on the baseline (its "
                             "forward pass depends on the input's values); DeepLIFT needs one path for both")
        reference = self.references[self._next]
        self._next += 1
        if reference[0].shape[1:] != s.shape[1:]:
            raise ModelError(f"DeepLIFT: an activation saw shape {tuple(s.shape[1:])} on the images and "
                             f"{tuple(reference[0].shape[1:])} on the baseline: the baseline must take the images' path")
        self.counts["rescale"] += 1
        return Elementwise.apply(s, f, original, inplace, reference)

    # ------------------------------------------------------------ LRP's layers

    def _linear(self, func: Any, args: tuple, kwargs: Dict[str, Any]) -> Any:
        if func in _LINEARS:
            values = _bind(("input", "weight", "bias"), {"bias": None}, args, kwargs)
            op, kind = LinearOp("dense"), "dense"
        elif func is _ATEN.convolution.default:
            values = _bind(("input", "weight", "bias", "stride", "padding", "dilation", "transposed",
                            "output_padding", "groups"), {}, args, kwargs)
            if values["transposed"]:
                return func(*args, **kwargs)  # a transposed convolution: no rule here, the plain gradient
            n = values["weight"].dim() - 2
            op, kind = _conv_op(values, n, values["weight"]), "conv"
        else:
            values = _bind(_CONV_ARGS, _CONV_DEFAULTS, args, kwargs)
            op, kind = _conv_op(values, _CONVS[func], values["weight"]), "conv"
        a, w, b = values["input"], values["weight"], values["bias"]
        first = self.first is None
        rules: LrpRules = self.rules
        rule = rules.layers.rule(kind, first)
        if first:
            self.first = f"{kind} ({rule})"
        box = None
        if rule == "zbox":
            low, high = rules.box(int(w.shape[1]) * (op.groups if kind == "conv" else 1))
            box = (torch.as_tensor(low, dtype=w.dtype, device=w.device), torch.as_tensor(high, dtype=w.dtype, device=w.device))
        layer = LayerRule(op, rule, rules.epsilon, rules.gamma, box)
        self.counts[f"{kind} {rule}"] += 1
        out = LinearRule.apply(a, w, b, layer)
        self._layers[id(out)] = (a, w, b, layer, out)
        return out

    def _batch_norm(self, func: Any, args: tuple, kwargs: Dict[str, Any]) -> Any:
        values = _bind(_BATCH_NORMS[func], {"weight": None, "bias": None, "training": False, "momentum": 0.1,
                                            "eps": 1e-5}, args, kwargs)
        found = self._layers.get(id(values["input"]))
        if found is None or found[4] is not values["input"] or values.get("training") or values["running_mean"] is None:
            self.counts["batchnorm pass"] += 1  # not after a linear layer: relevance passes (zennit's Pass)
            rest = {k: v for k, v in kwargs.items() if k != "input"}
            tail = args[1:] if args else ()
            norm = lambda t: _first(func(t, *tail, **rest))  # noqa: E731
            out = Elementwise.apply(values["input"], norm, norm, False, None)
            return (out, out.new_zeros((0,)), out.new_zeros((0,))) if func is _ATEN._native_batch_norm_legit_no_training.default else out
        a, w, b, layer, _ = found
        merged_w, merged_b = _merged(w, b, values, layer.op.kind)
        self.counts["batchnorm merged"] += 1
        out = LinearRule.apply(a, merged_w, merged_b, layer)
        self._layers[id(out)] = (a, merged_w, merged_b, layer, out)
        if func is _ATEN._native_batch_norm_legit_no_training.default:
            empty = out.new_zeros((0,))
            return out, empty, empty
        return out

    def _add(self, func: Any, args: tuple, kwargs: Dict[str, Any]) -> Any:
        values = _bind(("input", "other", "alpha"), {"alpha": 1}, args, kwargs)
        t1, t2 = values["input"], values["other"]
        if func is _T.__radd__:
            t1, t2 = t2, t1
        if not (_computed(t1) and _computed(t2)) or t1.shape != t2.shape or values["alpha"] != 1:
            return func(*args, **kwargs)  # a bias or a scaled sum: the plain gradient
        self.counts["residual sum"] += 1
        return SumRule.apply(t1, t2, _ADDS[func])

    def _pool(self, func: Any, args: tuple, kwargs: Dict[str, Any]) -> Any:
        a = args[0] if args else kwargs["input"]
        if func in _MEANS:
            values = _bind(("input", "dim", "keepdim"), {"dim": None, "keepdim": False}, args, kwargs)
            dims = values["dim"]
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if a.dim() < 3 or sorted(d % a.dim() for d in dims) != list(range(2, a.dim())) or len(kwargs) > 2:
                return func(*args, **kwargs)  # not a spatial mean
        rest = args[1:]
        extra = {k: v for k, v in kwargs.items() if k != "input"}
        self.counts["average pool"] += 1
        return PoolRule.apply(a, lambda t: func(t, *rest, **extra))

    # ------------------------------------------------------------ what was done

    def notes(self) -> Tuple[str, ...]:
        """The canonizations and rules applied, as sentences (``Pass.notes``)."""
        return describe(self.counts, self.first, self.lrp)


def _merged(w: _T, b: Optional[_T], bn: Dict[str, Any], kind: str) -> Tuple[_T, _T]:
    """A Conv/Linear's weights with the BatchNorm after it merged in (zennit's MergeBatchNorm)."""
    mean, var, eps = bn["running_mean"], bn["running_var"], float(bn["eps"])
    gamma = bn["weight"] if bn["weight"] is not None else torch.ones_like(mean)
    beta = bn["bias"] if bn["bias"] is not None else torch.zeros_like(mean)
    scale = gamma / (var + eps) ** .5
    index = (slice(None),) + (None,) * (w.dim() - 1)
    bias = b if b is not None else torch.zeros_like(beta)
    return w * scale[index], (bias - mean) * scale + beta


def relevance_pass(backend: Any, x: np.ndarray, grad_logits: GradLogits, rules: Any, layers: Sequence[str] = ()) -> Pass:
    """``TorchBackend.backward`` under relevance rules: the outputs, and as the input gradient the
    input's relevance (LRP) or DeepLIFT's multipliers (NCHW); ``notes`` say what was applied. The
    rows ``grad_logits`` gives start the backward pass (LRP multiplies them by the outputs)."""
    if layers:
        raise InvalidInputError("relevance rules give the input's relevance only: ask for no layers")
    references: List[Tuple[_T, _T]] = []
    baseline_logits = None
    if isinstance(rules, DeepLiftRules):
        baseline_logits = _record_baseline(backend, rules, x, references)
    mode = RelevanceMode(rules, references=references)
    with backend.call(), torch.inference_mode(False), torch.enable_grad():
        xt = backend.to_tensor(x).requires_grad_(True)
        with mode:
            logits = backend.scores_of(backend.run_model(xt))
        mode._layers.clear()
        if mode.softmax is not None and mode.softmax[1] is logits:
            logits = mode.softmax[0]
            mode.counts["softmax skipped"] = 1
        outputs = numpy_of(logits)
        if not logits.requires_grad:
            raise ModelError("the model's output does not depend on anything gradients can reach")
        rows = np.asarray(seed_rows(grad_logits, outputs), dtype=np.float32)
        seed = torch.as_tensor(rows, device=logits.device, dtype=logits.dtype)
        if mode.lrp:
            seed = seed * logits.detach()
        (grad,) = torch.autograd.grad(logits, [xt], grad_outputs=seed, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(xt)
    result = numpy_of(grad.permute(0, 3, 1, 2) if backend.layout == "NHWC" else grad)
    return Pass(outputs, input_grad=result, notes=mode.notes(), baseline_logits=baseline_logits)


def _record_baseline(backend: Any, rules: DeepLiftRules, x: np.ndarray, references: List[Tuple[_T, _T]]) -> np.ndarray:
    """The baseline's outputs (one image), its activations' inputs and outputs appended to
    ``references`` in call order; run as one image, or as many as ``x`` holds for a program exported
    with a fixed batch."""
    for count in dict.fromkeys((1, len(x))):
        del references[:]
        baseline = np.array(np.broadcast_to(rules.baseline, (count,) + x.shape[1:]), dtype=np.float32)
        mode = RelevanceMode(rules, record=True, references=references)
        try:
            with backend.call(), torch.no_grad(), mode:
                logits = backend.scores_of(backend.run_model(backend.to_tensor(baseline)))
        except InvalidInputError:
            if count == len(x):
                raise
            continue
        if mode.softmax is not None and mode.softmax[1] is logits:
            logits = mode.softmax[0]
        references[:] = [(s[:1], out[:1]) for s, out in references]
        return numpy_of(logits[:1])
    raise AssertionError("unreachable: the last try raises")
