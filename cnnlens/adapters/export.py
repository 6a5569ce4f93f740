"""Export a torch module to ONNX (with a dynamic batch dimension) or to TorchScript.

Both keep the model's structure by default (no BatchNorm folded into convolutions), so that
layers and filters correspond one to one and ``cnnlens.compare`` can name a layer once for
both models. Files are written atomically: a failed export leaves no partial file.
"""

from __future__ import annotations

import io
import warnings
from typing import Optional, Sequence

from .files import atomic_path


def _example(model, input_shape: Sequence[int], batch: int = 1):
    """A zero input of ``input_shape`` ((C, H, W) gets a batch axis of ``batch``) on the model's device."""
    import torch

    shape = tuple(int(v) for v in input_shape)
    shape = (batch,) + shape if len(shape) == 3 else shape
    params = list(model.parameters()) or list(model.buffers())
    device = params[0].device if params else torch.device("cpu")
    dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    return torch.zeros(shape, device=device, dtype=dtype)


def to_onnx(model, path: str, input_shape: Sequence[int] = (3, 224, 224), *, opset: Optional[int] = None,
            exporter: str = "dynamo", optimize: bool = False, input_name: str = "input",
            output_name: str = "logits") -> str:
    """Export ``model`` (an ``nn.Module``) to an ONNX file with a dynamic batch dimension.

    ``exporter``: "dynamo" (``torch.onnx.export(dynamo=True)``, module paths kept in node
    metadata) or "legacy" (the TorchScript-based exporter, module paths kept in node names).
    ``optimize=False`` keeps BatchNorm separate from the convolutions. The model is exported
    in eval mode and left in the mode it was in. Returns ``path``.
    """
    import torch

    from ..backends.torch import evaluating

    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    # torch.export specialises a dimension of size 1, so the dynamo exporter traces a batch of 2
    example = _example(model, input_shape, batch=2 if exporter == "dynamo" else 1)
    with evaluating(model), atomic_path(path) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' progress notes and deprecation chatter
        if exporter == "dynamo":
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, optimize=optimize,
                input_names=[input_name], output_names=[output_name],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False,
            )
            program.save(temporary, external_data=False)
        else:
            torch.onnx.export(
                model, (example,), temporary, dynamo=False, opset_version=opset or 17,
                input_names=[input_name], output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                do_constant_folding=optimize,
            )
    return path


def to_torchscript(model, path: str, input_shape: Optional[Sequence[int]] = (3, 224, 224), *,
                   method: str = "trace") -> str:
    """Save ``model`` as TorchScript (``torch.jit.trace`` on a zero input, or ``torch.jit.script``).

    The model is converted in eval mode and left in the mode it was in. Returns ``path``.
    """
    import torch

    from ..backends.torch import evaluating

    with evaluating(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 marks TorchScript deprecated
        if method == "trace":
            scripted = torch.jit.trace(model, _example(model, input_shape), check_trace=False)
        elif method == "script":
            scripted = torch.jit.script(model)
        else:
            raise ValueError(f"method must be 'trace' or 'script', got {method!r}")
        with atomic_path(path) as temporary:
            torch.jit.save(scripted, temporary)
    return path


def to_exported(model, path: str, input_shape: Sequence[int] = (3, 224, 224), *, max_batch: int = 4096) -> str:
    """Save ``model`` as a ``torch.export`` program (``.pt2``, ``torch.export.save``) with a
    dynamic batch dimension (1 .. ``max_batch``); height and width stay those of ``input_shape``.

    The model is exported in eval mode and left in the mode it was in; the file is written
    atomically. Returns ``path``.
    """
    import torch

    from ..backends.torch import evaluating

    # torch.export specialises a dimension of size 1, so a batch of 2 is traced
    example = _example(model, input_shape, batch=2)
    with evaluating(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=max_batch)},))
        buffer = io.BytesIO()  # saved from memory, so the archive's folder is not the temporary file's name
        torch.export.save(program, buffer)
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            handle.write(buffer.getvalue())
    return path
