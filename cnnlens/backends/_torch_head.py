"""The CAM head of a torch model, found by watching one forward pass: the global average pools
and linear maps it calls (as Python calls, or as a ``torch.export`` graph's ATen operators), and
whether the logits are ``linear(GAP(A))``.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_ATEN = torch.ops.aten
# global average pools and linear maps, as Python calls and as a torch.export graph's ATen calls
_POOLS = {F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean, torch.Tensor.mean, _ATEN.adaptive_avg_pool2d.default,
          _ATEN._adaptive_avg_pool2d.default, _ATEN.avg_pool2d.default, _ATEN.mean.dim}
_LINEARS = {F.linear, _ATEN.linear.default}


class HeadRecorder(TorchFunctionMode):
    """Records global average pools and linear maps the forward pass calls."""

    def __init__(self):
        super().__init__()
        self.pools: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.linears: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _POOLS and args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            if isinstance(out, torch.Tensor) and out.shape[:2] == args[0].shape[:2] and out[0, 0].numel() == 1:
                self.pools.append((args[0], out))
        elif func in _LINEARS and isinstance(out, torch.Tensor):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.linears.append((args[0] if args else kwargs["input"], weight, out))
        elif func is _ATEN.addmm.default and isinstance(out, torch.Tensor) and len(args) >= 3:
            self.linears.append((args[1], args[2].t(), out))  # a decomposed linear: bias + x @ W.T
        return out

    def head(self, logits: torch.Tensor):
        """(pooled activations, linear weight) when the logits come from linear(GAP(A)), else (None, None)."""
        for features, weight, out in reversed(self.linears):
            if not (out is logits or (out.shape == logits.shape and torch.equal(out, logits))):
                continue
            flat = features.reshape(features.shape[0], -1)
            for activations, pooled in reversed(self.pools):
                p = pooled.reshape(pooled.shape[0], -1)
                if p.shape == flat.shape and torch.equal(p, flat):
                    return activations, weight
            return None, None
        return None, None
