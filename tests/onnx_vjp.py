"""Test helpers for the ONNX backward rules: one op in a graph, differentiated by cnnlens's builder
and run by ONNX Runtime, next to independent references (PyTorch autograd, the adjoint identity
on ONNX Runtime's own forward, central differences in float64 with ONNX's reference evaluator)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from cnnlens.backends.onnx.autodiff import GradientRequest, build
from cnnlens.backends.onnx.graph import Graph
from cnnlens.backends.onnx.shapes import infer


class OneOp:
    """``op_type`` applied to data tensors (each fed as a graph input through an Identity, so each
    has a gradient of its own) and constants; ``vjp(seed)`` runs the built backward model."""

    def __init__(self, op_type: str, data: Dict[str, np.ndarray], inputs: Sequence[str],
                 constants: Optional[Dict[str, np.ndarray]] = None, opset: int = 17, relu: str = "plain",
                 outputs: int = 1, post: Optional[Callable[[List[str]], List[onnx.NodeProto]]] = None, **attrs):
        self.data = {k: np.asarray(v) for k, v in data.items()}
        self.constants = constants or {}
        names = list(self.data)
        outs = [f"y{i}" for i in range(outputs)]
        nodes = [helper.make_node("Identity", [f"in_{d}"], [d]) for d in names]
        nodes.append(helper.make_node(op_type, list(inputs), outs, name="op", **attrs))
        if post is not None:  # e.g. join several outputs into one
            nodes.extend(post(outs))
            outs = [nodes[-1].output[0]]
        self.output = outs[0]
        graph_inputs = [helper.make_tensor_value_info(f"in_{d}", helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                        for d, v in self.data.items()]
        initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in self.constants.items()]
        graph = helper.make_graph(nodes, "one_op", graph_inputs, [helper.make_empty_tensor_value_info(self.output)],
                                  initializers)
        self.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                       ir_version=min(helper.find_min_ir_version_for([helper.make_opsetid("", opset)]) + 1, 10))
        self.forward_session = ort.InferenceSession(self.model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.request = GradientRequest(tuple(names[1:]), True, relu)
        self._backward = None

    @property
    def built(self):
        """The backward model, built on first use."""
        if self._backward is None:
            types = infer(self.model)
            built = build(self.model, Graph(self.model), self.output, self.request, types.shapes, types.dtypes)
            session = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])
            self._backward = (built, session)
        return self._backward[0]

    @property
    def session(self):
        self.built
        return self._backward[1]

    def feeds(self, data: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        return {f"in_{k}": v for k, v in (data or self.data).items()}

    def forward(self, data: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
        return self.forward_session.run([self.output], self.feeds(data))[0]

    def vjp(self, seed: np.ndarray) -> Dict[str, np.ndarray]:
        """The gradient of ``sum(seed * y)`` with respect to each data tensor."""
        dtype = self.forward().dtype
        got = self.session.run(self.built.outputs, {**self.feeds(), self.built.seed: seed.astype(dtype)})
        names = list(self.data)
        grads = got[1 + len(names) - 1:]
        return dict(zip(names, grads))

    def seed(self, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(self.forward().shape).astype(np.float32)


def torch_vjp(fn: Callable[..., torch.Tensor], data: Dict[str, np.ndarray], seed: np.ndarray) -> Dict[str, np.ndarray]:
    """PyTorch autograd's gradient of ``sum(seed * fn(*data))`` with respect to each data tensor."""
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float64)).requires_grad_(True) for k, v in data.items()}
    out = fn(*tensors.values())
    grads = torch.autograd.grad(out, list(tensors.values()), torch.from_numpy(seed.astype(np.float64)),
                                allow_unused=True)
    return {k: (g.numpy() if g is not None else np.zeros_like(data[k], dtype=np.float64)) for k, g in zip(tensors, grads)}


def adjoint_gap(op: OneOp, rng: np.random.Generator, trials: int = 3) -> float:
    """For an op linear in its (single) data tensor: the largest relative gap between
    ``<seed, f(v)>`` (ONNX Runtime's forward) and ``<vjp(seed), v>`` over random ``v`` and seeds."""
    (name, value), = op.data.items()
    worst = 0.0
    for _ in range(trials):
        v = rng.standard_normal(value.shape).astype(np.float32)
        original = op.data
        op.data = {name: v}
        y = op.forward().astype(np.float64)
        seed = rng.standard_normal(y.shape).astype(np.float32)
        grad = op.vjp(seed)[name].astype(np.float64)
        op.data = original
        left, right = float((seed * y).sum()), float((grad * v).sum())
        scale = float(np.abs(seed * y).sum() + np.abs(grad * v).sum()) or 1.0
        worst = max(worst, abs(left - right) / scale)
    return worst


def reference_directional(op: OneOp, seed: np.ndarray, rng: np.random.Generator, eps: float = 1e-6) -> float:
    """The largest relative gap between ``<vjp(seed), v>`` and the central difference
    ``<seed, (f(x + eps v) - f(x - eps v)) / 2 eps>`` in float64 by ONNX's reference evaluator,
    for a random direction ``v`` over all data tensors."""
    from onnx.reference import ReferenceEvaluator

    wide = onnx.ModelProto()
    wide.CopyFrom(op.model)
    for value in wide.graph.input:
        value.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for tensor in wide.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    evaluator = ReferenceEvaluator(wide)
    directions = {k: rng.standard_normal(v.shape) for k, v in op.data.items()}

    def f(step: float) -> np.ndarray:
        feeds = {f"in_{k}": op.data[k].astype(np.float64) + step * directions[k] for k in op.data}
        return np.asarray(evaluator.run([op.output], feeds)[0], dtype=np.float64)
    numeric = float((seed.astype(np.float64) * (f(eps) - f(-eps)) / (2 * eps)).sum())
    grads = op.vjp(seed)
    analytic = float(sum((grads[k].astype(np.float64) * directions[k]).sum() for k in op.data))
    return abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-12)


def check_against_torch(op: OneOp, fn: Callable[..., torch.Tensor], tol: float = 1e-5) -> None:
    """``op``'s forward equals ``fn``'s, and its gradient of every data tensor equals PyTorch
    autograd's (float64) to ``tol`` relative, for one seeded random seed."""
    from tests.helpers import assert_close

    seed = op.seed(np.random.default_rng(1))
    want = torch_vjp(fn, op.data, seed)
    np.testing.assert_allclose(op.forward(), fn(*[torch.from_numpy(v.astype(np.float64)) for v in op.data.values()])
                               .detach().numpy(), rtol=1e-4, atol=1e-5)
    got = op.vjp(seed)
    for name in op.data:
        assert_close(got[name], want[name], tol)
