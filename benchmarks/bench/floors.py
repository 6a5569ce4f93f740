"""The floors: what the model alone costs for the work a method needs, in plain PyTorch or ONNX Runtime.

Each function returns a callable doing the work for ``x`` (a device tensor or array) at one batch
size. The runner times them at several batch sizes and keeps the fastest, per image.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np


def _slices(n: int, batch: int):
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


def torch_forward(model: Any, x: Any, batch: int) -> Callable[[], None]:
    """``model(x)`` under ``inference_mode``, ``batch`` images at a time."""
    import torch

    def run() -> None:
        with torch.inference_mode():
            for sl in _slices(len(x), batch):
                model(x[sl])
    return run


def torch_backward(model: Any, x: Any, targets: Any, batch: int, modules: Optional[Sequence[Any]] = None) -> Callable[[], None]:
    """Forward, then ``autograd.grad`` of the target scores to the input (``modules`` None) or to
    the outputs of ``modules`` (captured by forward hooks installed for the call)."""
    import torch

    def run() -> None:
        captured: List[Any] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in (modules or [])]
        try:
            for sl in _slices(len(x), batch):
                captured.clear()
                xs = x[sl].detach().clone().requires_grad_(modules is None)
                out = model(xs)  # class targets pick one score per image; output weights weigh them all
                scores = out.gather(1, targets[sl, None]).sum() if not targets.is_floating_point() else \
                    (out * targets[sl]).sum()
                torch.autograd.grad(scores, [xs] if modules is None else list(captured))
        finally:
            for h in handles:
                h.remove()
    return run


def onnx_forward(session: Any, x: np.ndarray, batch: int) -> Callable[[], None]:
    """``session.run`` on the plain model, ``batch`` images at a time."""
    name = session.get_inputs()[0].name

    def run() -> None:
        for sl in _slices(len(x), batch):
            session.run(None, {name: x[sl]})
    return run


def tile(x: Any, n: int) -> Any:
    """``x`` repeated along the batch axis to exactly ``n`` images (array or tensor)."""
    reps = -(-n // len(x))
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(np.concatenate([x] * reps)[:n])
    import torch

    return torch.cat([x] * reps)[:n].contiguous()
