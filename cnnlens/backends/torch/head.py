"""The CAM head of a torch model, found by watching one forward pass: the global average pools
and linear maps it calls (as Python calls, or as a ``torch.export`` graph's ATen operators), and
whether the logits are ``linear(GAP(A))``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ...core.errors import LayerError, ModelError
from .host import numpy_of

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


def find_linear_head(backend: Any, x: np.ndarray, layer: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """For a ``TorchBackend`` whose model ends in GAP -> linear: (logits, the pooled activations, the
    linear weights, the pooled layer's name), from one forward pass of ``x`` watched by a
    :class:`HeadRecorder`; a ModelError for another head, a LayerError when ``layer`` is not the
    pooled tensor."""
    recorder = HeadRecorder()
    outputs: Dict[str, torch.Tensor] = {}

    def keep(name: str):
        def kept(output: Any) -> None:
            if isinstance(output, torch.Tensor):
                outputs[name] = output
        return kept

    with backend.call() as call, torch.no_grad():
        for name, module in backend.modules().items():
            call.hooks.after(module, keep(name))
        with recorder:
            logits = backend.scores_of(backend.run_model(backend.to_tensor(x)))
        pooled, weight = recorder.head(logits)
        if pooled is None:
            raise ModelError(
                "cam needs a model whose head is global average pooling followed by one linear layer "
                "(ResNet, DenseNet, ...); this model has none. Use gradcam, which works on any layer"
            )
        producers = [n for n, t in outputs.items() if t is pooled]
        used = producers[-1] if producers else "<global pooling input>"
        if layer is not None:
            name = backend.resolve_layer(layer)
            if not (name in outputs and outputs[name].shape == pooled.shape and torch.equal(outputs[name], pooled)):
                raise LayerError(
                    f"cam can only use the tensor the head pools ({used!r}), not {name!r}: "
                    f"leave layer unset, or use gradcam for other layers"
                )
            used = name
        return numpy_of(logits), numpy_of(pooled), numpy_of(weight), used
