"""Reading an ONNX graph: topological order, producers, constants, shapes and module scopes.

Pure inspection of the ``ModelProto`` (``onnx`` only, no runtime): the ONNX backend uses it to
list layers, find weights (initializers, or tensors made by Constant / ConstantOfShape /
Identity nodes), find a GAP -> Gemm/MatMul head, and map torch module paths to nodes (the
legacy exporter keeps them in node names, ``/layer4/layer4.1/relu_1/Relu``; the dynamo
exporter in the ``pkg.torch.onnx.name_scopes`` metadata).
"""

from __future__ import annotations

import ast
import re
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
import onnx
from onnx import numpy_helper

_SUFFIX = re.compile(r"_\d+$")
#: Ops that read only a tensor's shape: what they compute carries no gradient and no pixel values.
SHAPE_OPS = {"Shape", "Size"}
#: Float initializers that are settings, not learned weights (Resize's scales, Clip's bounds, ...).
_SETTING_OPS = {"Resize", "Upsample", "Clip", "Pad", "ConstantOfShape"}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def node_name(node: onnx.NodeProto) -> str:
    """A node's name, or its first output's name when the exporter left it empty."""
    return node.name or (node.output[0] if node.output else "")


def value_inputs(node: onnx.NodeProto) -> Sequence[str]:
    """The inputs whose values (not just shape or type) the node's outputs are computed from: none
    for Shape and Size, the first for CastLike, all of them otherwise."""
    if node.op_type in SHAPE_OPS:
        return ()
    return node.input[:1] if node.op_type == "CastLike" else node.input


