"""Backends, found lazily: a backend's framework is imported only when a model of its kind is seen
(so ``import cnnlens`` works without torch or onnxruntime installed)."""

from __future__ import annotations

import os
import sys
import warnings
import zipfile
from typing import Any, Optional

from ..core.errors import ModelError
from .base import Backend

_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


def _module(name: str) -> Any:
    return sys.modules.get(name)


def _is_backend(model: Any) -> bool:
    return hasattr(model, "capabilities") and hasattr(model, "forward") and hasattr(model, "resolve_layer")


def backend_for(model: Any, device: Optional[str] = None) -> Backend:
    """The backend driving ``model``: a loaded backend, an ``nn.Module`` / ScriptModule, an
    ``onnx.ModelProto``, ONNX bytes, or a path to an ``.onnx`` or TorchScript file."""
    if _is_backend(model):
        if device is not None:
            return backend_for(getattr(model, "model"), device)
        return model
    torch = _module("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        from .torch import TorchBackend

        return TorchBackend(model, device=device)
    onnx = _module("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        return _onnx(model, device)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _onnx(model, device)
    if isinstance(model, (str, os.PathLike)):
        return _from_path(os.fspath(model), device)
    raise ModelError(
        f"cannot explain an object of type {type(model).__module__}.{type(model).__qualname__}: pass a "
        f"torch.nn.Module, an onnx.ModelProto, or a path to an .onnx or TorchScript file (cnnlens.load(...))"
    )


def _onnx(source: Any, device: Optional[str]) -> Backend:
    try:
        from .onnx import OnnxBackend, read_model
    except ImportError as error:
        raise ModelError(f"reading ONNX models needs onnx and onnxruntime ({error}): pip install 'cnnlens[onnx]'") from None
    return OnnxBackend(read_model(source), device=device)


def _from_path(path: str, device: Optional[str]) -> Backend:
    if not os.path.exists(path):
        raise ModelError(f"no such model file: {path}")
    if os.path.isdir(path):
        raise ModelError(f"{path} is a folder, not a model file")
    if os.path.getsize(path) == 0:
        raise ModelError(f"{path} is empty: export the model again")
    if path.lower().endswith(".onnx"):
        return _onnx(path, device)
    if zipfile.is_zipfile(path):
        return _torchscript(path, device)
    if path.lower().endswith(_TORCHSCRIPT_SUFFIXES):
        raise ModelError(
            f"{path} is not a TorchScript archive (a torch.jit.save zip file): export it with "
            f"cnnlens.adapters.export.to_torchscript, or load the module in Python and pass it to cnnlens"
        )
    return _onnx(path, device)


def _torchscript(path: str, device: Optional[str]) -> Backend:
    try:
        import torch
    except ImportError as error:
        raise ModelError(f"TorchScript models need torch ({error}): pip install 'cnnlens[torch]'") from None
    from .torch import TorchBackend

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 marks TorchScript deprecated
            module = torch.jit.load(path, map_location=device or "cpu")
    except Exception as error:
        raise ModelError(
            f"{path} is not a TorchScript file torch.jit.load can read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). A pickled model (torch.save) is never "
            f"unpickled by cnnlens: load it in Python yourself and pass the module"
        ) from None
    return TorchBackend(module, device=device)
