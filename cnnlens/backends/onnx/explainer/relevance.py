"""LRP and DeepLIFT in the explainer file: the relevance rules' backward chain (the gradient
model's, ``autodiff.relevance``) from the same forward pass. DeepLIFT reads its baseline's
activations from a copy of the model's forward nodes applied to the baseline, a constant: ONNX
Runtime folds that copy into constants when the session starts, so a run costs no second pass and
the file holds no second set of weights."""

from __future__ import annotations

from typing import Dict, List, Set

import numpy as np
from onnx import helper

from ....core.errors import UnsupportedError
from ....core.methods.relevance import lrp_rules
from ..autodiff import DEEPLIFT, reference_input, relevance_scores, relevance_seed, rules_chain
from ..graph import node_name
from .context import Build, MethodRequest
from .integrated import _baseline


def relevance(build: Build, request: MethodRequest) -> str:
    """(N, C, H, W): LRP's relevance of the input, or DeepLIFT's ``(x - x') * multipliers``."""
    e, view = build.e, build.view
    options = request.options
    scores = relevance_scores(view.graph, view.output_name)
    if request.name == "lrp":
        rules = lrp_rules(str(options["composite"]), float(options["epsilon"]),  # type: ignore[arg-type]
                          float(options["gamma"]), options["low"], options["high"])  # type: ignore[arg-type]
        seed = relevance_seed(e, build.seed, scores, view.types.shapes)
    else:
        rules, seed = DEEPLIFT, build.seed
    found, chain = rules_chain(e, view.graph, scores, seed, rules, [build.x], view.types.shapes, view.types.dtypes,
                               view.probe)
    gradient = build.like(found[build.x], build.x)
    if request.name == "lrp":
        return gradient
    assert chain is not None  # a relevance rule set makes one
    reference = _baseline(build, options["baseline"])
    _reference_pass(build, reference, chain.references)
    nchw = reference if reference.ndim < 3 or view.layout == (0, 1, 2, 3) else \
        reference.transpose([view.layout.index(axis) - 1 for axis in (1, 2, 3)])
    return e.mul(e.op("Sub", [build.nchw(build.x), e.const(np.ascontiguousarray(nchw), "dl_baseline")]), gradient)


def _reference_pass(build: Build, reference: np.ndarray, tensors: List[str]) -> None:
    """Nodes computing each of ``tensors`` on the baseline image as ``reference_input(tensor)``: a copy of
    the forward nodes they depend on, reading the baseline (one image, the model's layout) instead of
    the input."""
    e, view = build.e, build.view
    graph = view.graph
    image = np.broadcast_to(reference, tuple(view.image)).astype(view.input_dtype)[None]
    renamed: Dict[str, str] = {build.x: e.const(np.ascontiguousarray(image), "dl_baseline_image")}
    needed: Set[str] = set()
    stack = list(tensors)
    while stack:  # the nodes the tensors depend on
        producer = graph.producer.get(stack.pop())
        if producer is not None and node_name(producer) in graph.dynamic and node_name(producer) not in needed:
            needed.add(node_name(producer))
            stack.extend(i for i in producer.input if i)
    wanted = set(tensors)
    for node in graph.nodes:
        if node_name(node) not in needed:
            continue
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise UnsupportedError(f"cannot write DeepLIFT into the explainer: node {node_name(node)!r} "
                                   f"({node.op_type}) holds a subgraph; export the other methods")
        outputs = [reference_input(o) if o in wanted else e.fresh("dl_ref") for o in node.output]
        renamed.update(zip(node.output, outputs))
        copy = helper.make_node(node.op_type, [renamed.get(i, i) for i in node.input], outputs,
                                name=e.fresh("dl_ref_node"), domain=node.domain)
        copy.attribute.extend(node.attribute)
        e.nodes.append(copy)
