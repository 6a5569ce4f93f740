"""Backends, found lazily: a backend's framework is imported only when a model of its kind is seen
(so ``import cnnlens`` works without torch or onnxruntime installed)."""

from __future__ import annotations

import sys
from typing import Any, Optional

from ..core.errors import ModelError
from .base import Backend


def _is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def backend_for(model: Any, device: Optional[str] = None) -> Backend:
    """The backend driving ``model``: an already loaded backend, or an ``nn.Module``."""
    if isinstance(model, Backend) and hasattr(model, "capabilities"):
        if device is not None:
            return backend_for(getattr(model, "model"), device)
        return model
    if _is_torch_module(model):
        from .torch import TorchBackend

        return TorchBackend(model, device=device)
    raise ModelError(
        f"cannot explain an object of type {type(model).__module__}.{type(model).__qualname__}: "
        f"pass a torch.nn.Module, or load a model with cnnlens.load(...)"
    )
