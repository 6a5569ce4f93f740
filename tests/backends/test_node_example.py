"""examples/node: explain.js (ONNX Runtime for Node.js) gives what Python's ONNX Runtime gives, and npy.js
reads and writes the .npy files NumPy does.

The models are explainer-shaped: the image input with a dynamic batch, class scores, float32 map_* outputs,
and an extra ``target`` (int64, one class per image) or ``target_weights`` input that the maps depend on.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from tests.node_tools import NodeExampleError, ensure_npm_packages, require_node, run_node, run_node_example

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

require_node()  # skips (or fails on CI) the whole module


@pytest.fixture(scope="module", autouse=True)
def _npm_packages():
    ensure_npm_packages("node")


C, H, W, K = 3, 8, 8, 5


def explainer_model(path, weights: bool = False):
    """Conv -> Relu -> GAP -> Gemm scores (N, K), ArgMax (N,) int64, and two maps scaled by the score of
    the class asked for: ``target`` (int64 (N,)) picks it by GatherElements, ``target_weights`` (float (N, K))
    weighs all the scores."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((0.5 * rng.standard_normal((4, C, 3, 3))).astype(np.float32), "conv.weight"),
        numpy_helper.from_array((0.1 * rng.standard_normal(4)).astype(np.float32), "conv.bias"),
        numpy_helper.from_array((0.5 * rng.standard_normal((K, 4))).astype(np.float32), "fc.weight"),
        numpy_helper.from_array((0.1 * rng.standard_normal(K)).astype(np.float32), "fc.bias"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["/conv/Conv_output_0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["/conv/Conv_output_0"], ["act"]),
        helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
        helper.make_node("ArgMax", ["logits"], ["predicted"], axis=1, keepdims=0),
    ]
    if weights:
        target_input = helper.make_tensor_value_info("target_weights", TensorProto.FLOAT, ["batch", K])
        nodes += [
            helper.make_node("Mul", ["logits", "target_weights"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axis1"], ["score"], keepdims=1),  # (N, 1)
        ]
    else:
        target_input = helper.make_tensor_value_info("target", TensorProto.INT64, ["batch"])
        nodes += [
            helper.make_node("Unsqueeze", ["target", "axis1"], ["target_col"]),
            helper.make_node("GatherElements", ["logits", "target_col"], ["score"], axis=1),  # (N, 1)
        ]
    nodes += [
        helper.make_node("Unsqueeze", ["score", "axes12"], ["score4"]),  # (N, 1, 1, 1)
        helper.make_node("Mul", ["input", "score4"], ["map_saliency"]),
        helper.make_node("ReduceSum", ["act", "axis1"], ["cam"], keepdims=0),  # (N, H, W)
        helper.make_node("Squeeze", ["score4", "axis1"], ["score3"]),  # (N, 1, 1)
        helper.make_node("Mul", ["cam", "score3"], ["map_gradcam"]),
    ]
    graph = helper.make_graph(
        nodes, "explainer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", C, H, W]), target_input],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", K]),
         helper.make_tensor_value_info("predicted", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("map_gradcam", TensorProto.FLOAT, ["batch", H, W]),
         helper.make_tensor_value_info("map_saliency", TensorProto.FLOAT, ["batch", C, H, W])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def target_model(tmp_path_factory):
    return explainer_model(tmp_path_factory.mktemp("node") / "explainer_target.onnx")


@pytest.fixture(scope="module")
def weights_model(tmp_path_factory):
    return explainer_model(tmp_path_factory.mktemp("node") / "explainer_weights.onnx", weights=True)


def python_outputs(model_path, feeds):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def assert_same(got, want):
    assert list(got) == list(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        scale = float(np.abs(expected).max()) if expected.size else 0.0
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6 * scale, err_msg=name)


@pytest.mark.parametrize("batch", [1, 5])
def test_target_matches_python(target_model, batch):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, C, H, W)).astype(np.float32)
    target = rng.integers(0, K, batch)
    got = run_node_example(target_model, x, target=target)
    assert_same(got, python_outputs(target_model, {"input": x, "target": target.astype(np.int64)}))


def test_one_target_for_every_image_and_float64_input(target_model):
    x = np.random.default_rng(3).standard_normal((5, C, H, W))  # float64: explain.js converts to float32
    got = run_node_example(target_model, x, target=2)
    want = python_outputs(target_model, {"input": x.astype(np.float32), "target": np.full(5, 2, np.int64)})
    assert_same(got, want)


