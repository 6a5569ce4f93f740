"""The ONNX Runtime backend against the torch module it was exported from, and against hand computations.

Every value is checked against something independent of cnnlens: the torch module itself (forward
hooks, brute-force occlusion, a plain re-implementation of Score-CAM / CAM), or a hand-built ONNX
graph whose computation is re-done in torch. Both exporters (legacy TorchScript-based and dynamo)
are covered where they apply.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_onnx
from cnnlens.backends.onnx import OnnxBackend
from tests.helpers import assert_close, images, randomise_batchnorm
from tests.onnx_models import hand_model, hand_torch, hand_weights

EXPORTERS = ["legacy", "dynamo"]
TOL = 1e-4
ROOT = pathlib.Path(cnnlens.__file__).resolve().parent.parent


# ---------------------------------------------------------------- models


class Small(nn.Module):
    """A small CNN with a GAP -> linear head; module names with _N suffixes, as users write them."""

    def __init__(self):
        super().__init__()
        self.conv_1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_1 = nn.BatchNorm2d(8)
        self.relu_1 = nn.ReLU()
        self.pool_1 = nn.MaxPool2d(2)
        self.conv_2 = nn.Conv2d(8, 12, 3, padding=1)
        self.relu_2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.relu_2(self.conv_2(self.pool_1(self.relu_1(self.bn_1(self.conv_1(x))))))
        return self.fc(self.drop(torch.flatten(self.gap(x), 1)))


class HardBatch1(nn.Module):
    """A forward that hard-codes batch 1 (``reshape(1, -1)``): its export cannot be made batch-dynamic."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.gap(self.relu(self.conv(x))).reshape(1, -1))


def _seeded(factory, seed):
    torch.manual_seed(seed)
    return randomise_batchnorm(factory(), seed=seed).eval()


@pytest.fixture(scope="module")
def resnet():
    return _seeded(lambda: torchvision.models.resnet18(num_classes=10), 0)


@pytest.fixture(scope="module")
def densenet():
    return _seeded(lambda: torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                                       num_classes=3), 1)


@pytest.fixture(scope="module")
def small():
    return _seeded(Small, 2)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def exported(onnx_dir, resnet, densenet, small):
    """Paths of every model exported once with each exporter: {(model, exporter): path}."""
    paths = {}
    for key, model, shape in (("resnet", resnet, (3, 64, 64)), ("densenet", densenet, (3, 64, 64)),
                              ("small", small, (3, 32, 32))):
        for exporter in EXPORTERS:
            paths[key, exporter] = str(to_onnx(model, str(onnx_dir / f"{key}_{exporter}.onnx"),
                                               input_shape=shape, exporter=exporter))
    return paths


@pytest.fixture(scope="module")
def backends(exported):
    return {key: cnnlens.load(path) for key, path in exported.items()}


@pytest.fixture(scope="module")
def x64():
    return images(2, 3, 64, 64, seed=10)


@pytest.fixture(scope="module")
def x32():
    return images(2, 3, 32, 32, seed=11)


# ---------------------------------------------------------------- independent references


def torch_scores(model, x, chunk=64):
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(x[i:i + chunk]))).numpy()
                               for i in range(0, len(x), chunk)])


def torch_activations(model, x, names):
    """Each named module's output (the last call's, for a module called twice) from forward hooks."""
    modules = dict(model.named_modules())
    seen = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone()))
               for n in names]
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()
    finally:
        for h in handles:
            h.remove()
    return logits, {n: seen[n].numpy() for n in names}


def starts(size, window, stride):
    s = list(range(0, size - window + 1, stride))
    if s[-1] != size - window:
        s.append(size - window)
    return s


def occlusion_drops(score_fn, x, window, stride, baseline):
    """Brute force: every window position occluded on all channels; drops of all classes (N, P, K)."""
    n, c, h, w = x.shape
    boxes = [(r, q) for r in starts(h, window, stride) for q in starts(w, window, stride)]
    occluded = np.repeat(x[:, None], len(boxes), axis=1)
    for p, (r, q) in enumerate(boxes):
        occluded[:, p, :, r:r + window, q:q + window] = baseline
    clean = score_fn(x)
    scores = score_fn(occluded.reshape(-1, c, h, w)).reshape(n, len(boxes), -1)
    return boxes, clean[:, None, :].astype(np.float64) - scores, clean


def occlusion_map(boxes, drops, classes, shape, window):
    n = len(classes)
    sums = np.zeros((n,) + shape)
    counts = np.zeros(shape)
    for p, (r, q) in enumerate(boxes):
        sums[:, r:r + window, q:q + window] += drops[np.arange(n), p, classes][:, None, None]
        counts[r:r + window, q:q + window] += 1
    return sums / counts


def classes_for(target, clean):
    if target is None:
        return clean.argmax(1)
    return np.broadcast_to(np.asarray(target), (len(clean),)).astype(int)


