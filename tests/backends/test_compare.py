"""``cnnlens.compare`` and the agreement measures behind it.

A torch ResNet and its ONNX exports (legacy and dynamo) give the same occlusion, Score-CAM, CAM and
feature maps; a layer is named once, in torch terms (``layer3``) or in ONNX node terms, and both
explanations report the name their own backend uses, which must be the same tensor (checked against
the torch module's own output, caught with a forward hook). A torch model and its TorchScript agree
on saliency and SmoothGrad. Models that differ are reported as different, and with ``target=None``
model B explains model A's class. ``core.metrics`` is checked against hand computations.
"""

from __future__ import annotations

import ast
import copy

import numpy as np
import onnx
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_onnx, to_torchscript
from cnnlens.core.metrics import agreement, rankdata, spearman
from tests.helpers import assert_close, images, randomise_batchnorm, rel_err

SIZE = 64
NUM_CLASSES = 10
EXPORTERS = ["legacy", "dynamo"]
OPTIONS = {
    "occlusion": dict(window=16, stride=8),
    "scorecam": dict(layer="layer2"),  # 128 channels: Score-CAM runs one forward pass per channel
    "cam": dict(),
    "feature_maps": dict(layer="layer3"),
}
#: For each method, the torch module whose output the map is built from.
MODULE = {"scorecam": "layer2", "cam": "layer4", "feature_maps": "layer3"}


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(torchvision.models.resnet18(num_classes=NUM_CLASSES), seed=seed + 1).eval()


def activation(model: nn.Module, module: str, x: np.ndarray) -> np.ndarray:
    """The module's own output for ``x`` (its last call), by a forward hook: independent of cnnlens."""
    seen = []
    handle = dict(model.named_modules())[module].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        handle.remove()
    return seen[-1].numpy()


