"""LRP and DeepLIFT in the generated backward graph: the ops whose backward a relevance rule set
replaces, each written with standard ONNX ops (``core.relevance`` declares the rules, METHODS.md
defines them, ``backends/torch/relevance_rules.py`` is the same arithmetic in torch).

A linear layer is a Conv, a Gemm, or a MatMul with constant weights (with the constant bias Add
after it, tf2onnx's Dense); a BatchNormalization that alone reads a Conv/Gemm output is merged into
it (its weights folded here, the merged ``rho(W)`` stored as initializers) and then passes
relevance; residual Adds of two computed tensors and average pools split relevance in proportion;
elementwise activations pass it (LRP) or take DeepLIFT's Rescale rule against the baseline's
activations, which come in as extra graph inputs (``reference_input``). Everything else keeps its
ordinary backward rule, which moves relevance with the values (MaxPool, reshapes, Concat).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx

from ....core.relevance import RESCALE_TOLERANCE, LrpRules, describe
from ..graph import node_name
from .context import Context
from .rules import OP_RULES
from .rules.conv import input_gradient

#: the rule set of a DeepLIFT request (its baseline's activations are fed, not built in)
DEEPLIFT = "deeplift"
RelevanceRules = Union[LrpRules, str]

#: elementwise activations: LRP passes relevance through them, DeepLIFT rescales
ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Elu",
               "Selu", "Celu", "Softplus", "Softsign", "Mish", "ThresholdedRelu"}
#: ops whose output is never negative when their data inputs are not (what lets a rule skip negative inputs)
_KEEPS_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose",
               "Squeeze", "Unsqueeze", "Concat", "Identity", "Resize", "Upsample", "Slice", "Pad"}
_POOLS = {"AveragePool", "GlobalAveragePool"}
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


def reference_input(tensor: str) -> str:
    """The graph input that carries ``tensor``'s value on the baseline (DeepLIFT)."""
    return f"cnnlens_reference/{tensor}"


@dataclass
class LinearLayer:
    """A Conv / Gemm / MatMul with its (merged) constant weights and bias, and the tensor its output
    z is (after a merged BatchNormalization or a bias Add)."""

    node: onnx.NodeProto
    kind: str                     # "conv" or "dense"
    weight: np.ndarray
    bias: Optional[np.ndarray]
    z: str


