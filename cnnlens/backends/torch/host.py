"""Torch tensors as the NumPy arrays the core takes: float32, on the host, contiguous."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch


def numpy_of(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def to_host(tensors: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """NumPy copies of ``tensors``; from a GPU in one transfer rather than one per tensor."""
    if len(tensors) < 2 or tensors[0].device.type == "cpu":
        return [numpy_of(t) for t in tensors]
    flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors]).cpu().numpy()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape))
        start += t.numel()
    return out


# ---------------------------------------------------------------- the backend