def scopes(node: onnx.NodeProto) -> list:
    """The module scopes the dynamo exporter recorded for a node."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return ast.literal_eval(prop.value)
    return []


def onnx_node_for(path: str, exporter: str, module: str, op: str = "Relu") -> str:
    """The ONNX node that computes ``module``'s output, from the exporter's own records: the last
    ``op`` node whose legacy name is /<scopes>/<op> under ``module`` or whose dynamo scopes hold it."""
    model = onnx.load(path)
    found = []
    for node in model.graph.node:
        if node.op_type != op:
            continue
        if exporter == "legacy":
            if node.name.startswith(f"/{module}/"):
                found.append(node.name)
        elif module in scopes(node):
            found.append(node.name)
    assert found, f"no {op} node under {module}"
    return found[-1]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def res():
    return resnet(0)


@pytest.fixture(scope="module")
def x():
    return images(2, 3, SIZE, SIZE, seed=4)


@pytest.fixture(scope="module")
def onnx_paths(res, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    return {e: to_onnx(res, str(folder / f"resnet_{e}.onnx"), (3, SIZE, SIZE), exporter=e) for e in EXPORTERS}


@pytest.fixture(scope="module")
def onnx_backends(onnx_paths):
    return {e: cnnlens.load(p) for e, p in onnx_paths.items()}


@pytest.fixture(scope="module")
def nodes(onnx_paths, res, x):
    """Per exporter, the ONNX node computing layer3's and layer4's outputs, proven numerically."""
    out = {}
    for exporter, path in onnx_paths.items():
        out[exporter] = {}
        for module in ("layer2", "layer3", "layer4"):
            node = onnx_node_for(path, exporter, module)
            got = cnnlens.explain(path, x, "feature_maps", layer=node).maps
            assert_close(got, activation(res, module, x), 1e-5)
            out[exporter][module] = node
    if "legacy" in out:
        assert out["legacy"]["layer3"] == "/layer3/layer3.1/relu_1/Relu"
    return out


def check_rows(result, n: int, tol: float = 1e-4) -> None:
    """Every image agrees and the reported numbers are those of the two maps."""
    assert len(result.images) == n
    assert result.a.maps.shape == result.b.maps.shape
    for i, row in enumerate(result.images):
        a, b = result.a.maps[i].astype(np.float64), result.b.maps[i].astype(np.float64)
        assert row.index == i
        assert np.abs(a).max() > 0, "an all-zero map proves nothing"
        diff = np.abs(a - b).max()
        assert row.max_abs_diff == pytest.approx(diff, rel=1e-9, abs=1e-12)
        assert row.relative_error == pytest.approx(diff / np.abs(a).max(), rel=1e-9, abs=1e-12)
        assert row.relative_error <= tol, f"image {i}: relative error {row.relative_error:.3g}"
        assert row.rank_correlation > 0.999, f"image {i}: rank correlation {row.rank_correlation}"
        assert row.classes_agree and row.predicted_a == row.predicted_b
        assert row.target == result.a.target[i] == result.b.target[i]
    assert result.classes_agree
    assert result.worst_relative_error == max(r.relative_error for r in result.images) <= tol


# ---------------------------------------------------------------- torch vs ONNX


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("method", ["occlusion", "scorecam", "cam", "feature_maps"])
def test_torch_vs_onnx_layer_in_torch_terms(res, onnx_paths, onnx_backends, nodes, x, exporter, method):
    onnx_model = onnx_paths[exporter] if method == "occlusion" else onnx_backends[exporter]  # a path, or loaded
    result = cnnlens.compare(res, onnx_model, x, method, **OPTIONS[method])
    check_rows(result, len(x))
    assert result.method == method
    logits = res(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(result.a.target, logits.argmax(1))
    assert_close(result.b.logits, logits, 1e-4)
    if method == "occlusion":
        assert result.a.layer is None and result.b.layer is None
        return
    module = MODULE[method]
    assert result.a.layer == module
    assert result.b.layer == nodes[exporter][module]
    if method == "feature_maps":
        # 1e-5: on the CPU the torch backend runs channels-last (NHWC), which rounds differently
        assert_close(result.a.maps, activation(res, module, x), 1e-5)
        assert_close(result.b.maps, activation(res, module, x), 1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("method", ["occlusion", "scorecam", "cam", "feature_maps"])
def test_onnx_vs_torch_layer_in_onnx_terms(res, onnx_backends, nodes, x, exporter, method):
    """The other way round: ONNX is model A and the layer is named by its ONNX node."""
    options = dict(OPTIONS[method])
    if method in MODULE:
        options["layer"] = nodes[exporter][MODULE[method]]
    result = cnnlens.compare(onnx_backends[exporter], res, x, method, **options)
    check_rows(result, len(x))
    if method == "occlusion":
        assert result.a.layer is None and result.b.layer is None
        return
    module = MODULE[method]
    assert result.a.layer == nodes[exporter][module]
    # B names a torch module; that module's own output is the tensor the ONNX node computes
    assert result.b.layer in dict(res.named_modules())
    assert result.b.layer.startswith(module)
    assert_close(activation(res, result.b.layer, x), activation(res, module, x), 0)
    if method == "feature_maps":
        assert_close(result.a.maps, activation(res, module, x), 1e-5)
        assert_close(result.b.maps, activation(res, result.b.layer, x), 1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cam_default_layer_onnx_first(res, onnx_backends, nodes, x, exporter):
    result = cnnlens.compare(onnx_backends[exporter], res, x, "cam")
    check_rows(result, len(x))
    assert result.a.layer == nodes[exporter]["layer4"]
    assert_close(activation(res, result.b.layer, x), activation(res, "layer4", x), 0)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_feature_maps_several_layers_named_once(res, onnx_backends, nodes, x, exporter):
    result = cnnlens.compare(res, onnx_backends[exporter], x, "feature_maps", layer=["layer3"])
    assert result.a.layer == ["layer3"] and result.b.layer == [nodes[exporter]["layer3"]]
    check_rows(result, len(x), tol=1e-5)
    for name in ["layer2.1.bn2"]:
        result = cnnlens.compare(res, onnx_backends[exporter], x, "feature_maps", layer=name)
        check_rows(result, len(x), tol=1e-4)
        assert_close(result.b.maps, activation(res, name, x), 1e-4)
        back = cnnlens.compare(onnx_backends[exporter], res, x, "feature_maps", layer=result.b.layer)
        assert back.b.layer == name
        check_rows(back, len(x), tol=1e-4)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("module", ["layer2.0.downsample.0", "layer3.0.downsample.0"])
def test_nested_sequential_module_named_once(res, onnx_backends, x, exporter, module):
    """A Sequential's child inside a named child: the legacy exporter's node is
    /layer3/layer3.0/downsample/downsample.0/Conv, which is the module layer3.0.downsample.0."""
    result = cnnlens.compare(res, onnx_backends[exporter], x, "feature_maps", layer=module)
    check_rows(result, len(x), tol=1e-4)
    assert_close(result.b.maps, activation(res, module, x), 1e-4)
    back = cnnlens.compare(onnx_backends[exporter], res, x, "feature_maps", layer=result.b.layer)
    assert back.b.layer == module
    check_rows(back, len(x), tol=1e-4)


def _inner_nodes(path: str, exporter: str):
    """ONNX nodes inside layer3.0 that are NOT the output of any torch module: the first call of
    the block's ReLU module (which torch calls twice) and the block's functional residual Add."""
    model = onnx.load(path)
    relus = [n.name for n in model.graph.node if n.op_type == "Relu" and
             (n.name.startswith("/layer3/layer3.0/") if exporter == "legacy" else "layer3.0.relu" in scopes(n))]
    adds = [n.name for n in model.graph.node if n.op_type == "Add" and
            (n.name.startswith("/layer3/layer3.0/") if exporter == "legacy" else "layer3.0" in scopes(n))]
    assert len(relus) == 2 and len(adds) == 1
    return {"first_relu_call": relus[0], "residual_add": adds[0]}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("which", ["first_relu_call", "residual_add"])
def test_onnx_node_without_a_torch_module_is_not_silently_remapped(res, onnx_paths, onnx_backends, x,
                                                                   exporter, which):
    """Naming an ONNX node that is not any module's output must not compare it with a different
    tensor: either compare refuses (LayerError) or the two maps are the same tensor."""
    node = _inner_nodes(onnx_paths[exporter], exporter)[which]
    reference = cnnlens.explain(onnx_backends[exporter], x, "feature_maps", layer=node)
    try:
        result = cnnlens.compare(onnx_backends[exporter], res, x, "feature_maps", layer=node)
    except cnnlens.LayerError:
        return
    assert_close(result.a.maps, reference.maps, 0)
    torch_output = activation(res, result.b.layer, x)
    assert result.worst_relative_error <= 1e-4, (
        f"ONNX node {node!r} was mapped to torch module {result.b.layer!r}, whose output is a different "
        f"tensor: relative error {result.worst_relative_error:.3g} on identical weights "
        f"(module output vs node output: {rel_err(torch_output, reference.maps):.3g})"
    )


# ---------------------------------------------------------------- torch vs TorchScript


@pytest.fixture(scope="module")
def ts_path(res, tmp_path_factory):
    return to_torchscript(res, str(tmp_path_factory.mktemp("ts") / "resnet.pt"), (3, SIZE, SIZE))


@pytest.fixture(scope="module")
def ts_loaded(ts_path):
    """Loaded once: a fresh TorchScript module's first runs are slow while the JIT profiles."""
    return torch.jit.load(ts_path)