def upsample(a, size):
    """torch's bilinear resize, align_corners=False, of (N, K, h, w) or (N, h, w)."""
    t = torch.from_numpy(np.asarray(a, dtype=np.float32))
    squeeze = t.ndim == 3
    t = t[:, None] if squeeze else t
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return (out[:, 0] if squeeze else out).numpy()


def scorecam_reference(model, x, layer, target):
    """Score-CAM re-done with the torch module: hooks for A, torch interpolate, torch forward passes."""
    logits, acts = torch_activations(model, x, [layer])
    a = acts[layer]
    classes = classes_for(target, logits)
    size = x.shape[2:]
    up = upsample(a, size)
    low = up.min(axis=(2, 3), keepdims=True)
    span = up.max(axis=(2, 3), keepdims=True) - low
    masks = np.where(span > 0, (up - low) / np.where(span > 0, span, 1), 0)
    out = []
    for j in range(len(x)):
        scores = torch_scores(model, (x[j][None] * masks[j][:, None]).astype(np.float32))[:, classes[j]]
        beta = torch.softmax(torch.from_numpy(scores.astype(np.float64)), 0).numpy()
        cam = np.maximum(np.tensordot(beta, a[j].astype(np.float64), axes=(0, 0)), 0)
        out.append(upsample(cam[None].astype(np.float32), size)[0])
    return np.stack(out), classes


def cam_reference(activations, weight, classes, size):
    a = np.asarray(activations, dtype=np.float64)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", weight[classes].astype(np.float64), a), 0)
    return upsample(cam.astype(np.float32), size)


def pooled_node(path):
    """The producer of the tensor that the graph's global pooling reads (found here by walking the graph)."""
    graph = onnx.load(path).graph
    producers = {o: n for n in graph.node for o in n.output}
    pools = [n for n in graph.node if n.op_type in ("GlobalAveragePool", "ReduceMean")]
    assert len(pools) == 1
    node = producers[pools[0].input[0]]
    return node.name or node.output[0]


# ---------------------------------------------------------------- occlusion: torch vs ONNX


@pytest.fixture(scope="module")
def resnet_drops(resnet, x64):
    """Brute-force torch occlusion drops for window 16, stride 8, per baseline."""
    return {b: occlusion_drops(lambda z: torch_scores(resnet, z), x64, 16, 8, b) for b in (0.0, 0.5)}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("baseline", [0.0, 0.5])
@pytest.mark.parametrize("target", [None, 7, [3, 9]], ids=["none", "int", "list"])
def test_occlusion_matches_torch(backends, resnet_drops, x64, exporter, baseline, target):
    boxes, drops, clean = resnet_drops[baseline]
    exp = cnnlens.explain(backends["resnet", exporter], x64, "occlusion", target=target,
                          window=16, stride=8, baseline=baseline)
    classes = classes_for(target, clean)
    np.testing.assert_array_equal(exp.target, classes)
    assert_close(exp.logits, clean, TOL)
    assert exp.maps.shape == (2, 64, 64) and exp.maps.dtype == np.float32
    assert_close(exp.maps, occlusion_map(boxes, drops, classes, (64, 64), 16), TOL)


def test_occlusion_onnx_equals_torch_backend(backends, resnet, x64):
    a = cnnlens.explain(resnet, x64, "occlusion", window=16, stride=8, baseline=0.5)
    for exporter in EXPORTERS:
        b = cnnlens.explain(backends["resnet", exporter], x64, "occlusion", window=16, stride=8, baseline=0.5)
        np.testing.assert_array_equal(a.target, b.target)
        assert_close(b.maps, a.maps, TOL)
    # small batches of occluded copies (windows of one image split across batches) change nothing
    c = cnnlens.explain(backends["resnet", "legacy"], x64, "occlusion", window=16, stride=8, baseline=0.5,
                        batch_size=11)
    assert_close(c.maps, b.maps, TOL)


# ---------------------------------------------------------------- feature maps, one name for both


