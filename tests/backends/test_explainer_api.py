"""cnnlens.export_explainer's options, against cnnlens.explain on the same file: the target fed as an input
(classes) or as output weights (a segmenter), the maps an app overlays (normalize), several layers, options
per method; every source cnnlens.load reads (module, .pt2, TorchScript, ONNX); and the requests it refuses,
with a clear error, no file written and the model left as it was."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_exported, to_onnx, to_torchscript
from cnnlens.core import scaling
from cnnlens.core.errors import (InvalidInputError, LayerError, ModelError, TargetError, UnknownMethodError,
                                 UnsupportedError)
from tests.helpers import randomise_batchnorm

TOL = 1e-5


class Net(nn.Module):
    """Conv blocks with BatchNorm, a residual addition, GAP -> linear."""

    def __init__(self, classes: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x) + x)
        return self.fc(x.mean(dim=(2, 3)))


class Segmenter(nn.Module):
    """A tiny FCN: (N, 4, H, W) class scores per pixel."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2),
                                  nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.body(x))


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(float(np.abs(b).max()), 1e-30))


def run(path, **feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    torch.manual_seed(0)
    model = randomise_batchnorm(Net().eval())
    path = str(tmp_path_factory.mktemp("explainer") / "net.onnx")
    to_onnx(model, path, (3, 20, 20), exporter="legacy")
    return model, path


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).standard_normal((4, 3, 20, 20)).astype(np.float32)


def test_target_input_explains_the_classes_fed(net_file, images, tmp_path):
    _, plain = net_file
    methods = ["saliency", "gradcam", "cam", "integrated_gradients", "scorecam", "guided_gradcam"]
    out = str(tmp_path / "x.onnx")
    result = cnnlens.export_explainer(plain, out, methods, target="input", steps=6)
    assert result.inputs == ["target"]
    classes = np.array([5, 0, 3, 3], dtype=np.int64)
    got = run(out, input=images, target=classes)
    for method in methods:
        options = {"steps": 6} if method == "integrated_gradients" else {}
        want = cnnlens.explain(plain, images, method, target=list(classes), **options)
        assert rel(got[f"map_{method}"], want.maps) <= TOL, method
    bad = run(out, input=images, target=np.array([1, 6, -1, 2], dtype=np.int64))  # out of range: NaN, never wrong
    for method in methods:
        maps = bad[f"map_{method}"]
        assert np.isnan(maps[1]).all() and np.isnan(maps[2]).all(), method
        assert np.isfinite(maps[[0, 3]]).all(), method


def test_target_weights_explain_a_segmenter(tmp_path):
    torch.manual_seed(1)
    plain = str(tmp_path / "seg.onnx")
    to_onnx(Segmenter().eval(), plain, (3, 16, 16), exporter="dynamo")
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    weights = np.zeros((3, 4, 16, 16), dtype=np.float32)
    weights[:, 2, 4:9, 5:12] = 1  # class 2 over a region, as cnnlens.targets.segmentation makes it
    weights[1, 1] = 0.5
    methods = ["saliency", "gradcam", "integrated_gradients", "scorecam", "input_x_gradient"]
    out = str(tmp_path / "seg_x.onnx")
    result = cnnlens.export_explainer(plain, out, methods, target="weights", steps=4,
                                      options={"scorecam": {"layer": "body.0"}})
    assert result.inputs == ["target_weights"]
    got = run(out, input=x, target_weights=weights)
    for method in methods:
        options = {"steps": 4} if method == "integrated_gradients" else {}
        want = cnnlens.explain(plain, x, method, target=weights, layer=result.layers[method], **options)
        assert rel(got[f"map_{method}"], want.maps) <= TOL, method
    with pytest.raises(TargetError, match="target='weights'"):  # a class does not say what to explain here
        cnnlens.export_explainer(plain, str(tmp_path / "no.onnx"), "gradcam")
    assert not os.path.exists(tmp_path / "no.onnx")