def test_torch_vs_torchscript_path(res, ts_path, x):
    result = cnnlens.compare(res, ts_path, x[:1], "saliency", target=4)
    check_rows(result, 1, tol=1e-5)
    np.testing.assert_array_equal(result.b.target, [4])


@pytest.mark.parametrize("method,options", [("saliency", {}), ("smoothgrad", dict(samples=4, seed=1))])
def test_torch_vs_torchscript(res, ts_loaded, x, method, options):
    result = cnnlens.compare(res, ts_loaded, x, method, **options)
    check_rows(result, len(x), tol=1e-5)
    assert result.a.layer is None and result.b.layer is None
    if method != "saliency":
        return
    reverse = cnnlens.compare(ts_loaded, res, x, method, **options)
    check_rows(reverse, len(x), tol=1e-5)
    assert_close(reverse.a.maps, result.a.maps, 1e-5)


# ---------------------------------------------------------------- differences are detected


@pytest.fixture(scope="module")
def other_onnx(tmp_path_factory):
    """A ResNet with the same architecture and different weights (another seed), exported."""
    return to_onnx(resnet(7), str(tmp_path_factory.mktemp("other") / "other.onnx"), (3, SIZE, SIZE),
                   exporter="legacy")


@pytest.mark.parametrize("method", ["feature_maps", "occlusion"])
def test_different_weights_are_reported(res, other_onnx, x, method):
    result = cnnlens.compare(res, other_onnx, x, method, **OPTIONS[method])
    np.testing.assert_array_equal(result.b.target, result.a.target)
    for i, row in enumerate(result.images):
        a, b = result.a.maps[i].astype(np.float64), result.b.maps[i].astype(np.float64)
        assert row.relative_error == pytest.approx(np.abs(a - b).max() / np.abs(a).max(), rel=1e-9)
        assert row.rank_correlation == pytest.approx(np.corrcoef(rankdata(a), rankdata(b))[0, 1], abs=1e-9)
        assert row.relative_error > 0.1
        assert row.rank_correlation < 0.99
    assert result.worst_relative_error > 0.1


