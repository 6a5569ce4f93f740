"""What the relevance rules read off an ONNX graph before writing anything: its linear layers
(Conv, Gemm, MatMul with constant weights and tf2onnx's constant bias Add after it; a BatchNormalization
that alone reads a Conv/Gemm output merged in, as ops on the model's own initializers), self-gating
activations written out as ops (``x * g(x)``: SiLU as Sigmoid + Mul, GELU through Erf, Mish), and
which tensors are never negative. ``relevance.RelevanceChain`` writes the rules from it."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..graph import node_name
from .context import Context

#: elementwise activations: LRP passes relevance through them, DeepLIFT rescales
ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Elu",
               "Selu", "Celu", "Softplus", "Softsign", "Mish", "ThresholdedRelu"}
#: ops whose output is never negative when their data inputs are not (what lets a rule skip negative inputs)
_KEEPS_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose",
               "Squeeze", "Unsqueeze", "Concat", "Identity", "Resize", "Upsample", "Slice", "Pad"}
#: average pools: their relevance splits in proportion to their inputs
POOLS = {"AveragePool", "GlobalAveragePool"}
#: elementwise ops a self-gating activation writes out (``x * g(x)``: SiLU, GELU through Erf, Mish, ...)
_GATES = {"Sigmoid", "HardSigmoid", "Tanh", "Erf", "Softplus", "Softsign", "Relu", "Clip", "Exp"}
_SCALINGS = {"Add", "Sub", "Mul", "Div"}


@dataclass
class Gate:
    """A self-gating activation written out as ops, ``y = x * g(x)`` (and a constant scale after, as
    GELU's 0.5): one elementwise activation of ``x`` for the rules, as its module is in PyTorch."""

    x: str
    y: str
    nodes: List[onnx.NodeProto]  # from x to y, in topological order


@dataclass
class LinearLayer:
    """A Conv / Gemm / MatMul with its (merged) constant weights and bias, and the tensor its output
    z is (after a merged BatchNormalization or a bias Add)."""

    node: onnx.NodeProto
    kind: str                     # "conv" or "dense"
    weight: str                   # the (merged) weight tensor
    shape: Tuple[int, ...]        # its shape
    bias: Optional[str]           # the (merged) bias tensor, None for none
    z: str

class RelevanceGraph:
    """The layers, gates and signs of the nodes on one backward chain's path."""

    def __init__(self, ctx: Context, path: Sequence[onnx.NodeProto]):
        self.ctx = ctx
        self.consumers: Dict[str, List[onnx.NodeProto]] = collections.defaultdict(list)
        for node in ctx.graph.nodes:
            for tensor in node.input:
                self.consumers[tensor].append(node)
        self.layers = {node_name(n): layer for n in path if (layer := self._linear(n)) is not None}
        self.first = next((node_name(n) for n in path if node_name(n) in self.layers), None)
        self.merged = {node_name(c) for layer in self.layers.values() for c in self._merged_into(layer)}
        self.gates: Dict[str, Gate] = {}
        for node in path:
            gate = self._gate(node)
            if gate is not None:
                self.gates[node_name(gate.nodes[-1])] = gate
        self._nonnegative: Dict[str, bool] = {}

    # ------------------------------------------------------------ finding the layers

    def _only_consumer(self, tensor: str, op_type: str) -> Optional[onnx.NodeProto]:
        found = self.consumers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def _linear(self, node: onnx.NodeProto) -> Optional[LinearLayer]:
        ctx = self.ctx
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or not ctx.needs(node.input[0]):
            return None
        value = ctx.constant(node.input[1])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if value is None or (has_bias and ctx.constant(node.input[2]) is None):
            return None
        if node.op_type == "MatMul" and value.ndim != 2:
            return None
        kind = "conv" if node.op_type == "Conv" else "dense"
        weight, shape = node.input[1], tuple(int(d) for d in value.shape)
        bias: Optional[str] = node.input[2] if has_bias else None
        z = node.output[0]
        add = self._only_consumer(z, "Add") if node.op_type == "MatMul" else None
        if add is not None:  # MatMul + a constant bias: one Dense layer
            other = add.input[1] if add.input[0] == z else add.input[0]
            found = ctx.constant(other)
            if found is not None and np.asarray(found).size == shape[1]:
                bias, z = other, add.output[0]
        bn = self._only_consumer(z, "BatchNormalization") if node.op_type != "MatMul" else None
        if bn is not None and len(bn.output) == 1 and all(ctx.constant(t) is not None for t in bn.input[1:5]):
            weight, bias = self._merge(node, bn, weight, bias, len(shape))
            z = bn.output[0]
        return LinearLayer(node, kind, weight, shape, bias, z)

    def _merge(self, node: onnx.NodeProto, bn: onnx.NodeProto, weight: str, bias: Optional[str],
               rank: int) -> Tuple[str, str]:
        """The weight and bias of ``node`` with the BatchNormalization after it merged in, as ops
        (zennit's MergeBatchNorm: ``w scale / sqrt(var + eps)``, ``(b - mean) scale / sqrt(var + eps) + shift``)."""
        e, dtype = self.ctx.e, self.ctx.dtype(weight)
        scale, shift, mean, var = bn.input[1:5]
        eps = e.scalar(float(self.ctx.attr(bn, "epsilon", 1e-5)), dtype)
        factor = e.op("Div", [scale, e.op("Sqrt", [e.op("Add", [var, eps])])])
        if node.op_type == "Conv":
            axes = [-1] + [1] * (rank - 1)
        else:
            axes = [-1, 1] if int(self.ctx.attr(node, "transB", 0)) else [1, -1]
        merged = e.op("Mul", [weight, e.op("Reshape", [factor, e.ints(axes)])])
        centred = e.op("Sub", [bias, mean]) if bias is not None else e.op("Neg", [mean])
        return merged, e.op("Add", [e.mul(centred, factor), shift])

    def _constant_operand(self, node: onnx.NodeProto) -> Optional[str]:
        """The data operand of a binary op whose other operand is a constant (None otherwise)."""
        if node.op_type not in _SCALINGS or len(node.input) != 2:
            return None
        data = [t for t in node.input if self.ctx.constant(t) is None]
        return data[0] if len(data) == 1 else None

    def _elementwise_of(self, tensor: str, x: str, depth: int = 6) -> Optional[List[onnx.NodeProto]]:
        """The nodes computing ``tensor`` from ``x`` alone, elementwise (None when it is not so)."""
        node = self.ctx.graph.producer.get(tensor)
        if node is None or depth == 0:
            return None
        source = node.input[0] if node.op_type in _GATES else self._constant_operand(node)
        if source is None:
            return None
        if source == x:
            return [node]
        before = self._elementwise_of(source, x, depth - 1)
        return None if before is None else before + [node]

    def _gate(self, node: onnx.NodeProto) -> Optional[Gate]:
        if node.op_type != "Mul" or len(node.input) != 2 or not all(self.ctx.needs(t) for t in node.input):
            return None
        for x, g in (node.input, node.input[::-1]):
            inner = self._elementwise_of(g, x)
            if inner is not None and any(n.op_type in _GATES for n in inner):
                nodes, y = inner + [node], node.output[0]
                after = self._only_consumer(y, "Mul") or self._only_consumer(y, "Div")
                if after is not None and self._constant_operand(after) == y:
                    nodes, y = nodes + [after], after.output[0]
                return Gate(x, y, nodes)
        return None

    def _merged_into(self, layer: LinearLayer) -> List[onnx.NodeProto]:
        node = layer.node
        bn = self._only_consumer(node.output[0], "BatchNormalization")
        return [bn] if bn is not None and layer.z == bn.output[0] else []

    def nonnegative(self, tensor: str) -> bool:
        """Whether ``tensor`` is never negative by construction (a ReLU's output, pooled or reshaped)."""
        if tensor not in self._nonnegative:
            self._nonnegative[tensor] = False  # cycles (none in a DAG) and depth: assume not
            node = self.ctx.graph.producer.get(tensor)
            ok = False
            if node is not None:
                if node.op_type in ("Relu", "Sigmoid", "Softmax"):
                    ok = True
                elif node.op_type == "Clip":
                    low = self.ctx.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else \
                        self.ctx.attr(node, "min", None)
                    ok = low is not None and float(np.asarray(low)) >= 0
                elif node.op_type in _KEEPS_SIGN:
                    ok = all(self.nonnegative(t) for t in node.input[:1 if node.op_type != "Concat" else None] if t)
            self._nonnegative[tensor] = ok
        return self._nonnegative[tensor]
