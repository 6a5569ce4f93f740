"""Guided backpropagation and deconvnet ReLUs for PyTorch.

One custom autograd ReLU with the backward rule of the lecture (seed 003):
``guided``: ``1{s>0} 1{g>0} g``; ``deconv``: ``1{g>0} g``. A ``TorchFunctionMode`` active for the
duration of one pass swaps it in for every ReLU the forward actually runs -- ``nn.ReLU``
(in place or not), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms, and
``aten.relu`` / ``aten.relu_`` (what a ``torch.export`` program's graph calls) -- without
touching the model. Modes are thread-local, so other threads are unaffected.

The rule is read when the backward pass runs, so one forward pass can serve a plain backward
(to a layer, for Grad-CAM) and then a guided one (to the input): Guided Grad-CAM in one forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ...core.backend import RELU_RULE_NAMES


class RuleReLU(torch.autograd.Function):
    """``max(s, 0)`` forward; backward by the rule its mode holds when the backward runs.

    Like PyTorch's own ReLU it keeps only its output (``out > 0`` exactly where ``s > 0``), and
    its backward is PyTorch's fused ``threshold_backward``, after clamping for the guided rule.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, mode: "ReluRuleMode", inplace: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.mode = mode
        if inplace:
            ctx.mark_dirty(s)
            out = torch.relu_(s)
        else:
            out = torch.relu(s)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        rule = ctx.mode.rule
        (out,) = ctx.saved_tensors
        if rule == "deconv":
            return grad.clamp(min=0), None, None
        if rule == "guided":
            grad = grad.clamp(min=0)
        return torch.ops.aten.threshold_backward(grad, out, 0), None, None


_ATEN = torch.ops.aten
# the Python-level ReLUs, and the ATen operators a torch.export program's graph calls instead
_OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu, _ATEN.relu.default}
_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_, _ATEN.relu_.default}


class ReluRuleMode(TorchFunctionMode):
    """While active, every ReLU call in this thread goes through :class:`RuleReLU`."""

    def __init__(self, rule: str):
        super().__init__()
        if rule not in RELU_RULE_NAMES:
            raise ValueError(f"relu rule must be one of {RELU_RULE_NAMES}, got {rule!r}")
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _OUT_OF_PLACE or func in _IN_PLACE:
            s = args[0] if args else kwargs["input"]
            inplace = func in _IN_PLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            return RuleReLU.apply(s, self, inplace)
        return func(*args, **kwargs)
