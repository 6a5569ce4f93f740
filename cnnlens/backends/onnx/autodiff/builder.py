"""Reverse-mode differentiation of an ONNX graph into ONNX: one model that computes, in one run,
the scores, the requested activations, and the gradients of ``sum(seed * scores)`` with respect
to the input and to the requested tensors.

The seed (the gradient of the explained score with respect to the scores, (N, K)) comes in as
an extra graph input. Only the nodes between a gradient's source and the scores are
differentiated (Grad-CAM's backward stops at its layer), weights never get a gradient, and
every node written is a standard ONNX op in the model's own opset, so the model runs on any
execution provider. The true layer gradients and a guided / deconvnet input gradient come from
two backward chains over one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import helper

from ....core.backend import RELU_RULE_NAMES
from ....core.relevance import LrpRules
from ..graph import Graph, node_name, value_inputs
from .context import Context, NoRule, Shape
from .relevance import DEEPLIFT, RelevanceChain, RelevanceRules, is_relevance_rules, reference_input
from .emit import Emitter
from .rules import CHECKS, OP_RULES


class UnsupportedOp(Exception):
    """A node on a gradient's path has no backward rule (or one that refuses its attributes)."""

    def __init__(self, op_type: str, node: str, reason: str = ""):
        self.op_type, self.node, self.reason = op_type, node, reason
        what = f"cannot be differentiated: {reason}" if reason else "has no gradient rule"
        super().__init__(f"op {op_type} (node {node!r}) {what}")


@dataclass(frozen=True)
class GradientRequest:
    """What one backward model computes: true gradients at ``layers`` (tensor names), and the
    input gradient under ``rules`` when ``input_grad``: a ReLU rule name, an ``LrpRules`` or
    ``DEEPLIFT`` (relevance rules: no layers). ``seed``: "input" (the gradient with respect to the
    scores comes in as an extra input) or "argmax" (one-hot rows of each image's highest score,
    made in the graph)."""

    layers: Tuple[str, ...] = ()
    input_grad: bool = True
    rules: RelevanceRules = "plain"
    seed: str = "input"

    @property
    def relevance(self) -> bool:
        return is_relevance_rules(self.rules)

    def passes(self, input_name: str) -> List[Tuple[RelevanceRules, Tuple[str, ...]]]:
        """(rules, gradient sources) for each backward chain."""
        if self.rules != "plain" and self.input_grad and self.layers:
            return [("plain", self.layers), (self.rules, (input_name,))]
        sources = self.layers + ((input_name,) if self.input_grad else ())
        return [(self.rules if self.input_grad else "plain", sources)]


@dataclass
class GradientModel:
    """The built model and the names of what it returns."""

    model: onnx.ModelProto
    seed: str                   # the name of the seed input (absent from the model for an "argmax" seed)
    outputs: List[str]          # [scores, activations..., input gradient?, layer gradients...]
    #: tensors whose values on the baseline come in as ``reference_input(tensor)`` (DeepLIFT)
    references: List[str] = field(default_factory=list)
    #: what the relevance rules applied (``Pass.notes``)
    notes: Tuple[str, ...] = ()


#: ops that select rather than compute, and are not differentiable by nature: a model's post-processing
#: (explain the raw output before it)
SELECTIONS = {
    "NonMaxSuppression": "NonMaxSuppression selects boxes and is not differentiable: explain the raw scores "
                         "before the post-processing",
    "RoiAlign": "RoiAlign's boxes come from a selection and are not differentiable: explain the raw scores "
                "before the region heads",
}


def missing_rules(graph: Graph, output: str, nodes: Optional[Sequence[onnx.NodeProto]] = None) -> List[Tuple[onnx.NodeProto, str]]:
    """(node, reason) for each node between the input and ``output`` that cannot be differentiated."""
    path = nodes if nodes is not None else _on_path(graph, _descendants(graph, {graph.input.name}), output)
    problems = []
    for node in path:
        if node.op_type in SELECTIONS and node.domain in ("", "ai.onnx"):
            problems.append((node, SELECTIONS[node.op_type]))
            continue
        if node.op_type not in OP_RULES or node.domain not in ("", "ai.onnx"):
            problems.append((node, "no backward rule for this op"))
            continue
        check = CHECKS.get(node.op_type)
        reason = check(node, graph) if check is not None else None
        if reason:
            problems.append((node, reason))
    return problems


def ancestors(graph: Graph, output: str) -> Set[str]:
    """Names of the nodes the output depends on."""
    seen: Set[str] = set()
    stack = [output]
    while stack:
        node = graph.producer.get(stack.pop())
        if node is None or node_name(node) in seen:
            continue
        seen.add(node_name(node))
        stack.extend(i for i in node.input if i)
    return seen


