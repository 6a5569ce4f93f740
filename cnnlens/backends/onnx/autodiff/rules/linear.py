"""Matrix products: Gemm (transA / transB, alpha, beta) and MatMul (batched, broadcasting)."""

from __future__ import annotations

from typing import List, Optional

import onnx

from ..context import Context, NoRule
from .base import rule
from .elementwise import unbroadcast


@rule("Gemm")
def gemm(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``Y = alpha A' B' + beta C``: ``dA' = alpha g B'^T``, ``dB' = alpha A'^T g``, ``dC = beta g``."""
    g, y = grads[0], node.output[0]
    a, b = node.input[:2]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    trans_a, trans_b = int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0))
    alpha, beta = float(ctx.attr(node, "alpha", 1.0)), float(ctx.attr(node, "beta", 1.0))
    e, dtype = ctx.e, ctx.dtype(y)
    result: List[Optional[str]] = [None] * len(node.input)
    if ctx.needs(a):
        result[0] = e.gemm(g, b, 0, 1 - trans_b, alpha, dtype) if not trans_a else e.gemm(b, g, trans_b, 1, alpha, dtype)
    if ctx.needs(b):
        result[1] = e.gemm(a, g, 1 - trans_a, 0, alpha, dtype) if not trans_b else e.gemm(g, a, 1, trans_a, alpha, dtype)
    if c is not None and ctx.needs(c):
        result[2] = unbroadcast(ctx, e.scale(g, beta, dtype), c, y)
    return result


def _swap_last(ctx: Context, tensor: str) -> str:
    """``tensor`` with its last two axes swapped, in the graph (a weight is never stored twice:
    ONNX Runtime folds the Transpose of a constant when the session starts)."""
    rank = ctx.rank(tensor)
    return ctx.e.op("Transpose", [tensor], perm=list(range(rank - 2)) + [rank - 1, rank - 2])


@rule("MatMul")
def matmul(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """``dA = g B^T``, ``dB = A^T g``, each summed over the batch axes it was broadcast along."""
    g, y = grads[0], node.output[0]
    a, b = node.input
    if ctx.rank(a) < 2 or ctx.rank(b) < 2:
        raise NoRule("MatMul with a one-dimensional operand")
    e = ctx.e
    batch = (ctx.shape(y) or (None,) * max(ctx.rank(a), ctx.rank(b)))[:-2]
    grad_a = grad_b = None
    if ctx.needs(a):
        grad_a = unbroadcast(ctx, e.op("MatMul", [g, _swap_last(ctx, b)]), a, y, batch + ctx.shape(a)[-2:])
    if ctx.needs(b):
        grad_b = unbroadcast(ctx, e.op("MatMul", [_swap_last(ctx, a), g]), b, y, batch + ctx.shape(b)[-2:])
    return [grad_a, grad_b]


@rule("Einsum")
def einsum(ctx: Context, node: onnx.NodeProto, grads: List[Optional[str]]):
    """Operand i's gradient is the einsum of the output gradient with the other operands, written
    out to operand i's subscripts (each of its letters must appear once in it and somewhere else)."""
    g = grads[0]
    equation = ctx.attr(node, "equation")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    if "->" not in equation or "." in equation:
        raise NoRule(f"Einsum {equation!r} without an explicit output or with an ellipsis")
    left, out = equation.split("->")
    terms = left.split(",")
    result: List[Optional[str]] = []
    for i, (operand, term) in enumerate(zip(node.input, terms)):
        if not ctx.needs(operand):
            result.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != i]
        if len(set(term)) != len(term) or any(c not in out and not any(c in t for t in others) for c in term):
            raise NoRule(f"Einsum {equation!r}: operand {i} repeats a subscript or sums one away alone")
        inputs = [g] + [x for j, x in enumerate(node.input) if j != i]
        result.append(ctx.e.op("Einsum", inputs, equation=",".join([out] + others) + "->" + term))
    return result
