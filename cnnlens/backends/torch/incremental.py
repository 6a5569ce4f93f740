"""Exact incremental occlusion for torch models (Krypton, Nakandala et al., SIGMOD 2019).

An occluded copy differs from the image only inside its window. One clean forward pass caches
every activation; then, for a batch of windows of one size, each layer runs only on the region
of its output that the window changes (its projective field), read from the cached input plus
the changed region of the layer before (with the halo its kernel needs), until the region
covers most of the map: from there the rest of the network runs on the whole batch. The scores
are those of brute force, to float rounding.

The graph comes from ``torch.fx.symbolic_trace``. Regions pass through convolutions and
max / average pools (any kernel, stride, padding, dilation, groups), BatchNorm in eval mode,
the ReLU family and other elementwise modules, additions and channel concatenations; any other
operation first turns its changed inputs into whole tensors (so it runs as in brute force).
A model fx cannot trace raises :class:`NotIncremental` with the reason.
"""

from __future__ import annotations

import operator
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


#: A changed region covering more than this share of a layer's output map is computed as a
#: whole batch from there on (measured: below it, the gathers and the smaller convolutions win).
FULL_FRACTION = 0.55

#: The cost model (measured with benchmarks/occlusion.py on a 2-core CPU): the incremental way is
#: taken when it saves at least this many times the multiply-adds of brute force (MobileNet-V3's
#: 1.28x ran at 0.96x brute force's speed; ResNet-50's 1.81x at 1.64x)...
MIN_FLOP_SAVING = 1.5
#: ... and a window's brute-force pass costs at least this many multiply-adds (the demo's DenseNet
#: at 64 px, 14 M, ran at 0.65x brute force's speed: per-layer bookkeeping outweighs the saving).
MIN_WORK = 5e8

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Tanh,
                      nn.GELU, nn.ELU, nn.Identity, nn.Dropout, nn.BatchNorm2d)
_POINTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardswish, F.silu, torch.sigmoid, F.gelu, torch.tanh}
_ADDITIONS = {operator.add, torch.add, operator.iadd}


class NotIncremental(Exception):
    """The model cannot be run incrementally; the message says why."""


@dataclass
class Patched:
    """A batch of tensors equal to ``base`` (1, C, H, W) except in one region each: rows
    ``top[b] .. top[b] + patch.shape[2]``, columns ``left[b] ..``, which hold ``patch[b]``."""

    base: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    patch: torch.Tensor


def _gather(base: torch.Tensor, value: Optional[Patched], top: torch.Tensor, left: torch.Tensor,
            size: Tuple[int, int], pad: int, fill: float, channels_last: bool = False) -> torch.Tensor:
    """(B, C, h, w): each sample's crop at (top[b], left[b]) (input coordinates, may start at
    ``-pad``) of ``base`` padded by ``pad`` with ``fill``, with the sample's patch pasted in.

    Slice copies per sample (measured faster than one advanced-indexing gather, which is
    memory-bound on many channels)."""
    h, w = size
    canvas = (F.pad(base, (pad, pad, pad, pad), value=fill) if pad else base)[0]
    tops, lefts = top.tolist(), left.tolist()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    crop = torch.empty((len(tops), base.shape[1], h, w), dtype=base.dtype, device=base.device, memory_format=layout)
    for b, (t, l) in enumerate(zip(tops, lefts)):
        crop[b] = canvas[:, t + pad:t + pad + h, l + pad:l + pad + w]
    if value is None:
        return crop
    ph, pw = value.patch.shape[2:]
    for b, (t, l, pt, pl) in enumerate(zip(tops, lefts, value.top.tolist(), value.left.tolist())):
        r0, r1 = max(pt, t), min(pt + ph, t + h)  # the patch's rows inside the crop
        c0, c1 = max(pl, l), min(pl + pw, l + w)
        if r1 > r0 and c1 > c0:
            crop[b, :, r0 - t:r1 - t, c0 - l:c1 - l] = value.patch[b, :, r0 - pt:r1 - pt, c0 - pl:c1 - pl]
    return crop