class RelevanceChain:
    """One backward chain's relevance rules: which nodes they replace, what they need fed."""

    def __init__(self, ctx: Context, rules: RelevanceRules, path: Sequence[onnx.NodeProto]):
        self.ctx, self.rules = ctx, rules
        self.lrp = isinstance(rules, LrpRules)
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
        #: tensors whose baseline values DeepLIFT reads (fed as ``reference_input(tensor)``)
        self.references: List[str] = []
        self.counts: Dict[str, int] = collections.Counter()
        self._nonnegative: Dict[str, bool] = {}

    def notes(self) -> tuple:
        first = self.layers.get(self.first or "")
        rule = self.rules.layers.rule(first.kind, True) if self.lrp and first is not None else None
        return describe(self.counts, f"{first.kind} ({rule})" if first is not None else None, self.lrp)

    # ------------------------------------------------------------ finding the layers

    def _only_consumer(self, tensor: str, op_type: str) -> Optional[onnx.NodeProto]:
        found = self.consumers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def _linear(self, node: onnx.NodeProto) -> Optional[LinearLayer]:
        ctx = self.ctx
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or not ctx.needs(node.input[0]):
            return None
        weight = ctx.constant(node.input[1])
        bias = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None or (len(node.input) > 2 and node.input[2] and bias is None):
            return None
        if node.op_type == "MatMul" and weight.ndim != 2:
            return None
        kind = "conv" if node.op_type == "Conv" else "dense"
        weight = np.asarray(weight, dtype=np.float64)
        bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        z = node.output[0]
        add = self._only_consumer(z, "Add") if node.op_type == "MatMul" else None
        if add is not None:  # MatMul + a constant bias: one Dense layer
            other = add.input[1] if add.input[0] == z else add.input[0]
            value = ctx.constant(other)
            if value is not None and np.asarray(value).size == weight.shape[1]:
                bias, z = np.asarray(value, dtype=np.float64).reshape(-1), add.output[0]
        bn = self._only_consumer(z, "BatchNormalization") if node.op_type != "MatMul" else None
        if bn is not None and len(bn.output) == 1:
            params = [ctx.constant(t) for t in bn.input[1:5]]
            if all(p is not None for p in params):
                scale, shift, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
                factor = scale / np.sqrt(var + float(ctx.attr(bn, "epsilon", 1e-5)))
                if kind == "conv":
                    weight = weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
                else:
                    weight = weight * (factor[:, None] if int(ctx.attr(node, "transB", 0)) else factor[None, :])
                bias = ((bias if bias is not None else 0.0) - mean) * factor + shift
                z = bn.output[0]
        return LinearLayer(node, kind, weight, bias, z)

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

    # ------------------------------------------------------------ the rules

    def backward(self, node: onnx.NodeProto, grads: List[Optional[str]]) -> Union[None, List[Optional[str]], Dict[str, str]]:
        """The node's input gradients under the relevance rules (or {tensor: gradient} for a written-out
        activation, whose input is not the node's), or None where its own rule applies."""
        name, op, g = node_name(node), node.op_type, grads[0]
        rest: List[Optional[str]] = [None] * (len(node.input) - 1)
        if name in self.gates and g is not None:
            gate = self.gates[name]
            return {gate.x: g if self.lrp else self._rescale(gate.x, gate.y, g, lambda: self._plain(gate, g))}
        if op in ACTIVATIONS and g is not None:
            plain = lambda: OP_RULES[op](self.ctx, node, [g])[0]  # noqa: E731
            return [g if self.lrp else self._rescale(node.input[0], node.output[0], g, plain)] + rest
        if not self.lrp or g is None:
            return None
        if name in self.layers:
            return [self._layer(self.layers[name], g)] + rest
        if op == "BatchNormalization":
            self.counts["batchnorm merged" if name in self.merged else "batchnorm pass"] += 1
            return [g] + rest
        if op == "Add" and self._residual(node):
            self.counts["residual sum"] += 1
            s = self._divide(g, node.output[0])
            return [self.ctx.e.mul(node.input[0], s), self.ctx.e.mul(node.input[1], s)]
        if op in _POOLS or (op == "ReduceMean" and self._spatial_mean(node)):
            self.counts["average pool"] += 1
            plain = OP_RULES[op](self.ctx, node, [self._divide(g, node.output[0])])
            return [self.ctx.e.mul(node.input[0], plain[0])] + [None] * (len(plain) - 1)
        return None

    def _residual(self, node: onnx.NodeProto) -> bool:
        a, b = node.input[:2]
        sa, sb = self.ctx.shape(a), self.ctx.shape(b)
        return self.ctx.needs(a) and self.ctx.needs(b) and sa is not None and sa == sb

    def _spatial_mean(self, node: onnx.NodeProto) -> bool:
        """A mean over some axes but the batch's and the channels' (a global average pool, NCHW or NHWC)."""
        axes = self.ctx.attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.ctx.constant(node.input[1])
        rank = len(self.ctx.shape(node.input[0]) or ())
        reduced = {int(a) % rank for a in np.atleast_1d(axes)} if axes is not None and rank >= 3 else set()
        return bool(reduced) and 0 not in reduced and len(reduced) < rank - 1

    def _stabilized(self, z: str, epsilon: float) -> str:
        e, dtype = self.ctx.e, self.ctx.dtype(z)
        negative = e.op("Less", [z, e.scalar(0.0, dtype)])
        return e.op("Add", [z, e.op("Where", [negative, e.scalar(-epsilon, dtype), e.scalar(epsilon, dtype)])])

    def _divide(self, g: str, z: str, epsilon: Optional[float] = None) -> str:
        stab = self.rules.stabilizer if epsilon is None and self.lrp else (epsilon or 1e-6)
        return self.ctx.e.op("Div", [g, self._stabilized(z, stab)])

    def _plain(self, gate: Gate, g: str) -> str:
        """The ordinary gradient through a written-out activation's nodes, to its input."""
        parts: Dict[str, List[str]] = {gate.y: [g]}
        for node in reversed(gate.nodes):
            grads = [self.ctx.e.total(parts[o]) if o in parts else None for o in node.output]
            if all(grad is None for grad in grads):
                continue
            for tensor, grad in zip(node.input, OP_RULES[node.op_type](self.ctx, node, grads)):
                if grad is not None:
                    parts.setdefault(tensor, []).append(grad)
        return self.ctx.e.total(parts[gate.x])

    def _rescale(self, s: str, y: str, g: str, plain_gradient) -> str:
        """DeepLIFT: ``g (f(s) - f(s')) / (s - s')``, the plain derivative where ``|s - s'| < 1e-10``."""
        e, dtype = self.ctx.e, self.ctx.dtype(s)
        self.counts["rescale"] += 1
        self.references.extend(t for t in (s, y) if t not in self.references)
        plain = plain_gradient()
        delta_in = e.op("Sub", [s, reference_input(s)])
        ratio = e.op("Div", [e.mul(g, e.op("Sub", [y, reference_input(y)])), delta_in])
        close = e.op("Less", [e.op("Abs", [delta_in]), e.scalar(RESCALE_TOLERANCE, dtype)])
        return e.op("Where", [close, plain, ratio])

    # ------------------------------------------------------------ linear layers

    def _layer(self, layer: LinearLayer, r: str) -> str:
        rules: LrpRules = self.rules  # type: ignore[assignment]
        rule = rules.layers.rule(layer.kind, node_name(layer.node) == self.first)
        self.counts[f"{layer.kind} {rule}"] += 1
        a, w, b = layer.node.input[0], layer.weight, layer.bias
        pos, neg = np.maximum(w, 0), np.minimum(w, 0)
        bpos = None if b is None else np.maximum(b, 0)
        bneg = None if b is None else np.minimum(b, 0)
        if rule == "epsilon":
            return self.ctx.e.mul(a, self._vjp(layer, self._divide(r, layer.z, rules.epsilon), w))
        if rule == "zplus":
            return self._signed(layer, r, (pos, neg), bpos)
        if rule == "alpha2beta1":
            e, dtype = self.ctx.e, self.ctx.dtype(a)
            up = self._signed(layer, r, (pos, neg), bpos)
            down = self._signed(layer, r, (neg, pos), bneg)
            return e.op("Sub", [e.scale(up, 2.0, dtype), down])
        if rule == "gamma":
            e, g = self.ctx.e, rules.gamma
            rising, falling = w + g * pos, w + g * neg
            zero = e.scalar(0.0, self.ctx.dtype(layer.z))
            above, below = e.op("Greater", [layer.z, zero]), e.op("Less", [layer.z, zero])
            up = self._signed(layer, r, (rising, falling), None if b is None else b + g * bpos, above)
            down = self._signed(layer, r, (falling, rising), None if b is None else b + g * bneg, below)
            return e.op("Add", [up, down])
        if rule == "flat":
            e = self.ctx.e
            ones = np.ones_like(w)
            z = self._forward(layer, e.op("ConstantOfShape", [e.shape(a)], value=onnx.numpy_helper.from_array(
                np.ones(1, dtype=self.ctx.dtype(a)), "value")), ones, None)
            return self._vjp(layer, self._divide(r, z), ones)
        if rule == "zbox":
            return self._zbox(layer, r, rules)
        raise ValueError(f"unknown LRP rule {rule!r}")

    def _signed(self, layer: LinearLayer, r: str, weights, bias: Optional[np.ndarray], mask: Optional[str] = None) -> str:
        """``a+ vjp(s, w_pos) + a- vjp(s, w_neg)``, ``s = R / stab(op(a+, w_pos, bias) + op(a-, w_neg))``
        (the a- terms dropped where the input is never negative)."""
        e, a = self.ctx.e, layer.node.input[0]
        w_pos, w_neg = weights
        dtype = self.ctx.dtype(a)
        a_pos = a if self.nonnegative(a) else e.op("Relu", [a])
        a_neg = None if self.nonnegative(a) else e.op("Min", [a, e.scalar(0.0, dtype)])
        z = self._forward(layer, a_pos, w_pos, bias)
        if a_neg is not None:
            z = e.op("Add", [z, self._forward(layer, a_neg, w_neg, None)])
        s = self._divide(r, z)
        if mask is not None:
            s = e.masked(s, mask, dtype)
        out = e.mul(a_pos, self._vjp(layer, s, w_pos))
        return out if a_neg is None else e.op("Add", [out, e.mul(a_neg, self._vjp(layer, s, w_neg))])

    def _zbox(self, layer: LinearLayer, r: str, rules: LrpRules) -> str:
        e, a, w, b = self.ctx.e, layer.node.input[0], layer.weight, layer.bias
        dtype = self.ctx.dtype(a)
        low, high = rules.box(int(w.shape[1]) * int(self.ctx.attr(layer.node, "group", 1)))
        shape = (1, -1) + (1,) * (w.ndim - 2)
        bounds = [e.op("Expand", [e.const(v.reshape(shape).astype(dtype)), e.shape(a)]) for v in (low, high)]
        pos, neg = np.maximum(w, 0), np.minimum(w, 0)
        terms = [(a, w, b), (bounds[0], pos, None if b is None else np.maximum(b, 0)),
                 (bounds[1], neg, None if b is None else np.minimum(b, 0))]
        z = e.op("Sub", [e.op("Sub", [self._forward(layer, *terms[0]), self._forward(layer, *terms[1])]),
                         self._forward(layer, *terms[2])])
        s = self._divide(r, z)
        parts = [e.mul(t, self._vjp(layer, s, weights)) for t, weights, _ in terms]
        return e.op("Sub", [e.op("Sub", [parts[0], parts[1]]), parts[2]])

    def _forward(self, layer: LinearLayer, a: str, w: np.ndarray, b: Optional[np.ndarray]) -> str:
        """The layer applied to tensor ``a`` with weights ``w`` and bias ``b`` (None: none)."""
        e, node = self.ctx.e, layer.node
        dtype = self.ctx.dtype(node.input[0])
        weight = e.const(w.astype(dtype), "rho_w")
        bias = [] if b is None else [e.const(b.astype(dtype), "rho_b")]
        attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
        if node.op_type == "MatMul":
            out = e.op("MatMul", [a, weight])
            return e.op("Add", [out, bias[0]]) if bias else out
        if node.op_type == "Gemm" and bias and float(attrs.get("beta", 1.0)) != 1.0:
            bias = [e.const((b * float(attrs["beta"])).astype(dtype), "rho_b")]
            attrs["beta"] = 1.0
        return e.op(node.op_type, [a, weight] + bias, **attrs)

    def _vjp(self, layer: LinearLayer, g: str, w: np.ndarray) -> str:
        """The gradient with respect to the layer's input for output gradient ``g``, weights ``w``."""
        e, node = self.ctx.e, layer.node
        dtype = self.ctx.dtype(node.input[0])
        if node.op_type == "Conv":
            return input_gradient(self.ctx, node, g, e.const(w.astype(dtype), "rho_w"), w.shape)
        if node.op_type == "MatMul":
            return e.op("MatMul", [g, e.const(np.ascontiguousarray(w.T).astype(dtype), "rho_wt")])
        trans_a, trans_b = int(self.ctx.attr(node, "transA", 0)), int(self.ctx.attr(node, "transB", 0))
        alpha = float(self.ctx.attr(node, "alpha", 1.0))
        weight = e.const(w.astype(dtype), "rho_w")
        return e.gemm(g, weight, 0, 1 - trans_b, alpha, dtype) if not trans_a else e.gemm(weight, g, trans_b, 1, alpha, dtype)
