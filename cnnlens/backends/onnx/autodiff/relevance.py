"""LRP and DeepLIFT in the generated backward graph: the ops whose backward a relevance rule set
replaces, each written with standard ONNX ops (``core.relevance`` declares the rules, METHODS.md
defines them, ``backends/torch/relevance_rules.py`` is the same arithmetic in torch).

The linear layers and gating activations are found by ``relevance_graph``; a merged BatchNormalization
passes relevance. The merged and modified weights ``rho(W)`` are written as ops on the model's own
initializers, which ONNX Runtime folds into constants when the session starts: they cost nothing per
run, and a gradient or explainer file stays the size of the model. Residual Adds of two computed
tensors and average pools split relevance in proportion;
elementwise activations pass it (LRP) or take DeepLIFT's Rescale rule against the baseline's
activations, which come in as extra graph inputs (``reference_input``). Everything else keeps its
ordinary backward rule, which moves relevance with the values (MaxPool, reshapes, Concat).
"""

from __future__ import annotations

import collections
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx

from ....core.relevance import RESCALE_TOLERANCE, LrpRules, describe
from ..graph import node_name
from .context import Context
from .relevance_graph import ACTIVATIONS, POOLS, Gate, LinearLayer, RelevanceGraph
from .rules import OP_RULES
from .rules.conv import input_gradient

#: the rule set of a DeepLIFT request (its baseline's activations are fed, not built in)
DEEPLIFT = "deeplift"
RelevanceRules = Union[LrpRules, str]


def is_relevance_rules(rules: RelevanceRules) -> bool:
    """Whether ``rules`` are LRP's or DeepLIFT's rather than a ReLU rule name."""
    return isinstance(rules, LrpRules) or rules == DEEPLIFT


def reference_input(tensor: str) -> str:
    """The graph input that carries ``tensor``'s value on the baseline (DeepLIFT)."""
    return f"cnnlens_reference/{tensor}"


