"""An ONNX model cut at one tensor: the tensor becomes an input, so the network runs on from a
replaced layer output (Ablation-CAM). What no longer leads to the output is dropped; the image
input stays only when some branch after the cut still reads it."""

from __future__ import annotations

from typing import List, NamedTuple, Set

import numpy as np
import onnx

from .graph import Graph

#: the name of the input that takes the replaced tensor
CUT_INPUT = "cnnlens_cut/replaced"


class CutModel(NamedTuple):
    model: onnx.ModelProto
    needs_image: bool


def cut_at(model: onnx.ModelProto, graph: Graph, output: str, tensor: str, dtype: np.dtype) -> CutModel:
    """``model`` with ``tensor`` (of element type ``dtype``) fed from the input :data:`CUT_INPUT`
    instead of computed."""
    if tensor == output:  # cut at the output itself: the replacement is the output
        identity = onnx.helper.make_node("Identity", [CUT_INPUT], [output], name="cnnlens_cut/identity")
        info = onnx.helper.make_tensor_value_info(CUT_INPUT, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)
        outputs = [o for o in model.graph.output if o.name == output]
        cut = onnx.helper.make_model(onnx.helper.make_graph([identity], "cut_at_output", [info], outputs),
                                     opset_imports=list(model.opset_import), ir_version=model.ir_version)
        return CutModel(cut, False)
    nodes: List[onnx.NodeProto] = []
    for node in graph.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            if name == tensor:
                copy.input[i] = CUT_INPUT
        nodes.append(copy)
    producer = {out: n for n in nodes for out in n.output if out}
    needed: Set[str] = set()
    stack = [output]
    seen_nodes: Set[int] = set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in seen_nodes:
            seen_nodes.add(id(node))
            stack.extend(i for i in node.input if i)
    kept = [n for n in nodes if id(n) in seen_nodes]
    image = graph.input.name
    needs_image = image in needed
    source = model.graph
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = ([graph.input] if needs_image else []) + [
        onnx.helper.make_tensor_value_info(CUT_INPUT, elem_type, None)]
    initializers = [t for t in source.initializer if t.name in needed]
    outputs = [o for o in source.output if o.name == output]
    new_graph = onnx.helper.make_graph(kept, source.name + "_cut", inputs, outputs, initializers)
    cut = onnx.helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    cut.functions.extend(model.functions)
    return CutModel(cut, needs_image)
