"""Each ONNX head of the explainer against its NumPy twin in cnnlens.core (the method is described once: the
heads must compute what the core computes), at opset 9 and at the current opset, on random values, zeros,
constant maps and layer axes."""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from cnnlens.backends.onnx.autodiff import Emitter
from cnnlens.backends.onnx.explainer import heads
from cnnlens.core import cam, scaling
from cnnlens.core.resize import resize_bilinear

OPSETS = (9, 13, 18)


def run_head(opset: int, build: Callable[..., str], inputs: Dict[str, np.ndarray],
             ints: Sequence[str] = ()) -> np.ndarray:
    """Run ``build(emitter, *input names)`` as a one-output ONNX model on ``inputs``."""
    e = Emitter(opset, set(inputs), "head/")
    out = build(e, *inputs)
    nodes = list(e.nodes) + [helper.make_node("Identity", [out], ["out"])]
    values = [helper.make_tensor_value_info(k, TensorProto.INT64 if k in ints else TensorProto.FLOAT, None)
              for k in inputs]
    graph = helper.make_graph(nodes, "head", values, [helper.make_empty_tensor_value_info("out")],
                              initializer=e.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def close(got: np.ndarray, want: np.ndarray, tol: float = 2e-6) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1e-30)
    assert float(np.abs(got - want).max()) / scale <= tol


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _maps(rng, *shape, zeros: bool = True) -> np.ndarray:
    values = rng.standard_normal(shape).astype(np.float32)
    if zeros:
        values[..., 0, :] = 0  # a row of exact zeros (Grad-CAM++ takes 0 where the gradient is 0)
    return values


@pytest.mark.parametrize("opset", OPSETS)
def test_gradient_cams_match_the_core(opset, rng):
    a = np.maximum(_maps(rng, 3, 6, 5, 4), 0)
    a[1, 2] = 0  # a dead channel
    g = _maps(rng, 3, 6, 5, 4) * 1e-3
    for name, twin in cam.GRADIENT_CAMS.items():
        close(run_head(opset, heads.GRADIENT_CAMS[name], {"a": a, "g": g}), twin(a, g))
    close(run_head(opset, heads.gradcam_weights, {"g": g}), cam.gradcam_weights(g))
    close(run_head(opset, heads.gradcampp_weights, {"a": a, "g": g}), cam.gradcampp_weights(a, g))
    close(run_head(opset, heads.xgradcam_weights, {"a": a, "g": g}), cam.xgradcam_weights(a, g))
    w = rng.standard_normal((3, 6)).astype(np.float32)
    close(run_head(opset, heads.weighted_sum, {"a": a, "w": w}), cam.weighted_sum(a, w))
    close(run_head(opset, lambda e, a, w: heads.weighted_sum(e, a, w, relu=False), {"a": a, "w": w}),
          cam.weighted_sum(a, w, relu=False))
    close(run_head(opset, heads.elementwise_cam, {"a": a, "g": g}), cam.elementwise_cam(a, g))


@pytest.mark.parametrize("opset", OPSETS)
def test_xgradcam_is_float64_like_the_core_where_float32_sums_cancel(opset, rng):
    """Activations before a ReLU sum to almost nothing: float32 sums would lose the weights the core computes."""
    a = _maps(rng, 2, 4, 8, 8, zeros=False)
    a -= a.mean(axis=(2, 3), keepdims=True).astype(np.float32)
    g = _maps(rng, 2, 4, 8, 8, zeros=False)
    close(run_head(opset, heads.xgradcam_weights, {"a": a, "g": g}), cam.xgradcam_weights(a, g), tol=1e-6)