def test_perturbed_weights_are_reported(res, x, tmp_path):
    perturbed = copy.deepcopy(res)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in perturbed.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
    path = to_onnx(perturbed, str(tmp_path / "perturbed.onnx"), (3, SIZE, SIZE), exporter="legacy")
    result = cnnlens.compare(res, path, x, "feature_maps", layer="layer3")
    assert all(r.relative_error > 0.1 and r.rank_correlation < 0.99 for r in result.images), result.table()


class Identity3(nn.Module):
    """logits = head(mean over pixels of relu(x)), a 1x1 identity convolution in front: the score of
    class c is the mean of relu(x_c) when the head is the identity."""

    def __init__(self, rows=(0, 1, 2)):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
            self.fc.weight.copy_(torch.eye(3)[list(rows)])

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def swapped():
    """Model A (identity head), model B (head rows 0 and 1 swapped), and two 8x8 images: image 0
    has its largest positive mass in channel 0 (A says 0, B says 1), image 1 in channel 2 (both 2)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    x[0, 0] += 3.0
    x[1, 2] += 3.0
    a, b = Identity3().eval(), Identity3(rows=(1, 0, 2)).eval()
    with torch.no_grad():
        assert a(torch.from_numpy(x)).argmax(1).tolist() == [0, 2]
        assert b(torch.from_numpy(x)).argmax(1).tolist() == [1, 2]
    return a, b, x


def test_classes_differ_saliency_by_hand(swapped):
    a, b, x = swapped
    result = cnnlens.compare(a, b, x, "saliency")
    np.testing.assert_array_equal(result.a.target, [0, 2])
    np.testing.assert_array_equal(result.b.target, result.a.target)  # B explains A's class
    assert [r.predicted_a for r in result.images] == [0, 2]
    assert [r.predicted_b for r in result.images] == [1, 2]
    assert [r.classes_agree for r in result.images] == [False, True]
    assert not result.classes_agree
    # by hand: d mean(relu(x_k)) / dx = 1{x_k > 0} / 64 on channel k; B's class 0 reads channel 1
    hw = x.shape[2] * x.shape[3]
    expected_a = np.zeros_like(x)
    expected_b = np.zeros_like(x)
    for i, (ka, kb) in enumerate([(0, 1), (2, 2)]):
        expected_a[i, ka] = (x[i, ka] > 0) / hw
        expected_b[i, kb] = (x[i, kb] > 0) / hw
    np.testing.assert_allclose(result.a.maps, expected_a, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.b.maps, expected_b, rtol=1e-6, atol=1e-9)
    first, second = result.images
    assert first.relative_error == pytest.approx(1.0) and first.max_abs_diff == pytest.approx(1 / hw)
    assert second.relative_error == 0.0 and second.rank_correlation == 1.0
    assert "DIFFER (0 vs 1)" in result.table().splitlines()[1]
    assert result.table().splitlines()[2].rstrip().endswith("agree")


def test_classes_differ_onnx_occlusion_by_hand(swapped, tmp_path):
    """Model B as ONNX, occlusion with disjoint 4x4 windows: a window's drop is the sum of
    relu(x_k) inside it / 64, k the channel class c reads in that model."""
    a, b, x = swapped
    path = to_onnx(b, str(tmp_path / "swapped.onnx"), (3, 8, 8), exporter="legacy")
    result = cnnlens.compare(a, path, x, "occlusion", window=4, stride=4)
    np.testing.assert_array_equal(result.b.target, [0, 2])
    assert [r.classes_agree for r in result.images] == [False, True]

    def by_hand(channel_of_image):
        out = np.zeros((2, 8, 8))
        for i, k in enumerate(channel_of_image):
            r = np.maximum(x[i, k], 0) / 64.0
            for top in (0, 4):
                for left in (0, 4):
                    out[i, top:top + 4, left:left + 4] = r[top:top + 4, left:left + 4].sum()
        return out

    np.testing.assert_allclose(result.a.maps, by_hand([0, 2]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.b.maps, by_hand([1, 2]), rtol=1e-5, atol=1e-7)
    assert result.images[0].relative_error > 0.1
    assert result.images[1].relative_error < 1e-5


def test_explicit_target_is_used_for_both(swapped):
    a, b, x = swapped
    result = cnnlens.compare(a, b, x, "saliency", target=[1, 1])
    np.testing.assert_array_equal(result.a.target, [1, 1])
    np.testing.assert_array_equal(result.b.target, [1, 1])
    assert [r.target for r in result.images] == [1, 1]
    # A's class 1 reads channel 1, B's class 1 reads channel 0
    assert result.a.maps[:, 1].any() and not result.a.maps[:, 0].any()
    assert result.b.maps[:, 0].any() and not result.b.maps[:, 1].any()


# ---------------------------------------------------------------- the report


def test_table_and_str_list_one_row_per_image(res, onnx_backends, nodes, x):
    result = cnnlens.compare(res, onnx_backends["legacy"], x, "feature_maps", layer="layer3")
    lines = result.table().splitlines()
    assert len(lines) == 1 + len(x)
    assert lines[0].split()[:2] == ["image", "target"] and "spearman" in lines[0]
    for line, row in zip(lines[1:], result.images):
        fields = line.split()
        assert int(fields[0]) == row.index and int(fields[1]) == row.target
        assert float(fields[2]) == pytest.approx(row.max_abs_diff, rel=5e-3)
        assert float(fields[3]) == pytest.approx(row.relative_error, rel=5e-3)
        assert float(fields[4]) == pytest.approx(row.rank_correlation, abs=1e-4)
        assert fields[5] == "agree"
    text = str(result)
    first, rest = text.split("\n", 1)
    assert "feature_maps" in first and "'layer3'" in first and repr(nodes["legacy"]["layer3"]) in first
    assert rest == result.table()
    assert str(cnnlens.compare(res, onnx_backends["legacy"], x[:1], "occlusion", window=32, stride=32)) \
        .splitlines()[0] == "occlusion"


# ---------------------------------------------------------------- core.metrics


def ranks_by_hand(values) -> np.ndarray:
    """Rank i = (number of smaller values) + (number of equal values + 1) / 2."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.array([(v < e).sum() + ((v == e).sum() + 1) / 2.0 for e in v])


