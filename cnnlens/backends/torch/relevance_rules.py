"""The relevance rules as autograd functions: each computes its op's ordinary output forward and
passes *relevance* (LRP) or DeepLIFT's multipliers backward, by the rule METHODS.md defines.

LRP propagates the relevance itself as the "gradient": a linear layer's backward turns the
relevance of its outputs into its inputs' (``LinearRule``), a residual sum or an average pool
splits it in proportion to its inputs (``ProportionalRule``), an elementwise activation passes it
unchanged (``PassRule``); what has no rule (max pooling, reshapes, concatenation) passes the
plain gradient, which moves relevance with the values. DeepLIFT's ``RescaleRule`` replaces an
activation's derivative by the ratio of its output and input differences to the baseline.

The backward passes compute with ``torch.ops.aten.convolution_backward`` and matrix products
directly (no autograd inside a backward), and drop the terms of negative inputs when an input
has none (after a ReLU), which the rules' values do not depend on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...core.relevance import RESCALE_TOLERANCE, STABILIZER

_ATEN = torch.ops.aten


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon sign(z)`` with sign(0) = +1 (zennit's ``stabilize``)."""
    return z + ((z == 0.).to(z) + z.sign()) * epsilon


@dataclass(frozen=True)
class LinearOp:
    """A convolution or a fully connected layer as a function of (input, weight, bias), with its
    vector-Jacobian product with respect to the input for any weight."""

    kind: str                                   # "conv" or "dense"
    stride: Sequence[int] = ()
    padding: Sequence[int] = ()
    dilation: Sequence[int] = ()
    groups: int = 1

    def __call__(self, a: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        if self.kind == "dense":
            return F.linear(a, w, b)
        return _ATEN.convolution(a, w, b, list(self.stride), list(self.padding), list(self.dilation), False,
                                 [0] * len(self.stride), self.groups)

    def vjp(self, g: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The input gradient for output gradient ``g`` (the input ``a`` gives its shape)."""
        if self.kind == "dense":
            return g.matmul(w)
        return _ATEN.convolution_backward(g, a, w, None, list(self.stride), list(self.padding), list(self.dilation),
                                          False, [0] * len(self.stride), self.groups, [True, False, False])[0]


def _pos(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.clamp(min=0)


def _neg(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.clamp(max=0)


def _shifted(w: Optional[torch.Tensor], part: Optional[torch.Tensor], gamma: float) -> Optional[torch.Tensor]:
    return None if w is None or part is None else w + gamma * part


def _signed_parts(op: LinearOp, r: torch.Tensor, a: torch.Tensor, weights: Tuple[torch.Tensor, torch.Tensor],
                  bias: Optional[torch.Tensor], stab: float, mask: Optional[torch.Tensor] = None,
                  positive: bool = False) -> Tuple[torch.Tensor, ...]:
    """The shared step of z+, gamma and alpha-beta: with ``weights`` = (w on positive inputs, w on
    negative inputs), ``z = op(a+, w_pos, bias) + op(a-, w_neg)``, ``s = R / stab(z)`` (times
    ``mask``), and the contributions ``(a+ vjp(s, w_pos), a- vjp(s, w_neg))``. ``positive``: the
    weights and bias are >= 0, so without negative inputs ``z >= 0`` and ``stab(z) = z + stab``."""
    w_pos, w_neg = weights
    negatives = bool((a < 0).any())  # after a ReLU there are none: skip their terms (zero either way)
    a_pos = a.clamp(min=0) if negatives else a
    a_neg = a.clamp(max=0) if negatives else None
    if positive and not negatives:  # z >= 0: its stabiliser is a constant, added with the bias
        shifted = torch.full((w_pos.shape[0],), stab, dtype=w_pos.dtype, device=w_pos.device)
        s = r / op(a_pos, w_pos, shifted if bias is None else bias + stab)
    else:
        z = op(a_pos, w_pos, bias)
        if a_neg is not None:
            z = z + op(a_neg, w_neg, None)
        s = r / stabilize(z, stab)
    if mask is not None:
        s = s * mask
    positive = a_pos * op.vjp(s, a, w_pos)
    return (positive + a_neg * op.vjp(s, a, w_neg)) if a_neg is not None else positive,


def linear_relevance(rule: str, op: LinearOp, r: torch.Tensor, a: torch.Tensor, w: torch.Tensor,
                     b: Optional[torch.Tensor], epsilon: float, gamma: float,
                     box: Optional[Tuple[torch.Tensor, torch.Tensor]], stab: float = STABILIZER) -> torch.Tensor:
    """The relevance of a linear layer's input ``a`` from its outputs' relevance ``r`` by ``rule``
    (zennit 1.0's Epsilon, ZPlus, Gamma, AlphaBeta(2, 1), Flat, ZBox)."""
    if rule == "epsilon":
        return a * op.vjp(r / stabilize(op(a, w, b), epsilon), a, w)
    if rule == "zplus":
        return _signed_parts(op, r, a, (w.clamp(min=0), w.clamp(max=0)), _pos(b), stab, positive=True)[0]
    if rule == "alpha2beta1":
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        positive = _signed_parts(op, r, a, (w_pos, w_neg), _pos(b), stab, positive=True)[0]
        negative = _signed_parts(op, r, a, (w_neg, w_pos), _neg(b), stab)[0]
        return 2.0 * positive - negative
    if rule == "gamma":
        out = op(a, w, b)
        up, down = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
        rising = _signed_parts(op, r, a, (up, down), _shifted(b, _pos(b), gamma), stab, (out > 0.).to(r))[0]
        falling = _signed_parts(op, r, a, (down, up), _shifted(b, _neg(b), gamma), stab, (out < 0.).to(r))[0]
        return rising + falling
    one_image = (1,) + tuple(a.shape[1:])  # what is the same for every image is computed once
    if rule == "flat":
        ones_w = torch.ones_like(w)
        return op.vjp(r / stabilize(op(a.new_ones(one_image), ones_w, None), stab), a, ones_w)
    if rule == "zbox":
        assert box is not None  # the mode gives the first layer its box
        shape = (1, -1) + (1,) * (a.dim() - 2)
        low = box[0].to(a).reshape(shape).expand(one_image)
        high = box[1].to(a).reshape(shape).expand(one_image)
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        z = op(a, w, b) - op(low, w_pos, _pos(b)) - op(high, w_neg, _neg(b))
        s = r / stabilize(z, stab)
        return a * op.vjp(s, a, w) - low * op.vjp(s, a, w_pos) - high * op.vjp(s, a, w_neg)
    raise ValueError(f"unknown LRP rule {rule!r}")


@dataclass(frozen=True)
class LayerRule:
    """What a linear layer's backward needs besides its tensors: its op, rule and the rule's options."""

    op: LinearOp
    rule: str
    epsilon: float
    gamma: float
    box: Optional[Tuple[torch.Tensor, torch.Tensor]] = None


class LinearRule(torch.autograd.Function):
    """A Conv/Linear: ``op(a, w, b)`` forward, ``linear_relevance`` backward."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], layer: LayerRule) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        ctx.save_for_backward(a, w, b)
        return layer.op(a, w, b)

    @staticmethod
    def backward(ctx, r: torch.Tensor):  # type: ignore[override]
        a, w, b = ctx.saved_tensors
        rule: LayerRule = ctx.layer
        return linear_relevance(rule.rule, rule.op, r, a, w, b, rule.epsilon, rule.gamma, rule.box), None, None, None


class SumRule(torch.autograd.Function):
    """A residual sum ``t1 + t2``: relevance split in proportion, ``R_k = t_k R / stab(t1 + t2)``
    (zennit's Norm rule on the ResNet canonizer's sum). ``inplace``: ``t1 += t2``."""

    @staticmethod
    def forward(ctx, t1: torch.Tensor, t2: torch.Tensor, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        if inplace:
            ctx.save_for_backward(t1.clone(), t2)
            ctx.mark_dirty(t1)
            return t1.add_(t2)
        ctx.save_for_backward(t1, t2)
        return t1 + t2

    @staticmethod
    def backward(ctx, r: torch.Tensor):  # type: ignore[override]
        t1, t2 = ctx.saved_tensors
        s = r / stabilize(t1 + t2, STABILIZER)
        return t1 * s, t2 * s, None


class PoolRule(torch.autograd.Function):
    """An average pool ``pool(a)``: relevance in proportion to the inputs, ``a vjp(R / stab(out))``
    (zennit's Norm rule)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, pool: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        ctx.pool = pool
        ctx.save_for_backward(a)
        return pool(a)

    @staticmethod
    def backward(ctx, r: torch.Tensor):  # type: ignore[override]
        (a,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = a.detach().requires_grad_(True)
            out = ctx.pool(leaf)
            (g,) = torch.autograd.grad(out, leaf, r / stabilize(out.detach(), STABILIZER))
        return a * g, None


class Elementwise(torch.autograd.Function):
    """An elementwise activation, run as the model called it (``original``: in place or not), whose
    backward is its rule's: LRP passes relevance unchanged (``reference`` None); DeepLIFT's Rescale
    multiplies by ``m = (f(s) - f(s')) / (s - s')`` against the baseline's ``(s', f(s'))`` in
    ``reference`` (``f`` the out-of-place function), computed in the forward pass: one tensor kept,
    one product backward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],  # type: ignore[override]
                original: Callable[[torch.Tensor], torch.Tensor], inplace: bool,
                reference: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        ctx.rescaled = reference is not None
        if reference is None:
            out = original(s)
        else:
            out = f(s)
            ctx.save_for_backward(rescale_multiplier(s, out, f, reference))
            if inplace:
                out = s.copy_(out)
        if inplace:
            ctx.mark_dirty(s)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        if not ctx.rescaled:
            return g, None, None, None, None
        (m,) = ctx.saved_tensors
        return g * m, None, None, None, None


def rescale_multiplier(s: torch.Tensor, out: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
                       reference: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """DeepLIFT's ``(f(s) - f(s')) / (s - s')``, the plain derivative ``f'(s)`` where ``|s - s'| < 1e-10``
    (Captum's Rescale rule)."""
    delta_in = s - reference[0]
    ratio = (out - reference[1]) / delta_in
    close = delta_in.abs() < RESCALE_TOLERANCE
    if not bool(close.any()):
        return ratio
    with torch.enable_grad():
        leaf = s.detach().requires_grad_(True)
        (plain,) = torch.autograd.grad(f(leaf), leaf, torch.ones_like(leaf))
    return torch.where(close, plain, ratio)
