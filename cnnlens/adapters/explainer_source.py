"""Any model ``cnnlens.load`` reads, as an ONNX backend to build an explainer on: ONNX files and
protos as they are; a torch module, a torch.export program or a TorchScript module exported to ONNX
first (into a temporary folder), so the explainer is built on the file the runtime will run."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

from ..backends import backend_for
from ..core.backend import Backend, spec_layout
from ..core.errors import ModelError
from .export import to_onnx


@dataclass
class OnnxSource:
    """The ONNX backend to build on, and the size in bytes of the plain ONNX model it came from."""

    backend: Backend
    plain_bytes: int
    exported: bool  # True when cnnlens exported it from torch


def _torch_kind(backend: Backend) -> Optional[str]:
    """"module" (a torch or TorchScript module), "program" (a torch.export program) or None (ONNX)."""
    return {"torch": "module", "torchscript": "module", "torch.export": "program"}.get(backend.name)


def _export_program(backend: Backend, path: str, opset: Optional[int]) -> None:
    import torch

    program = torch.export.load(io.BytesIO(backend.spec().payload))  # the program, through the contract
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.onnx.export(program, (), dynamo=True, opset_version=opset, optimize=False,
                                     input_names=["input"], output_names=["logits"], verbose=False)
        exported.save(path, external_data=False)


def _is_script(module: Any) -> bool:
    import torch

    return isinstance(module, torch.jit.ScriptModule)


def onnx_source(model: Any, input_shape: Optional[Sequence[int]], *, output: Any = None, layout: str = "auto",
                opset: Optional[int] = None, exporter: str = "dynamo", trust_pickle: bool = False) -> OnnxSource:
    """The ONNX backend for ``model`` (see the module docstring). ``input_shape`` (C, H, W) is the
    size a torch model is exported at (a module) and is needed for ONNX models whose size is open."""
    backend = backend_for(model, output=output, trust_pickle=trust_pickle, layout=layout)
    kind = _torch_kind(backend)
    if kind is None:
        if backend.name != "onnx":
            raise ModelError(f"cannot write an explainer for a {backend.name} model: give a torch module, a .pt2 "
                             f"program, a TorchScript file or an ONNX model")
        plain = os.path.getsize(model) if isinstance(model, (str, os.PathLike)) else backend.model.ByteSize()
        return OnnxSource(backend, int(plain), False)
    folder = tempfile.mkdtemp(prefix="cnnlens-explainer-")
    path = os.path.join(folder, "model.onnx")
    try:
        if kind == "program":
            _export_program(backend, path, opset)
        else:
            module = backend.model
            shape = _export_shape(backend, input_shape)
            script = _is_script(module)
            to_onnx(module, path, shape, opset=opset if opset or not script else 17,
                    exporter="legacy" if script else exporter)
        loaded = backend_for(path, output=_onnx_output(backend.output),
                             layout=spec_layout(backend.layout))
        with open(path, "rb") as handle:  # the backend holds the model: the folder can go
            size = len(handle.read())
        return OnnxSource(loaded, size, True)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"exporting the model to ONNX failed ({type(error).__name__}: "
                         f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}): export it yourself "
                         f"(cnnlens.adapters.export.to_onnx) and give the .onnx file") from None
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


def _onnx_output(choice: Any) -> Any:
    """A torch output choice as the exported file names it: an index stays; the first output is "logits"."""
    return choice if isinstance(choice, int) or choice is None else None


def _export_shape(backend: Backend, input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """One image's shape as the module takes it ((C, H, W), or (H, W, C) for an NHWC module)."""
    from .images import input_geometry

    channels, size = input_geometry(backend, tuple(input_shape[1:]) if input_shape else None)
    if input_shape:
        channels = int(input_shape[0])
    nchw = (channels,) + tuple(int(s) for s in size)
    return (nchw[1], nchw[2], nchw[0]) if backend.layout == "NHWC" else nchw