@pytest.mark.parametrize("batch", [1, 5])
def test_target_weights_match_python(weights_model, batch):
    rng = np.random.default_rng(10 + batch)
    x = rng.standard_normal((batch, C, H, W)).astype(np.float32)
    w = rng.random((batch, K)).astype(np.float32)
    got = run_node_example(weights_model, x, target_weights=w)
    assert_same(got, python_outputs(weights_model, {"input": x, "target_weights": w}))


def test_errors_are_one_line(target_model, weights_model):
    x = np.zeros((2, C, H, W), np.float32)
    cases = [
        (target_model, {}, "--target"),  # the model needs a target
        (weights_model, {}, "--target-weights"),
        (weights_model, {"target": 1}, "no 'target' input"),
        (target_model, {"target": [1, 2, 3]}, "3 classes for 2 images"),
    ]
    for model, kwargs, needle in cases:
        with pytest.raises(NodeExampleError) as info:
            run_node_example(model, x, **kwargs)
        message = str(info.value)
        assert needle in message and "\n" not in message and message.startswith("explain.js: ")
    with pytest.raises(NodeExampleError, match=r"wants \[batch, 3, 8, 8\]"):
        run_node_example(target_model, np.zeros((2, C, H + 1, W), np.float32), target=0)


def test_prints_names_shapes_and_top_classes(target_model, tmp_path):
    x = np.random.default_rng(4).standard_normal((2, C, H, W)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_node(["explain.js", target_model, tmp_path / "x.npy", "--target", "1", "--out", tmp_path / "o"])
    assert proc.returncode == 0, proc.stderr
    logits = python_outputs(target_model, {"input": x, "target": np.ones(2, np.int64)})["logits"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert "map_gradcam  float32 [2, 8, 8]" in proc.stdout
    assert "predicted  int64 [2]" in proc.stdout
    for i in range(2):
        c = int(probs[i].argmax())
        assert f"image {i}: class {c}  p={probs[i, c]:.4f}" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(
        ["logits.npy", "predicted.npy", "map_gradcam.npy", "map_saliency.npy"])


# npy.js: read what NumPy writes (format 1.0, 2.0, 3.0) and write what NumPy writes, byte for byte.

ROUND_TRIP = r"""
const fs = require('node:fs');
const path = require('node:path');
const { readNpy, writeNpy } = require('./npy');
const [src, dst] = process.argv.slice(1);
const seen = {};
for (const name of fs.readdirSync(src).sort()) {
  try {
    const array = readNpy(fs.readFileSync(path.join(src, name)));
    seen[name] = { dtype: array.dtype, shape: array.shape };
    fs.writeFileSync(path.join(dst, name), writeNpy(array));
  } catch (err) {
    seen[name] = { error: err.message };
  }
}
console.log(JSON.stringify(seen));
"""

DTYPES = {"<f4": np.float32, "<f8": np.float64, "<i8": np.int64, "<i4": np.int32, "|u1": np.uint8, "|b1": np.bool_}
SHAPES = [(), (0,), (7,), (2, 3, 4), (1, 3, 5, 5)]


def test_npy_round_trip(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for code, dtype in DTYPES.items():
        for shape in SHAPES:
            if dtype == np.bool_:
                a = rng.random(shape) > 0.5
            elif np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                a = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
            else:
                a = rng.standard_normal(shape).astype(dtype)
            for version in [(1, 0), (2, 0), (3, 0)]:
                name = f"{code[1:]}_{'x'.join(map(str, shape)) or 'scalar'}_v{version[0]}.npy"
                with open(src / name, "wb") as f:
                    np.lib.format.write_array(f, a, version=version)
                arrays[name] = a
    # Files it must refuse with a clear message.
    np.save(src / "fortran.npy", np.asfortranarray(np.ones((2, 3), np.float32)))
    np.save(src / "bigendian.npy", np.ones(3, ">f4"))
    np.save(src / "float16.npy", np.ones(3, np.float16))

    proc = run_node(["-e", ROUND_TRIP, src, dst])
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert "Fortran order" in seen.pop("fortran.npy")["error"]
    assert "'>f4'" in seen.pop("bigendian.npy")["error"]
    assert "'<f2'" in seen.pop("float16.npy")["error"]
    for name, a in arrays.items():
        assert seen[name] == {"dtype": a.dtype.str, "shape": list(a.shape)}, name
        back = np.load(dst / name)
        assert back.dtype == a.dtype and back.shape == a.shape, name
        np.testing.assert_array_equal(back, a, err_msg=name)
        if name.endswith("_v1.npy"):  # the writer's header is NumPy's own
            expected = io.BytesIO()
            np.save(expected, a)
            assert (dst / name).read_bytes() == expected.getvalue(), name
