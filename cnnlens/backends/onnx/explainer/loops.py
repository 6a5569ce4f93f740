"""Copies of the model inside an ONNX ``Loop``: what lets a method that runs the model many times
(Integrated Gradients' points on the path, Score-CAM's masked images) be one fixed graph with
bounded memory. Each iteration runs a renamed copy of the forward nodes (and, for gradients, of a
backward chain) on a slice of the work; the weights are read from the outer graph, never copied,
so the file does not grow with the copies. The work is the one ``cnnlens.explain`` does: every
(image, item) pair of the batch fed, image-major, in passes of at most ``batch_size`` pairs
(:class:`Schedule`), whatever the batch."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..autodiff import Emitter, ancestors, backward_chain
from ..graph import node_name
from ..view import ModelView


def _renamed(node: onnx.NodeProto, names: Dict[str, str], outputs: Dict[str, str], prefix: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(names.get(i, i) for i in node.input)
    del copy.output[:]
    copy.output.extend(outputs.get(o, o) for o in node.output)
    copy.name = prefix + node_name(node)
    return copy


class Body:
    """A Loop body under construction: nodes appended through ``e`` (its own fresh names; its
    constants become initializers of the outer graph), with copies of the model's forward nodes
    spliced in by :meth:`forward`."""

    def __init__(self, view: ModelView, outer: Emitter, prefix: str):
        self.view = view
        self.prefix = prefix
        self.e = outer.child(prefix)
        self.nodes: List[onnx.NodeProto] = []
        self._names: Dict[str, str] = {}  # forward tensors -> their copies
        self._flushed = 0
        self._copied = False
        self.iteration = self.e.fresh("iteration")
        self.condition = self.e.fresh("condition")
        self.carried: List[Tuple[str, int]] = []  # (body input, element type)

    def carry(self, elem_type: int = TensorProto.FLOAT) -> str:
        """A loop-carried value's name inside the body (its initial value is given to :meth:`loop`)."""
        name = self.e.fresh("carried")
        self.carried.append((name, elem_type))
        return name

    def _flush(self) -> None:
        for node in self.e.nodes[self._flushed:]:
            self.nodes.append(_renamed(node, self._names, {}, ""))
        self._flushed = len(self.e.nodes)

    def forward(self, images: str) -> str:
        """The model's output for ``images`` (a body tensor in the model's layout): the forward
        nodes the output depends on, copied with every tensor they make renamed."""
        if self._copied:
            raise RuntimeError("a Loop body holds one copy of the model")
        self._flush()
        view = self.view
        wanted = ancestors(view.graph, view.output_name)
        nodes = [n for n in view.graph.nodes if node_name(n) in wanted and node_name(n) in view.graph.dynamic]
        for node in nodes:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise NotImplementedError(f"the model's node {node_name(node)!r} ({node.op_type}) holds a subgraph")
        self._names[view.input_name] = images
        for node in nodes:
            for out in node.output:
                if out:
                    self._names[out] = self.e.reserve(self.prefix + out)
        for node in nodes:
            self.nodes.append(_renamed(node, self._names, self._names, self.prefix))
        self._copied = True
        return self._names[view.output_name]

    def backward(self, seed: str, relu: str = "plain") -> str:
        """The gradient of ``sum(seed * output)`` with respect to the copy's images (model layout)."""
        view = self.view
        found = backward_chain(self.e, view.graph, view.output_name, seed, relu, [view.input_name],
                               view.types.shapes, view.types.dtypes, view.probe)
        return found[view.input_name]

    def loop(self, outer: Emitter, trips: Union[int, str], initial: Sequence[str], results: Sequence[str],
             scanned: Sequence[str] = ()) -> List[str]:
        """Close the body (``results``: the carried values' new values, ``scanned``: per-iteration
        outputs stacked along a new first axis) and append the Loop node to ``outer``; returns the
        final carried values, then the stacked scans."""
        initial, results = list(initial), list(results)
        idle = not self.carried
        if idle:  # Loop before opset 11 needs a carried value: an idle one
            results.append(self.e.op("Identity", [self.carry()]))
            initial.append(outer.const(np.zeros((), dtype=np.float32), "idle"))
        self._flush()
        cond_out = self.e.op("Identity", [self.condition])
        self._flush()
        inputs = [helper.make_tensor_value_info(self.iteration, TensorProto.INT64, []),
                  helper.make_tensor_value_info(self.condition, TensorProto.BOOL, [])]
        inputs += [helper.make_tensor_value_info(name, elem, None) for name, elem in self.carried]
        outputs = [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, [])]
        outputs += [helper.make_tensor_value_info(r, elem, None) for r, (_, elem) in zip(results, self.carried)]
        outputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, None) for s in scanned]
        body = helper.make_graph(self.nodes, self.prefix.strip("/") or "body", inputs, outputs)
        trip_count = trips if isinstance(trips, str) else outer.const(np.asarray(trips, dtype=np.int64), "trips")
        keep_going = outer.const(np.asarray(True), "true")
        found = outer.op("Loop", [trip_count, keep_going] + initial, outputs=len(initial) + len(scanned), body=body)
        found = found if isinstance(found, list) else [found]
        finals, stacked = found[:len(initial)], found[len(initial):]
        return (finals[:-1] if idle else finals) + stacked


