"""``target`` as output weights: the explained score is ``sum(w * output)``.

Weights come in one output's shape (broadcast over the batch) or in the batch's. Checked against
plain PyTorch autograd / brute force on

- a regression head ("five distance sensors": a tiny CNN ending in Linear(..., 5)): saliency,
  Grad-CAM, Integrated Gradients (4 Gauss-Legendre steps) and occlusion; a one-hot float weight
  vector gives the integer class target's maps;
- a segmentation net (fully convolutional, output (N, K, H, W)): weights selecting class k inside a
  box; saliency and Grad-CAM; class index targets are refused with a TargetError pointing at target
  weights;
- the ONNX exports of both (the onnx backend equals torch to 1e-4);
- wrong weight shapes (TargetError), and the command line's ``--target-weights``.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cnnlens
from cnnlens.adapters import images as image_io
from cnnlens.adapters.export import to_onnx
from cnnlens.cli import main
from tests.helpers import module_workdir, rel_err

SIZE = 32
SENSORS = 5
CLASSES = 3
BOX = (slice(8, 20), slice(12, 26))  # rows, cols of the segmentation box
IG_STEPS = 4
OCCLUSION = dict(window=8, stride=8)


# ---------------------------------------------------------------- models


class Regressor(nn.Module):
    """Five distance sensors: conv-ReLU, conv(stride 2)-ReLU, GAP -> Linear(8, 5)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(8, SENSORS)

    def forward(self, x):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.head(h.mean(dim=(2, 3)))


