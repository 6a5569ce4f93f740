"""Invariants and independent re-implementations: batching, seeding, layer lists, CAM vs Grad-CAM,
a hand-computed occlusion case, a plain-PyTorch SmoothGrad and Score-CAM, and target handling.

Agreement with a reference is max|a - b| / max|b| <= 1e-4 unless said otherwise.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import cnnlens  # noqa: E402
from tests.helpers import assert_close, images, randomise_batchnorm, rel_err  # noqa: E402

RTOL = 1e-4
TIGHT = 1e-6


# ---------------------------------------------------------------- helpers


def logits_of(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def activation_of(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """A module's output, taken with a plain forward hook."""
    module = dict(model.named_modules())[layer]
    kept = {}
    handle = module.register_forward_hook(lambda m, i, o: kept.__setitem__("a", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return kept["a"]


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomise_batchnorm(torchvision.models.resnet18(num_classes=10), 200).eval()


class SmallCNN(nn.Module):
    """conv-relu-pool-conv-relu-GAP-linear: a GAP + linear head, few channels, fast."""

    def __init__(self, classes: int = 5, width: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(torch.flatten(self.gap(x), 1))


@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(3)
    return SmallCNN().eval()


class FlattenHead(nn.Module):
    """No global pooling: a conv to a 4x4 map, then flatten + linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


X64 = images(2, 3, 64, 64, seed=11)
X32 = images(3, 3, 32, 32, seed=12)
X16 = images(3, 3, 16, 16, seed=13)


# ---------------------------------------------------------------- batch size does not matter


@pytest.fixture(scope="module")
def resnet64(resnet):
    """A float64 copy: batches of different sizes then give the same logits to ~1e-15, so batch-size
    invariance can be checked tightly (float32 convolutions round differently per batch size, and
    occlusion drops are differences of nearly equal logits)."""
    return copy.deepcopy(resnet).double().eval()


def test_occlusion_independent_of_batch_size(resnet64):
    x = X32[:2]
    maps = [
        cnnlens.explain(resnet64, x, "occlusion", target=[1, 6], window=8, stride=6, batch_size=b)
        for b in (1, 7, 64)
    ]
    for e in maps[1:]:
        np.testing.assert_array_equal(e.target, maps[0].target)
        assert rel_err(e.maps, maps[0].maps) <= TIGHT
        assert rel_err(e.logits, maps[0].logits) <= TIGHT


def test_smoothgrad_independent_of_batch_size(small_cnn):
    x = X16
    maps = {
        b: cnnlens.explain(small_cnn, x, "smoothgrad", target=[0, 2, 4], samples=5, noise=0.2, seed=3,
                           batch_size=b).maps
        for b in (1, 3, 16)
    }
    for b in (3, 16):
        assert rel_err(maps[b], maps[1]) <= TIGHT


@pytest.mark.parametrize("variant", ["smoothgrad_sq", "vargrad"])
def test_smoothgrad_variants_independent_of_batch_size(small_cnn, variant):
    x = X16
    a = cnnlens.explain(small_cnn, x, "smoothgrad", samples=5, noise=0.2, seed=3, variant=variant, batch_size=1)
    b = cnnlens.explain(small_cnn, x, "smoothgrad", samples=5, noise=0.2, seed=3, variant=variant, batch_size=4)
    assert rel_err(b.maps, a.maps) <= TIGHT


def test_smoothgrad_seeded(small_cnn):
    x = X16
    opts = dict(target=1, samples=4, noise=0.2)
    a = cnnlens.explain(small_cnn, x, "smoothgrad", seed=3, **opts).maps
    b = cnnlens.explain(small_cnn, x, "smoothgrad", seed=3, **opts).maps
    c = cnnlens.explain(small_cnn, x, "smoothgrad", seed=4, **opts).maps
    np.testing.assert_array_equal(a, b)
    assert rel_err(c, a) > 1e-3


def test_smoothgrad_noise_per_image_does_not_depend_on_batch_neighbours(small_cnn):
    """Image i's noise comes from its own generator: explaining image 0 alone gives the same map
    as explaining it as the first image of a batch."""
    opts = dict(target=2, samples=4, noise=0.2, seed=9)
    together = cnnlens.explain(small_cnn, X16, "smoothgrad", **opts).maps
    alone = cnnlens.explain(small_cnn, X16[:1], "smoothgrad", **opts).maps
    assert rel_err(alone[0], together[0]) <= TIGHT


def reference_smoothgrad(model: nn.Module, x: np.ndarray, classes: np.ndarray, samples: int, noise: float,
                         seed: int, draws_per_call: int):
    """Plain torch SmoothGrad: the same noise as cnnlens (one SeedSequence child per image,
    image-major, drawn ``draws_per_call`` samples at a time), gradients by torch.autograd.grad."""
    n, c, h, w = x.shape
    children = np.random.SeedSequence(seed).spawn(n)
    means, sqs, vars_ = [], [], []
    for i in range(n):
        gen = np.random.default_rng(children[i])
        sigma = np.float32(noise * float(x[i].max() - x[i].min()))
        chunks, left = [], samples
        while left:
            k = min(draws_per_call, left)
            chunks.append(gen.standard_normal((k, c, h, w), dtype=np.float32) * sigma)
            left -= k
        eps = np.concatenate(chunks)
        noisy = torch.from_numpy(x[i][None] + eps).requires_grad_(True)
        out = model(noisy)
        (g,) = torch.autograd.grad(out[:, int(classes[i])].sum(), noisy)
        g = g.numpy().astype(np.float64)
        means.append(g.mean(0))
        sqs.append((g ** 2).mean(0))
        vars_.append(g.var(0))  # population variance (ddof=0), as Captum's VarGrad
    return np.stack(means), np.stack(sqs), np.stack(vars_)


def test_smoothgrad_matches_plain_torch_reimplementation(resnet):
    x = X32[:2]
    samples, noise, seed = 6, 0.15, 21
    classes = logits_of(resnet, x).argmax(1)
    # drawing 1 or 6 at a time from one generator gives the same stream: check that assumption first
    g1, g6 = np.random.default_rng(5), np.random.default_rng(5)
    one = np.concatenate([g1.standard_normal((1, 3, 4, 4), dtype=np.float32) for _ in range(6)])
    np.testing.assert_array_equal(one, g6.standard_normal((6, 3, 4, 4), dtype=np.float32))

    mean, sq, var = reference_smoothgrad(resnet, x, classes, samples, noise, seed, draws_per_call=samples)
    got = {
        v: cnnlens.explain(resnet, x, "smoothgrad", samples=samples, noise=noise, seed=seed, variant=v,
                           batch_size=4)
        for v in ("smoothgrad", "smoothgrad_sq", "vargrad")
    }
    for e in got.values():
        np.testing.assert_array_equal(e.target, classes)
        assert e.maps.dtype == np.float32 and e.maps.shape == x.shape
    assert_close(got["smoothgrad"].maps, mean)
    assert_close(got["smoothgrad_sq"].maps, sq)
    assert_close(got["vargrad"].maps, var)
    # and the noise mattered: not the plain gradient
    sal = cnnlens.explain(resnet, x, "saliency").maps
    assert rel_err(sal, mean) > 1e-2


def test_smoothgrad_class_is_that_of_clean_image(small_cnn):
    """target=None explains the clean image's predicted class, even with strong noise."""
    x = X16
    classes = logits_of(small_cnn, x).argmax(1)
    e = cnnlens.explain(small_cnn, x, "smoothgrad", samples=3, noise=1.0, seed=0)
    np.testing.assert_array_equal(e.target, classes)
    mean, _, _ = reference_smoothgrad(small_cnn, x, classes, 3, 1.0, 0, draws_per_call=3)
    assert_close(e.maps, mean)


# ---------------------------------------------------------------- Grad-CAM layer lists

LAYERS = ["layer1", "layer2.1", "layer3", "layer4"]


def test_gradcam_layer_list_equals_single_layers(resnet):
    x = X64
    target = [6, 9]  # with these random weights, every layer's map is non-zero for these classes
    together = cnnlens.explain(resnet, x, "gradcam", target=target, layer=LAYERS)
    assert together.maps.shape == (2, len(LAYERS), 64, 64)
    assert list(together.layer) == LAYERS
    np.testing.assert_array_equal(together.target, target)
    for i, layer in enumerate(LAYERS):
        alone = cnnlens.explain(resnet, x, "gradcam", target=target, layer=layer)
        assert alone.maps.shape == (2, 64, 64)
        assert alone.layer == layer
        assert rel_err(together.maps[:, i], alone.maps) <= TIGHT


def test_gradcam_layer_list_order_only_permutes(resnet):
    x = X64
    base = cnnlens.explain(resnet, x, "gradcam", layer=LAYERS).maps
    order = [3, 0, 2, 1]
    permuted = cnnlens.explain(resnet, x, "gradcam", layer=[LAYERS[i] for i in order])
    assert list(permuted.layer) == [LAYERS[i] for i in order]
    assert rel_err(permuted.maps, base[:, order]) <= TIGHT


# ---------------------------------------------------------------- batch independence


@pytest.mark.parametrize(
    "method,options",
    [
        ("saliency", {}),
        ("gradcam", {"layer": "layer3"}),
        ("occlusion", {"window": 8, "stride": 8}),
        ("cam", {}),
    ],
    ids=["saliency", "gradcam", "occlusion", "cam"],
)
@pytest.mark.parametrize("target", [None, [3, 9, 8]], ids=["predicted", "list"])
def test_batch_gives_per_image_results(resnet, method, options, target):
    x = X32
    batch = cnnlens.explain(resnet, x, method, target=target, **options)
    for i in range(len(x)):
        t = None if target is None else target[i]
        alone = cnnlens.explain(resnet, x[i:i + 1], method, target=t, **options)
        assert alone.target[0] == batch.target[i]
        scale = np.abs(batch.maps).max()  # one image's map may be all zero (ReLU); the batch's is not
        assert rel_err(alone.maps[0], batch.maps[i], scale) <= 1e-5
        assert rel_err(alone.logits[0], batch.logits[i]) <= 1e-5


# ---------------------------------------------------------------- CAM


def test_cam_is_gradcam_on_layer4_times_area(resnet):
    x = images(2, 3, 96, 96, seed=14)  # layer4 is 3x3
    target = [5, 0]
    cam = cnnlens.explain(resnet, x, "cam", target=target)
    grad = cnnlens.explain(resnet, x, "gradcam", target=target, layer="layer4")
    a = activation_of(resnet, "layer4", torch.from_numpy(x))
    h, w = a.shape[2:]
    assert (h, w) == (3, 3)
    assert cam.maps.shape == (2, 96, 96) and cam.maps.dtype == np.float32
    np.testing.assert_array_equal(cam.target, target)
    assert_close(cam.maps, grad.maps * (h * w))


@pytest.mark.parametrize("target", [None, 4, [9, 1]], ids=["predicted", "int", "list"])
def test_cam_matches_plain_torch(resnet, target):
    x = X64
    cam = cnnlens.explain(resnet, x, "cam", target=target)
    logits = logits_of(resnet, x)
    if target is None:
        classes = logits.argmax(1)
    elif isinstance(target, int):
        classes = np.full(len(x), target)
    else:
        classes = np.asarray(target)
    np.testing.assert_array_equal(cam.target, classes)
    a = activation_of(resnet, "layer4", torch.from_numpy(x))  # (N, 512, 2, 2)
    wts = resnet.fc.weight.detach()[torch.as_tensor(classes)]  # (N, 512)
    ref = torch.relu(torch.einsum("nk,nkhw->nhw", wts, a))
    ref = F.interpolate(ref[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    # 1e-3: the map sums 512 channels that largely cancel (terms ~8x the result here), which
    # magnifies the 1e-6 rounding difference of the CPU's channels-last convolutions; with
    # channels_last off the backend matches plain (NCHW) torch far more tightly.
    assert_close(cam.maps, ref.numpy(), 1e-3)
    nchw = cnnlens.load(resnet)
    nchw.channels_last = False
    assert_close(cnnlens.explain(nchw, x, "cam", target=target).maps, ref.numpy(), 1e-4)
    assert cam.layer == "layer4"


def test_cam_small_cnn_matches_plain_torch(small_cnn):
    x = X32
    cam = cnnlens.explain(small_cnn, x, "cam", target=[0, 1, 2])
    a = activation_of(small_cnn, "relu2", torch.from_numpy(x))
    wts = small_cnn.fc.weight.detach()[[0, 1, 2]]
    ref = torch.relu(torch.einsum("nk,nkhw->nhw", wts, a))
    ref = F.interpolate(ref[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert_close(cam.maps, ref.numpy())


def test_cam_without_gap_linear_head_raises():
    torch.manual_seed(4)
    model = FlattenHead().eval()
    x = X16
    assert logits_of(model, x).shape == (3, 3)
    with pytest.raises(cnnlens.ModelError):
        cnnlens.explain(model, x, "cam")
    # gradcam still works on it
    assert cnnlens.explain(model, x, "gradcam", layer="relu").maps.shape == (3, 16, 16)


# ---------------------------------------------------------------- occlusion, by hand


class LinearScore(nn.Module):
    """logits[k] = sum_{c,h,w} W[k, c, h, w] * x[c, h, w] + b[k]: a full-image convolution."""

    def __init__(self, channels: int, h: int, w: int, classes: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, classes, (h, w), bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(classes, generator=g))

    def forward(self, x):
        return torch.flatten(self.conv(x), 1)


def starts(size: int, window: int, stride: int):
    s = list(range(0, size - window + 1, stride))
    if s[-1] + window < size:
        s.append(size - window)  # the extra window, flush with the edge
    return s


def brute_force_occlusion(weight: np.ndarray, x: np.ndarray, classes, window, stride, baseline):
    """Mean score drop per pixel; the drop of a window is sum_{window, all channels} W_c * (x - baseline)."""
    wh, ww = window
    sh, sw = stride
    n, c, h, w = x.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        contrib = (weight[classes[i]].astype(np.float64) * (x[i].astype(np.float64) - baseline)).sum(0)  # (h, w)
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for r in starts(h, wh, sh):
            for q in starts(w, ww, sw):
                drop = contrib[r:r + wh, q:q + ww].sum()
                total[r:r + wh, q:q + ww] += drop
                count[r:r + wh, q:q + ww] += 1
        assert (count > 0).all(), "every pixel must be covered by some window"
        out[i] = total / count
    return out


@pytest.mark.parametrize(
    "size,window,stride",
    [
        ((14, 11), 4, 3),        # rows 0,3,6,9 + flush 10; cols 0,3,6 + flush 7: overlapping windows
        ((13, 13), 5, 3),        # 0,3,6 + flush 8
        ((12, 12), 4, 4),        # disjoint windows, no flush needed
        ((10, 9), (3, 4), (2, 3)),  # rectangular windows and strides
        ((9, 9), 9, 2),          # one window covering the whole image
        ((7, 8), 1, 1),          # single pixels
    ],
)
@pytest.mark.parametrize("baseline", [0.0, 0.25])
def test_occlusion_hand_computed_linear_model(size, window, stride, baseline):
    h, w = size
    c = 2
    model = LinearScore(c, h, w, classes=3, seed=h * 100 + w).eval()
    x = images(2, c, h, w, seed=h + w)
    classes = [2, 0]
    exp = cnnlens.explain(model, x, "occlusion", target=classes, window=window, stride=stride, baseline=baseline)
    win = (window, window) if isinstance(window, int) else window
    std = (stride, stride) if isinstance(stride, int) else stride
    ref = brute_force_occlusion(model.conv.weight.detach().numpy(), x, classes, win, std, baseline)
    assert exp.maps.shape == (2, h, w)
    assert np.isfinite(exp.maps).all()
    assert_close(exp.maps, ref)


def test_occlusion_flush_window_values():
    """H=10, window 4, stride 4: windows at 0, 4 and the flush one at 6. Pixels 8..9 are covered only
    by the flush window; pixels 6..7 by the windows at 4 and 6."""
    c, h, w = 1, 10, 4
    model = LinearScore(c, h, w, classes=1, seed=0).eval()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
    x = np.zeros((1, c, h, w), dtype=np.float32)
    x[0, 0, :, :] = np.arange(h, dtype=np.float32)[:, None]  # row r has value r on every column
    exp = cnnlens.explain(model, x, "occlusion", target=0, window=(4, 4), stride=(4, 4), baseline=0.0)
    row_drop = {s: 4 * sum(range(s, s + 4)) for s in (0, 4, 6)}  # 4 columns each
    expected = np.array([row_drop[0]] * 4 + [row_drop[4]] * 2 + [(row_drop[4] + row_drop[6]) / 2] * 2
                        + [row_drop[6]] * 2, dtype=np.float64)
    np.testing.assert_allclose(exp.maps[0], np.repeat(expected[:, None], w, axis=1), rtol=1e-6)


def test_occlusion_runs_the_model_on_the_occluded_images():
    """The linear shortcut above is checked against real forward passes of occluded copies."""
    c, h, w = 2, 9, 7
    model = LinearScore(c, h, w, classes=2, seed=1).eval()
    x = images(1, c, h, w, seed=2)
    exp = cnnlens.explain(model, x, "occlusion", target=1, window=3, stride=2, baseline=0.5)
    clean = logits_of(model, x)[0, 1]
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for r in starts(h, 3, 2):
        for q in starts(w, 3, 2):
            occ = x.copy()
            occ[:, :, r:r + 3, q:q + 3] = 0.5
            drop = clean - logits_of(model, occ)[0, 1]
            total[r:r + 3, q:q + 3] += drop
            count[r:r + 3, q:q + 3] += 1
    assert_close(exp.maps[0], total / count)


# ---------------------------------------------------------------- Score-CAM


def reference_scorecam(model: nn.Module, layer: str, x: np.ndarray, classes) -> np.ndarray:
    xt = torch.from_numpy(x)
    acts = activation_of(model, layer, xt)  # (N, K, h, w)
    n, k = acts.shape[:2]
    H, W = x.shape[2:]
    out = []
    with torch.no_grad():
        for i in range(n):
            up = F.interpolate(acts[i:i + 1], size=(H, W), mode="bilinear", align_corners=False)[0]  # (K, H, W)
            lo = up.amin(dim=(1, 2), keepdim=True)
            hi = up.amax(dim=(1, 2), keepdim=True)
            span = hi - lo
            masks = torch.where(span > 0, (up - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                                torch.zeros_like(up))
            scores = model(xt[i][None] * masks[:, None])[:, int(classes[i])]  # (K,)
            beta = torch.softmax(scores.double(), 0).float()
            cam = torch.relu((beta[:, None, None] * acts[i]).sum(0))
            out.append(F.interpolate(cam[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(out).numpy()


@pytest.fixture(scope="module")
def scorecam_cnn():
    torch.manual_seed(5)
    model = SmallCNN(classes=4, width=6)
    with torch.no_grad():
        model.conv2.bias[0] = -1e3  # a dead channel: constant activation, its mask must be 0
    return model.eval()


@pytest.mark.parametrize("layer", ["relu2", "pool", "relu1"])
@pytest.mark.parametrize("target", [None, [3, 0, 1]], ids=["predicted", "list"])
def test_scorecam_matches_plain_torch(scorecam_cnn, layer, target):
    x = X32
    logits = logits_of(scorecam_cnn, x)
    classes = logits.argmax(1) if target is None else np.asarray(target)
    if layer == "relu2":
        assert (activation_of(scorecam_cnn, layer, torch.from_numpy(x))[:, 0] == 0).all()
    exp = cnnlens.explain(scorecam_cnn, x, "scorecam", target=target, layer=layer)
    ref = reference_scorecam(scorecam_cnn, layer, x, classes)
    np.testing.assert_array_equal(exp.target, classes)
    assert exp.layer == layer
    assert exp.maps.shape == (3, 32, 32) and exp.maps.dtype == np.float32
    assert_close(exp.maps, ref)


def test_scorecam_independent_of_batch_size(scorecam_cnn):
    x = X32
    a = cnnlens.explain(scorecam_cnn, x, "scorecam", layer="relu2", batch_size=1).maps
    b = cnnlens.explain(scorecam_cnn, x, "scorecam", layer="relu2", batch_size=5).maps
    assert rel_err(b, a) <= 1e-5


# ---------------------------------------------------------------- targets


def test_target_none_is_argmax(small_cnn):
    x = X16
    logits = logits_of(small_cnn, x)
    e = cnnlens.explain(small_cnn, x, "saliency")
    np.testing.assert_array_equal(e.target, logits.argmax(1))
    assert e.target.shape == (3,)
    assert np.issubdtype(e.target.dtype, np.integer)
    assert_close(e.logits, logits, 1e-5)
    explicit = cnnlens.explain(small_cnn, x, "saliency", target=[int(t) for t in logits.argmax(1)])
    np.testing.assert_array_equal(e.maps, explicit.maps)


def _input_grad(model, x, classes):
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt)
    (g,) = torch.autograd.grad(out[torch.arange(len(x)), torch.as_tensor(classes)].sum(), xt)
    return g.numpy()


@pytest.mark.parametrize(
    "target,classes",
    [
        (3, [3, 3, 3]),
        (np.int64(1), [1, 1, 1]),
        ([4, 0, 2], [4, 0, 2]),
        ((2, 2, 1), [2, 2, 1]),
        (np.array([0, 3, 4]), [0, 3, 4]),
        (np.array([1, 1, 0], dtype=np.int32), [1, 1, 0]),
    ],
    ids=["int", "numpy-int", "list", "tuple", "ndarray", "ndarray-int32"],
)
def test_target_forms(small_cnn, target, classes):
    x = X16
    e = cnnlens.explain(small_cnn, x, "saliency", target=target)
    np.testing.assert_array_equal(e.target, classes)
    assert_close(e.maps, _input_grad(small_cnn, x, classes))


@pytest.mark.parametrize("method,options", [
    ("saliency", {}), ("gradcam", {"layer": "relu2"}), ("occlusion", {"window": 8, "stride": 8}),
    ("cam", {}), ("scorecam", {"layer": "relu2"}), ("smoothgrad", {"samples": 2}),
    ("guided_backprop", {}),
])
@pytest.mark.parametrize("bad", [[0, 1], [0, 1, 2, 3], np.array([1, 2]), 5, -1, [0, 5, 1], [0, -1, 1], 99],
                         ids=["short-list", "long-list", "short-array", "out-of-range", "negative",
                              "list-out-of-range", "list-negative", "far-out"])
def test_bad_targets_raise_target_error(small_cnn, method, options, bad):
    with pytest.raises(cnnlens.TargetError):
        cnnlens.explain(small_cnn, X16, method, target=bad, **options)


def test_target_error_is_a_cnnlens_error(small_cnn):
    with pytest.raises(cnnlens.CnnlensError) as info:
        cnnlens.explain(small_cnn, X16, "saliency", target=[1])
    assert "3" in str(info.value)  # says how many images there are
    with pytest.raises(cnnlens.TargetError) as info:
        cnnlens.explain(small_cnn, X16, "saliency", target=7)
    assert "7" in str(info.value) and "4" in str(info.value)  # the bad target and the range 0..4