def test_cam_with_output_weights_weighs_the_head(net_file, images, tmp_path):
    _, plain = net_file
    out = str(tmp_path / "cam.onnx")
    cnnlens.export_explainer(plain, out, "cam", target="weights")
    weights = np.random.default_rng(3).random((4, 6)).astype(np.float32)
    want = cnnlens.explain(plain, images, "cam", target=weights).maps
    assert rel(run(out, input=images, target_weights=weights)["map_cam"], want) <= TOL


def test_normalize_gives_what_an_app_overlays(net_file, images, tmp_path):
    _, plain = net_file
    out = str(tmp_path / "norm.onnx")
    methods = ["gradcam", "saliency", "guided_gradcam", "feature_maps", "cam"]
    result = cnnlens.export_explainer(plain, out, methods, normalize=True, layer=["conv2", "conv3"],
                                      options={"guided_gradcam": {"layer": "conv3"}})
    got = run(out, input=images)
    raw = {m: cnnlens.explain(plain, images, m, layer=result.layers[m]).maps for m in methods}
    assert got["map_gradcam"].shape == (4, 2, 20, 20)
    want = scaling.normalize_minmax(raw["gradcam"].reshape(8, 20, 20)).reshape(4, 2, 20, 20)
    assert rel(got["map_gradcam"], want) <= TOL
    assert rel(got["map_saliency"], scaling.normalize_minmax(scaling.grayscale(raw["saliency"]))) <= TOL
    assert rel(got["map_guided_gradcam"], scaling.normalize_minmax(scaling.grayscale(raw["guided_gradcam"]))) <= TOL
    assert rel(got["map_cam"], scaling.normalize_minmax(raw["cam"])) <= TOL
    features = raw["feature_maps"]  # (N, L, K, h, w): each map scaled on its own
    want = scaling.normalize_minmax(features.reshape(-1, *features.shape[-2:])).reshape(features.shape)
    assert rel(got["map_feature_maps"], want) <= TOL
    for method in methods:
        assert got[f"map_{method}"].min() >= 0 and got[f"map_{method}"].max() <= 1


def test_several_layers_and_per_method_options(net_file, images, tmp_path):
    _, plain = net_file
    out = str(tmp_path / "layers.onnx")
    result = cnnlens.export_explainer(plain, out, "gradcam,gradcampp,guided_gradcam,integrated_gradients,feature_maps",
                                      layer=["conv2", "conv3"], steps=8,
                                      options={"integrated_gradients": {"steps": 3, "rule": "riemann_trapezoid",
                                                                        "baseline": 0.5, "batch_size": 2},
                                               "feature_maps": {"layer": "conv1"}})
    assert result.options["integrated_gradients"]["steps"] == 3
    got = run(out, input=images)
    for method in ("gradcam", "gradcampp", "guided_gradcam"):
        want = cnnlens.explain(plain, images, method, layer=["conv2", "conv3"]).maps
        assert got[f"map_{method}"].shape == want.shape and want.shape[1] == 2
        assert rel(got[f"map_{method}"], want) <= TOL, method
    want = cnnlens.explain(plain, images, "integrated_gradients", steps=3, rule="riemann_trapezoid", baseline=0.5).maps
    assert rel(got["map_integrated_gradients"], want) <= TOL
    assert rel(got["map_feature_maps"], cnnlens.explain(plain, images, "feature_maps", layer="conv1").maps) <= TOL


