"""Run a torch model on from one layer whose output is replaced (Ablation-CAM's passes).

A forward hook on the layer returns the replacement instead of the layer's output. The images
before the layer are run once, not once per replacement: the batch of one image meets the batch
of replacements at the layer, and the rest of the network broadcasts the one image's other
branches (a skip connection added after the layer). Whether a model allows that is checked once
per layer against the plain way (each replacement with its own copy of the image); a model that
does not (a concatenation of branches after the layer, a reshape with a fixed batch) runs the
plain way, with the same result.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict

import numpy as np
import torch

from ..core.errors import InvalidInputError, LayerError

#: model -> {layer: whether one image may meet many replacements at the layer}
_SHARED_PREFIX: "weakref.WeakKeyDictionary[torch.nn.Module, Dict[str, bool]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _replacing_hook(values: torch.Tensor, thread: int, name: str) -> Callable:
    def hook(module: Any, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != thread:
            return None
        if not isinstance(output, torch.Tensor) or output.shape[1:] != values.shape[1:]:
            got = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else type(output).__name__
            raise LayerError(f"layer {name!r} outputs {got}, and the replacement is {tuple(values.shape[1:])}")
        return values.to(dtype=output.dtype, memory_format=torch.contiguous_format)
    return hook


def _run(backend: Any, module: torch.nn.Module, name: str, x: np.ndarray, values: np.ndarray) -> np.ndarray:
    replacement = torch.from_numpy(np.ascontiguousarray(values)).to(backend.device)
    handle = module.register_forward_hook(_replacing_hook(replacement, threading.get_ident(), name))
    try:
        with torch.no_grad():
            outputs = backend._scores(backend._run(backend._input(x)))
    finally:
        handle.remove()
    return outputs.detach().to("cpu", torch.float32).numpy()


def run_replaced(backend: Any, module: torch.nn.Module, name: str, x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The outputs (B, ...) of the model on ``x`` (one image, or B) with layer ``name``'s output
    replaced by ``values`` (B, K, h, w)."""
    if len(x) != 1 or len(values) == 1:
        return _run(backend, module, name, np.broadcast_to(x, (len(values),) + x.shape[1:]), values)
    with _LOCK:
        shared = _SHARED_PREFIX.get(backend.model, {}).get(name)
    if shared is None:
        shared = _allows_shared_prefix(backend, module, name, x, values[:2])
        with _LOCK:
            _SHARED_PREFIX.setdefault(backend.model, {})[name] = shared
    if shared:
        return _run(backend, module, name, x, values)
    return _run(backend, module, name, np.repeat(x, len(values), axis=0), values)


def _allows_shared_prefix(backend: Any, module: torch.nn.Module, name: str, x: np.ndarray, values: np.ndarray) -> bool:
    """Whether one image meeting two replacements gives what two copies of the image give."""
    try:
        shared = _run(backend, module, name, x, values)
    except (RuntimeError, ValueError, InvalidInputError):  # the model cannot broadcast there
        return False
    plain = _run(backend, module, name, np.repeat(x, len(values), axis=0), values)
    return shared.shape == plain.shape and bool(np.allclose(shared, plain, rtol=1e-5, atol=1e-6))