def _descendants(graph: Graph, sources: Set[str]) -> Set[str]:
    """Tensors computed from the sources' values (the sources included; what only reads their
    shape, through Shape or Size, does not count)."""
    reached = set(sources)
    for node in graph.nodes:
        if any(i in reached for i in value_inputs(node) if i):
            reached.update(o for o in node.output if o)
    return reached


def _on_path(graph: Graph, reached: Set[str], output: str) -> List[onnx.NodeProto]:
    """Nodes between the sources (``reached``: the tensors computed from them) and the output, in
    topological order."""
    above = ancestors(graph, output)
    return [n for n in graph.nodes if node_name(n) in above and any(i in reached for i in value_inputs(n) if i)]


def taken_names(model: onnx.ModelProto) -> Set[str]:
    """Every name the model's graph uses (node outputs and names, inputs, outputs, initializers): the
    names an emitter adding nodes to it must not hand out."""
    graph = model.graph
    taken = {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
    return taken | {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}


def opset_of(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise NoRule("the model imports no default ONNX opset")


def build(model: onnx.ModelProto, graph: Graph, output: str, request: GradientRequest,
          shapes: Dict[str, Shape], dtypes: Dict[str, np.dtype],
          probe: Optional[Callable[[str], Optional[np.ndarray]]] = None) -> GradientModel:
    """The gradient model for ``request`` (``shapes`` / ``dtypes`` from shape inference with the batch
    axis symbolic). ``probe(tensor)``: the value of a tensor computed from the input's shape alone
    (a Slice bound, a Pad amount) when it is the same for every batch size, else None. Raises
    UnsupportedOp naming the first node that cannot be differentiated."""
    if not request.relevance and request.rules not in RELU_RULE_NAMES:
        raise ValueError(f"rules must be one of {RELU_RULE_NAMES}, an LrpRules or {DEEPLIFT!r}, got {request.rules!r}")
    emitter = Emitter(opset_of(model), taken_names(model), "cnnlens_grad/")
    seed_input = emitter.fresh("seed")
    scores = relevance_scores(graph, output) if request.relevance else output
    seed = argmax_rows(emitter, scores, dtypes) if request.seed == "argmax" else seed_input
    if isinstance(request.rules, LrpRules):
        seed = relevance_seed(emitter, seed, scores, shapes)
    input_name = graph.input.name
    gradients: Dict[str, str] = {}
    chain: Optional[RelevanceChain] = None
    for rules, sources in request.passes(input_name):
        found, made = rules_chain(emitter, graph, scores, seed, rules, sources, shapes, dtypes, probe)
        chain = made or chain
        for source in sources:
            gradients.setdefault(source, found[source])
    outputs = [scores]
    for layer in request.layers:  # an activation that is already an output gets a name of its own
        outputs.append(layer if layer not in outputs else emitter.op("Identity", [layer]))
    wanted = ([input_name] if request.input_grad else []) + list(request.layers)
    for source in wanted:  # each gradient under its own name (two sources may share a tensor)
        outputs.append(emitter.op("Identity", [gradients[source]]))
    fed = seed_input if request.seed != "argmax" else None
    references = chain.references if chain is not None else []
    notes = chain.notes() if chain is not None else ()
    if scores != output:
        notes = ("the model's final Softmax was skipped: the explained scores are its input, the logits",) + notes
    built = _assemble(model, emitter, fed, output, outputs, dtypes, [reference_input(t) for t in references])
    return GradientModel(built, seed_input, outputs, references, notes)


def relevance_scores(graph: Graph, output: str) -> str:
    """The scores relevance rules explain: the output, or the input of a final Softmax (the logits)."""
    producer = graph.producer.get(output)
    return producer.input[0] if producer is not None and producer.op_type == "Softmax" else output


def relevance_seed(emitter: Emitter, seed: str, scores: str, shapes: Dict[str, Shape]) -> str:
    """LRP's start: the seed rows times the scores, so relevance starts as the explained score itself."""
    return emitter.mul(seed if len(shapes.get(scores) or ()) == 2 else emitter.reshape_like(seed, scores), scores)


def argmax_rows(emitter: Emitter, output: str, dtypes: Dict[str, np.dtype]) -> str:
    """One-hot rows of each image's first highest score, in the output's shape ((N, K), or (N, K, 1, 1)
    for a 1x1-convolution head)."""
    return class_rows(emitter, predicted_classes(emitter, output), output, dtypes)


def predicted_classes(emitter: Emitter, output: str) -> str:
    """Each image's first highest score's index, int64 (N,), over the output flattened per image."""
    return emitter.op("ArgMax", [emitter.op("Reshape", [output, emitter.ints([0, -1])])], axis=1, keepdims=0)


def class_rows(emitter: Emitter, classes: str, output: str, dtypes: Dict[str, np.dtype]) -> str:
    """One-hot rows of the int64 ``classes`` (N,), in the output's shape: the gradient of the
    explained scores with respect to the outputs."""
    flat = emitter.op("Reshape", [output, emitter.ints([0, -1])])
    count = emitter.op("Gather", [emitter.shape(flat), emitter.const(np.asarray(1, dtype=np.int64), "axis1")])
    on_off = emitter.const(np.array([0, 1], dtype=dtypes.get(output, np.dtype(np.float32))), "on_off")
    rows = emitter.op("OneHot", [classes, count, on_off], axis=-1)
    return emitter.op("Reshape", [rows, emitter.shape(output)])


def backward_chain(emitter: Emitter, graph: Graph, output: str, seed: str, relu: str, sources: Sequence[str],
                   shapes: Dict[str, Shape], dtypes: Dict[str, np.dtype],
                   probe: Optional[Callable[[str], Optional[np.ndarray]]]) -> Dict[str, str]:
    """One backward chain from ``seed`` (the gradient with respect to ``output``) under the ReLU rule
    ``relu``: the gradient tensor of each source (nodes appended to ``emitter``). Raises
    UnsupportedOp naming the first node on the way that has no rule."""
    return rules_chain(emitter, graph, output, seed, relu, sources, shapes, dtypes, probe)[0]


def rules_chain(emitter: Emitter, graph: Graph, output: str, seed: str, rules: RelevanceRules, sources: Sequence[str],
           shapes: Dict[str, Shape], dtypes: Dict[str, np.dtype],
           probe: Optional[Callable[[str], Optional[np.ndarray]]]) -> Tuple[Dict[str, str], Optional[RelevanceChain]]:
    """``backward_chain`` under any rules: (the sources' gradients, the relevance rules' chain if any)."""
    reached = _descendants(graph, set(sources))
    path = _on_path(graph, reached, output)
    consumed = {i for n in path for i in n.input if i}
    needed = (reached & consumed) | {output} | set(sources)
    relevance = is_relevance_rules(rules)
    ctx = Context(emitter, graph, shapes, dtypes, "plain" if relevance else str(rules), needed, probe)
    chain = RelevanceChain(ctx, rules, path) if relevance else None
    parts: Dict[str, List[str]] = {}
    totals: Dict[str, str] = {}

    def gradient(tensor: str) -> Optional[str]:
        if tensor not in totals and parts.get(tensor):
            totals[tensor] = emitter.total(parts[tensor])
        return totals.get(tensor)

    scores_shape = shapes.get(output)
    parts[output] = [seed if scores_shape is not None and len(scores_shape) == 2 else emitter.reshape_like(seed, output)]
    for node in reversed(path):
        grads = [gradient(o) if o else None for o in node.output]
        if all(g is None for g in grads):
            continue
        backward = OP_RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if backward is None:
            raise UnsupportedOp(node.op_type, node_name(node))
        check = CHECKS.get(node.op_type)
        reason = check(node, graph) if check is not None else None
        if reason:
            raise UnsupportedOp(node.op_type, node_name(node), reason)
        try:
            result = chain.backward(node, grads) if chain is not None else None
            if result is None:
                result = backward(ctx, node, grads)
        except NoRule as error:
            raise UnsupportedOp(node.op_type, node_name(node), str(error)) from None
        for tensor, grad in (result.items() if isinstance(result, dict) else zip(node.input, result)):
            if grad is not None and ctx.needs(tensor):
                parts.setdefault(tensor, []).append(grad)
    found = {}
    for source in sources:
        grad = gradient(source)
        found[source] = grad if grad is not None else emitter.zeros_like(source, dtypes.get(source, np.dtype(np.float32)))
    return found, chain


def _assemble(model: onnx.ModelProto, emitter: Emitter, seed: Optional[str], output: str, outputs: List[str],
              dtypes: Dict[str, np.dtype], extra_inputs: Sequence[str] = ()) -> onnx.ModelProto:
    built = onnx.ModelProto()
    built.CopyFrom(model)
    graph = built.graph
    graph.node.extend(emitter.nodes)
    graph.initializer.extend(emitter.initializers)
    scores_type = helper.np_dtype_to_tensor_dtype(dtypes.get(output, np.dtype(np.float32)))
    if seed is not None:
        graph.input.append(helper.make_tensor_value_info(seed, scores_type, None))
    for name in extra_inputs:
        graph.input.append(helper.make_tensor_value_info(name, scores_type, None))
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(name) for name in outputs)
    return built