@pytest.mark.parametrize("pass_size", [None, 1, 3, 7, 64])
def test_looped_methods_cover_every_pair_whatever_the_batch_and_pass(net_file, pass_size, tmp_path):
    """IG's (image, point) and Score-CAM's (image, channel) pairs run in passes of ``batch_size`` pairs across
    images (passes evened out, the last one padded): every batch, pass size and padding gives explain's maps;
    by default a pass is as large as one of cnnlens.explain's batches."""
    _, plain = net_file
    out = str(tmp_path / "looped.onnx")
    given = {} if pass_size is None else {"batch_size": pass_size}
    result = cnnlens.export_explainer(plain, out, "integrated_gradients,scorecam", layer="conv2", steps=5, **given)
    backend = cnnlens.load(plain)
    defaults = {"integrated_gradients": backend.batch_size("backward", (3, 20, 20)),
                "scorecam": backend.batch_size("forward", (3, 20, 20))}
    for method in ("integrated_gradients", "scorecam"):
        assert result.options[method]["batch_size"] == (pass_size or defaults[method])
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    for count in (1, 2, 5):
        x = np.random.default_rng(count).standard_normal((count, 3, 20, 20)).astype(np.float32)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))
        want = cnnlens.explain(backend, x, "integrated_gradients", steps=5).maps
        assert rel(got["map_integrated_gradients"], want) <= TOL, count
        assert rel(got["map_scorecam"], cnnlens.explain(backend, x, "scorecam", layer="conv2").maps) <= TOL, count


def test_loop_copies_of_the_model_keep_names_apart_from_the_loops_own(net_file, images, tmp_path):
    """The dynamo exporter names tensors as the explainer's emitter does ("add_171"): a model whose
    tensors are called add_1 ... add_120 (a chain of + 0 after the first convolution) once gave a Loop
    body two tensors of one name. The copies now reserve their names."""
    _, plain = net_file
    model = onnx.load(plain)
    nodes = list(model.graph.node)
    first = next(i for i, n in enumerate(nodes) if n.op_type == "Conv")
    source = nodes[first].output[0]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((), np.float32), "zero_scalar"))
    chain, previous = [], source
    for k in range(1, 121):
        chain.append(onnx.helper.make_node("Add", [previous, "zero_scalar"], [f"add_{k}"], name=f"chain_{k}"))
        previous = f"add_{k}"
    for node in nodes[first + 1:]:
        node.input[:] = [previous if name == source else name for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(nodes[:first + 1] + chain + nodes[first + 1:])
    renamed, out = str(tmp_path / "named.onnx"), str(tmp_path / "looped.onnx")
    onnx.save(model, renamed)
    cnnlens.export_explainer(renamed, out, "integrated_gradients,scorecam", layer="conv2", steps=3)
    got = run(out, input=images)
    backend = cnnlens.load(renamed)
    want = cnnlens.explain(backend, images, "integrated_gradients", steps=3).maps
    assert rel(got["map_integrated_gradients"], want) <= TOL
    assert rel(got["map_scorecam"], cnnlens.explain(backend, images, "scorecam", layer="conv2").maps) <= TOL


@pytest.mark.parametrize("kind", ["module", "pt2", "torchscript"])
def test_every_torch_source_is_exported_first(net_file, images, tmp_path, kind):
    model, _ = net_file
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = {"module": lambda: model,
              "pt2": lambda: to_exported(model, str(tmp_path / "m.pt2"), (3, 20, 20)),
              "torchscript": lambda: to_torchscript(model, str(tmp_path / "m.pt"), (3, 20, 20))}[kind]()
    out = str(tmp_path / "x.onnx")
    result = cnnlens.export_explainer(source, out, ["gradcam", "saliency"], input_shape=(3, 20, 20), layer="conv3")
    got = run(out, input=images)
    for method in ("gradcam", "saliency"):  # the module's own maps, to the cross-backend tolerance
        want = cnnlens.explain(model, images, method, layer="conv3" if method == "gradcam" else None).maps
        assert rel(got[f"map_{method}"], want) <= 1e-4, (kind, method)
    assert result.input_shape[1:] == (3, 20, 20)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_refusals_are_clear_and_write_nothing(net_file, tmp_path):
    _, plain = net_file
    out = str(tmp_path / "never.onnx")
    before = onnx.load(plain).SerializeToString()
    refused = [
        (dict(methods="smoothgrad"), UnsupportedError, "fresh noise.*Methods that export: saliency"),
        (dict(methods="gradcam,eigencam"), UnsupportedError, "eigendecomposition"),
        (dict(methods="occlusion"), UnsupportedError, "once per window"),
        (dict(methods="rise"), UnsupportedError, "random masks"),
        (dict(methods="ablationcam"), UnsupportedError, "once per channel"),
        (dict(methods="gradcm"), UnknownMethodError, "Did you mean 'gradcam'"),
        (dict(methods="gradcam", steps=4), InvalidInputError, "option 'steps' does not apply to gradcam: it is an option of integrated_gradients"),
        (dict(methods="gradcam", options={"saliency": {}}), InvalidInputError, "not among the exported"),
        (dict(methods="saliency", options={"saliency": {"layer": "conv1"}}), LayerError, "takes no layer"),
        (dict(methods="scorecam", layer=["conv1", "conv2"]), LayerError, "one layer at a time"),
        (dict(methods="gradcam", layer="fc"), LayerError, "not a \\(N, K, h, w\\) map"),
        (dict(methods="gradcam", layer="conv9"), LayerError, "unknown layer"),
        (dict(methods="integrated_gradients", steps=1), InvalidInputError, "at least 2"),
        (dict(methods="gradcam", target="class"), InvalidInputError, "target must be"),
        (dict(methods="gradcam", normalize="yes"), InvalidInputError, "normalize must be"),
        (dict(methods="gradcam", input_shape=(3, 32, 32)), InvalidInputError, "does not fit"),
    ]
    for kwargs, error, message in refused:
        kwargs = dict(kwargs)
        with pytest.raises(error, match=message):
            cnnlens.export_explainer(plain, out, kwargs.pop("methods"), **kwargs)
        assert not os.path.exists(out)
    assert onnx.load(plain).SerializeToString() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".cnnlens-")] == []


