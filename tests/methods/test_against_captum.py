"""cnnlens maps checked value by value against Captum 0.9, where Captum is known to be right.

Models are torchvision architectures with seeded random weights (and randomised BatchNorm
statistics, so no layer is a plain identity); inputs are small so the file stays fast on CPU.
Agreement is measured as max|a - b| / max|b| <= 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
captum_attr = pytest.importorskip("captum.attr")

from torch import nn  # noqa: E402

import cnnlens  # noqa: E402
from tests.helpers import assert_close, images, randomise_batchnorm, rel_err  # noqa: E402

from captum.attr import (  # noqa: E402
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
    Saliency,
)

RTOL = 1e-4


# ---------------------------------------------------------------- helpers


def captum_target(target, logits: np.ndarray):
    """What Captum is told for a cnnlens target (Captum has no 'predicted class' shortcut)."""
    if target is None:
        return [int(v) for v in np.argmax(logits, axis=1)]
    return target


def expected_classes(target, logits: np.ndarray) -> np.ndarray:
    n = len(logits)
    if target is None:
        return np.argmax(logits, axis=1)
    if isinstance(target, int):
        return np.full(n, target)
    return np.asarray(target)


def logits_of(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    return randomise_batchnorm(model, 100).eval()


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(1)
    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3)
    return randomise_batchnorm(model, 101).eval()


class PlainCNN(nn.Sequential):
    """A Sequential CNN with a distinct, not-in-place nn.ReLU after every layer: Captum's module
    hooks see every ReLU exactly once, so its guided backprop / deconvnet are right here."""

    def __init__(self, classes: int = 5):
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
            nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(12, 16), nn.ReLU(),
            nn.Linear(16, classes),
        )


@pytest.fixture(scope="module")
def plain_cnn():
    torch.manual_seed(2)
    return PlainCNN().eval()


@pytest.fixture(scope="module")
def models(resnet, densenet):
    return {"resnet18": resnet, "densenet": densenet}


X64 = images(2, 3, 64, 64, seed=7)
X32 = images(3, 3, 32, 32, seed=8)

# target as None (predicted), one int for all, one int per image (valid for >= 3 classes)
TARGETS = [None, 2, [1, 0]]


# ---------------------------------------------------------------- saliency


@pytest.mark.parametrize("target", TARGETS, ids=["predicted", "int", "list"])
@pytest.mark.parametrize("name", ["resnet18", "densenet"])
def test_saliency_matches_captum(models, name, target):
    model = models[name]
    x = X64
    exp = cnnlens.explain(model, x, "saliency", target=target)
    logits = logits_of(model, x)
    ref = Saliency(model).attribute(torch.from_numpy(x), target=captum_target(target, logits), abs=False)
    assert exp.maps.dtype == np.float32
    assert exp.maps.shape == x.shape
    np.testing.assert_array_equal(exp.target, expected_classes(target, logits))
    assert_close(exp.logits, logits, 1e-5)
    assert_close(exp.maps, ref.detach().numpy())


# ---------------------------------------------------------------- Grad-CAM


def captum_gradcam(model: nn.Module, layer: str, x: np.ndarray, target) -> np.ndarray:
    module = dict(model.named_modules())[layer]
    attr = LayerGradCam(model, module).attribute(torch.from_numpy(x), target=target, relu_attributions=True)
    up = LayerAttribution.interpolate(attr, tuple(x.shape[2:]), interpolate_mode="bilinear")
    return up.detach().numpy()[:, 0]


GRADCAM_CASES = [
    ("resnet18", "layer4"),
    ("resnet18", "layer3"),
    ("resnet18", "layer2.0.conv1"),
    ("densenet", "features.denseblock2"),
    ("densenet", "features"),
]


@pytest.mark.parametrize("target", TARGETS, ids=["predicted", "int", "list"])
@pytest.mark.parametrize("name,layer", GRADCAM_CASES, ids=[f"{m}-{l}" for m, l in GRADCAM_CASES])
def test_gradcam_matches_captum(models, name, layer, target):
    model = models[name]
    x = X64
    exp = cnnlens.explain(model, x, "gradcam", target=target, layer=layer)
    logits = logits_of(model, x)
    ref = captum_gradcam(model, layer, x, captum_target(target, logits))
    assert exp.maps.dtype == np.float32
    assert exp.maps.shape == (len(x),) + x.shape[2:]
    assert exp.layer == layer
    np.testing.assert_array_equal(exp.target, expected_classes(target, logits))
    assert (exp.maps >= 0).all()
    assert_close(exp.maps, ref)


def test_gradcam_layer_list_matches_captum_per_layer(resnet):
    layers = ["layer4", "layer2.0.conv1", "layer3"]
    x = X64
    exp = cnnlens.explain(resnet, x, "gradcam", target=[3, 5], layer=layers)
    assert exp.maps.shape == (len(x), len(layers)) + x.shape[2:]
    assert list(exp.layer) == layers
    for i, layer in enumerate(layers):
        assert_close(exp.maps[:, i], captum_gradcam(resnet, layer, x, [3, 5]))


# ---------------------------------------------------------------- occlusion


@pytest.mark.parametrize(
    "window,stride,baseline",
    [(8, 4, 0.0), (8, 4, 0.5), (16, 8, 0.0), (16, 8, 0.5), (16, 16, 0.0), (16, 16, 0.5), (12, 4, 0.5)],
)
def test_occlusion_matches_captum(resnet, window, stride, baseline):
    x = X32[:2]
    n, c, h, w = x.shape
    assert (h - window) % stride == 0  # the case where captum and cnnlens agree by definition
    target = [4, 7]
    exp = cnnlens.explain(resnet, x, "occlusion", target=target, window=window, stride=stride, baseline=baseline)
    ref = Occlusion(resnet).attribute(
        torch.from_numpy(x), target=target, sliding_window_shapes=(c, window, window),
        strides=(c, stride, stride), baselines=baseline,
    ).detach().numpy()
    assert ref.shape == x.shape
    # Captum's window spans all channels, so its map is constant along the channel axis
    for ch in range(1, c):
        np.testing.assert_allclose(ref[:, ch], ref[:, 0], rtol=0, atol=1e-6 * np.abs(ref).max())
    assert exp.maps.dtype == np.float32
    assert exp.maps.shape == (n, h, w)
    np.testing.assert_array_equal(exp.target, target)
    assert_close(exp.maps, ref[:, 0])


def test_occlusion_matches_captum_predicted_class_densenet(densenet):
    x = X64
    c = x.shape[1]
    logits = logits_of(densenet, x)
    exp = cnnlens.explain(densenet, x, "occlusion", window=8, stride=8, baseline=0.0)
    ref = Occlusion(densenet).attribute(
        torch.from_numpy(x), target=[int(t) for t in logits.argmax(1)], sliding_window_shapes=(c, 8, 8),
        strides=(c, 8, 8), baselines=0.0,
    ).detach().numpy()
    np.testing.assert_array_equal(exp.target, logits.argmax(1))
    assert_close(exp.maps, ref[:, 0])


# ---------------------------------------------------------------- guided backprop / deconvnet


@pytest.mark.parametrize("target", [None, 3, [0, 4, 2]], ids=["predicted", "int", "list"])
@pytest.mark.parametrize(
    "method,captum_cls", [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)],
    ids=["guided_backprop", "deconvnet"],
)
def test_relu_rule_methods_match_captum(plain_cnn, method, captum_cls, target):
    x = X32
    logits = logits_of(plain_cnn, x)
    exp = cnnlens.explain(plain_cnn, x, method, target=target)
    ref = captum_cls(plain_cnn).attribute(torch.from_numpy(x), target=captum_target(target, logits))
    np.testing.assert_array_equal(exp.target, expected_classes(target, logits))
    assert exp.maps.shape == x.shape
    assert_close(exp.maps, ref.detach().numpy())
    # the rules really changed something: the result is not the plain gradient
    plain = cnnlens.explain(plain_cnn, x, "saliency", target=target).maps
    assert rel_err(plain, ref.detach().numpy()) > 1e-2


def test_deconvnet_and_guided_backprop_leave_model_hooks_free(plain_cnn):
    """Sanity for the comparison above: Captum removes its hooks, cnnlens installs none on modules."""
    for m in plain_cnn.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks


def test_guided_gradcam_matches_captum_bilinear(plain_cnn):
    x = X32
    target = [1, 2, 3]
    layer = "6"  # the third ReLU, 16x16
    exp = cnnlens.explain(plain_cnn, x, "guided_gradcam", target=target, layer=layer)
    ref = GuidedGradCam(plain_cnn, plain_cnn[6]).attribute(
        torch.from_numpy(x), target=target, interpolate_mode="bilinear"
    ).detach().numpy()
    assert exp.maps.shape == x.shape
    assert_close(exp.maps, ref)


# ---------------------------------------------------------------- SmoothGrad with zero noise


@pytest.mark.parametrize("name", ["resnet18", "densenet"])
def test_smoothgrad_zero_noise_is_saliency(models, name):
    model = models[name]
    x = X64
    sal = cnnlens.explain(model, x, "saliency", target=[2, 0]).maps.astype(np.float64)
    common = dict(target=[2, 0], samples=3, noise=0.0, seed=5)
    mean = cnnlens.explain(model, x, "smoothgrad", variant="smoothgrad", **common)
    sq = cnnlens.explain(model, x, "smoothgrad", variant="smoothgrad_sq", **common)
    var = cnnlens.explain(model, x, "smoothgrad", variant="vargrad", **common)
    for e in (mean, sq, var):
        assert e.maps.dtype == np.float32 and e.maps.shape == x.shape
        np.testing.assert_array_equal(e.target, [2, 0])
    assert_close(mean.maps, sal, 1e-5)
    assert_close(sq.maps, sal ** 2, 1e-5)
    # the variance of identical gradients is zero (up to the rounding of their mean)
    assert np.abs(var.maps).max() <= 1e-10 * (sal ** 2).max()


def test_smoothgrad_zero_noise_matches_captum_saliency_guided_base(plain_cnn):
    x = X32
    ref = GuidedBackprop(plain_cnn).attribute(torch.from_numpy(x), target=[0, 1, 2]).detach().numpy()
    exp = cnnlens.explain(plain_cnn, x, "smoothgrad", target=[0, 1, 2], samples=2, noise=0.0,
                          base="guided_backprop")
    assert_close(exp.maps, ref)
