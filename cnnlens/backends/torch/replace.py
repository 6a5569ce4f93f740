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

from ...core.errors import InvalidInputError, LayerError
from .. import base

#: model -> {layer: whether one image may meet many replacements at the layer}
_SHARED_PREFIX: "weakref.WeakKeyDictionary[torch.nn.Module, Dict[str, bool]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _replacing(values: torch.Tensor, name: str) -> Callable[[Any], torch.Tensor]:
    def replace(output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.shape[1:] != values.shape[1:]:
            got = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else type(output).__name__
            raise LayerError(f"layer {name!r} outputs {got}, and the replacement is {tuple(values.shape[1:])}")
        return values.to(dtype=output.dtype, memory_format=torch.contiguous_format)
    return replace


def run_replaced(backend: Any, module: torch.nn.Module, name: str, x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The outputs (B, ...) of ``backend``'s model on ``x`` (one image, or B) with layer ``name``'s
    output replaced by ``values`` (B, K, h, w)."""
    def run(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        replacement = torch.from_numpy(np.ascontiguousarray(rows)).to(backend.device)
        with backend.call() as call, torch.no_grad():
            call.hooks.after(module, _replacing(replacement, name))
            outputs = backend.scores_of(backend.run_model(backend.to_tensor(images)))
        return outputs.detach().to("cpu", torch.float32).numpy()

    with _LOCK:
        known = _SHARED_PREFIX.setdefault(backend.model, {})
    return base.run_replacements(run, x, values, known, name, (RuntimeError, ValueError, InvalidInputError))