def test_an_open_image_size_must_be_given(tmp_path):
    torch.manual_seed(0)
    plain = str(tmp_path / "open.onnx")
    model = Net().eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 20, 20),), plain, dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}})
    with pytest.raises(InvalidInputError, match="input size is open.*input_shape"):
        cnnlens.export_explainer(plain, str(tmp_path / "x.onnx"), "gradcam")
    out = str(tmp_path / "x.onnx")
    result = cnnlens.export_explainer(plain, out, "gradcam", input_shape=(3, 24, 28))
    assert result.input_shape == ("n", 3, 24, 28)  # the size the maps are built for is declared
    x = np.random.default_rng(0).standard_normal((2, 3, 24, 28)).astype(np.float32)
    assert rel(run(out, input=x)["map_gradcam"], cnnlens.explain(plain, x, "gradcam").maps) <= TOL
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # another size is refused by the runtime
        run(out, input=np.zeros((1, 3, 20, 20), np.float32))


def test_a_model_without_a_cam_head_is_refused_for_cam(tmp_path):
    plain = str(tmp_path / "seg.onnx")
    to_onnx(Segmenter().eval(), plain, (3, 16, 16), exporter="legacy")
    with pytest.raises((ModelError, TargetError)):
        cnnlens.export_explainer(plain, str(tmp_path / "x.onnx"), "cam", target="weights")
    assert not os.path.exists(tmp_path / "x.onnx")


def test_an_onnx_only_install_exports_explainers(net_file, images, tmp_path):
    """With torch absent (an ONNX-only install), an .onnx file still becomes an explainer."""
    import subprocess
    import sys
    import textwrap

    _, plain = net_file
    out = str(tmp_path / "x.onnx")
    script = textwrap.dedent(f"""
        import sys; sys.modules['torch'] = None
        import cnnlens
        cnnlens.export_explainer({plain!r}, {out!r}, "gradcam,integrated_gradients", steps=4)
        assert 'torch' not in sys.modules or sys.modules['torch'] is None
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = run(out, input=images)
    assert rel(got["map_gradcam"], cnnlens.explain(plain, images, "gradcam").maps) <= TOL
    assert rel(got["map_integrated_gradients"],
               cnnlens.explain(plain, images, "integrated_gradients", steps=4).maps) <= TOL
