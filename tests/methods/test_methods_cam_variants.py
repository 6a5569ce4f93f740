"""Grad-CAM's variants, Eigen-CAM and Ablation-CAM checked map by map against pytorch-grad-cam 1.5.

pytorch-grad-cam min-max normalises each layer's CAM and resizes it with cv2; cnnlens returns the
raw ReLU'd CAM resized like ``F.interpolate(mode="bilinear", align_corners=False)``. So the peer's
layer-resolution CAM is taken just before its ``scale_cam_image`` (patched to record and pass
through), resized with ``F.interpolate`` here, and compared with ``exp.maps``:
max|a - b| / max|b| <= 1e-4. Targets are explicit ``ClassifierOutputTarget``s equal to cnnlens's.

Models: torchvision resnet18 and densenet121 with seeded random weights (and randomised BatchNorm
statistics, so BN is not an identity), on small non-square images (64 x 96) so that a transposed
height and width could not pass. The same maps are required from the ONNX export, and two
invariants: a list of layers equals each layer alone, and batch_size=1 equals the default.

Layers are chosen where the comparison is meaningful:
- Ablation-CAM only on ReLU'd layers (minimum 0): elsewhere the peer ablates with min - 1e7, not 0.
- XGrad-CAM only on ReLU'd layers: its weights divide by sum_ij A_k, which on signed activations
  can nearly cancel (densenet121's denseblock3: a channel with sum 6.7e-4 against sum |A| = 69), so
  float32 rounding (the peer) and float64 (cnnlens) legitimately differ by 1e-3 .. 1e-1.
- Not densenet121's ``features``: DenseNet.forward applies ``F.relu(features, inplace=True)`` to
  it, which overwrites the tensor pytorch-grad-cam's hook stored (it keeps ``output.cpu().detach()``,
  the same storage on CPU), so the peer works on ReLU(norm5) while the module's output is norm5.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pgc = pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("onnxruntime")

import pytorch_grad_cam.base_cam as pgc_base  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

import cnnlens  # noqa: E402
from cnnlens.adapters.export import to_onnx  # noqa: E402
from tests.helpers import check_per_image, images, one_torch_thread, randomise_batchnorm  # noqa: E402

RTOL = 1e-4
H, W = 64, 96

GRADIENT_PEERS = {
    "gradcam": pgc.GradCAM,
    "gradcampp": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
}
ALL = list(GRADIENT_PEERS) + ["eigencam", "ablationcam"]
MEASURED = {}  # (test, method, ...) -> relative error, printed with -s for the record


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _threads():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomise_batchnorm(torchvision.models.resnet18(weights=None), 1).eval()


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    return randomise_batchnorm(torchvision.models.densenet121(weights=None), 2).eval()


@pytest.fixture(scope="module")
def x():
    return images(2, 3, H, W, seed=11)


@pytest.fixture(scope="module")
def onnx_resnet(resnet, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cam_variants") / "resnet18.onnx")
    to_onnx(resnet, path, input_shape=(3, H, W))
    return cnnlens.load(path)


@pytest.fixture
def raw_peer(monkeypatch):
    """Records each layer's CAM as pytorch-grad-cam hands it to ``scale_cam_image`` (after its
    ``np.maximum(cam, 0)``), and skips the min-max and the cv2 resize."""
    recorded = []

    def record(cam, target_size=None):
        if target_size is not None:  # the per-layer call; the final aggregate call has no size
            recorded.append(np.array(cam, dtype=np.float32, copy=True))
        return cam

    monkeypatch.setattr(pgc_base, "scale_cam_image", record)
    return recorded


# ---------------------------------------------------------------- helpers


def upsample(cam: np.ndarray, size) -> np.ndarray:
    """(N, h, w) -> (N, H, W), as cnnlens resizes."""
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[:, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[:, 0].numpy()


def peer_layer_cams(model, peer_cls, layers, x, classes, recorded, **kw):
    """pytorch-grad-cam's raw (ReLU'd, layer-resolution) CAM per layer, and the activations it captured."""
    modules = dict(model.named_modules())
    recorded.clear()
    cam = peer_cls(model, [modules[name] for name in layers], **kw)
    try:
        cam(torch.from_numpy(x), [ClassifierOutputTarget(int(c)) for c in classes])
        activations = [a.numpy().copy() for a in cam.activations_and_grads.activations]
    finally:
        cam.activations_and_grads.release()
    assert len(recorded) == len(layers)
    return list(recorded), activations


def eigen_reference(activations: np.ndarray) -> np.ndarray:
    """The peer's Eigen-CAM projection (no ReLU), signed to correlate positively with the channel sum, ReLU'd."""
    projection = get_2d_projection(activations)  # (N, h, w), whatever sign LAPACK gave
    channel_sum = activations.sum(axis=1)
    out = []
    for p, s in zip(projection, channel_sum):
        p, s = p.ravel().astype(np.float64), s.ravel().astype(np.float64)
        sign = 1.0 if np.dot(p - p.mean(), s - s.mean()) >= 0 else -1.0
        out.append(np.maximum(sign * p, 0).reshape(projection.shape[1:]))
    return np.stack(out).astype(np.float32)


def check(name, got: np.ndarray, ref: np.ndarray, tol: float = RTOL) -> float:
    return check_per_image(name, got, ref, tol, MEASURED)


def explain_vs_peer(model, method, layer, x, target, recorded):
    exp = cnnlens.explain(model, x, method, target=target, layer=layer)
    assert exp.maps.shape == (len(x), H, W)
    assert exp.layer == layer
    classes = np.asarray(exp.target)
    if target is None:
        with torch.no_grad():
            np.testing.assert_array_equal(classes, model(torch.from_numpy(x)).argmax(1).numpy())
    else:
        np.testing.assert_array_equal(classes, np.broadcast_to(target, (len(x),)))
    if method == "eigencam":
        _, acts = peer_layer_cams(model, pgc.EigenCAM, [layer], x, classes, recorded)
        raw = eigen_reference(acts[0])
    elif method == "ablationcam":
        raws, acts = peer_layer_cams(model, pgc.AblationCAM, [layer], x, classes, recorded, batch_size=128)
        assert (acts[0].reshape(len(x), -1).min(axis=1) == 0).all(), "the peer ablates with 0 only where the minimum is 0"
        raw = raws[0]
    else:
        raws, _ = peer_layer_cams(model, GRADIENT_PEERS[method], [layer], x, classes, recorded)
        raw = raws[0]
    assert raw.ndim == 3 and raw.shape[1:] != (H, W), "the peer's CAM should be at layer resolution"
    return exp, upsample(raw, (H, W))


# ---------------------------------------------------------------- against pytorch-grad-cam


@pytest.mark.parametrize("method", ALL)
def test_resnet18_layer4_matches_pytorch_grad_cam(resnet, x, raw_peer, method):
    exp, ref = explain_vs_peer(resnet, method, "layer4", x, None, raw_peer)
    check(("resnet18/layer4", method), exp.maps, ref)


@pytest.mark.parametrize("method", list(GRADIENT_PEERS) + ["eigencam"])
def test_resnet18_layer3_explicit_targets(resnet, x, raw_peer, method):
    exp, ref = explain_vs_peer(resnet, method, "layer3", x, [7, 512], raw_peer)
    check(("resnet18/layer3", method), exp.maps, ref)


# denseblock3: signed activations, 4 x 6; transition3.relu: ReLU'd, 4 x 6. (No Ablation-CAM on
# densenet121: the peer runs the whole network once per channel, 1024 of them: too slow here.)
DENSENET_CASES = [(m, "features.denseblock3") for m in GRADIENT_PEERS if m != "xgradcam"] + [
    ("eigencam", "features.denseblock3"), ("xgradcam", "features.transition3.relu"),
    ("gradcampp", "features.transition3.relu"), ("eigencam", "features.transition3.relu")]


@pytest.mark.parametrize("method, layer", DENSENET_CASES)
def test_densenet121_matches_pytorch_grad_cam(densenet, x, raw_peer, method, layer):
    exp, ref = explain_vs_peer(densenet, method, layer, x, None, raw_peer)  # arg-max: non-zero maps
    check((f"densenet121/{layer}", method), exp.maps, ref)


def test_ablationcam_against_float64_reference(resnet, x):
    """Ablation-CAM's definition recomputed in float64 (channel k of layer4 zeroed, the head run on):
    both cnnlens and the peer carry float32 rounding of y - y_k, this one does not."""
    exp = cnnlens.explain(resnet, x, "ablationcam", layer="layer4")
    model = copy.deepcopy(resnet).double()
    keep = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: keep.__setitem__("a", o))
    with torch.no_grad():
        logits = model(torch.from_numpy(x).double())
        handle.remove()
        acts = keep["a"]
        k = acts.shape[1]
        weights = []
        for n, c in enumerate(exp.target):
            copies = acts[n:n + 1].repeat(k, 1, 1, 1)
            copies[torch.arange(k), torch.arange(k)] = 0
            ablated = model.fc(torch.flatten(model.avgpool(copies), 1))[:, int(c)]
            y = logits[n, int(c)]
            weights.append(((y - ablated) / y).numpy())
    cam = np.maximum(np.einsum("nk,nkij->nij", np.stack(weights), acts.numpy()), 0)
    ref = F.interpolate(torch.from_numpy(cam)[:, None], size=(H, W), mode="bilinear",
                        align_corners=False)[:, 0].numpy()
    check(("float64", "ablationcam"), exp.maps, ref)


# ---------------------------------------------------------------- ONNX export


_TORCH_MAPS = {}


def torch_layer4(resnet, x, method):
    """cnnlens's torch-backend layer4 explanation of ``x`` (computed once per method)."""
    if method not in _TORCH_MAPS:
        _TORCH_MAPS[method] = cnnlens.explain(resnet, x, method, layer="layer4")
    return _TORCH_MAPS[method]


