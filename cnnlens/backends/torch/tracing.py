"""A torch model's layers as one forward pass calls them: every module's output shape, the order
modules are called in and the order they finish in, from one traced image; cached per model and
input shape, and shared by every backend on the model (so ``explain(model, ...)`` called again
and again traces once)."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ...core.errors import LayerError, ModelError
from ...core.types import Layer

Trace = Tuple[List[Layer], List[str]]

#: Layer traces per model. Keyed weakly: the cache never keeps a model alive.
_TRACES: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple, Trace]]" = weakref.WeakKeyDictionary()
_TRACES_LOCK = threading.Lock()
#: traces kept per model (a service seeing many image sizes stays bounded)
TRACES_PER_MODEL = 16


def _traces(backend: Any) -> Dict[Tuple, Trace]:
    with _TRACES_LOCK:
        try:
            return _TRACES.setdefault(backend.model, {})
        except TypeError:  # a module class that is not hashable: no sharing
            return backend.own_traces


def trace(backend: Any, input_shape: Tuple[int, ...]) -> Trace:
    """Run one image of ``input_shape`` through ``backend`` (a ``TorchBackend``) with hooks on every
    module: (layers in call order, names in order of completion)."""
    modules = backend.modules()
    key = tuple(int(v) for v in input_shape[1:])
    # the structure and placement are part of the key, so a model changed since is traced again
    cache_key = (key, str(backend.device), str(backend.dtype), tuple(id(m) for m in modules.values()))
    traces = _traces(backend)
    with _TRACES_LOCK:
        if cache_key in traces:
            return traces[cache_key]
    called: Dict[str, None] = {}
    shapes: Dict[str, Optional[Tuple[Optional[int], ...]]] = {}
    finished: List[str] = []

    def starts(name: str):
        return lambda: called.setdefault(name, None)

    def ends(name: str):
        def seen(output):
            shapes[name] = (None,) + tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
            finished.append(name)
        return seen

    try:
        with backend.call() as call, torch.no_grad():
            for name, module in modules.items():
                call.hooks.before(module, starts(name))
                call.hooks.after(module, ends(name))
            backend.model(backend.to_tensor(np.zeros((1,) + key, dtype=np.float32)))
    except LayerError:
        raise
    except Exception as error:
        raise ModelError(
            f"the model failed on an input of shape {(1,) + key}: {type(error).__name__}: {error}. "
            f"Pass input_shape=(C, H, W) the model accepts"
        ) from None
    layers = [Layer(n, type(modules[n]).__name__, shapes.get(n)) for n in called]
    order: Dict[str, int] = {}
    for i, n in enumerate(finished):
        order[n] = i
    completion = sorted(order, key=order.__getitem__)
    with _TRACES_LOCK:
        while len(traces) >= TRACES_PER_MODEL:
            traces.pop(next(iter(traces)))
        traces[cache_key] = (layers, completion)
    return layers, completion