RESNET_LAYERS = {
    "conv1": "/conv1/Conv",
    "layer1.0.bn2": "/layer1/layer1.0/bn2/BatchNormalization",
    "layer3": "/layer3/layer3.1/relu_1/Relu",
    "layer4.1.relu": "/layer4/layer4.1/relu_1/Relu",  # called twice: the module's output is the last call's
}
DENSENET_LAYERS = {
    "features.denseblock2": "/features/denseblock2/Concat",
    "features.denseblock1": "/features/denseblock1/Concat",
    "features.transition1": "/features/transition1/pool/AveragePool",
    "features.norm5": "/features/norm5/BatchNormalization",
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("key,table", [("resnet", RESNET_LAYERS), ("densenet", DENSENET_LAYERS)])
def test_feature_maps_by_torch_path_node_and_tensor(backends, resnet, densenet, x64, exporter, key, table):
    model = {"resnet": resnet, "densenet": densenet}[key]
    backend = backends[key, exporter]
    _, acts = torch_activations(model, x64, list(table))
    for path, legacy_node in table.items():
        exp = cnnlens.explain(backend, x64, "feature_maps", layer=path)
        assert_close(exp.maps, acts[path], TOL)
        node = exp.layer
        if exporter == "legacy":
            assert node == legacy_node
        inner = backend.module_of(node)  # the innermost module of the node lies inside the named one
        assert inner == path or inner.startswith(path + "."), (inner, path)
        tensor = backend.graph.by_name[node].output[0]
        assert tensor != node
        for alias in (node, tensor):
            same = cnnlens.explain(backend, x64, "feature_maps", layer=alias)
            assert same.layer == node
            np.testing.assert_array_equal(same.maps, exp.maps)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_feature_maps_list_of_layers_in_one_pass(backends, resnet, x64, exporter):
    names = ["layer1.0.bn2", "layer1"]
    _, acts = torch_activations(resnet, x64, names)
    exp = cnnlens.explain(backends["resnet", exporter], x64, "feature_maps", layer=names)
    assert exp.maps.shape == (2, 2, 64, 16, 16)
    for i, n in enumerate(names):
        assert_close(exp.maps[:, i], acts[n], TOL)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_feature_maps_module_names_with_numeric_suffix(backends, small, x32, exporter):
    """``relu_1`` / ``conv_1`` are real module names here, not the exporter's "second call" suffix."""
    backend = backends["small", exporter]
    names = ["conv_1", "relu_1", "conv_2", "relu_2"]
    _, acts = torch_activations(small, x32, names)
    for n in names:
        exp = cnnlens.explain(backend, x32, "feature_maps", layer=n)
        assert exp.maps.shape == acts[n].shape, f"module {n!r} resolved to node {exp.layer!r}, another module's output"
        assert_close(exp.maps, acts[n], TOL)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_module_of_names_real_modules(backends, small, exporter):
    """module_of maps a node back to a module that exists in the torch model."""
    backend = backends["small", exporter]
    modules = dict(small.named_modules())
    expected = {"Conv": ["conv_1", "conv_2"], "Relu": ["relu_1", "relu_2"]}
    for kind, paths in expected.items():
        nodes = [l.name for l in backend.layers() if l.kind == kind]
        got = [backend.module_of(n) for n in nodes]
        assert got == paths
        assert all(g in modules for g in got)


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_filters_equal_torch_weights(backends, resnet, densenet, exporter):
    r = backends["resnet", exporter]
    np.testing.assert_array_equal(cnnlens.filters(r), resnet.conv1.weight.detach().numpy())
    want = resnet.layer2[0].conv1.weight.detach().numpy()
    np.testing.assert_array_equal(cnnlens.filters(r, "layer2.0.conv1"), want)
    node = r.resolve_layer("layer2.0.conv1")
    assert r.graph.by_name[node].op_type == "Conv"
    np.testing.assert_array_equal(cnnlens.filters(r, node), want)
    np.testing.assert_array_equal(cnnlens.filters(r, r.graph.by_name[node].output[0]), want)
    np.testing.assert_array_equal(cnnlens.filters(r, "fc"), resnet.fc.weight.detach().numpy())
    d = backends["densenet", exporter]
    np.testing.assert_array_equal(cnnlens.filters(d), densenet.features.conv0.weight.detach().numpy())
    np.testing.assert_array_equal(cnnlens.filters(d, "features.denseblock2.denselayer1.conv2"),
                                  densenet.features.denseblock2.denselayer1.conv2.weight.detach().numpy())
    with pytest.raises(cnnlens.LayerError, match="no weight"):
        cnnlens.filters(r, "layer1.0.bn2")


# ---------------------------------------------------------------- CAM


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("target", [None, 4, [1, 8]], ids=["none", "int", "list"])
def test_cam_matches_torch_and_hand_computation(backends, exported, resnet, x64, exporter, target):
    backend = backends["resnet", exporter]
    exp = cnnlens.explain(backend, x64, "cam", target=target)
    ref = cnnlens.explain(resnet, x64, "cam", target=target)
    logits, acts = torch_activations(resnet, x64, ["layer4"])
    classes = classes_for(target, logits)
    np.testing.assert_array_equal(exp.target, classes)
    hand = cam_reference(acts["layer4"], resnet.fc.weight.detach().numpy(), classes, (64, 64))
    assert_close(exp.maps, hand, TOL)
    assert_close(exp.maps, ref.maps, TOL)
    assert exp.layer == pooled_node(exported["resnet", exporter])
    assert exp.layer == backend.resolve_layer("layer4")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cam_densenet_functional_relu_before_pool(backends, exported, densenet, x64, exporter):
    """DenseNet pools F.relu(features): the pooled tensor is an unnamed Relu node, not a module output."""
    exp = cnnlens.explain(backends["densenet", exporter], x64, "cam")
    logits, acts = torch_activations(densenet, x64, ["features"])
    classes = logits.argmax(1)
    a = np.maximum(acts["features"], 0)
    assert_close(exp.maps, cam_reference(a, densenet.classifier.weight.detach().numpy(), classes, (64, 64)), TOL)
    assert exp.layer == pooled_node(exported["densenet", exporter])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cam_rejects_a_layer_other_than_the_pooled_one(backends, x64, exporter):
    with pytest.raises(cnnlens.LayerError, match="pools"):
        cnnlens.explain(backends["resnet", exporter], x64, "cam", layer="layer3")


# ---------------------------------------------------------------- Score-CAM


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("layer,torch_layer,target", [
    (None, "relu_2", None),
    ("conv_2", "conv_2", [1, 3]),
    ("pool_1", "pool_1", 2),
])
def test_scorecam_matches_plain_reimplementation(backends, small, x32, exporter, layer, torch_layer, target):
    exp = cnnlens.explain(backends["small", exporter], x32, "scorecam", layer=layer, target=target)
    ref, classes = scorecam_reference(small, x32, torch_layer, target)
    np.testing.assert_array_equal(exp.target, classes)
    assert exp.maps.shape == (2, 32, 32)
    assert_close(exp.maps, ref, TOL)


# ---------------------------------------------------------------- layers and backend attributes


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("key", ["resnet", "densenet"])
def test_layers_topological_with_op_types(backends, exported, resnet, densenet, key, exporter):
    backend = backends[key, exporter]
    model = {"resnet": resnet, "densenet": densenet}[key]
    layers = cnnlens.layers(backend)
    graph = onnx.load(exported[key, exporter]).graph
    by_name = {(n.name or n.output[0]): n for n in graph.node}
    producer = {o: (n.name or n.output[0]) for n in graph.node for o in n.output}
    names = [l.name for l in layers]
    assert len(set(names)) == len(names)
    position = {n: i for i, n in enumerate(names)}
    for i, layer in enumerate(layers):
        node = by_name[layer.name]
        assert layer.kind == node.op_type
        for tensor in node.input:  # a data input comes from the graph input or from an earlier layer
            if tensor in producer and producer[tensor] in position:
                assert position[producer[tensor]] < i, (layer.name, tensor)
    convs = [n.name or n.output[0] for n in graph.node if n.op_type == "Conv"]
    assert [l.name for l in layers if l.kind == "Conv"] == [c for c in names if c in convs]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert layers[0].kind == "Conv" and layers[-1].kind == "Gemm"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_layers_shapes_match_torch_activations(backends, resnet, exporter):
    backend = backends["resnet", exporter]
    names = ["conv1", "layer1.0.bn2", "layer3", "layer4.1.relu", "fc"]
    for size in (64, 32):
        x = images(1, 3, size, size, seed=3)
        _, acts = torch_activations(resnet, x, names)
        shapes = {l.name: l.shape for l in cnnlens.layers(backend, input_shape=(3, size, size))}
        for n in names:
            assert shapes[backend.resolve_layer(n)] == (None,) + acts[n].shape[1:], n
    default = {l.name: l.shape for l in cnnlens.layers(backend)}
    assert default[backend.resolve_layer("layer3")] == (None, 256, 4, 4)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_layers_report_a_shape_for_every_node(backends, exporter):
    """Every node computing on pixels has a known output shape at the model's own input size."""
    missing = [(l.name, l.kind) for l in cnnlens.layers(backends["resnet", exporter]) if l.shape is None]
    assert not missing, f"layers without a shape: {missing}"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_backend_input_attributes(backends, exporter):
    backend = backends["resnet", exporter]
    assert backend.input_name == "input"
    assert backend.input_shape == ("batch", 3, 64, 64)  # the symbolic batch to_onnx names
    assert backend.input_dtype == np.float32
    assert backend.provider == "CPUExecutionProvider"
    assert backend.device == "cpu"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_default_layer_is_the_modules_default(backends, resnet, densenet, x64, exporter):
    """The last spatial node that is a module's output: the torch backend's default, the same tensor.
    DenseNet's last spatial node is the functional F.relu after ``features`` (no module): skipped."""
    for key, model, module in (("resnet", resnet, "layer4"), ("densenet", densenet, "features")):
        backend = backends[key, exporter]
        spatial = [l for l in cnnlens.layers(backend) if l.shape is not None and len(l.shape) == 4
                   and l.shape[2] * l.shape[3] > 1]
        assert cnnlens.load(model).default_layer(x64.shape) == module
        exp = cnnlens.explain(backend, x64, "feature_maps")
        assert exp.layer == backend.resolve_layer(module)
        assert (exp.layer == spatial[-1].name) == (key == "resnet")
        _, acts = torch_activations(model, x64, [module])
        assert_close(exp.maps, acts[module], TOL)


# ---------------------------------------------------------------- fixed batch of 1


@pytest.fixture(scope="module")
def fixed_batch(onnx_dir, resnet):
    """resnet18 exported the plain way, batch fixed at 1 (no dynamic_axes, constants folded)."""
    path = onnx_dir / "resnet_batch1.onnx"
    torch.onnx.export(resnet, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return str(path)


@pytest.fixture(scope="module")
def hard_batch1(onnx_dir):
    model = _seeded(HardBatch1, 5)
    path = onnx_dir / "hard_batch1.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return model, str(path)


def test_fixed_batch_model_is_made_dynamic(fixed_batch, resnet):
    backend = cnnlens.load(fixed_batch)
    assert backend.input_shape == (1, 3, 32, 32)
    x = images(4, 3, 32, 32, seed=20)
    exp = cnnlens.explain(backend, x, "occlusion", window=8, stride=4)
    boxes, drops, clean = occlusion_drops(lambda z: torch_scores(resnet, z), x, 8, 4, 0.0)
    np.testing.assert_array_equal(exp.target, clean.argmax(1))
    assert_close(exp.logits, clean, TOL)
    assert_close(exp.maps, occlusion_map(boxes, drops, clean.argmax(1), (32, 32), 8), TOL)
    assert backend._per_image is False and backend._runnable is not None
    names = ["layer1", "layer3"]  # block outputs: constant folding fused BatchNorm into the convs
    _, acts = torch_activations(resnet, x, names)
    for n in names:
        assert_close(cnnlens.explain(backend, x, "feature_maps", layer=n).maps, acts[n], TOL)


def test_hard_coded_batch1_runs_image_by_image(hard_batch1):
    model, path = hard_batch1
    backend = cnnlens.load(path)
    x = images(4, 3, 32, 32, seed=21)

    def one_by_one(z):
        return np.concatenate([torch_scores(model, z[i:i + 1]) for i in range(len(z))])

    exp = cnnlens.explain(backend, x, "occlusion", window=8, stride=4, baseline=0.5)
    assert backend._per_image is True
    boxes, drops, clean = occlusion_drops(one_by_one, x, 8, 4, 0.5)
    assert_close(exp.logits, clean, TOL)
    assert_close(exp.maps, occlusion_map(boxes, drops, clean.argmax(1), (32, 32), 8), TOL)
    fm = cnnlens.explain(backend, x, "feature_maps", layer="relu")
    acts = np.concatenate([torch_activations(model, x[i:i + 1], ["relu"])[1]["relu"] for i in range(4)])
    assert fm.maps.shape == (4, 6, 32, 32)
    assert_close(fm.maps, acts, TOL)


# ---------------------------------------------------------------- a hand-built graph


@pytest.fixture(scope="module")
def hand():
    return hand_model()


def test_hand_graph_forward_scores_are_probabilities(hand):
    x = images(4, 3, 16, 16, seed=30)
    exp = cnnlens.explain(hand, x, "feature_maps", layer="/features/relu2/Relu")
    probs, _, a2 = hand_torch(x)
    assert_close(exp.logits, probs, 1e-5)
    np.testing.assert_allclose(exp.logits.sum(1), 1, atol=1e-5)
    assert_close(exp.maps, a2, 1e-5)
    np.testing.assert_array_equal(exp.target, probs.argmax(1))


@pytest.mark.parametrize("target", [None, 2])
def test_hand_graph_occlusion_explains_the_softmax(hand, target):
    x = images(4, 3, 16, 16, seed=31)
    exp = cnnlens.explain(hand, x, "occlusion", target=target, window=4, stride=2, baseline=0.5)
    boxes, drops, clean = occlusion_drops(lambda z: hand_torch(z)[0], x, 4, 2, 0.5)
    classes = classes_for(target, clean)
    np.testing.assert_array_equal(exp.target, classes)
    assert_close(exp.maps, occlusion_map(boxes, drops, classes, (16, 16), 4), TOL)


def test_hand_graph_cam_through_softmax(hand):
    x = images(4, 3, 16, 16, seed=32)
    exp = cnnlens.explain(hand, x, "cam")
    probs, _, a2 = hand_torch(x)
    classes = probs.argmax(1)
    assert exp.layer == "/features/relu2/Relu"
    assert_close(exp.maps, cam_reference(a2, hand_weights()["wfc"], classes, (16, 16)), 1e-5)
    exp3 = cnnlens.explain(hand, x, "cam", target=3, layer="/features/relu2/Relu_output_0")
    assert_close(exp3.maps, cam_reference(a2, hand_weights()["wfc"], np.full(4, 3), (16, 16)), 1e-5)


def test_hand_graph_scorecam_on_probabilities(hand):
    x = images(2, 3, 16, 16, seed=33)
    exp = cnnlens.explain(hand, x, "scorecam", layer="/features/conv1/Conv", target=1)
    probs, _, _ = hand_torch(x)
    p = {k: torch.as_tensor(v) for k, v in hand_weights().items()}
    with torch.no_grad():
        a = F.conv2d(torch.from_numpy(x), p["w1"], p["b1"], padding=1).numpy()
    want = []
    for j in range(2):
        m = a[j]
        low, span = m.min(axis=(1, 2), keepdims=True), np.ptp(m, axis=(1, 2), keepdims=True)
        masks = np.where(span > 0, (m - low) / np.where(span > 0, span, 1), 0)  # 16x16: no resize needed
        scores = hand_torch((x[j][None] * masks[:, None]).astype(np.float32))[0][:, 1]
        beta = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        want.append(np.maximum(np.tensordot(beta, m, axes=(0, 0)), 0))
    assert_close(exp.maps, np.stack(want), TOL)


def test_hand_graph_filters_and_layers(hand):
    p = hand_weights()
    np.testing.assert_array_equal(cnnlens.filters(hand), p["w1"])  # made by a Constant node
    np.testing.assert_array_equal(cnnlens.filters(hand, "/features/conv2/Conv"), p["w2"])  # Identity of an initializer
    np.testing.assert_array_equal(cnnlens.filters(hand, "/classifier/Gemm"), p["wfc"])
    layers = cnnlens.layers(hand)
    assert [(l.name, l.kind, l.shape) for l in layers] == [
        ("/features/conv1/Conv", "Conv", (None, 4, 16, 16)),
        ("/features/relu1/Relu", "Relu", (None, 4, 16, 16)),
        ("/features/conv2/Conv", "Conv", (None, 6, 8, 8)),
        ("/features/relu2/Relu", "Relu", (None, 6, 8, 8)),
        ("/pool/GlobalAveragePool", "GlobalAveragePool", (None, 6, 1, 1)),
        ("/Flatten", "Flatten", (None, 6)),
        ("/classifier/Gemm", "Gemm", (None, 5)),
        ("/Softmax", "Softmax", (None, 5)),
    ]
    backend = cnnlens.load(hand)
    assert backend.input_name == "input" and backend.input_shape == (1, 3, 16, 16)
    assert backend.input_dtype == np.float32


def test_filters_of_weights_computed_in_the_graph():
    """A conv weight made by ConstantOfShape, another by Mul(initializer, Constant) (a folded subgraph)."""
    w = np.random.default_rng(8).standard_normal((2, 4, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("ConstantOfShape", ["shape_a"], ["w_a"], name="/a/ConstantOfShape",
                         value=numpy_helper.from_array(np.array([0.25], np.float32), "v")),
        helper.make_node("Conv", ["input", "w_a"], ["a"], name="/a/Conv", kernel_shape=[1, 1]),
        helper.make_node("Constant", [], ["two"], name="/b/Constant",
                         value=numpy_helper.from_array(np.array(2.0, np.float32), "t")),
        helper.make_node("Mul", ["w_init", "two"], ["w_b"], name="/b/Mul"),
        helper.make_node("Conv", ["a", "w_b"], ["b"], name="/b/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["b"], ["pooled"], name="/pool"),
        helper.make_node("Flatten", ["pooled"], ["out"], name="/flatten"),
    ]
    graph = helper.make_graph(
        nodes, "computed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 2])],
        initializer=[numpy_helper.from_array(np.array([4, 3, 1, 1], np.int64), "shape_a"),
                     numpy_helper.from_array(w, "w_init")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    np.testing.assert_array_equal(cnnlens.filters(model), np.full((4, 3, 1, 1), 0.25, np.float32))
    np.testing.assert_array_equal(cnnlens.filters(model, "/b/Conv"), 2 * w)
    assert [l.name for l in cnnlens.layers(model)] == ["/a/Conv", "/b/Conv", "/pool", "/flatten"]
    x = images(3, 3, 8, 8, seed=35)
    with torch.no_grad():
        a = F.conv2d(torch.from_numpy(x), torch.full((4, 3, 1, 1), 0.25))
        b = F.conv2d(a, torch.from_numpy(2 * w), padding=1).numpy()
    exp = cnnlens.explain(model, x, "feature_maps", layer="b")
    assert exp.layer == "/b/Conv"
    assert_close(exp.maps, b, 1e-5)
    assert_close(exp.logits, b.mean(axis=(2, 3)), 1e-5)


def test_hand_graph_batch_of_four_is_made_dynamic(hand):
    backend = cnnlens.load(hand)
    x = images(4, 3, 16, 16, seed=34)
    exp = cnnlens.explain(backend, x, "feature_maps", layer="/features/conv2/Conv")
    assert backend._per_image is False and backend._runnable is not None
    p = {k: torch.as_tensor(v) for k, v in hand_weights().items()}
    with torch.no_grad():
        a1 = torch.relu(F.conv2d(torch.from_numpy(x), p["w1"], p["b1"], padding=1))
        want = F.conv2d(a1, p["w2"], torch.full((6,), 0.1), padding=1, stride=2).numpy()
    assert_close(exp.maps, want, 1e-5)
    assert_close(exp.logits, hand_torch(x)[0], 1e-5)


def test_hand_graph_wrong_input_size(hand):
    with pytest.raises(cnnlens.InvalidInputError, match=r"16"):
        cnnlens.explain(hand, images(1, 3, 20, 20, seed=0), "occlusion")
    with pytest.raises(cnnlens.InvalidInputError):
        cnnlens.explain(hand, images(2, 1, 16, 16, seed=0), "feature_maps")


# ---------------------------------------------------------------- without torch


SUBPROCESS = textwrap.dedent("""
    import builtins, json, sys
    for name in ("torch", "torchvision"):
        sys.modules[name] = None
    attempts = []
    real_import = builtins.__import__
    def spy(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "torchvision"):
            attempts.append(name)
        return real_import(name, *args, **kwargs)
    builtins.__import__ = spy
    import numpy as np
    import cnnlens
    paths, x_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    x = np.load(x_path)
    results = {}
    for i, path in enumerate(json.loads(paths)):
        model = cnnlens.load(path)
        results[f"occlusion{i}"] = cnnlens.explain(model, x, "occlusion", window=8, stride=4, target=[1, 2]).maps
        fm = cnnlens.explain(model, x, "feature_maps", layer="conv_2")
        results[f"feature_maps{i}"] = fm.maps
        results[f"logits{i}"] = fm.logits
        results[f"scorecam{i}"] = cnnlens.explain(model, x, "scorecam").maps
        results[f"cam{i}"] = cnnlens.explain(model, x, "cam", target=3).maps
        results[f"gradcam{i}"] = cnnlens.explain(model, x, "gradcam", layer="relu_2").maps
        results[f"guided{i}"] = cnnlens.explain(model, x, "guided_backprop", target=[1, 2]).maps
        results[f"lrp{i}"] = cnnlens.explain(model, x, "lrp", composite="epsilon_gamma_box", target=[1, 2]).maps
        results[f"deeplift{i}"] = cnnlens.explain(model, x, "deeplift", baseline=0.1, target=[1, 2]).maps
        results[f"filters{i}"] = cnnlens.filters(model)
        results[f"filters_conv_2_{i}"] = cnnlens.filters(model, "conv_2")
        layers = cnnlens.layers(model)
        with open(f"{out}.layers{i}.json", "w") as f:
            json.dump([[l.name, l.kind, l.shape] for l in layers], f)
    np.savez(out, **results)
    loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] in ("torch", "torchvision") and v is not None)
    print(json.dumps({"attempts": attempts, "loaded": loaded}))
""")


def test_onnx_path_without_torch(exported, small, x32, tmp_path):
    paths = [exported["small", "legacy"], exported["small", "dynamo"]]
    np.save(tmp_path / "x.npy", x32)
    out = tmp_path / "results.npz"
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, json.dumps(paths), str(tmp_path / "x.npy"), str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "loaded": []}
    got = np.load(out)
    boxes, drops, clean = occlusion_drops(lambda z: torch_scores(small, z), x32, 8, 4, 0.0)
    logits, acts = torch_activations(small, x32, ["conv_2", "relu_2"])
    weight = small.fc.weight.detach().numpy()
    reference = cnnlens.load(small)
    reference.channels_last = False
    gradcam = cnnlens.explain(reference, x32, "gradcam", layer="relu_2").maps
    guided = cnnlens.explain(reference, x32, "guided_backprop", target=[1, 2]).maps
    lrp = cnnlens.explain(reference, x32, "lrp", composite="epsilon_gamma_box", target=[1, 2]).maps
    deeplift = cnnlens.explain(reference, x32, "deeplift", baseline=0.1, target=[1, 2]).maps
    for i in range(2):
        assert_close(got[f"lrp{i}"], lrp, TOL)
        assert_close(got[f"deeplift{i}"], deeplift, TOL)
        assert_close(got[f"gradcam{i}"], gradcam, TOL)
        assert_close(got[f"guided{i}"], guided, TOL)
        assert_close(got[f"logits{i}"], logits, TOL)
        assert_close(got[f"occlusion{i}"], occlusion_map(boxes, drops, np.array([1, 2]), (32, 32), 8), TOL)
        assert_close(got[f"feature_maps{i}"], acts["conv_2"], TOL)
        assert_close(got[f"scorecam{i}"], scorecam_reference(small, x32, "relu_2", None)[0], TOL)
        assert_close(got[f"cam{i}"], cam_reference(acts["relu_2"], weight, np.full(2, 3), (32, 32)), TOL)
        np.testing.assert_array_equal(got[f"filters{i}"], small.conv_1.weight.detach().numpy())
        np.testing.assert_array_equal(got[f"filters_conv_2_{i}"], small.conv_2.weight.detach().numpy())
        layers = json.loads((tmp_path / f"results.npz.layers{i}.json").read_text())
        assert [k for _, k, _ in layers][:6] == ["Conv", "BatchNormalization", "Relu", "MaxPool", "Conv", "Relu"]
        assert [s for _, _, s in layers][:6] == [[None, 8, 32, 32]] * 3 + [[None, 8, 16, 16]] + [[None, 12, 16, 16]] * 2


# ---------------------------------------------------------------- loading


def _signature(model, x):
    occ = cnnlens.explain(model, x, "occlusion", window=16, stride=16)
    fm = cnnlens.explain(model, x, "feature_maps", layer="conv_2")
    return occ.logits, occ.maps, fm.maps, cnnlens.filters(model)


def test_load_from_path_bytes_and_proto_agree(exported, small, x32):
    path = exported["small", "legacy"]
    data = pathlib.Path(path).read_bytes()
    sources = [path, pathlib.Path(path), data, bytearray(data), onnx.load(path), onnx.load_from_string(data)]
    results = [_signature(s, x32) for s in sources]
    results.append(_signature(cnnlens.load(path), x32))
    results.append(_signature(cnnlens.load(pathlib.Path(path), device="cpu"), x32))
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)
    _, acts = torch_activations(small, x32, ["conv_2"])
    assert_close(results[0][2], acts["conv_2"], TOL)


def test_io_binding_gives_identical_results(exported, small, x32):
    proto = onnx.load(exported["small", "dynamo"])
    plain = OnnxBackend(proto)
    bound = OnnxBackend(proto, io_binding=True)
    for method, kw in (("occlusion", dict(window=8, stride=4)), ("feature_maps", dict(layer="conv_2")),
                       ("scorecam", {}), ("cam", {}), ("gradcam", {}), ("guided_gradcam", {}), ("saliency", {})):
        a = cnnlens.explain(plain, x32, method, **kw)
        b = cnnlens.explain(bound, x32, method, **kw)
        np.testing.assert_array_equal(a.maps, b.maps)
        np.testing.assert_array_equal(a.logits, b.logits)
    assert_close(b.logits, torch_scores(small, x32), TOL)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nothere.onnx"
    with pytest.raises(cnnlens.ModelError, match="no such model file") as info:
        cnnlens.load(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(cnnlens.ModelError, match="no such model file"):
        cnnlens.explain(path, images(1, 3, 8, 8, 0), "occlusion")


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(cnnlens.ModelError, match="empty"):
        cnnlens.load(path)
    with pytest.raises(cnnlens.ModelError):
        cnnlens.load(b"")


def test_load_truncated_file(exported, tmp_path):
    data = pathlib.Path(exported["small", "legacy"]).read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(cnnlens.ModelError, match="complete|export|cannot run") as info:
        cnnlens.load(path)
    assert "Traceback" not in str(info.value)
    with pytest.raises(cnnlens.ModelError):
        cnnlens.load(data[: len(data) // 2])


def test_load_text_file_named_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model, just some notes about one\n" * 20)
    with pytest.raises(cnnlens.ModelError, match="ONNX|complete"):
        cnnlens.load(path)
    with pytest.raises(cnnlens.ModelError):
        cnnlens.explain(str(path), images(1, 3, 8, 8, 0), "occlusion")


def test_device_cuda_without_gpu_runtime(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(cnnlens.ModelError, match="onnxruntime-gpu"):
            cnnlens.load(exported["small", "legacy"], device=device)
    with pytest.raises(cnnlens.ModelError, match="device"):
        cnnlens.load(exported["small", "legacy"], device="tpu")
    backend = cnnlens.load(exported["small", "legacy"], device="cpu")
    assert backend.provider == "CPUExecutionProvider" and backend.device == "cpu"


# ---------------------------------------------------------------- layer names


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_unknown_layer_lists_close_names(backends, x64, exporter):
    backend = backends["resnet", exporter]
    with pytest.raises(cnnlens.LayerError, match="layer4.1.conv2") as info:
        cnnlens.explain(backend, x64, "feature_maps", layer="layer4.1.conv3")
    assert "Did you mean" in str(info.value)
    node = backend.resolve_layer("layer4.1.conv2")
    with pytest.raises(cnnlens.LayerError, match=repr(node)):
        cnnlens.explain(backend, x64, "scorecam", layer=node + "x")
    with pytest.raises(cnnlens.LayerError):
        cnnlens.filters(backend, "layer9.0.conv1")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torch_path_absent_from_graph(backends, small, x32, exporter):
    """``drop`` is a module of the torch model, but an eval-mode Dropout leaves no node in the graph."""
    assert "drop" in dict(small.named_modules())
    with pytest.raises(cnnlens.LayerError, match="unknown layer 'drop'"):
        cnnlens.explain(backends["small", exporter], x32, "feature_maps", layer="drop")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_path_that_is_no_module_is_rejected(backends, small, x32, exporter):
    """``conv`` and ``relu`` are no modules of Small (only conv_1, conv_2, relu_1, relu_2 are)."""
    modules = dict(small.named_modules())
    backend = backends["small", exporter]
    for name in ("conv", "relu"):
        assert name not in modules
        if name in backend.graph.producer or name in backend.graph.by_name:
            continue  # an ONNX tensor or node name (the dynamo exporter names a tensor "relu"): a real layer
        with pytest.raises(cnnlens.LayerError):
            cnnlens.explain(backend, x32, "feature_maps", layer=name)