@pytest.fixture(scope="module")
def onnx_layer4(resnet, onnx_resnet, x):
    """The ONNX node computing layer4's output, as cnnlens.compare maps the torch name."""
    result = cnnlens.compare(resnet, onnx_resnet, x, "gradcam", layer="layer4")
    assert result.a.layer == "layer4" and isinstance(result.b.layer, str) and result.b.layer != "layer4"
    np.testing.assert_array_equal(np.asarray(result.a.target), np.asarray(result.b.target))
    assert result.classes_agree
    check(("onnx-compare", "gradcam"), result.b.maps, result.a.maps)
    assert result.worst_relative_error <= RTOL
    np.testing.assert_allclose(
        cnnlens.explain(onnx_resnet, x, "feature_maps", layer=result.b.layer).maps,
        cnnlens.explain(resnet, x, "feature_maps", layer="layer4").maps, rtol=1e-4, atol=1e-4)
    return result.b.layer


@pytest.mark.parametrize("method", ALL)
def test_onnx_export_gives_the_same_maps(resnet, onnx_resnet, onnx_layer4, x, method):
    reference = torch_layer4(resnet, x, method)
    got = cnnlens.explain(onnx_resnet, x, method, target=[int(t) for t in reference.target], layer=onnx_layer4)
    assert got.layer == onnx_layer4
    np.testing.assert_allclose(got.logits, reference.logits, rtol=1e-4, atol=1e-4 * np.abs(reference.logits).max())
    check(("onnx", method), got.maps, reference.maps)


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("method", list(GRADIENT_PEERS) + ["eigencam"])
def test_list_of_layers_equals_each_layer_alone(resnet, x, method):
    both = cnnlens.explain(resnet, x, method, layer=["layer3", "layer4"])
    assert both.maps.shape == (len(x), 2, H, W)
    assert both.layer == ["layer3", "layer4"]
    alone = {"layer3": cnnlens.explain(resnet, x, method, layer="layer3"), "layer4": torch_layer4(resnet, x, method)}
    for i, layer in enumerate(["layer3", "layer4"]):
        np.testing.assert_array_equal(np.asarray(both.target), np.asarray(alone[layer].target))
        check(("list", method, layer), both.maps[:, i], alone[layer].maps, tol=1e-6)


