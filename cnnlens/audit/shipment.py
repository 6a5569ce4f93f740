"""A loaded model in a form that travels to other processes (Ray actors) and loads there.

A torch module travels as itself (pickled by Ray); a TorchScript module as the bytes of
``torch.jit.save`` (ScriptModules do not pickle); a ``torch.export`` program as the bytes of
``torch.export.save``; an ONNX model as its serialized bytes. The
output choice and the image layout travel with it, so every replica explains the same thing.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..backends import _output_of, backend_for
from ..core.errors import ModelError


@dataclass
class ModelShipment:
    """What a remote worker needs to load the model: ``kind`` "module", "torchscript",
    "exported" or "onnx", its ``payload``, and the backend's ``output`` and ``layout``."""

    kind: str
    payload: Any
    output: Union[None, int, str]
    layout: str

    def load(self, device: Optional[str] = None) -> Any:
        """The backend, on ``device`` (default: the best there)."""
        payload = self.payload
        if self.kind == "torchscript":
            import torch

            payload = torch.jit.load(io.BytesIO(payload), map_location="cpu")
        elif self.kind == "exported":  # bytes this process wrote from a program already loaded
            import torch

            payload = torch.export.load(io.BytesIO(payload))
        return backend_for(payload, device=device, output=self.output, layout=self.layout)


def ship(backend: Any) -> ModelShipment:
    """The shipment of a loaded backend's model."""
    program = getattr(backend, "program", None)
    model = backend.model
    layout = getattr(backend, "layout", None) or "auto"
    layout = "NHWC" if layout == "NHWC" else "auto"
    output = _output_of(backend)
    torch = sys.modules.get("torch")
    if program is not None:
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        return ModelShipment("exported", buffer.getvalue(), output, layout)
    if torch is not None and isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        return ModelShipment("torchscript", buffer.getvalue(), output, layout)
    if torch is not None and isinstance(model, torch.nn.Module):
        return ModelShipment("module", model, output, layout)
    serialize = getattr(model, "SerializeToString", None)
    if serialize is not None:
        return ModelShipment("onnx", serialize(), output, layout)
    raise ModelError(f"cannot send a {type(model).__name__} model to Ray workers: use the local engine")
