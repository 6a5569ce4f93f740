"""Backends, found lazily: a backend's framework is imported only when a model of its kind is seen
(so ``import cnnlens`` works without torch or onnxruntime installed)."""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import warnings
import zipfile
from typing import Any, Optional, Union

from ..core.backend import BackendSpec, is_backend
from ..core.errors import ModelError
from .base import Backend

_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


def _module(name: str) -> Any:
    return sys.modules.get(name)


def backend_for(model: Any, device: Optional[str] = None, output: Union[None, int, str] = None,
                trust_pickle: bool = False, layout: str = "auto") -> Backend:
    """The backend driving ``model``: a loaded backend, an ``nn.Module`` / ScriptModule, an
    ``onnx.ModelProto``, ONNX bytes, a ``BackendSpec`` (``backend.spec()``), or a path to an ``.onnx`` or TorchScript file (or, with
    ``trust_pickle``, a pickled ``torch.save`` model). ``output`` picks which of several model
    outputs holds the class scores (an index, or a dict key / ONNX output name); ``layout`` how
    the model's image input is laid out ("auto", "NCHW", "NHWC")."""
    if is_backend(model):
        if device is None and output is None and layout == "auto":
            return model
        spec = model.spec()  # the same model again, on another device, output or layout
        return from_spec(dataclasses.replace(spec, output=spec.output if output is None else output,
                                             layout=spec.layout if layout == "auto" else layout), device)
    if isinstance(model, BackendSpec):
        return from_spec(model, device)
    torch = _module("torch")
    if torch is not None and isinstance(model, torch.export.ExportedProgram):
        from .torch.export import ExportedBackend

        return ExportedBackend(model, device=device, output=output, layout=layout)
    if torch is not None and isinstance(model, torch.nn.Module):
        from .torch import TorchBackend

        return TorchBackend(model, device=device, output=output, layout=layout)
    onnx = _module("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        return _onnx(model, device, output, layout)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _onnx(model, device, output, layout)
    if isinstance(model, (str, os.PathLike)):
        return _from_path(os.fspath(model), device, output, trust_pickle, layout)
    raise ModelError(
        f"cannot explain an object of type {type(model).__module__}.{type(model).__qualname__}: pass a "
        f"torch.nn.Module, a torch.export ExportedProgram, an onnx.ModelProto, or a path to an .onnx, .pt2 or "
        f"TorchScript file (cnnlens.load(...))"
    )


def from_spec(spec: BackendSpec, device: Optional[str] = None) -> Backend:
    """The backend ``spec`` describes (made by ``backend.spec()``, perhaps in another process)."""
    payload = spec.payload
    if spec.kind in ("torchscript", "exported"):
        torch = _torch_module()
        if spec.kind == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 marks TorchScript deprecated
                payload = torch.jit.load(io.BytesIO(payload), map_location="cpu")
        else:
            payload = torch.export.load(io.BytesIO(payload))
    elif spec.kind not in ("module", "onnx"):
        raise ModelError(f"a backend spec of kind {spec.kind!r}: the kinds are module, torchscript, exported, onnx")
    return backend_for(payload, device=device, output=spec.output, layout=spec.layout)


def _onnx(source: Any, device: Optional[str], output: Union[None, int, str] = None, layout: str = "auto") -> Backend:
    try:
        from .onnx import OnnxBackend, read_model
    except ImportError as error:
        raise ModelError(f"reading ONNX models needs onnx and onnxruntime ({error}): pip install 'cnnlens[onnx]'") from None
    return OnnxBackend(read_model(source), device=device, output=output, layout=layout)


def _from_path(path: str, device: Optional[str], output: Union[None, int, str], trust_pickle: bool,
               layout: str = "auto") -> Backend:
    if not os.path.exists(path):
        raise ModelError(f"no such model file: {path}: check the path, and give an .onnx file, a TorchScript "
                         f"file, or (command line) module:attr naming a function that returns an nn.Module")
    if os.path.isdir(path):
        raise ModelError(f"{path} is a folder, not a model file: give the path of the model file inside it")
    if os.path.getsize(path) == 0:
        raise ModelError(f"{path} is empty: export the model again")
    if path.lower().endswith(".onnx"):
        return _onnx(path, device, output, layout)
    if _is_pt2(path):
        return _exported(path, device, output, trust_pickle, layout)
    if _is_pickle(path):
        if not trust_pickle:
            raise ModelError(
                f"{path} is a pickled PyTorch file (torch.save). Unpickling runs whatever code the file "
                f"contains, so cnnlens does it only when you say you trust the file: "
                f"cnnlens.load(path, trust_pickle=True) (command line: --trust-pickle). Safer: save the model "
                f"with cnnlens.adapters.export.to_torchscript or to_onnx"
            )
        return _pickled(path, device, output, layout)
    if zipfile.is_zipfile(path):
        return _torchscript(path, device, output, layout)
    if path.lower().endswith(_TORCHSCRIPT_SUFFIXES):
        raise ModelError(
            f"{path} is not a TorchScript archive (a torch.jit.save zip file): export it with "
            f"cnnlens.adapters.export.to_torchscript, or load the module in Python and pass it to cnnlens"
        )
    return _onnx(path, device, output, layout)


def _is_pt2(path: str) -> bool:
    """A ``torch.export.save`` archive."""
    from .pt2 import is_pt2

    return zipfile.is_zipfile(path) and is_pt2(path)


def _exported(path: str, device: Optional[str], output: Union[None, int, str], trust_pickle: bool,
              layout: str) -> Backend:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ModelError(f"{path} is a torch.export program, which needs PyTorch: pip install 'cnnlens[torch]' "
                         f"(or explain its ONNX export with no PyTorch)") from None
    from .pt2 import read_program
    from .torch.export import ExportedBackend

    return ExportedBackend(read_program(path, trust_pickle), device=device, output=output, layout=layout)


def _is_pickle(path: str) -> bool:
    """A ``torch.save`` file: a zip holding ``data.pkl`` but no TorchScript code, or a bare pickle."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return False
        has_data = any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)
        has_code = any("/code/" in n or n.startswith("code/") for n in names)
        return has_data and not has_code
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"  # the pickle protocol opcode


def _torch_module():
    try:
        import torch
    except ImportError as error:
        raise ModelError(f"PyTorch model files need torch ({error}): pip install 'cnnlens[torch]'") from None
    return torch


def _pickled(path: str, device: Optional[str], output: Union[None, int, str], layout: str = "auto") -> Backend:
    torch = _torch_module()
    from .torch import TorchBackend

    try:
        obj = torch.load(path, map_location=device or "cpu", weights_only=False)
    except Exception as error:
        raise ModelError(f"{path} could not be unpickled ({type(error).__name__}: {error})") from None
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"{path} holds weights (a state_dict), not a model: build the model in Python, call "
            f"model.load_state_dict(torch.load(path)) and pass the module"
        )
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    return TorchBackend(obj, device=device, output=output, layout=layout)


def _torchscript(path: str, device: Optional[str], output: Union[None, int, str] = None,
                 layout: str = "auto") -> Backend:
    torch = _torch_module()
    from .torch import TorchBackend

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 marks TorchScript deprecated
            module = torch.jit.load(path, map_location=device or "cpu")
    except Exception as error:
        raise ModelError(
            f"{path} is not a TorchScript file torch.jit.load can read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Export it again with "
            f"cnnlens.adapters.export.to_torchscript"
        ) from None
    return TorchBackend(module, device=device, output=output, layout=layout)