@pytest.mark.parametrize("method", ALL)
def test_batch_size_one_equals_default(resnet, x, method):
    # Ablation-CAM runs the network before the layer once per image and batch, so batch_size=1
    # costs a full forward pass per channel (512 here): it gets an odd batch of 100 copies instead.
    # Its weights (y - y_k) / y are differences of nearby float32 scores (y_k within ~0.5% of y),
    # so a different batching moves the map by a few 1e-5: tolerance 1e-4 for it, 1e-5 otherwise.
    batch, tol = (100, RTOL) if method == "ablationcam" else (1, 1e-5)
    default = torch_layer4(resnet, x, method)
    one = cnnlens.explain(resnet, x, method, layer="layer4", batch_size=batch)
    np.testing.assert_array_equal(np.asarray(default.target), np.asarray(one.target))
    check((f"batch_size={batch}", method), one.maps, default.maps, tol=tol)


def test_maps_are_not_normalised(resnet, x):
    """The raw CAM: ReLU'd, not min-max scaled to [0, 1]."""
    exp = cnnlens.explain(resnet, x, "hirescam", layer="layer4")
    assert exp.maps.min() >= 0
    assert not np.allclose(exp.maps.max(axis=(1, 2)), 1.0)


def teardown_module(module):
    for key, err in sorted(MEASURED.items(), key=str):
        print(f"{key}: {err:.3g}")