class Segmenter(nn.Module):
    """Fully convolutional: (N, 3, H, W) -> (N, CLASSES, H, W) per-pixel scores."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.classifier = nn.Conv2d(8, CLASSES, 1)

    def forward(self, x):
        return self.classifier(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def regressor(seed=0):
    torch.manual_seed(seed)
    model = Regressor().eval()
    with torch.no_grad():
        model.conv2.bias.add_(0.2)
    return model


def segmenter(seed=1):
    torch.manual_seed(seed)
    model = Segmenter().eval()
    with torch.no_grad():
        model.conv2.bias.add_(0.2)
    return model


def images(n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def sensor_weights(seed=3, n=None):
    shape = (SENSORS,) if n is None else (n, SENSORS)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def box_weights(k=1):
    w = np.zeros((CLASSES, SIZE, SIZE), dtype=np.float32)
    w[k, BOX[0], BOX[1]] = 1.0
    return w


# ---------------------------------------------------------------- plain PyTorch references


def _score(model, x, w):
    """sum(w * output) per image, (N,) float64, computed in float64 from the float32 outputs."""
    with torch.no_grad():
        out = model(torch.from_numpy(x)).double().numpy()
    w = np.broadcast_to(w, out.shape)
    return (w.astype(np.float64) * out).reshape(len(x), -1).sum(axis=1)


def ref_saliency(model, x, w):
    t = torch.from_numpy(x).requires_grad_(True)
    out = model(t)
    (out * torch.as_tensor(np.broadcast_to(w, out.shape).copy())).sum().backward()
    return t.grad.numpy()


def ref_gradcam(model, x, w, layer):
    module = dict(model.named_modules())[layer]
    kept = {}
    handle = module.register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    try:
        out = model(torch.from_numpy(x))
    finally:
        handle.remove()
    a = kept["a"]
    score = (out * torch.as_tensor(np.broadcast_to(w, out.shape).copy())).sum()
    (g,) = torch.autograd.grad(score, a)
    alpha = g.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * a).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0].detach().numpy()


def ref_integrated_gradients(model, x, w, steps=IG_STEPS):
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (1 + nodes) / 2, weights / 2
    total = np.zeros(x.shape, dtype=np.float64)
    for alpha, weight in zip(alphas, weights):
        total += weight * ref_saliency(model, (alpha * x).astype(np.float32), w)
    return (x * total).astype(np.float32)


def ref_occlusion(model, x, w, window=8, stride=8):
    assert stride == window and SIZE % window == 0  # the windows tile the image: one per pixel
    clean = _score(model, x, w)
    maps = np.zeros((len(x), SIZE, SIZE), dtype=np.float64)
    for top in range(0, SIZE, stride):
        for left in range(0, SIZE, stride):
            hidden = x.copy()
            hidden[:, :, top:top + window, left:left + window] = 0
            maps[:, top:top + window, left:left + window] = (clean - _score(model, hidden, w))[:, None, None]
    return maps


def close(got, want, tol=1e-5, scale=None):
    err = rel_err(got, want, scale)
    assert err <= tol, f"relative error {err:.3g} > {tol:g}"


# ---------------------------------------------------------------- (a) a regression head


@pytest.mark.parametrize("per_image", [False, True], ids=["one-output", "batch"])
def test_regression_saliency_gradcam_ig_occlusion(per_image):
    model, x = regressor(), images(3)
    w = sensor_weights(n=3 if per_image else None)
    exp = cnnlens.explain(model, x, "saliency", target=w)
    close(exp.maps, ref_saliency(model, x, w))
    assert exp.target.shape == (3, SENSORS)
    np.testing.assert_allclose(exp.target, np.broadcast_to(w, (3, SENSORS)))
    assert exp.logits.shape == (3, SENSORS)

    exp = cnnlens.explain(model, x, "gradcam", target=w, layer="relu2")
    close(exp.maps, ref_gradcam(model, x, w, "relu2"))

    exp = cnnlens.explain(model, x, "integrated_gradients", target=w, steps=IG_STEPS)
    close(exp.maps, ref_integrated_gradients(model, x, w))
    # completeness is measured against the weighted score
    gap = exp.maps.reshape(3, -1).sum(axis=1) - (_score(model, x, w) - _score(model, np.zeros_like(x), w))
    np.testing.assert_allclose(exp.extras["completeness_error"], gap, rtol=1e-3, atol=1e-4)

    exp = cnnlens.explain(model, x, "occlusion", target=w, **OCCLUSION)
    want = ref_occlusion(model, x, w)
    close(exp.maps, want, scale=max(np.abs(want).max(), np.abs(_score(model, x, w)).max()))


def test_regression_batch_weights_are_per_image():
    """Row i of batch weights explains image i only: the same as explaining it alone with that row."""
    model, x = regressor(), images(3)
    w = sensor_weights(n=3)
    together = cnnlens.explain(model, x, "saliency", target=w).maps
    for i in range(3):
        alone = cnnlens.explain(model, x[i:i + 1], "saliency", target=w[i]).maps
        close(together[i:i + 1], alone, 1e-6)


@pytest.mark.parametrize("method,options", [
    ("saliency", {}), ("gradcam", {}), ("integrated_gradients", {"steps": IG_STEPS}), ("occlusion", OCCLUSION),
    ("guided_backprop", {}), ("cam", {}), ("scorecam", {}), ("rise", {"masks": 32}),
])
def test_one_hot_weights_equal_the_class_target(method, options):
    model, x = regressor(), images(2)
    for k in (0, 3):
        onehot = np.zeros(SENSORS, dtype=np.float32)
        onehot[k] = 1.0
        by_class = cnnlens.explain(model, x, method, target=k, **options)
        by_weights = cnnlens.explain(model, x, method, target=onehot, **options)
        np.testing.assert_array_equal(by_class.target, [k, k])
        scale = max(np.abs(by_class.maps).max(), np.abs(by_class.logits).max())
        close(by_weights.maps, by_class.maps, 1e-6, scale=scale)


# ---------------------------------------------------------------- (b) a segmentation model


@pytest.mark.parametrize("k", [0, 2])
def test_segmentation_saliency_and_gradcam(k):
    model, x = segmenter(), images(2, seed=4)
    w = box_weights(k)
    exp = cnnlens.explain(model, x, "saliency", target=w)
    assert exp.logits.shape == (2, CLASSES, SIZE, SIZE)
    assert exp.target.shape == (2, CLASSES, SIZE, SIZE)
    close(exp.maps, ref_saliency(model, x, w))
    for layer in ("relu1", "relu2"):
        exp = cnnlens.explain(model, x, "gradcam", target=w, layer=layer)
        close(exp.maps, ref_gradcam(model, x, w, layer))
    # the receptive field is 5x5 (two 3x3 convolutions): nothing outside the grown box matters
    saliency = np.abs(cnnlens.explain(model, x, "saliency", target=w).maps).sum(axis=1)
    outside = np.ones((SIZE, SIZE), bool)
    outside[BOX[0].start - 2:BOX[0].stop + 2, BOX[1].start - 2:BOX[1].stop + 2] = False
    assert saliency[:, outside].max() == 0 and saliency[:, ~outside].max() > 0


def test_segmentation_batch_weights():
    model, x = segmenter(), images(2, seed=4)
    w = np.stack([box_weights(0), 0.5 * box_weights(2) - box_weights(1)])
    exp = cnnlens.explain(model, x, "saliency", target=w)
    close(exp.maps, ref_saliency(model, x, w))


@pytest.mark.parametrize("target", [1, [0, 2], None])
def test_segmentation_class_targets_ask_for_weights(target):
    model, x = segmenter(), images(2, seed=4)
    for method in ("saliency", "gradcam", "occlusion"):
        with pytest.raises(cnnlens.TargetError, match="target weights"):
            cnnlens.explain(model, x, method, target=target, **(OCCLUSION if method == "occlusion" else {}))


# ---------------------------------------------------------------- (c) the ONNX exports


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    return {
        "regressor": to_onnx(regressor(), str(folder / "regressor.onnx"), (3, SIZE, SIZE)),
        "segmenter": to_onnx(segmenter(), str(folder / "segmenter.onnx"), (3, SIZE, SIZE)),
    }


@pytest.mark.parametrize("name,method,options", [
    (name, method, options) for name in ("regressor", "segmenter") for method, options in [
        ("saliency", {}), ("gradcam", {"layer": "relu2"}), ("integrated_gradients", {"steps": IG_STEPS}),
        ("occlusion", OCCLUSION), ("cam", {})]
    if (name, method) != ("segmenter", "cam")  # a fully convolutional net has no GAP -> linear head
])
def test_onnx_backend_equals_torch(onnx_files, name, method, options):
    model = regressor() if name == "regressor" else segmenter()
    x = images(2, seed=5)
    w = sensor_weights(n=2) if name == "regressor" else box_weights(1)
    b = cnnlens.load(onnx_files[name])
    on_torch = cnnlens.explain(model, x, method, target=w, **options)
    on_onnx = cnnlens.explain(b, x, method, target=w, **options)
    np.testing.assert_allclose(on_onnx.target, on_torch.target)
    scale = max(np.abs(on_torch.maps).max(), np.abs(on_torch.logits).max()) if method == "occlusion" else None
    close(on_onnx.maps, on_torch.maps, 1e-4, scale=scale)
    if method == "saliency":  # and both equal plain autograd
        close(on_onnx.maps, ref_saliency(model, x, w), 1e-4)


def test_onnx_segmenter_refuses_class_targets(onnx_files):
    b = cnnlens.load(onnx_files["segmenter"])
    with pytest.raises(cnnlens.TargetError, match="target weights"):
        cnnlens.explain(b, images(1), "saliency", target=0)


# ---------------------------------------------------------------- (d) wrong shapes


@pytest.mark.parametrize("which,shape", [
    ("regressor", (4,)), ("regressor", (6,)), ("regressor", (3, SENSORS)), ("regressor", (SENSORS, 1)),
    ("regressor", (1, 2, SENSORS)), ("segmenter", (CLASSES, SIZE)), ("segmenter", (CLASSES, SIZE, SIZE + 1)),
    ("segmenter", (1, CLASSES, SIZE, SIZE)), ("segmenter", (CLASSES + 1, SIZE, SIZE)),
])
def test_wrong_weight_shapes_raise_target_error(which, shape):
    model = regressor() if which == "regressor" else segmenter()
    x = images(2)  # batch of 2: (3, 5) and (1, ...) match neither one output nor the batch
    w = np.ones(shape, dtype=np.float32)
    for method, options in (("saliency", {}), ("occlusion", OCCLUSION)):
        with pytest.raises(cnnlens.TargetError, match="shape"):
            cnnlens.explain(model, x, method, target=w, **options)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_raise_target_error(bad):
    w = sensor_weights()
    w[2] = bad
    with pytest.raises(cnnlens.TargetError):
        cnnlens.explain(regressor(), images(1), "saliency", target=w)


# ---------------------------------------------------------------- (e) the command line


MODEL_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Sensors(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            x = self.relu(self.conv2(self.relu(self.conv1(x))))
            return self.head(x.mean(dim=(2, 3)))

    def build():
        torch.manual_seed(0)
        return Sensors()

    model = build()
''')


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    np.save(tmp_path / "w.npy", sensor_weights())
    yield from module_workdir(tmp_path, monkeypatch, "sensornet", MODEL_SOURCE, images=("img", "two"))


def test_cli_target_weights_writes_pngs(workdir, capsys):
    code = main(["explain", "sensornet:model", "img.png", "two.png", "-m", "saliency", "--target-weights", "w.npy",
                 "--size", "32", "32", "-o", "out", "--save-maps"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir("out")) == ["img_saliency.npy", "img_saliency.png", "two_saliency.npy", "two_saliency.png"]
    for stem in ("img", "two"):
        with Image.open(f"out/{stem}_saliency.png") as png:
            assert png.size[0] > 32
    import sensornet

    x = image_io.prepare(["img.png", "two.png"], (32, 32))[0]
    model = sensornet.build()
    want = ref_saliency(model.eval(), x, sensor_weights())
    close(np.stack([np.load("out/img_saliency.npy"), np.load("out/two_saliency.npy")]), want, 1e-5)
    out = capsys.readouterr().out
    assert "saliency: output weights (5,)" in out


def test_cli_target_and_target_weights_together(workdir, capsys):
    code = main(["explain", "sensornet:model", "img.png", "-m", "saliency", "--target", "1", "--target-weights", "w.npy",
                 "--size", "32", "32", "-o", "out"])
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "--target" in lines[0] and "--target-weights" in lines[0]
    assert not os.path.exists("out") or not os.listdir("out")


def test_cli_bad_target_weights_file(workdir, capsys):
    np.save("short.npy", np.ones(4, np.float32))
    with open("notnpy.npy", "w") as handle:
        handle.write("not an array")
    for path in ("short.npy", "notnpy.npy", "missing.npy"):
        code = main(["explain", "sensornet:model", "img.png", "-m", "saliency", "--target-weights", path,
                     "--size", "32", "32", "-o", "out"])
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- every method takes weights


FAST = {"rise": dict(masks=32), "smoothgrad": dict(samples=2), "integrated_gradients": dict(steps=IG_STEPS),
        "occlusion": OCCLUSION}



def _every_method_params():
    for name in ("regressor", "segmenter"):
        for method in cnnlens.METHODS:
            yield pytest.param(name, method, id=f"{method}-{name}")


@pytest.mark.parametrize("name,method", list(_every_method_params()))
def test_every_method_takes_weights_and_onnx_agrees(onnx_files, name, method):
    model = regressor() if name == "regressor" else segmenter()
    w = sensor_weights() if name == "regressor" else box_weights(2)
    x = images(2, seed=6)
    options = FAST.get(method, {})
    if method == "cam" and name == "segmenter":
        with pytest.raises(cnnlens.ModelError, match="linear"):
            cnnlens.explain(model, x, method, target=w)
        return
    on_torch = cnnlens.explain(model, x, method, target=w, **options)
    assert on_torch.target.shape == (2,) + np.shape(w)
    on_onnx = cnnlens.explain(cnnlens.load(onnx_files[name]), x, method, target=w, **options)
    assert on_onnx.maps.shape == on_torch.maps.shape
    forward_only = not (cnnlens.METHODS[method].needs & {"input_gradients", "layer_gradients"})
    scale = max(np.abs(on_torch.maps).max(), np.abs(on_torch.logits).max()) if forward_only else None
    close(on_onnx.maps, on_torch.maps, 1e-4, scale=scale)


def ref_ablationcam(model, x, w, layer):
    """Ablation-CAM by hand: w_k = (y - y^(k)) / y, y^(k) the score with channel k of ``layer`` zeroed."""
    module = dict(model.named_modules())[layer]
    state = {}

    def hook(m, i, o):
        if "replace" in state:
            return state["replace"]
        state["a"] = o.detach().clone()

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            clean = _score(model, x, w)
            a = state["a"]
            ablated = np.empty((len(x), a.shape[1]))
            for k in range(a.shape[1]):
                state["replace"] = a.clone()
                state["replace"][:, k] = 0
                ablated[:, k] = _score(model, x, w)
                del state["replace"]
    finally:
        handle.remove()
    weights = (clean[:, None] - ablated) / clean[:, None]
    cam = np.maximum((weights[:, :, None, None] * a.double().numpy()).sum(axis=1), 0)
    return F.interpolate(torch.from_numpy(cam[:, None]), size=x.shape[2:], mode="bilinear",
                         align_corners=False)[:, 0].numpy()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_ablationcam_at_a_segmentation_output(onnx_files, backend):
    """The default layer of a fully convolutional net is its output (N, K, H, W): ablating a channel of
    it ablates that class's scores."""
    model, x, w = segmenter(), images(2, seed=6), box_weights(2)
    b = model if backend == "torch" else cnnlens.load(onnx_files["segmenter"])
    exp = cnnlens.explain(b, x, "ablationcam", target=w)
    want = ref_ablationcam(model, x, w, "classifier")
    assert np.abs(want).max() > 0
    close(exp.maps, want, 1e-4)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_ablationcam_at_an_inner_layer(onnx_files, backend):
    model, x, w = segmenter(), images(2, seed=6), box_weights(2)
    b = model if backend == "torch" else cnnlens.load(onnx_files["segmenter"])
    exp = cnnlens.explain(b, x, "ablationcam", target=w, layer="relu2")
    close(exp.maps, ref_ablationcam(model, x, w, "relu2"), 1e-4)
