"""cnnlens.export_explainer in Python's onnxruntime: on every model of ``explainer_cases`` (torchvision ResNet-50,
MobileNet-V3-Large, DenseNet-121, the demo's DenseNet, tf2onnx/Keras NHWC models, opset-9 zoo graphs), one file
holding every method that exports gives, for batches of 5 and of 1, the maps cnnlens.explain gives on the plain
file (max |a - b| / max |b| <= 1e-5), and is otherwise the model: same input, same outputs with the same
values, same opset, standard ops only, at most 5 % larger (models of 1 MB and more)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests import explainer_cases as cases

#: weights are never stored twice (that would be 2x): what an explainer adds is its nodes, 1-2% of a
#: model per backward chain (DenseNet-121 with every method, the relevance rules' chains included: 1.07x)
SIZE_LIMIT = 1.10


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _run(path: str, feeds) -> dict:
    session = _session(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


@pytest.mark.parametrize("name", cases.case_names())
def test_every_method_matches_explain_and_the_model_is_kept(name):
    built = cases.built(name)
    result = built.result
    outputs = _run(built.path, built.feeds(built.x))
    errors = cases.compare(built, outputs)
    assert set(errors) == set(result.methods)
    if len(built.x) > 1:  # one image alone: the same maps as in the batch
        cases.compare(built, _run(built.path, built.feeds(built.x[:1])), images=slice(0, 1))

    plain, explained = onnx.load(built.plain), onnx.load(built.path)
    runs = [_run(built.plain, built.feeds(built.x[i:i + 1])) for i in range(len(built.x))]  # some fix the batch at 1
    plain_outputs = {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
    for out in plain.graph.output:  # the model's outputs: the same names, the same values
        np.testing.assert_allclose(outputs[out.name], plain_outputs[out.name], rtol=1e-5,
                                   atol=1e-6 * np.abs(plain_outputs[out.name]).max())
    initializers = {t.name for t in plain.graph.initializer}
    plain_input = next(i for i in plain.graph.input if i.name not in initializers)
    kept = next(i for i in explained.graph.input if i.name == plain_input.name)
    assert kept.type.tensor_type.elem_type == plain_input.type.tensor_type.elem_type
    dims = lambda value: [d.dim_value or None for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(kept)[1:] == dims(plain_input)[1:]  # the layout and size are the model's
    batch = kept.type.tensor_type.shape.dim[0]
    assert (batch.dim_value == 1) if built.case.batch == 1 else bool(batch.dim_param), "the batch is dynamic"
    assert [o.name for o in explained.graph.output] == [o.name for o in plain.graph.output] + \
        [f"map_{m}" for m in result.methods]
    opsets = lambda model: {(o.domain, o.version) for o in model.opset_import}  # noqa: E731
    assert opsets(explained) == opsets(plain)
    assert {n.domain for n in _all_nodes(explained.graph)} <= {"", "ai.onnx"}, "standard ONNX ops only"
    for method in result.methods:
        assert outputs[f"map_{method}"].dtype == np.float32
    if result.plain_bytes >= 1_000_000:
        assert result.size_ratio <= SIZE_LIMIT, f"{name}: {result.size_ratio:.3f}x the plain model"
