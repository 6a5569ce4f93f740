"""Image layouts: models whose input is (N, H, W, C) (TensorFlow / Keras exports through tf2onnx,
a module that permutes its input first) next to the usual (N, C, H, W).

cnnlens keeps one convention: images go in as (N, C, H, W) and maps come out so. For an NHWC
model the backend transposes at its boundary, and reports every 4-D tensor that is still laid
out NHWC inside the graph (before the model's own transpose) as NCHW too. A layout is written as
the permutation that takes an NCHW tensor to the tensor as stored: NCHW ``(0, 1, 2, 3)``, NHWC
``(0, 2, 3, 1)``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from ...core.errors import ModelError
from .graph import Graph, attribute

NCHW: Tuple[int, ...] = (0, 1, 2, 3)
NHWC: Tuple[int, ...] = (0, 2, 3, 1)
LAYOUTS = {"NCHW": NCHW, "NHWC": NHWC}

#: Ops that read axis 1 as channels: their input is NCHW and so is their output.
_CHANNELS_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                   "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN"}
#: Element-wise ops: the output is laid out like the input(s).
_ELEMENTWISE = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
                "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Identity", "Dropout", "Cast",
                "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Max", "Min",
                "Sum", "Mean", "Where"}


def _consumers(graph: Graph, tensor: str):
    return [n for n in graph.nodes if tensor in n.input]


def _guess_from_graph(graph: Graph) -> Optional[Tuple[int, ...]]:
    """What the first ops to use the input say: a Transpose (0, 3, 1, 2) means NHWC, a channels-first
    op (Conv, pooling...) NCHW. Element-wise preprocessing (scaling, mean subtraction) is looked
    through."""
    seen, votes = set(), set()
    frontier = [graph.input.name]
    while frontier and len(seen) < 64:
        tensor = frontier.pop()
        for node in _consumers(graph, tensor):
            key = id(node)
            if key in seen:
                continue
            seen.add(key)
            if node.op_type == "Transpose":
                perm = tuple(attribute(node, "perm", ()) or ())
                if perm == (0, 3, 1, 2):
                    votes.add(NHWC)
                elif perm == NCHW:
                    frontier.append(node.output[0])
            elif node.op_type in _CHANNELS_FIRST:
                votes.add(NCHW)
            elif node.op_type in _ELEMENTWISE:
                frontier.extend(o for o in node.output if o)
    return votes.pop() if len(votes) == 1 else None


def input_layout(graph: Graph, shape: Sequence, requested: str = "auto") -> Tuple[int, ...]:
    """The input's layout: ``requested`` ("NCHW" / "NHWC"), or with "auto" what the graph says,
    else the shape (a last axis of 1, 3 or 4 and an axis 1 that is none of those: NHWC)."""
    if not isinstance(requested, str) or requested.upper() not in ("AUTO", "NCHW", "NHWC"):
        raise ModelError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {requested!r}")
    requested = requested.upper()
    if requested != "AUTO":
        if len(shape) != 4:
            raise ModelError(f"layout={requested!r} needs a 4-D image input; this model's input has shape {tuple(shape)}")
        return LAYOUTS[requested]
    if len(shape) != 4:
        return NCHW
    guess = _guess_from_graph(graph)
    if guess is not None:
        return guess
    last, second = shape[3], shape[1]
    if isinstance(last, int) and last in (1, 3, 4) and not (isinstance(second, int) and second in (1, 3, 4)):
        return NHWC
    return NCHW


def name(layout: Tuple[int, ...]) -> str:
    return "NHWC" if layout == NHWC else "NCHW"


def tensor_layouts(graph: Graph, layout: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
    """The 4-D tensors of an NHWC model that are stored NHWC (followed from the input through
    transposes and element-wise ops); every other tensor is taken as stored."""
    if layout == NCHW:
        return {}
    known: Dict[str, Tuple[int, ...]] = {graph.input.name: layout}
    for node in graph.nodes:
        inputs = [known[i] for i in node.input if i in known]
        if not inputs:
            continue
        if node.op_type == "Transpose":
            perm = tuple(attribute(node, "perm", ()) or ())
            if len(perm) == 4 and node.input[0] in known:
                known[node.output[0]] = tuple(known[node.input[0]][i] for i in perm)
        elif node.op_type in _CHANNELS_FIRST:
            known[node.output[0]] = NCHW
        elif node.op_type in _ELEMENTWISE and len(set(inputs)) == 1:
            known[node.output[0]] = inputs[0]
    return {t: p for t, p in known.items() if p == NHWC}


def to_model(shape_nchw: Sequence, layout: Tuple[int, ...]) -> Tuple:
    """An NCHW shape in the model's own layout."""
    return tuple(shape_nchw[i] for i in layout) if len(shape_nchw) == 4 else tuple(shape_nchw)


def to_nchw(shape: Sequence, layout: Tuple[int, ...]) -> Tuple:
    """A shape stored in ``layout``, as NCHW."""
    if len(shape) != 4:
        return tuple(shape)
    inverse = [layout.index(i) for i in range(4)]
    return tuple(shape[i] for i in inverse)


def nchw_axes(layout: Tuple[int, ...]) -> Tuple[int, ...]:
    """The transpose that takes an array stored in ``layout`` to NCHW."""
    return tuple(layout.index(i) for i in range(4))
