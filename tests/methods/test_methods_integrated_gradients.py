"""Integrated Gradients, Input x Gradient and SmoothGrad over them, checked value by value.

- ``integrated_gradients`` against Captum 0.9's ``IntegratedGradients`` for every quadrature rule
  and three kinds of baseline (0, one value per channel, an image), maps and completeness errors
  (Captum's convergence delta); the completeness identity on a smooth model with many steps.
- ``input_x_gradient`` against Captum's ``InputXGradient``.
- ``smoothgrad`` with ``base="input_x_gradient"`` / ``"integrated_gradients"`` against a plain-torch
  re-implementation fed the same noise (``np.random.SeedSequence(seed).spawn(N)``, one generator
  per image, ``standard_normal((samples, C, H, W), float32) * sigma``,
  ``sigma = noise * (max(x_i) - min(x_i))``).
- The ONNX export gives the same integrated gradients as the torch module.
- Bad options raise ``cnnlens.InvalidInputError``.

Agreement: max|a - b| / max|b| <= 1e-4. Models have seeded random weights (randomised BatchNorm
statistics); images are small.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("captum")
pytest.importorskip("onnxruntime")

from captum.attr import InputXGradient, IntegratedGradients  # noqa: E402
from torch import nn  # noqa: E402

import cnnlens  # noqa: E402
from cnnlens.adapters.export import to_onnx  # noqa: E402
from tests.helpers import check_per_image, images, one_torch_thread, randomise_batchnorm  # noqa: E402

RTOL = 1e-4
RULES = ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]
STEPS = 8
C, H, W = 3, 40, 48
MEASURED = {}


# ---------------------------------------------------------------- models and data


@pytest.fixture(scope="module", autouse=True)
def _threads():
    yield from one_torch_thread()


def small_cnn(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU blocks, max pooling, a two-layer head: piecewise linear, like most classifiers."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(C, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5),
    )
    return randomise_batchnorm(model, seed + 10).eval()


def smooth_cnn(seed: int = 3) -> nn.Module:
    """Softplus / Tanh only: the path integrand is smooth, so Gauss-Legendre converges fast. The
    weights are scaled up so that Tanh saturates and the path is far from linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(C, 8, 3, padding=1), nn.Softplus(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.Tanh(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(3)
        model[2].weight.mul_(3)
        model[6].weight.mul_(10)
    return model


def linear_cnn(seed: int = 4) -> nn.Module:
    """No nonlinearity at all: the gradient is the same everywhere on the path."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(C, 6, 3, padding=1), nn.AvgPool2d(4), nn.Flatten(),
                         nn.Linear(6 * (H // 4) * (W // 4), 3)).eval()


@pytest.fixture(scope="module")
def model():
    return small_cnn()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomise_batchnorm(torchvision.models.resnet18(weights=None), 1).eval()


@pytest.fixture(scope="module")
def x():
    return images(2, C, H, W, seed=21)


def baseline_of(kind: str):
    """(the cnnlens baseline, the same as Captum takes it: a number or a (1, C, H, W) tensor)."""
    if kind == "zero":
        return 0.0, 0.0
    if kind == "per_channel":
        value = np.array([0.3, -0.2, 0.1], dtype=np.float32)
        return value, torch.from_numpy(np.broadcast_to(value[:, None, None], (1, C, H, W)).copy())
    value = images(1, C, H, W, seed=99)[0] * np.float32(0.5)
    return value, torch.from_numpy(value[None].copy())


def scores(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).double().numpy()


def check(name, got: np.ndarray, ref: np.ndarray, tol: float = RTOL) -> float:
    return check_per_image(name, got, ref, tol, MEASURED)


def captum_ig(model, x, baseline, classes, steps, rule):
    ig = IntegratedGradients(model)
    attr, delta = ig.attribute(torch.from_numpy(x), baselines=baseline, target=[int(c) for c in classes],
                               n_steps=steps, method=rule, return_convergence_delta=True)
    return attr.detach().numpy(), delta.detach().double().numpy()


# ---------------------------------------------------------------- Integrated Gradients vs Captum


@pytest.mark.parametrize("kind", ["zero", "per_channel", "image"])
@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_matches_captum(model, x, rule, kind):
    ours_baseline, captum_baseline = baseline_of(kind)
    target = None if kind == "zero" else [1, 4]
    exp = cnnlens.explain(model, x, "integrated_gradients", target=target, steps=STEPS, rule=rule,
                          baseline=ours_baseline)
    classes = np.asarray(exp.target)
    expected = scores(model, x).argmax(1) if target is None else np.asarray(target)
    np.testing.assert_array_equal(classes, expected)
    ref, delta = captum_ig(model, x, captum_baseline, classes, STEPS, rule)
    assert exp.maps.shape == x.shape
    check(("ig", rule, kind), exp.maps, ref)

    completeness = np.asarray(exp.extras["completeness_error"], dtype=np.float64)
    assert completeness.shape == (len(x),)
    reference = np.broadcast_to(np.asarray(ours_baseline, np.float32).reshape(
        (C, 1, 1) if np.ndim(ours_baseline) == 1 else np.shape(ours_baseline)), x.shape)
    y_x, y_b = scores(model, x)[np.arange(len(x)), classes], scores(model, reference)[np.arange(len(x)), classes]
    scale = np.maximum.reduce([np.abs(y_x), np.abs(y_b), np.abs(y_x - y_b)])
    err = np.abs(completeness - delta) / scale
    MEASURED[("delta", rule, kind)] = float(err.max())
    assert (err <= RTOL).all(), f"completeness error {completeness} vs Captum's delta {delta}"
    # and it is what it says: sum of the attributions minus the change of the score
    own = exp.maps.reshape(len(x), -1).sum(axis=1, dtype=np.float64) - (y_x - y_b)
    assert np.abs(completeness - own).max() <= RTOL * scale.max()


class ChannelsLast(nn.Module):
    """The model fed channels_last tensors, as cnnlens's torch backend runs convolutional models on CPU."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, t):
        return self.model(t.contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("kind", ["zero", "image"])
def test_integrated_gradients_resnet18_matches_captum(resnet, kind):
    """resnet18 (float32, piecewise linear): 1e-4 against Captum fed the same memory layout as the
    backend. Against plain (contiguous) Captum only the bulk must agree to 1e-4 and the maximum to
    1e-2: a ReLU whose input is within float32 rounding of 0 at one of the path's points can switch
    in one layout and not the other, which moves a patch of that point's gradient. Measured with
    the image baseline: at alpha = 0.592 a unit of layer1 has pre-activation +2e-7 in float32
    channels_last (batch of 8) but <= 0 in float64 and in float32 contiguous; 280 of the point's
    12288 gradient values move, max error 6.2e-4 of max|attr|; plain torch does the same."""
    x = images(2, C, 64, 64, seed=22)
    ours_baseline, captum_baseline = 0.0, 0.0
    if kind == "image":
        ours_baseline = images(1, C, 64, 64, seed=98)[0] * np.float32(0.5)
        captum_baseline = torch.from_numpy(ours_baseline[None].copy())
    backend = cnnlens.load(resnet)
    exp = cnnlens.explain(backend, x, "integrated_gradients", steps=STEPS, baseline=ours_baseline)
    same_layout = ChannelsLast(resnet) if getattr(backend, "channels_last", False) else resnet
    ref, delta = captum_ig(same_layout, x, captum_baseline, exp.target, STEPS, "gausslegendre")
    check(("ig-resnet18", kind), exp.maps, ref)
    scale = np.abs(exp.logits).max()
    err = np.abs(np.asarray(exp.extras["completeness_error"]) - delta).max() / scale
    MEASURED[("delta-resnet18", kind)] = float(err)
    assert err <= RTOL

    plain, _ = captum_ig(resnet, x, captum_baseline, exp.target, STEPS, "gausslegendre")
    for i in range(len(x)):
        err = np.abs(exp.maps[i].astype(np.float64) - plain[i]) / np.abs(plain[i]).max()
        MEASURED[("ig-resnet18-contiguous", kind, i, "max")] = float(err.max())
        MEASURED[("ig-resnet18-contiguous", kind, i, "fraction > 1e-4")] = float((err > RTOL).mean())
        assert (err > RTOL).mean() <= 0.02 and err.max() <= 1e-2


def test_completeness_with_many_steps():
    """On a smooth, far-from-linear model, 128 Gauss-Legendre points make the sum of the attributions
    equal the change of the score (|error| <= 1e-5 |y(x) - y(x')|), while 4 points leave an error
    many times larger."""
    net = smooth_cnn()
    x = images(3, C, H, W, seed=23)
    baseline = np.array([0.5, -0.5, 0.25], dtype=np.float32)
    classes = [0, 1, 3]
    fine = cnnlens.explain(net, x, "integrated_gradients", target=classes, steps=128, baseline=baseline)
    coarse = cnnlens.explain(net, x, "integrated_gradients", target=classes, steps=4, baseline=baseline)
    rows = np.arange(len(x))
    gap = (scores(net, x)[rows, classes]
           - scores(net, np.broadcast_to(baseline[:, None, None], x.shape))[rows, classes])
    assert (np.abs(gap) > 0.1).all(), gap
    error = np.abs(np.asarray(fine.extras["completeness_error"], dtype=np.float64))
    MEASURED[("completeness-128/|gap|",)] = float((error / np.abs(gap)).max())
    assert (error <= 1e-5 * np.abs(gap)).all(), f"completeness errors {error} against gaps {gap}"
    summed = fine.maps.reshape(len(x), -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(summed, gap, rtol=1e-5)
    coarse_error = np.abs(np.asarray(coarse.extras["completeness_error"], dtype=np.float64))
    MEASURED[("completeness-4/|gap|",)] = float((coarse_error / np.abs(gap)).max())
    assert coarse_error.max() > 10 * error.max()


@pytest.mark.parametrize("rule", RULES)
def test_rule_weights_on_a_linear_model(rule):
    """With a constant gradient every rule returns (x - x') * grad * sum(weights): the weights sum to 1,
    except Captum's riemann_trapezoid, whose n weights are 1/n with both ends halved (sum 1 - 1/n),
    so its completeness error is -(y(x) - y(x')) / n. cnnlens follows Captum here, as documented."""
    net = linear_cnn()
    x = images(2, C, H, W, seed=26)
    steps = 5
    exp = cnnlens.explain(net, x, "integrated_gradients", target=[0, 2], steps=steps, rule=rule, baseline=0.25)
    grads = torch_gradients(net, x, np.array([0, 2]))  # the same at every point
    total = 1 - 1 / steps if rule == "riemann_trapezoid" else 1.0
    check(("linear", rule), exp.maps, ((x - np.float32(0.25)) * grads * total).astype(np.float32))
    gap = scores(net, x)[[0, 1], [0, 2]] - scores(net, np.full_like(x, 0.25))[[0, 1], [0, 2]]
    np.testing.assert_allclose(exp.extras["completeness_error"], (total - 1) * gap,
                               rtol=0, atol=1e-5 * np.abs(gap).max())


def test_integrated_gradients_does_not_depend_on_batch_size(model, x):
    options = dict(steps=5, rule="riemann_middle", baseline=baseline_of("per_channel")[0])
    default = cnnlens.explain(model, x, "integrated_gradients", **options)
    odd = cnnlens.explain(model, x, "integrated_gradients", batch_size=3, **options)  # batches straddle images
    check(("ig-batch_size=3",), odd.maps, default.maps, tol=1e-5)
    np.testing.assert_allclose(odd.extras["completeness_error"], default.extras["completeness_error"],
                               rtol=0, atol=1e-5 * np.abs(default.logits).max())


# ---------------------------------------------------------------- Input x Gradient


@pytest.mark.parametrize("target", [None, [2, 0]])
def test_input_x_gradient_matches_captum(model, resnet, x, target):
    for net, xs, name in [(model, x, "small"), (resnet, images(2, C, 64, 64, seed=24), "resnet18")]:
        exp = cnnlens.explain(net, xs, "input_x_gradient", target=target)
        ref = InputXGradient(net).attribute(torch.from_numpy(xs), target=[int(c) for c in exp.target])
        check(("input_x_gradient", name, str(target)), exp.maps, ref.detach().numpy())


# ---------------------------------------------------------------- SmoothGrad, re-implemented


def torch_gradients(net, points: np.ndarray, classes: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).requires_grad_()
    out = net(t)
    out[torch.arange(len(points)), torch.as_tensor(classes)].sum().backward()
    return t.grad.numpy()


def base_attribution(net, points: np.ndarray, cls: int, base: str, steps: int) -> np.ndarray:
    classes = np.full(len(points), cls)
    if base == "input_x_gradient":
        return points * torch_gradients(net, points, classes)
    # integrated gradients from baseline 0 with Gauss-Legendre points, as Captum 0.9 places them
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = 0.5 * (1 + nodes), 0.5 * weights
    total = np.zeros(points.shape, dtype=np.float64)
    for a, w in zip(alphas, weights):
        total += w * torch_gradients(net, np.float32(a) * points, classes)
    return (points * total).astype(np.float32)


def smoothgrad_reference(net, x, classes, base, samples, noise, seed, steps=4, variant="smoothgrad"):
    generators = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(x))]
    out = np.empty(x.shape, dtype=np.float64)
    for n in range(len(x)):
        sigma = noise * (float(x[n].max()) - float(x[n].min()))
        eps = generators[n].standard_normal((samples,) + x.shape[1:], dtype=np.float32) * np.float32(sigma)
        maps = base_attribution(net, x[n][None] + eps, int(classes[n]), base, steps).astype(np.float64)
        out[n] = {"smoothgrad": maps.mean(0), "smoothgrad_sq": (maps ** 2).mean(0), "vargrad": maps.var(0)}[variant]
    return out.astype(np.float32)


@pytest.mark.parametrize("base, variant", [
    ("input_x_gradient", "smoothgrad"), ("integrated_gradients", "smoothgrad"),
    ("input_x_gradient", "smoothgrad_sq"), ("input_x_gradient", "vargrad"),
])
def test_smoothgrad_over_a_base_matches_a_torch_reimplementation(model, x, base, variant):
    options = dict(samples=5, noise=0.2, seed=7, base=base, variant=variant)
    if base == "integrated_gradients":
        options["base_options"] = {"steps": 4}
    exp = cnnlens.explain(model, x, "smoothgrad", **options)
    classes = scores(model, x).argmax(1)  # the unperturbed images' classes are explained
    np.testing.assert_array_equal(np.asarray(exp.target), classes)
    ref = smoothgrad_reference(model, x, classes, base, 5, 0.2, 7, variant=variant)
    check(("smoothgrad", base, variant), exp.maps, ref)
    # the noise is drawn per image: another batching, the same maps
    odd = cnnlens.explain(model, x, "smoothgrad", batch_size=3, **options)
    check(("smoothgrad-batch_size=3", base, variant), odd.maps, exp.maps, tol=1e-5)


def test_smoothgrad_integrated_gradients_on_resnet18(resnet):
    x = images(2, C, 64, 64, seed=25)
    options = dict(samples=3, noise=0.15, seed=1, base="integrated_gradients", base_options={"steps": 4})
    exp = cnnlens.explain(resnet, x, "smoothgrad", target=[5, 600], **options)
    ref = smoothgrad_reference(resnet, x, [5, 600], "integrated_gradients", 3, 0.15, 1)
    check(("smoothgrad-resnet18", "integrated_gradients"), exp.maps, ref)


# ---------------------------------------------------------------- ONNX export


@pytest.fixture(scope="module")
def onnx_model(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ig") / "small.onnx")
    to_onnx(model, path, input_shape=(C, H, W))
    return cnnlens.load(path)


@pytest.mark.parametrize("rule, kind", [("gausslegendre", "zero"), ("riemann_trapezoid", "per_channel"),
                                        ("riemann_middle", "image")])
def test_onnx_export_gives_the_same_integrated_gradients(model, onnx_model, x, rule, kind):
    options = dict(steps=STEPS, rule=rule, baseline=baseline_of(kind)[0])
    torch_exp = cnnlens.explain(model, x, "integrated_gradients", **options)
    onnx_exp = cnnlens.explain(onnx_model, x, "integrated_gradients", target=torch_exp.target, **options)
    np.testing.assert_array_equal(np.asarray(onnx_exp.target), np.asarray(torch_exp.target))
    check(("onnx-ig", rule, kind), onnx_exp.maps, torch_exp.maps)
    scale = np.abs(torch_exp.logits).max()
    err = np.abs(np.asarray(onnx_exp.extras["completeness_error"]) -
                 np.asarray(torch_exp.extras["completeness_error"])).max() / scale
    MEASURED[("onnx-delta", rule, kind)] = float(err)
    assert err <= RTOL
    # and through cnnlens.compare, the module as the reference
    result = cnnlens.compare(model, onnx_model, x, "integrated_gradients", **options)
    assert result.worst_relative_error <= RTOL and result.classes_agree


def test_onnx_smoothgrad_over_integrated_gradients(model, onnx_model, x):
    options = dict(samples=3, seed=2, base="integrated_gradients", base_options={"steps": 3, "rule": "riemann_left"})
    a = cnnlens.explain(model, x, "smoothgrad", **options)
    b = cnnlens.explain(onnx_model, x, "smoothgrad", **options)
    check(("onnx-smoothgrad-ig",), b.maps, a.maps)


# ---------------------------------------------------------------- bad options


@pytest.mark.parametrize("options", [
    dict(steps=1), dict(steps=0), dict(steps=-3), dict(rule="simpson"), dict(rule="gauss"),
    dict(baseline=np.zeros(5, np.float32)),                 # neither one per channel nor broadcastable
    dict(baseline=np.zeros((C, 5, 5), np.float32)),         # an image of the wrong size
    dict(baseline=np.zeros((2, C, H, W), np.float32)),      # a batch, not one image
    dict(baseline="black"),
])
def test_bad_integrated_gradients_options(model, x, options):
    with pytest.raises(cnnlens.InvalidInputError):
        cnnlens.explain(model, x, "integrated_gradients", **options)


@pytest.mark.parametrize("options", [
    dict(base="integrated_gradients", base_options={"steps": 1}),
    dict(base="integrated_gradients", base_options={"rule": "simpson"}),
    dict(base="integrated_gradients", base_options={"baseline": np.zeros((C, 5, 5), np.float32)}),
    dict(base="input_x_gradient", base_options={"steps": 4}),  # input_x_gradient has no steps
])
def test_bad_smoothgrad_base_options(model, x, options):
    with pytest.raises(cnnlens.InvalidInputError):
        cnnlens.explain(model, x, "smoothgrad", samples=2, **options)


def teardown_module(module):
    for key, err in sorted(MEASURED.items(), key=str):
        print(f"{key}: {err:.3g}")