class RelevanceChain(RelevanceGraph):
    """One backward chain's relevance rules: which nodes they replace, what they need fed."""

    def __init__(self, ctx: Context, rules: RelevanceRules, path: Sequence[onnx.NodeProto]):
        super().__init__(ctx, path)
        self.rules = rules
        self.lrp = isinstance(rules, LrpRules)
        #: tensors whose baseline values DeepLIFT reads (fed as ``reference_input(tensor)``)
        self.references: List[str] = []
        self.counts: Dict[str, int] = collections.Counter()

    def notes(self) -> tuple:
        first = self.layers.get(self.first or "")
        rule = self.rules.layers.rule(first.kind, True) if self.lrp and first is not None else None
        return describe(self.counts, f"{first.kind} ({rule})" if first is not None else None, self.lrp)

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
        if op in POOLS or (op == "ReduceMean" and self._spatial_mean(node)):
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
        """``z + epsilon sign(z)``, sign(0) = +1, as ``z + epsilon - 2 epsilon [z < 0]`` (ONNX Runtime's
        Where is several times slower than Cast and Mul on the CPU: 13% of LRP's time on ResNet-50)."""
        e, dtype = self.ctx.e, self.ctx.dtype(z)
        negative = e.op("Cast", [e.op("Less", [z, e.scalar(0.0, dtype)])], to=onnx.helper.np_dtype_to_tensor_dtype(dtype))
        return e.op("Add", [e.op("Add", [z, e.scalar(epsilon, dtype)]), e.scale(negative, -2.0 * epsilon, dtype)])

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
        pos, neg = self._rho(w, "pos"), self._rho(w, "neg")
        bpos = None if b is None else self._rho(b, "pos")
        bneg = None if b is None else self._rho(b, "neg")
        if rule == "epsilon":
            return self.ctx.e.mul(a, self._vjp(layer, self._divide(r, layer.z, rules.epsilon), w))
        if rule == "zplus":
            return self._signed(layer, r, (pos, neg), bpos, positive=True)
        if rule == "alpha2beta1":
            e, dtype = self.ctx.e, self.ctx.dtype(a)
            up = self._signed(layer, r, (pos, neg), bpos, positive=True)
            down = self._signed(layer, r, (neg, pos), bneg)
            return e.op("Sub", [e.scale(up, 2.0, dtype), down])
        if rule == "gamma":
            e, g = self.ctx.e, rules.gamma
            rising, falling = self._rho(w, "pos", g), self._rho(w, "neg", g)
            zero = e.scalar(0.0, self.ctx.dtype(layer.z))
            above, below = e.op("Greater", [layer.z, zero]), e.op("Less", [layer.z, zero])
            up = self._signed(layer, r, (rising, falling), None if b is None else self._rho(b, "pos", g), above)
            down = self._signed(layer, r, (falling, rising), None if b is None else self._rho(b, "neg", g), below)
            return e.op("Add", [up, down])
        if rule == "flat":
            e = self.ctx.e
            ones = e.const(np.ones(layer.shape, dtype=self.ctx.dtype(a)), "ones_w")
            z = self._forward(layer, e.op("ConstantOfShape", [self._one_image(a)], value=onnx.numpy_helper.from_array(
                np.ones(1, dtype=self.ctx.dtype(a)), "value")), ones, None)
            return self._vjp(layer, self._divide(r, z), ones)
        if rule == "zbox":
            return self._zbox(layer, r, rules)
        raise ValueError(f"unknown LRP rule {rule!r}")

    def _rho(self, tensor: str, part: str, gamma: Optional[float] = None) -> str:
        """``tensor``'s positive (``part`` "pos") or negative part, or with ``gamma``: ``tensor + gamma *
        part`` (the gamma rule's weights), as ops on it (once per tensor, folded by ONNX Runtime)."""
        e, dtype = self.ctx.e, self.ctx.dtype(tensor)

        def make() -> str:
            value = e.op("Relu", [tensor]) if part == "pos" else e.op("Min", [tensor, e.scalar(0.0, dtype)])
            return value if gamma is None else e.op("Add", [tensor, e.scale(value, gamma, dtype)])
        return e.shared(("rho", tensor, part, gamma), make)

    def _signed(self, layer: LinearLayer, r: str, weights, bias: Optional[str], mask: Optional[str] = None,
                positive: bool = False) -> str:
        """``a+ vjp(s, w_pos) + a- vjp(s, w_neg)``, ``s = R / stab(op(a+, w_pos, bias) + op(a-, w_neg))``
        (the a- terms dropped where the input is never negative; ``positive``: the weights and bias are
        >= 0, so then ``z >= 0`` and ``stab(z) = z + stab``)."""
        e, a = self.ctx.e, layer.node.input[0]
        w_pos, w_neg = weights
        dtype = self.ctx.dtype(a)
        a_pos = a if self.nonnegative(a) else e.op("Relu", [a])
        a_neg = None if self.nonnegative(a) else e.op("Min", [a, e.scalar(0.0, dtype)])
        if positive and a_neg is None:  # z >= 0: its stabiliser is a constant, added with the bias
            stab = self.rules.stabilizer  # type: ignore[union-attr]
            shifted = e.const(np.full(self._outputs(layer), stab, dtype=dtype), "stab") if bias is None else \
                e.shared(("stabilised", bias), lambda: e.op("Add", [bias, e.scalar(stab, dtype)]))
            s = e.op("Div", [r, self._forward(layer, a_pos, w_pos, shifted)])
        else:
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
        low, high = rules.box(layer.shape[1] * int(self.ctx.attr(layer.node, "group", 1)))
        shape = (1, -1) + (1,) * (len(layer.shape) - 2)
        bounds = [e.op("Expand", [e.const(v.reshape(shape).astype(dtype)), self._one_image(a)]) for v in (low, high)]
        pos, neg = self._rho(w, "pos"), self._rho(w, "neg")
        terms = [(a, w, b), (bounds[0], pos, None if b is None else self._rho(b, "pos")),
                 (bounds[1], neg, None if b is None else self._rho(b, "neg"))]
        z = e.op("Sub", [e.op("Sub", [self._forward(layer, *terms[0]), self._forward(layer, *terms[1])]),
                         self._forward(layer, *terms[2])])
        s = self._divide(r, z)
        parts = [e.mul(t, self._vjp(layer, s, weights)) for t, weights, _ in terms]
        return e.op("Sub", [e.op("Sub", [parts[0], parts[1]]), parts[2]])

    def _one_image(self, a: str) -> str:
        """The shape of one image of tensor ``a`` (1, ...): a constant where shape inference knows it, so
        what a rule computes from it alone (the flat rule's counts, the zB box's terms) is folded into
        constants when the session starts, else the runtime shape."""
        shape = self.ctx.shape(a)
        if shape is not None and all(isinstance(d, int) for d in shape[1:]):
            return self.ctx.e.ints((1,) + tuple(int(d) for d in shape[1:]))
        return self.ctx.e.shape(a)

    def _outputs(self, layer: LinearLayer) -> int:
        """How many outputs (channels, units) the layer has: the length of its bias."""
        if layer.kind == "conv":
            return layer.shape[0]
        trans_b = int(self.ctx.attr(layer.node, "transB", 0)) if layer.node.op_type == "Gemm" else 0
        return layer.shape[0] if trans_b else layer.shape[1]

    def _forward(self, layer: LinearLayer, a: str, w: str, b: Optional[str]) -> str:
        """The layer applied to tensor ``a`` with weights ``w`` and bias ``b`` (None: none)."""
        e, node = self.ctx.e, layer.node
        bias = [] if b is None else [b]
        attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
        if node.op_type == "MatMul":
            out = e.op("MatMul", [a, w])
            return e.op("Add", [out, bias[0]]) if bias else out
        return e.op(node.op_type, [a, w] + bias, **attrs)

    def _vjp(self, layer: LinearLayer, g: str, w: str) -> str:
        """The gradient with respect to the layer's input for output gradient ``g``, weights ``w``."""
        e, node = self.ctx.e, layer.node
        if node.op_type == "Conv":
            return input_gradient(self.ctx, node, g, w, layer.shape)
        if node.op_type == "MatMul":
            return e.op("MatMul", [g, e.op("Transpose", [w], perm=[1, 0])])
        trans_a, trans_b = int(self.ctx.attr(node, "transA", 0)), int(self.ctx.attr(node, "transB", 0))
        alpha = float(self.ctx.attr(node, "alpha", 1.0))
        dtype = self.ctx.dtype(node.input[0])
        return e.gemm(g, w, 0, 1 - trans_b, alpha, dtype) if not trans_a else e.gemm(w, g, trans_b, 1, alpha, dtype)