def materialise(value: Patched, channels_last: bool = False) -> torch.Tensor:
    """The whole (B, C, H, W) batch a Patched value stands for."""
    b = len(value.top)
    zeros = torch.zeros(b, dtype=torch.long, device=value.base.device)
    return _gather(value.base, value, zeros, zeros, tuple(value.base.shape[2:]), 0, 0.0, channels_last)


def _window_params(module: nn.Module) -> Optional[Tuple[Tuple[int, int], ...]]:
    """((kernel), (stride), (padding), (dilation)) per axis of a window op it can crop, else None."""
    def pair(v: Any) -> Tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return pair(module.kernel_size), pair(module.stride), pair(module.padding), pair(module.dilation)
    if isinstance(module, nn.MaxPool2d) and not module.ceil_mode:
        stride = module.stride if module.stride is not None else module.kernel_size
        return pair(module.kernel_size), pair(stride), pair(module.padding), pair(module.dilation)
    if isinstance(module, nn.AvgPool2d) and not module.ceil_mode and module.count_include_pad \
            and module.divisor_override is None:
        stride = module.stride if module.stride is not None else module.kernel_size
        return pair(module.kernel_size), pair(stride), pair(module.padding), (1, 1)
    return None


def _run_window(module: nn.Module, crop: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return F.conv2d(crop, module.weight, module.bias, module.stride, 0, module.dilation, module.groups)
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(crop, module.kernel_size, module.stride, 0, module.dilation)
    return F.avg_pool2d(crop, module.kernel_size, module.stride, 0)


class IncrementalModel:
    """A traced model that scores batches of occluded copies of one image incrementally.

    It holds what does not change between runs (the graph, the modules, the decisions taken per
    image size and window); each run's state lives in its own :class:`_Pass`, so threads may
    share the model."""

    def __init__(self, model: nn.Module, full_fraction: float = FULL_FRACTION):
        try:
            self.graph = torch.fx.symbolic_trace(model)
        except Exception as error:  # noqa: BLE001 - fx raises many kinds on untraceable code
            raise NotIncremental(f"torch.fx cannot trace the model ({type(error).__name__}: {error})") from None
        self.modules = dict(self.graph.named_modules())
        self.full_fraction = full_fraction
        #: (image shape, window shape) -> what runs for it ("incremental" or "brute force (why)")
        self.decisions: Dict[Tuple[Any, ...], str] = {}
        #: (image shape, window shape) -> multiply-adds per window (brute force, incremental)
        self.flops: Dict[Tuple[Any, ...], Tuple[float, float]] = {}

    def clean(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every node's output for the clean image ``x`` (1, C, H, W)."""
        cache: Dict[str, Any] = {}
        interpreter = torch.fx.Interpreter(self.graph)
        original = interpreter.run_node

        def run_node(node):
            out = original(node)
            # a copy: a later in-place op (ReLU(inplace=True), +=) must not change what this node gave
            cache[node.name] = out.clone() if isinstance(out, torch.Tensor) else out
            return out

        interpreter.run_node = run_node  # type: ignore[method-assign]
        interpreter.run(x)
        return cache

    def run(self, cache: Dict[str, Any], top: torch.Tensor, left: torch.Tensor, patch: torch.Tensor,
            channels_last: bool = False) -> Any:
        """The model's output for the batch of ``cache``'s image with ``patch[b]`` (B, C, h, w) at
        (top[b], left[b])."""
        return _Pass(self, cache, channels_last, dry=False).run(top, left, patch)

    def flop_counts(self, cache: Dict[str, Any], window: Tuple[int, int]) -> Tuple[float, float]:
        """(brute force, incremental) multiply-adds of one window of this size: a dry run of one
        window in the middle (region arithmetic only; nothing is convolved)."""
        shape = cache[next(iter(self.graph.graph.nodes)).name].shape
        top = torch.tensor([(int(shape[2]) - window[0]) // 2])
        left = torch.tensor([(int(shape[3]) - window[1]) // 2])
        dry = _Pass(self, cache, channels_last=False, dry=True)
        with torch.no_grad():
            dry.run(top, left, torch.zeros((1, int(shape[1])) + tuple(window)))
        return dry.flops["full"], dry.flops["incremental"]


class _Pass:
    """One run through the graph: its cache, layout, whether it is dry (regions and FLOP counts
    only: no convolution, no materialised batch) and the FLOPs it counted."""

    def __init__(self, model: IncrementalModel, cache: Dict[str, Any], channels_last: bool, dry: bool):
        self.model, self.cache, self.channels_last, self.dry = model, cache, channels_last, dry
        self.flops = {"incremental": 0.0, "full": 0.0}

    def run(self, top: torch.Tensor, left: torch.Tensor, patch: torch.Tensor) -> Any:
        env: Dict[str, Any] = {}
        output = None
        modules, cache = self.model.modules, self.cache
        for node in self.model.graph.graph.nodes:
            if self.dry and node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
                self._count_full(modules[node.target], cache[node.name])
            if node.op == "placeholder":
                env[node.name] = Patched(cache[node.name], top, left, patch)
            elif node.op == "output":
                output = torch.fx.node.map_arg(node.args[0], lambda n: self._whole(env[n.name]))
            elif node.op == "get_attr":
                env[node.name] = cache[node.name]
            else:
                env[node.name] = self._node(node, env)
        return output

    def _whole(self, value: Any) -> Any:
        if not isinstance(value, Patched):
            return value
        return value.base if self.dry else materialise(value, self.channels_last)

    def _fallback(self, node: Any, env: Dict[str, Any]) -> Any:
        if self.dry:
            return self.cache[node.name]
        args = torch.fx.node.map_arg(node.args, lambda n: self._whole(env[n.name]))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: self._whole(env[n.name]))
        if node.op == "call_module":
            return self.model.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        obj, *rest = args
        return getattr(obj, node.target)(*rest, **kwargs)

    def _node(self, node: Any, env: Dict[str, Any]) -> Any:
        inputs = [env[n.name] for n in node.all_input_nodes]
        if not any(isinstance(v, Patched) for v in inputs):
            return self._fallback(node, env)
        base = self.cache[node.name]
        if node.op == "call_module":
            module = self.model.modules[node.target]
            value = env[node.args[0].name] if node.args and hasattr(node.args[0], "name") else None
            if isinstance(value, Patched) and len(node.all_input_nodes) == 1 and not node.kwargs:
                if isinstance(module, _POINTWISE_MODULES) and not module.training:
                    return Patched(base, value.top, value.left, module(value.patch))
                params = _window_params(module)
                if params is not None:
                    return self._window(module, params, value, base)
        elif node.op == "call_function":
            if node.target in _POINTWISE_FUNCTIONS and len(node.all_input_nodes) == 1 and \
                    isinstance(node.args[0], torch.fx.Node) and not node.kwargs.get("inplace", False):
                value = env[node.args[0].name]
                extra = torch.fx.node.map_arg(node.args[1:], lambda n: env[n.name])
                return Patched(base, value.top, value.left, node.target(value.patch, *extra))
            if node.target in _ADDITIONS and len(node.args) == 2 and not node.kwargs:
                merged = self._merge([env[a.name] if isinstance(a, torch.fx.Node) else a for a in node.args], base)
                if merged is not None:
                    return merged
            if node.target is torch.cat and node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 1:
                parts = [env[a.name] for a in node.args[0]]
                joined = self._union(parts, base)
                if joined is not None:
                    top, left, crops = joined
                    return Patched(base, top, left, torch.cat(crops, dim=1))
        return self._fallback(node, env)

    def _window(self, module: nn.Module, params: Tuple[Tuple[int, int], ...], value: Patched,
                base: torch.Tensor) -> Any:
        """A conv / pool on the changed region and its halo only."""
        kernel, stride, padding, dilation = params
        out_size = base.shape[2:]
        starts, sizes, crop_starts, crop_sizes = [], [], [], []
        for axis, (start, length) in enumerate(((value.top, value.patch.shape[2]), (value.left, value.patch.shape[3]))):
            k, s, p, d = kernel[axis], stride[axis], padding[axis], dilation[axis]
            reach = d * (k - 1)
            first = torch.div(start + p - reach + s - 1, s, rounding_mode="floor")  # ceil
            size = (length - 1 + reach) // s + 1
            if size >= out_size[axis]:
                return self._whole_module(module, value, base)
            first = first.clamp(0, out_size[axis] - size)
            starts.append(first)
            sizes.append(size)
            crop_starts.append(first * s - p)
            crop_sizes.append((size - 1) * s + reach + 1)
        if sizes[0] * sizes[1] > self.model.full_fraction * out_size[0] * out_size[1]:
            return self._whole_module(module, value, base)
        if self.dry:
            if isinstance(module, nn.Conv2d):  # its saving off the full count (added by _count_full)
                saved = int(out_size[0]) * int(out_size[1]) - sizes[0] * sizes[1]
                self.flops["incremental"] -= module.weight.numel() * saved
            return Patched(base, starts[0], starts[1], base.new_zeros((len(value.top), base.shape[1]) + tuple(sizes)))
        fill = float("-inf") if isinstance(module, nn.MaxPool2d) else 0.0
        crop = _gather(value.base, value, crop_starts[0], crop_starts[1], (crop_sizes[0], crop_sizes[1]), max(padding),
                       fill, self.channels_last)
        return Patched(base, starts[0], starts[1], _run_window(module, crop))

    def _whole_module(self, module: nn.Module, value: Patched, base: torch.Tensor) -> torch.Tensor:
        """``module`` on the whole batch (in a dry run, the clean output stands for it)."""
        return base if self.dry else module(self._whole(value))

    def _count_full(self, module: nn.Module, output: torch.Tensor) -> None:
        pixels = int(output.shape[2] * output.shape[3]) if output.ndim == 4 else 1
        flops = float(module.weight.numel() * pixels)
        self.flops["full"] += flops
        self.flops["incremental"] += flops

    def _union(self, parts: List[Any], base: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]]:
        """Each part over the union of the parts' regions (one size for the batch), or None when
        that covers most of the map or a part is not a Patched value of base's size."""
        shape = base.shape[2:]
        # a whole tensor here is a batch already materialised (even of one window): not mergeable
        if any(not isinstance(p, Patched) or p.base.shape[2:] != shape for p in parts):
            return None
        top = torch.stack([p.top for p in parts]).min(dim=0).values
        left = torch.stack([p.left for p in parts]).min(dim=0).values
        bottom = torch.stack([p.top + p.patch.shape[2] for p in parts]).max(dim=0).values
        right = torch.stack([p.left + p.patch.shape[3] for p in parts]).max(dim=0).values
        h, w = int((bottom - top).max()), int((right - left).max())
        if h > shape[0] or w > shape[1] or h * w > self.model.full_fraction * shape[0] * shape[1]:
            return None
        top, left = top.clamp(max=shape[0] - h), left.clamp(max=shape[1] - w)
        return top, left, [_gather(p.base, p, top, left, (h, w), 0, 0.0, self.channels_last) for p in parts]

    def _merge(self, operands: List[Any], base: torch.Tensor) -> Optional[Patched]:
        """``a + b`` of two Patched values, or of one and a number."""
        numbers = [o for o in operands if isinstance(o, (int, float))]
        if numbers:
            value = next((o for o in operands if isinstance(o, Patched)), None)
            return None if value is None else Patched(base, value.top, value.left, value.patch + numbers[0])
        joined = self._union(operands, base)
        if joined is None:
            return None
        top, left, (a, b) = joined
        return Patched(base, top, left, a + b)


# ---------------------------------------------------------------- the backend's occluder

_TRACED: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()
_TRACED_LOCK = threading.Lock()


def _traced(model: nn.Module) -> Any:
    """The model's IncrementalModel, or the reason it has none (traced once per model)."""
    with _TRACED_LOCK:
        found = _TRACED.get(model)
    if found is None:
        try:
            found = IncrementalModel(model)
        except NotIncremental as error:
            found = str(error)
        with _TRACED_LOCK:
            _TRACED[model] = found
    return found


def _decide(traced: IncrementalModel, key: Tuple[Any, ...], cache: Dict[str, Any]) -> str:
    """The cost model: "incremental", or "brute force (why)". Taken once per model, image size and
    window from a dry run of one window: the incremental way runs when it saves at least
    :data:`MIN_FLOP_SAVING` times the multiply-adds and a window's brute-force pass costs at least
    :data:`MIN_WORK` of them (below that, the per-layer bookkeeping outweighs what is saved). Both
    thresholds were measured with ``benchmarks/occlusion.py``. The rule depends on the model and
    sizes only, so the same call always runs the same way and gives the same maps."""
    full, incremental = traced.flop_counts(cache, key[1])
    traced.flops[key] = (full, incremental)
    saving = full / max(incremental, 1.0)
    if saving < MIN_FLOP_SAVING:
        return f"brute force (incremental saves only {saving:.2f}x the FLOPs)"
    if full < MIN_WORK:
        return f"brute force (a window costs only {full / 1e6:.0f} M multiply-adds)"
    return "incremental"


class Occluder:
    """Scores occluded copies of one image incrementally. ``batch``: the windows per call it
    wants (larger than brute force's batches: the per-call overhead is what an incremental pass
    pays most)."""

    batch = 32

    def __init__(self, backend: Any, traced: IncrementalModel, x: torch.Tensor, cache: Dict[str, Any]):
        self.backend, self.traced, self.x, self.cache = backend, traced, x, cache

    def __call__(self, top: np.ndarray, left: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The outputs for the image with ``values[b]`` (B, C, h, w) at (top[b], left[b])."""
        device = self.x.device
        top_t = torch.as_tensor(np.asarray(top), dtype=torch.long, device=device)
        left_t = torch.as_tensor(np.asarray(left), dtype=torch.long, device=device)
        patch = torch.as_tensor(np.ascontiguousarray(values), dtype=self.x.dtype, device=device)
        with torch.no_grad(), self.backend.call():
            out = self.traced.run(self.cache, top_t, left_t, patch, bool(self.backend.channels_last))
            scores = self.backend.scores_of(out)
        return scores.detach().to("cpu").float().numpy()


def occluder_for(backend: Any, image: np.ndarray, window: Tuple[int, int]) -> Tuple[Optional[Occluder], str]:
    """(an Occluder for ``image`` (C, H, W) and windows of ``window``, "incremental"), or (None,
    what runs instead and why: "brute force: <why not possible>" or "brute force (<why not worth it>)").
    The clean pass runs only when the incremental way will, or the cost model needs it."""
    if backend.layout == "NHWC":
        return None, "brute force: the model takes NHWC images"
    traced = _traced(backend.model)
    if isinstance(traced, str):
        return None, f"brute force: {traced}"
    x = backend.to_tensor(image[None])
    key = (tuple(x.shape[1:]), tuple(int(v) for v in window))
    with torch.no_grad(), backend.call():
        decided = traced.decisions.get(key)
        cache = None
        if decided is None:
            cache = traced.clean(x)
            decided = traced.decisions.setdefault(key, _decide(traced, key, cache))
        if decided != "incremental":
            return None, decided
        if cache is None:
            cache = traced.clean(x)
    return Occluder(backend, traced, x, cache), decided