def attribute(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's Python value."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


class Graph:
    """Index of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.initializers]
        if not inputs:
            raise ValueError("the graph has no input that is not an initializer")
        self.input = inputs[0]
        self.output_names = [o.name for o in graph.output]
        self.nodes: List[onnx.NodeProto] = self._topological(list(graph.node))
        self.producer: Dict[str, onnx.NodeProto] = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
        self.by_name: Dict[str, onnx.NodeProto] = {node_name(n): n for n in self.nodes}
        self.dynamic = self._depends_on_input(data_only=False)
        self.data = self._depends_on_input(data_only=True)
        self._scopes = self._all_scopes()

    # ------------------------------------------------------------ order and reachability

    def _topological(self, nodes: List[onnx.NodeProto]) -> List[onnx.NodeProto]:
        """Kahn's order, stable with respect to the file's order (most files are sorted already)."""
        available: Set[str] = set(self.initializers) | {i.name for i in self.model.graph.input} | {""}
        pending = list(nodes)
        ordered: List[onnx.NodeProto] = []
        while pending:
            rest = []
            for node in pending:
                if all(i in available for i in node.input if i):
                    ordered.append(node)
                    available.update(node.output)
                else:
                    rest.append(node)
            if len(rest) == len(pending):  # a cycle or a dangling input: keep the file's order
                ordered.extend(rest)
                break
            pending = rest
        return ordered

    def _depends_on_input(self, data_only: bool) -> Set[str]:
        """Names of nodes whose outputs depend on the model input (the rest are constants).

        With ``data_only``, dependence through an input's shape or type alone does not count
        (Shape, Size, the second input of CastLike): what is left computes on pixel values.
        """
        live = {self.input.name}
        names = set()
        for node in self.nodes:
            inputs = value_inputs(node) if data_only else node.input
            if any(i in live for i in inputs):
                live.update(node.output)
                names.add(node_name(node))
        return names

    def data_nodes(self) -> List[onnx.NodeProto]:
        """Nodes that compute on pixel values, in topological order (weights' and shapes' plumbing left out)."""
        return [n for n in self.nodes if node_name(n) in self.data]

    # ------------------------------------------------------------ constants

    def constant(self, tensor: str) -> Optional[np.ndarray]:
        """The value of a tensor that does not depend on the input, when it can be read directly."""
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor])
        node = self.producer.get(tensor)
        if node is None:
            return None
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_int"):
                    return np.asarray(onnx.helper.get_attribute_value(attr))
                if attr.name in ("value_floats", "value_ints"):
                    return np.asarray(list(onnx.helper.get_attribute_value(attr)))
            return None
        if node.op_type == "Identity":
            return self.constant(node.input[0])
        if node.op_type == "ConstantOfShape":
            shape = self.constant(node.input[0])
            if shape is None:
                return None
            value = attribute(node, "value")
            fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, dtype=np.float32)
            return np.full(tuple(int(v) for v in shape), fill.reshape(-1)[0], dtype=fill.dtype)
        if node_name(node) in self.dynamic:
            return None
        return self._fold(tensor)

    def _fold(self, tensor: str) -> Optional[np.ndarray]:
        """Evaluate a constant subgraph (Reshape, Cast, Concat... of constants) with onnx's reference runtime."""
        needed: List[onnx.NodeProto] = []
        seen: Set[str] = set()
        stack = [tensor]
        while stack:
            name = stack.pop()
            node = self.producer.get(name)
            if node is None or node_name(node) in seen:
                continue
            seen.add(node_name(node))
            needed.append(node)
            stack.extend(i for i in node.input if i)
        used = {i for n in needed for i in n.input}
        graph = onnx.helper.make_graph(
            [n for n in self.nodes if node_name(n) in seen], "fold", [],
            [onnx.helper.make_empty_tensor_value_info(tensor)],
            [t for name, t in self.initializers.items() if name in used],
        )
        try:
            from onnx.reference import ReferenceEvaluator

            folded = onnx.helper.make_model(graph, opset_imports=self.model.opset_import)
            return np.asarray(ReferenceEvaluator(folded).run(None, {})[0])
        except Exception:  # an op the reference runtime lacks: the caller falls back to onnxruntime
            return None

    def parameters(self, node: onnx.NodeProto) -> List[str]:
        """The initializers holding a node's learned parameters (Conv's weight and bias, BatchNorm's
        scale, bias, mean and variance, ...): floating-point ones of rank >= 1 that it takes
        directly or through Identity nodes. Rank-0 constants (GELU's sqrt(2), an epsilon) and the
        settings of ops like Resize and Clip do not count."""
        if node.op_type in _SETTING_OPS:
            return []
        found: List[str] = []
        for tensor in node.input:
            name = self.initializer_of(tensor)
            init = self.initializers.get(name) if name is not None else None
            if init is not None and init.data_type in _FLOAT_TYPES and len(init.dims) >= 1 and name not in found:
                found.append(name)
        return found

    def initializer_of(self, tensor: str) -> Optional[str]:
        """The initializer a tensor is, directly or through Identity nodes; None for any other tensor."""
        while tensor and tensor not in self.initializers:
            node = self.producer.get(tensor)
            if node is None or node.op_type != "Identity":
                return None
            tensor = node.input[0]
        return tensor or None

    # ------------------------------------------------------------ module scopes

    def _all_scopes(self) -> Dict[str, List[str]]:
        """Torch module paths of every node, outermost first. A legacy-exporter path part with a
        ``_N`` suffix (``relu_1``: a module's second call) also counts as the bare module
        (``relu``) when some node carries that bare path too."""
        raw = {node_name(n): self._node_scopes(n) for n in self.nodes}
        known = {path for paths in raw.values() for path in paths}
        scopes: Dict[str, List[str]] = {}
        for name, paths in raw.items():
            expanded: List[str] = []
            for path in paths:
                expanded.append(path)
                bare = _SUFFIX.sub("", path)
                if bare != path and bare in known:
                    expanded.append(bare)
            scopes[name] = expanded
        return scopes

    @staticmethod
    def _node_scopes(node: onnx.NodeProto) -> List[str]:
        """The module paths one node records: dynamo metadata, or a legacy ``/a/a.b/c/Op`` name."""
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = ast.literal_eval(prop.value)
                except (ValueError, SyntaxError):
                    break
                # the last entry is the fx node, not a module; "_..." entries are exporter internals
                return [s for s in scopes[:-1] if s and not s.startswith("_")]
        name = node.name
        if not name.startswith("/"):
            return []
        paths: List[str] = []
        current, previous = "", ""
        for part in (p for p in name.split("/")[1:-1] if p):  # the op name at the end is dropped
            if previous and part.startswith(previous + "."):  # a Sequential's child: "downsample.0"
                current = current[:len(current) - len(previous)] + part
            else:
                current = f"{current}.{part}" if current else part
            previous = part
            paths.append(current)
        return paths

    def module_paths(self) -> List[str]:
        """Every torch module path that some node belongs to."""
        seen: Dict[str, None] = {}
        for scopes in self._scopes.values():
            for s in scopes:
                seen.setdefault(s, None)
        return list(seen)

    def node_for_module(self, path: str) -> Optional[onnx.NodeProto]:
        """The last node (topologically) inside a torch module's scope: the module's output."""
        found = None
        for node in self.nodes:
            if node_name(node) in self.data and path in self._scopes[node_name(node)]:
                found = node
        return found

    def module_for_node(self, node: onnx.NodeProto) -> Optional[str]:
        """The innermost torch module whose output this node computes, when the exporter recorded it.

        A node inside a module that is not its output (the first call of a reused ReLU, a
        residual Add) has none: None.
        """
        for path in reversed(self._scopes.get(node_name(node)) or []):
            if self.node_for_module(path) is node:
                return path
        return None

    def enclosing_module(self, node: onnx.NodeProto) -> Optional[str]:
        """The innermost torch module path a node lies in, output or not."""
        scopes = self._scopes.get(node_name(node)) or []
        return scopes[-1] if scopes else None
