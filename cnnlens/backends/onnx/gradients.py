"""What gradients an ONNX model allows, and the gradient model for each request.

The capabilities follow the model's ops: a model whose every op between the input and the scores
has a backward rule gets input gradients, layer gradients and the ReLU rules; a model with an op
that has none still gets layer gradients when some convolution lies above every such op (Grad-CAM
only differentiates from its layer up). What is missing, and why, is kept to say so in errors.
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple

import numpy as np
import onnx

from ...core.errors import UnsupportedError
from ...core.methods import supported_methods
from . import autodiff
from .graph import Graph, node_name
from .shapes import TensorTypes
from .. import base


def _describe(problems: List[Tuple[onnx.NodeProto, str]], shown: int = 3) -> str:
    parts = [f"op {node.op_type} (node {node_name(node)!r}): {reason}" for node, reason in problems[:shown]]
    more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(parts) + more


def _outputs_before(graph: Graph, output: str, problems: List[Tuple[onnx.NodeProto, str]]) -> str:
    """The model's other outputs that no problem node feeds (a detector's raw head outputs, before
    box decoding and NMS), said as what to explain instead; empty when there are none."""
    blocked = {node_name(n) for n, _ in problems}
    clean = [o for o in graph.output_names if o != output and not blocked & autodiff.ancestors(graph, o)]
    if not clean:
        return ""
    return (f". Outputs computed before it, which differentiate: {', '.join(repr(o) for o in clean)} "
            f"(explain one with cnnlens.load(path, output=NAME), --output NAME)")


def _upstream(graph: Graph, nodes: List[onnx.NodeProto]) -> Set[str]:
    """The nodes ``nodes`` depend on, and themselves."""
    seen: Set[str] = set()
    stack = [node_name(n) for n in nodes]
    while stack:
        name = stack.pop()
        if name in seen or name not in graph.by_name:
            continue
        seen.add(name)
        stack.extend(node_name(graph.producer[i]) for i in graph.by_name[name].input if i in graph.producer)
    return seen


def gradient_capabilities(graph: Graph, output: str) -> Tuple[FrozenSet[str], Dict[str, str]]:
    """(the gradient capabilities the model's ops allow, {missing capability: why})."""
    problems = autodiff.missing_rules(graph, output)
    if not problems:
        return base.GRADIENTS, {}
    why = f"the gradient cannot pass {_describe(problems)}" + _outputs_before(graph, output, problems)
    limits = {capability: why for capability in base.INPUT_RULES}
    blocked = _upstream(graph, [n for n, _ in problems])
    clean_convs = [n for n in graph.data_nodes() if n.op_type == "Conv" and node_name(n) not in blocked]
    if clean_convs:
        return frozenset({base.LAYER_GRADIENTS}), limits
    limits[base.LAYER_GRADIENTS] = why
    return frozenset(), limits


class NotDifferentiable(UnsupportedError):
    """The gradient model cannot be built; ``reason`` names the op and node in the way (the backend
    records it as why the model lacks input gradients)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def build(model: onnx.ModelProto, graph: Graph, output: str, request: autodiff.GradientRequest,
          types: TensorTypes, capabilities: FrozenSet[str],
          probe: Optional[Callable[[str], Optional[np.ndarray]]] = None) -> autodiff.GradientModel:
    """The gradient model, or a NotDifferentiable error that names the op and node in the way and the
    methods that still run."""
    try:
        return autodiff.build(model, graph, output, request, types.shapes, types.dtypes, probe)
    except autodiff.UnsupportedOp as error:
        if request.input_grad:
            still = supported_methods(capabilities - base.INPUT_RULES)
            where, hint = "the input", ""
        else:
            still = supported_methods(capabilities - base.GRADIENTS)
            where, hint = "this layer", "name a layer above that node, or use "
        raise NotDifferentiable(
            f"cannot differentiate this ONNX model from {where} to its scores: {error}. On this model "
            f"{hint or 'use '}{', '.join(still)}", str(error)
        ) from None