@pytest.mark.parametrize("values,expected", [
    ([10, 20, 20, 5], [2, 3.5, 3.5, 1]),
    ([3, 1, 2], [3, 1, 2]),
    ([7, 7, 7], [2, 2, 2]),
    ([1, 1, 2, 2, 2, 0], [2.5, 2.5, 5, 5, 5, 1]),
    ([[0.5, -1.0], [0.5, 4.0]], [2.5, 1, 2.5, 4]),
    ([42], [1]),
])
def test_rankdata_hand_computed(values, expected):
    np.testing.assert_array_equal(rankdata(np.array(values)), expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_rankdata_matches_counting(values):
    got = rankdata(np.array(values))
    np.testing.assert_array_equal(got, ranks_by_hand(values))
    assert got.sum() == pytest.approx(len(values) * (len(values) + 1) / 2)


def test_spearman_hand_formula_without_ties():
    # 1 - 6 sum d^2 / (n (n^2 - 1)): d = (-1, 1, -1, 1, 0) -> 1 - 24 / 120
    assert spearman(np.array([1, 2, 3, 4, 5.0]), np.array([2, 1, 4, 3, 5.0])) == pytest.approx(0.8)
    assert spearman(np.array([10, 20, 30.0]), np.array([3, 1, 2.0])) == pytest.approx(-0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 4), st.integers(-4, 4)), min_size=3, max_size=25))
