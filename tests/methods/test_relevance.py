"""LRP and DeepLIFT: a hand-computed case, conservation, the rule table, options, the torch backend's
state safety, torch.export programs, a final Softmax, and tf2onnx/Keras (NHWC) files against a float64
NumPy reference of the rules (tests/relevance_reference.py). The peers' parity (zennit, Captum) is
tests/methods/test_relevance_peers.py."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_onnx
from cnnlens.core.relevance import COMPOSITES, box_of
from tests.helpers import one_torch_thread
from tests.relevance_reference import deeplift_reference, lrp_reference

KERAS = "tests/data/keras/keras_{}_opset13.onnx"


@pytest.fixture(autouse=True)
def _threads():
    yield from one_torch_thread()


def _mlp(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6, bias=bias), nn.ReLU(), nn.Linear(6, 3, bias=bias)).eval()


def test_epsilon_rule_by_hand_on_a_two_layer_network():
    """R = a W (R / (z + eps sign z)) layer by layer, from R_out = onehot * y, in float64 by hand."""
    model = _mlp()
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    w1, b1 = (p.detach().double().numpy() for p in (model[1].weight, model[1].bias))
    w2, b2 = (p.detach().double().numpy() for p in (model[3].weight, model[3].bias))
    eps = 0.01
    exp = cnnlens.explain(model, x, "lrp", composite="epsilon", epsilon=eps, target=[0, 2])
    stab = lambda z: z + eps * np.where(z >= 0, 1.0, -1.0)  # noqa: E731
    for n, c in enumerate([0, 2]):
        a0 = x[n].reshape(-1).astype(np.float64)
        z1 = w1 @ a0 + b1
        a1 = np.maximum(z1, 0)
        z2 = w2 @ a1 + b2
        r2 = np.zeros(3)
        r2[c] = z2[c]
        r1 = a1 * (w2.T @ (r2 / stab(z2)))   # ReLU passes relevance unchanged
        r0 = a0 * (w1.T @ (r1 / stab(z1)))
        np.testing.assert_allclose(exp.maps[n].reshape(-1), r0, rtol=1e-5, atol=1e-6)
        assert exp.extras["explained_score"][n] == pytest.approx(z2[c], rel=1e-5)


def test_epsilon_rule_conserves_without_biases():
    exp = cnnlens.explain(_mlp(bias=False), np.random.default_rng(1).standard_normal((3, 3, 2, 2)).astype(np.float32),
                          "lrp", composite="epsilon", epsilon=1e-9)
    np.testing.assert_allclose(exp.extras["relevance_sum"], exp.extras["explained_score"], rtol=1e-5)
    np.testing.assert_allclose(exp.extras["conservation_error"],
                               exp.extras["relevance_sum"] - exp.extras["explained_score"])


def test_composites_give_the_rules_zennit_does():
    table = {name: (c.rule("conv", True), c.rule("conv", False), c.rule("dense", True), c.rule("dense", False))
             for name, c in COMPOSITES.items()}
    assert table == {
        "epsilon_plus_flat": ("flat", "zplus", "flat", "epsilon"),
        "epsilon_gamma_box": ("zbox", "gamma", "epsilon", "epsilon"),
        "epsilon_alpha2_beta1": ("alpha2beta1", "alpha2beta1", "epsilon", "epsilon"),
        "epsilon_alpha2_beta1_flat": ("flat", "alpha2beta1", "flat", "epsilon"),
        "epsilon": ("epsilon", "epsilon", "epsilon", "epsilon"),
    }
    low, high = box_of()
    assert low[0] == pytest.approx(-0.485 / 0.229) and high[2] == pytest.approx((1 - 0.406) / 0.225)


@pytest.mark.parametrize("options,message", [
    (dict(composite="epsilon_plus"), "composite must be one of"),
    (dict(composite="epsilon_gamma_box", low=-1.0), "give both low= and high="),
    (dict(composite="epsilon_gamma_box", low=1.0, high=-1.0), "low must be below high"),
    (dict(composite="epsilon_gamma_box", low=[-1, -1], high=[1, 1]), "the zB box gives 2 bounds"),
    (dict(epsilon=0.0), "epsilon must be"),
    (dict(low="a", high=1), "low must be a number or one number per channel"),
])
def test_options_are_checked(options, message):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(cnnlens.InvalidInputError, match=message):
        cnnlens.explain(model, np.zeros((1, 3, 8, 8), np.float32), "lrp", **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_command_line_box_follows_its_mean_and_std():
    from cnnlens.cli.common import method_options

    args = argparse.Namespace(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], composite="epsilon_gamma_box",
                              low=None, high=None, epsilon=None, gamma=None, batch_size=None)
    got = method_options("lrp", args)
    assert got["low"] == (-2.0, -2.0, -2.0) and got["high"] == (2.0, 2.0, 2.0)
    args.low, args.high = (-1.0,), (1.0,)
    assert method_options("lrp", args)["low"] == (-1.0,)


class _Residual(nn.Module):
    """Conv-BN-ReLU, a residual sum written as ``+=`` and ``torch.add``, a functional average pool and a
    final Softmax: every op the relevance mode replaces."""

    def __init__(self, softmax: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc, self.softmax = nn.Linear(6, 4), softmax
        self.bias_like = nn.Parameter(torch.full((1, 6, 1, 1), 0.05))

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(a))
        out += a
        out = torch.nn.functional.relu(torch.add(out, 0.1 * a))  # a second sum of two computed tensors
        out = out + self.bias_like  # a constant added: the plain gradient
        y = self.fc(torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))
        return y.softmax(1) if self.softmax else y


def _residual(softmax: bool = False) -> nn.Module:
    torch.manual_seed(3)
    model = _Residual(softmax)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_the_user_model_is_untouched_and_other_threads_unaffected():
    model = _residual()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(2).standard_normal((2, 3, 10, 10)).astype(np.float32)
    with torch.no_grad():
        plain = model.eval()(torch.from_numpy(x)).numpy()
    model.train()
    seen = []

    def other_thread():
        with torch.no_grad():
            seen.append(model.eval()(torch.from_numpy(x)).numpy())
    for method in ("lrp", "deeplift"):
        worker = threading.Thread(target=other_thread)
        worker.start()
        exp = cnnlens.explain(model, x, method)
        worker.join()
        assert np.isfinite(exp.maps).all() and np.abs(exp.maps).max() > 0
    model.train()  # the other thread's eval(): put back what the user had
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())
    for got in seen:  # plain forward passes in another thread never saw the rules
        np.testing.assert_allclose(got, plain, rtol=1e-6)
    from torch.overrides import _get_current_function_mode_stack
    assert not _get_current_function_mode_stack()


def test_canonization_is_said_and_a_final_softmax_is_skipped(tmp_path):
    x = np.random.default_rng(4).standard_normal((2, 3, 10, 10)).astype(np.float32)
    plain = cnnlens.explain(_residual(), x, "lrp", target=1)
    soft = cnnlens.explain(_residual(softmax=True), x, "lrp", target=1)
    notes = " ".join(plain.extras["canonization"])
    assert "BatchNorm merged into the Conv/Linear before it: 2" in notes
    assert "residual sums split in proportion (z-rule): 2" in notes and "average pools" in notes
    assert "final Softmax was skipped" in " ".join(soft.extras["canonization"])
    np.testing.assert_allclose(soft.maps, plain.maps, rtol=1e-5, atol=1e-7)
    # the same from the ONNX export (its BatchNorms folded by the exporter) and from a .pt2 program
    path = str(tmp_path / "residual.onnx")
    to_onnx(_residual(softmax=True), path, input_shape=(3, 10, 10))
    onnx_exp = cnnlens.explain(path, x, "lrp", target=1)
    scale = np.abs(plain.maps).max()
    assert np.abs(onnx_exp.maps - plain.maps).max() <= 1e-4 * scale
    assert "final Softmax was skipped" in " ".join(onnx_exp.extras["canonization"])
    program = torch.export.export(_residual(), (torch.from_numpy(x),))
    for method in ("lrp", "deeplift"):
        want = cnnlens.explain(_residual(), x, method, target=1).maps
        got = cnnlens.explain(program, x, method, target=1).maps
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), method


def test_deeplift_sums_to_the_difference_without_max_pooling():
    """Summation-to-delta holds exactly (to float32) where no MaxPool passes its plain gradient."""
    model = _residual()
    x = np.random.default_rng(5).standard_normal((2, 3, 10, 10)).astype(np.float32)
    exp = cnnlens.explain(model, x, "deeplift", baseline=0.1)
    with torch.no_grad():
        gap = (model(torch.from_numpy(x)) - model(torch.full((1, 3, 10, 10), 0.1))).numpy()
    gap = gap[np.arange(2), exp.target]
    assert np.abs(exp.extras["delta"]).max() <= 1e-4 * np.abs(gap).max()


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_like"])
@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_keras_nhwc_files_against_a_float64_reference(name, composite):
    path = KERAS.format(name)
    backend = cnnlens.load(path)
    assert backend.layout == "NHWC"
    c, h, w = backend.image_shape
    x = np.random.default_rng(6).standard_normal((2, c, h, w)).astype(np.float32)
    # epsilon everywhere with zennit's 1e-6 divides by float32 rounding at near-zero outputs: an epsilon
    # that stabilises (as the rule is meant to be used) compares the rule, not the rounding
    epsilon = 0.01 if composite == "epsilon" else 1e-6
    exp = cnnlens.explain(backend, x, "lrp", composite=composite, epsilon=epsilon)
    want = lrp_reference(path, x, exp.target, composite, epsilon=epsilon)
    assert np.abs(exp.maps - want).max() <= 1e-4 * np.abs(want).max(), composite


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_like"])
def test_keras_deeplift_against_a_float64_reference(name):
    path = KERAS.format(name)
    backend = cnnlens.load(path)
    c, h, w = backend.image_shape
    x = np.random.default_rng(7).standard_normal((2, c, h, w)).astype(np.float32)
    exp = cnnlens.explain(backend, x, "deeplift", baseline=0.2)
    want, delta = deeplift_reference(path, x, exp.target, baseline=0.2)
    assert np.abs(exp.maps - want).max() <= 1e-4 * np.abs(want).max()
    np.testing.assert_allclose(exp.extras["delta"], delta, atol=1e-4 * np.abs(want).sum(axis=(1, 2, 3)).max())


def test_the_randomisation_test_reports_relevance_maps_as_they_are():
    """LRP is known to pass some model-randomisation tests poorly (its maps stay image-like): the test's
    numbers come back for it as for any method, nothing hidden."""
    from cnnlens.metrics import randomisation_test

    model = _residual()
    x = np.random.default_rng(8).standard_normal((2, 3, 10, 10)).astype(np.float32)
    found = randomisation_test(model, x, ["lrp", "deeplift"], steps=2)
    for method in ("lrp", "deeplift"):
        steps = found[method]
        assert len(steps) == 2 and all(np.isfinite(s["spearman"]) and np.isfinite(s["ssim"]) for s in steps)
        assert steps[-1]["spearman"] < 0.999  # the randomised model's map did change
