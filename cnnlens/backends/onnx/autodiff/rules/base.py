"""The rule table: one backward function per op type, registered by the family modules.

A rule is ``backward(ctx, node, grads) -> grads of the inputs``: ``grads`` holds the gradient
tensor of each of the node's outputs (None where nothing flows back), and the rule returns one
entry per node input, None where ``ctx.needs(input)`` is false or the input carries no
gradient (weights, shapes, indices). A rule may also register ``check(node, graph)``, which
returns why a node cannot be differentiated (an attribute it does not handle) before any
graph is built.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import onnx

from ..context import Context
from ...graph import Graph

Backward = Callable[[Context, onnx.NodeProto, List[Optional[str]]], Sequence[Optional[str]]]
Check = Callable[[onnx.NodeProto, Graph], Optional[str]]

OP_RULES: Dict[str, Backward] = {}
CHECKS: Dict[str, Check] = {}


def rule(*op_types: str, check: Optional[Check] = None) -> Callable[[Backward], Backward]:
    """Register ``backward`` (and ``check``) for ``op_types``."""
    def register(backward: Backward) -> Backward:
        for op in op_types:
            if op in OP_RULES:
                raise RuntimeError(f"two backward rules for {op}")
            OP_RULES[op] = backward
            if check is not None:
                CHECKS[op] = check
        return backward
    return register


def only_first(node: onnx.NodeProto, grad: Optional[str]) -> List[Optional[str]]:
    """The gradient for the node's first input, None for the others."""
    return [grad] + [None] * (len(node.input) - 1)