def test_spearman_is_pearson_of_ranks(pairs):
    a = np.array([p[0] for p in pairs], dtype=float)
    b = np.array([p[1] for p in pairs], dtype=float)
    got = spearman(a, b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        assert got == (1.0 if np.array_equal(a, b) else 0.0)
        return
    expected = np.corrcoef(ranks_by_hand(a), ranks_by_hand(b))[0, 1]
    assert got == pytest.approx(expected, abs=1e-12)


def test_spearman_known_cases():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5, 5))
    assert spearman(a, np.exp(2 * a) + 7) == pytest.approx(1.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, 1.0 / (a - a.min() + 1)) == pytest.approx(-1.0)  # decreasing transform
    const = np.full((4, 4), 2.5)
    assert spearman(const, const.copy()) == 1.0
    assert spearman(const, np.full((4, 4), 3.0)) == 0.0
    assert spearman(const, rng.standard_normal((4, 4))) == 0.0
    assert spearman(rng.standard_normal((4, 4)), const) == 0.0
    with pytest.raises(ValueError):
        spearman(np.zeros(4), np.zeros(5))


def test_agreement_by_hand():
    a = np.array([[1.0, -4.0], [2.0, 0.0]])
    b = np.array([[1.0, -3.0], [2.5, 0.0]])
    stats = agreement(a, b)
    assert stats["max_abs_diff"] == pytest.approx(1.0)     # |-4 - -3|
    assert stats["relative_error"] == pytest.approx(0.25)  # 1 / max|a| = 1 / 4
    assert stats["rank_correlation"] == pytest.approx(1.0)  # same order: -4 < 0 < 1 < 2
    c = np.array([[2.0, 0.0], [-1.0, 3.0]])
    stats = agreement(a, c)
    assert stats["max_abs_diff"] == pytest.approx(4.0)     # |-4 - 0|
    assert stats["relative_error"] == pytest.approx(1.0)
    assert stats["rank_correlation"] == pytest.approx(np.corrcoef([3, 1, 4, 2], [3, 2, 1, 4])[0, 1])
    # a is the reference: the error is relative to a, not to b
    assert agreement(b, a)["relative_error"] == pytest.approx(1.0 / 3.0)


def test_agreement_zero_maps():
    zero = np.zeros((3, 3))
    stats = agreement(zero, zero)
    assert stats["max_abs_diff"] == 0.0 and stats["relative_error"] == 0.0 and stats["rank_correlation"] == 1.0
    other = zero.copy()
    other[1, 1] = 0.5
    stats = agreement(zero, other)
    assert stats["max_abs_diff"] == 0.5 and stats["relative_error"] == float("inf")
    assert stats["rank_correlation"] == 0.0


def test_cam_on_a_densenet_and_its_export(tmp_path):
    """DenseNet pools F.relu(features), a tensor no module outputs: each backend finds its own head."""
    import torchvision

    from cnnlens.adapters.export import to_onnx

    torch.manual_seed(0)
    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3).eval()
    path = str(tmp_path / "densenet.onnx")
    to_onnx(model, path, (3, 32, 32), exporter="legacy")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    result = cnnlens.compare(model, path, x, "cam")
    assert all(i.relative_error <= 1e-4 and i.classes_agree for i in result.images)
    np.testing.assert_allclose(result.b.maps, cnnlens.explain(model, x, "cam").maps, rtol=1e-4, atol=1e-6)