class Schedule:
    """Every (image, item) pair of the batch fed (``items`` per image: IG's path points, Score-CAM's
    channels), image-major, in passes of at most ``most`` pairs: the trip count and the pass size
    (the pairs spread evenly over the passes) are computed in the graph from the batch, so a batch
    of 1 and one of 8 both run passes of cnnlens.explain's size. Ops of opset 9 only."""

    def __init__(self, e: Emitter, images: str, items: int, most: int):
        self.items, self.most = int(items), max(1, int(most))
        count = e.slice(e.shape(images), [0], [1], [0])  # (1,): the batch
        self.count = count
        self.total = e.mul(count, e.ints([self.items]))
        passes = e.op("Div", [e.op("Add", [self.total, e.ints([self.most - 1])]), e.ints([self.most])])
        self.per_pass = e.op("Div", [e.op("Add", [self.total, e.op("Sub", [passes, e.ints([1])])]), passes])
        self.trips = e.op("Reshape", [passes, e.ints([])])
        self.last = e.op("Sub", [self.total, e.ints([1])])

    def pairs(self, body: Body) -> Tuple[str, str, str]:
        """In ``body``: (image, item, live) for this pass's pairs, (P,) each: int64 indices, and
        float 1 / 0 (0 for the padding that evens out the last pass; its index repeats the last pair)."""
        b = body.e
        slots = b.const(np.arange(self.most, dtype=np.int64), "pass_slots")
        first = b.op("Compress", [slots, b.op("Less", [slots, self.per_pass])], axis=0)
        index = b.op("Add", [b.mul(body.iteration, self.per_pass), first])
        live = b.op("Less", [index, self.total])
        index = b.op("Where", [live, index, self.last])
        image = b.op("Div", [index, b.ints([self.items])])
        item = b.op("Sub", [index, b.mul(image, b.ints([self.items]))])
        return image, item, b.op("Cast", [live], to=TensorProto.FLOAT)

    def scatter(self, b: Emitter, rows: str, image: str, weight: str) -> str:
        """(N, F): each pair's row of ``rows`` (P, F) times ``weight`` (P,), added up per image
        (a one-hot product: exact, and opset 9)."""
        hot = b.op("OneHot", [image, self.count, b.const(np.asarray([0.0, 1.0], dtype=np.float32), "one_hot")])
        owners = b.op("Transpose", [b.mul(hot, b.unsqueeze(weight, [1]))], perm=[1, 0])  # (N, P)
        return b.op("MatMul", [owners, rows])
