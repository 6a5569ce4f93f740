"""Guided backpropagation and deconvnet ReLUs for PyTorch.

One custom autograd ReLU with the backward rule of the lecture (seed 003):
``guided``: ``1{s>0} 1{g>0} g``; ``deconv``: ``1{g>0} g``. A ``TorchFunctionMode`` active for the
duration of one pass swaps it in for every ReLU the forward actually runs -- ``nn.ReLU``
(in place or not), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms --
without touching the model. Modes are thread-local, so other threads are unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES = ("guided", "deconv")


class RuleReLU(torch.autograd.Function):
    """``max(s, 0)`` forward; the guided or deconvnet rule backward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, rule: str, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.rule = rule
        if rule == "guided":
            ctx.save_for_backward(s > 0)
        if inplace:
            ctx.mark_dirty(s)
            return torch.relu_(s)
        return torch.relu(s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        passed = grad.clamp(min=0)
        if ctx.rule == "guided":
            (positive,) = ctx.saved_tensors
            passed = passed * positive
        return passed, None, None


_OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu}
_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}


class ReluRuleMode(TorchFunctionMode):
    """While active, every ReLU call in this thread goes through :class:`RuleReLU`."""

    def __init__(self, rule: str):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"relu rule must be one of {RULES}, got {rule!r}")
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _OUT_OF_PLACE or func in _IN_PLACE:
            s = args[0] if args else kwargs["input"]
            inplace = func in _IN_PLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            return RuleReLU.apply(s, self.rule, inplace)
        return func(*args, **kwargs)