@pytest.mark.parametrize("opset", OPSETS)
def test_cam_and_guided_gradcam_match_the_core(opset, rng):
    a = np.maximum(_maps(rng, 4, 6, 3, 3), 0)
    head = rng.standard_normal((5, 6)).astype(np.float32)
    classes = np.array([0, 4, 2, 4], dtype=np.int64)
    got = run_head(opset, lambda e, a, w, c: heads.cam(e, a, w, c), {"a": a, "w": head, "c": classes}, ints=("c",))
    close(got, cam.cam(a, head, classes))
    guided = _maps(rng, 4, 3, 8, 8)
    one = np.abs(_maps(rng, 4, 8, 8))
    close(run_head(opset, heads.guided_gradcam, {"g": guided, "m": one}), cam.guided_gradcam(guided, one))
    layered = np.abs(_maps(rng, 4, 2, 8, 8))
    got = run_head(opset, lambda e, g, m: heads.guided_gradcam(e, g, m, layered=True), {"g": guided, "m": layered})
    close(got, cam.guided_gradcam(guided, layered))


@pytest.mark.parametrize("opset", OPSETS)
def test_scorecam_masks_and_softmax_match_the_core(opset, rng):
    up = _maps(rng, 2, 5, 16, 12)
    up[0, 3] = 2.5  # a constant channel: its mask is all zeros
    close(run_head(opset, lambda e, m: heads.normalize_masks(e, m, rank=4), {"m": up}), cam.normalize_masks(up))
    scores = (rng.standard_normal((3, 7)) * 30).astype(np.float32)
    close(run_head(opset, lambda e, s: heads.softmax(e, s, axis=1), {"s": scores}), cam.softmax(scores, axis=1))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("sizes", [((7, 7), (224, 224)), ((4, 6), (9, 13)), ((16, 16), (5, 3)), ((8, 8), (8, 8))])
def test_resize_matches_the_core(opset, sizes, rng):
    (h, w), out = sizes
    maps = _maps(rng, 2, 3, h, w, zeros=False)
    got = run_head(opset, lambda e, m: heads.resize_bilinear(e, m, (h, w), out), {"m": maps})
    close(got, resize_bilinear(maps, out), tol=1e-6)


@pytest.mark.parametrize("opset", OPSETS)
def test_display_scaling_matches_the_core(opset, rng):
    maps = _maps(rng, 3, 10, 9, zeros=False)
    maps[2] = 1.25  # a constant map becomes zeros
    close(run_head(opset, lambda e, m: heads.normalize_minmax(e, m, [1, 2]), {"m": maps}),
          scaling.normalize_minmax(maps), tol=1e-6)
    layered = _maps(rng, 2, 3, 6, 5, zeros=False)  # per image and layer
    want = scaling.normalize_minmax(layered.reshape(6, 6, 5)).reshape(layered.shape)
    close(run_head(opset, lambda e, m: heads.normalize_minmax(e, m, [2, 3]), {"m": layered}), want, tol=1e-6)
    g = _maps(rng, 2, 3, 6, 5)
    close(run_head(opset, heads.grayscale, {"g": g}), scaling.grayscale(g))


def test_every_head_has_a_twin_in_the_core():
    """The heads module names each head after the core function it mirrors."""
    from cnnlens.core import resize

    for name in ("gradcam_weights", "weighted_sum", "gradcam", "gradcampp_weights", "xgradcam_weights",
                 "elementwise_cam", "cam", "guided_gradcam", "normalize_masks", "softmax"):
        assert callable(getattr(heads, name)) and callable(getattr(cam, name))
    assert set(heads.GRADIENT_CAMS) == set(cam.GRADIENT_CAMS)
    assert callable(resize.resize_bilinear) and callable(scaling.normalize_minmax) and callable(scaling.grayscale)
    assert onnx.defs.has("Loop")


def test_the_registry_and_the_recipes_agree_on_what_exports():
    """The registry says whether a method exports (and why not); the explainer holds one recipe per such method."""
    from cnnlens.backends.onnx.explainer import HEADS
    from cnnlens.core.methods import METHODS, exportable_methods

    assert set(HEADS) == set(exportable_methods())
    for name, method in METHODS.items():
        assert method.exportable == (method.not_exportable is None)
        if not method.exportable:
            assert len(method.not_exportable) > 20, name  # a reason a user can act on
