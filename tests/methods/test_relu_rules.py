"""Guided backpropagation and deconvnet against an independent plain-PyTorch reference.

The reference is written here from METHODS.md, not from cnnlens: every small model below
routes each of its ReLUs through ``self.r(t, own)``, which calls the model's own ReLU
(``F.relu``, ``torch.relu``, ``Tensor.relu_``, an ``nn.ReLU`` module, ...) normally, and the
reference ``torch.autograd.Function`` (``RefGuided`` / ``RefDeconv``) when ``rule`` is set on a
deep copy. The reference input gradient of ``sum_i y_{c_i}`` is then compared with cnnlens,
which runs the unmodified model and intercepts its ReLUs itself.

    guided backward:   1{s>0} * 1{g>0} * g      (s = the ReLU's input, g = incoming gradient)
    deconvnet backward:          1{g>0} * g
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlens
from tests.helpers import randomise_batchnorm

NUM_CLASSES = 10


# ---------------------------------------------------------------- the reference rules


class RefGuided(torch.autograd.Function):
    """max(s, 0) forward; ``1{s>0} 1{g>0} g`` backward."""

    @staticmethod
    def forward(ctx, s):
        ctx.save_for_backward(s)
        return torch.where(s > 0, s, torch.zeros_like(s))

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        keep = (s > 0) & (g > 0)
        return torch.where(keep, g, torch.zeros_like(g))


class RefDeconv(torch.autograd.Function):
    """max(s, 0) forward; ``1{g>0} g`` backward (the ReLU's input plays no part)."""

    @staticmethod
    def forward(ctx, s):
        return torch.where(s > 0, s, torch.zeros_like(s))

    @staticmethod
    def backward(ctx, g):
        return torch.where(g > 0, g, torch.zeros_like(g))


RULES = {"guided_backprop": RefGuided, "deconvnet": RefDeconv, "saliency": None}


class RefReLU(nn.Module):
    """A module calling a reference rule, to swap into a copy of a model built from nn.ReLU modules."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def forward(self, t):
        return self.rule.apply(t)


# ---------------------------------------------------------------- small models, one ReLU style each


class _Net(nn.Module):
    rule = None  # None: the model's own ReLU; RefGuided / RefDeconv: the reference (set on a copy)

    def r(self, t, own):
        return own(t) if self.rule is None else self.rule.apply(t)


class _TwoConv(_Net):
    """conv -> relu -> conv(stride 2) -> relu -> conv -> relu -> flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, NUM_CLASSES)

    relus = (None, None, None)

    def forward(self, x):
        a, b, c = self.relus
        h = self.r(self.conv1(x), a)
        h = self.r(self.conv2(h), b)
        h = self.r(self.conv3(h), c)
        return self.fc(h.flatten(1))


class FunctionalRelu(_TwoConv):
    """(a) ``F.relu``, also with ``inplace=True`` (keyword and positional)."""

    relus = (F.relu, lambda t: F.relu(t, inplace=True), lambda t: F.relu(t, True))


class TorchRelu(_TwoConv):
    """(b) ``torch.relu`` and ``torch.relu_``."""

    relus = (torch.relu, torch.relu_, torch.relu)


class TensorRelu(_TwoConv):
    """(c) ``Tensor.relu()`` and ``Tensor.relu_()``."""

    relus = (lambda t: t.relu(), lambda t: t.relu_(), lambda t: t.relu())


class ModuleInplace(_Net):
    """(d) separate ``nn.ReLU(inplace=True)`` modules, after batch norm."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        h = self.r(self.bn1(self.conv1(x)), self.relu1)
        h = self.r(self.bn2(self.conv2(h)), self.relu2)
        return self.fc(h.mean(dim=(2, 3)))


class ReusedModule(_Net):
    """(e) one ``nn.ReLU`` module called three times."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        h = self.r(self.conv1(x), self.relu)
        h = self.r(self.conv2(h), self.relu)
        h = F.adaptive_max_pool2d(h, 4)
        h = self.r(self.fc1(h.flatten(1)), self.relu)
        return self.fc2(h)


class SkipThroughRelu(_Net):
    """(f) a ReLU whose input also feeds a skip path: ``h = relu(z) + 0.5 z``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, NUM_CLASSES)

    def forward(self, x):
        z = self.conv1(x)
        h = self.r(z, self.relu) + 0.5 * z
        z = self.conv2(h)
        h = self.r(z, self.relu) + 0.5 * z
        return self.fc(F.adaptive_avg_pool2d(h, 4).flatten(1))


class _Block(_Net):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        r = self.r
        identity = x
        out = r(self.bn1(self.conv1(x)), self.relu)
        out = self.bn2(self.conv2(out))
        out += identity
        return r(out, self.relu)


class ResidualNet(_Net):
    """(g) two residual blocks with in-place ``out += identity`` and in-place ReLU modules."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.block1 = _Block(8)
        self.block2 = _Block(8)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        h = self.r(self.bn(self.stem(x)), self.relu)
        h = self.block2(self.block1(h))
        return self.fc(h.mean(dim=(2, 3)))


MODELS = {
    "a_F_relu": FunctionalRelu,
    "b_torch_relu": TorchRelu,
    "c_tensor_relu": TensorRelu,
    "d_module_inplace": ModuleInplace,
    "e_reused_module": ReusedModule,
    "f_skip_through_relu": SkipThroughRelu,
    "g_residual_inplace_add": ResidualNet,
}


def make(name, seed=0):
    torch.manual_seed(seed)
    model = MODELS[name]()
    randomise_batchnorm(model)
    return model.eval()


def images(n=2, size=16, seed=0):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, 3, size, size)).astype(np.float32)


# ---------------------------------------------------------------- reference gradients


def reference(model, x, classes, method):
    """(input gradient of sum_i y_{c_i} with ``method``'s ReLU rule, logits), computed on a copy."""
    ref = copy.deepcopy(model).eval()
    rule = RULES[method]
    if isinstance(ref, _Net):
        for m in ref.modules():
            if isinstance(m, _Net):
                m.rule = rule
    elif rule is not None:  # a model built from nn.ReLU modules (torchvision): swap the modules
        for parent in list(ref.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU):
                    setattr(parent, child_name, RefReLU(rule))
        assert not any(isinstance(m, nn.ReLU) for m in ref.modules())
    xt = torch.tensor(x, requires_grad=True)
    logits = ref(xt)
    y = logits[torch.arange(len(x)), torch.as_tensor(np.asarray(classes), dtype=torch.long)].sum()
    (grad,) = torch.autograd.grad(y, xt)
    return grad.numpy(), logits.detach().numpy()


def assert_close(actual, expected, rtol=1e-5):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    scale = float(np.abs(expected).max())
    assert scale > 0, "a reference that is all zeros proves nothing"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-6 * scale)


def assert_differs(a, b, what):
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()))
    assert np.abs(a - b).max() > 1e-3 * scale, f"{what} should differ"


# ---------------------------------------------------------------- the comparisons


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "saliency"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_reference(name, method):
    model = make(name)
    x = images()
    exp = cnnlens.explain(model, x, method)
    ref_logits = reference(model, x, [0, 0], "saliency")[1]
    classes = ref_logits.argmax(1)
    np.testing.assert_array_equal(exp.target, classes)
    np.testing.assert_allclose(exp.logits, ref_logits, rtol=1e-5, atol=1e-6)
    expected, _ = reference(model, x, classes, method)
    assert exp.maps.shape == x.shape
    assert_close(exp.maps, expected)


@pytest.mark.parametrize("name", list(MODELS))
def test_rules_actually_change_the_gradient(name):
    """Sanity: on every model the three rules give three different maps, so matching the
    reference above is not matching the plain gradient by accident."""
    model = make(name)
    x = images()
    maps = {m: cnnlens.explain(model, x, m, target=3).maps for m in ("saliency", "guided_backprop", "deconvnet")}
    assert_differs(maps["guided_backprop"], maps["saliency"], "guided vs plain")
    assert_differs(maps["deconvnet"], maps["saliency"], "deconvnet vs plain")
    assert_differs(maps["guided_backprop"], maps["deconvnet"], "guided vs deconvnet")
    # and the reference agrees that they differ the way cnnlens says
    for m, got in maps.items():
        assert_close(got, reference(model, x, [3, 3], m)[0])


def test_saliency_is_plain_autograd_grad():
    model = make("g_residual_inplace_add")
    x = images(n=2)
    xt = torch.tensor(x, requires_grad=True)
    logits = model(xt)
    (grad,) = torch.autograd.grad(logits[0, 4] + logits[1, 6], xt)
    exp = cnnlens.explain(model, x, "saliency", target=[4, 6])
    assert_close(exp.maps, grad.numpy())


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_torchvision_resnet18(method):
    """nn.ReLU(inplace=True) modules each called twice per block, ``out += identity``, batch norm."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    randomise_batchnorm(model)
    model.eval()
    x = images(n=1, size=32, seed=3)
    exp = cnnlens.explain(model, x, method, target=7)
    expected, logits = reference(model, x, [7], method)
    np.testing.assert_allclose(exp.logits, logits, rtol=1e-5, atol=1e-6)
    assert_close(exp.maps, expected)
    assert_differs(exp.maps, reference(model, x, [7], "saliency")[0], f"{method} vs plain")


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "saliency"])
def test_int_target_explains_that_class_for_every_image(method):
    model = make("f_skip_through_relu")
    x = images(n=3, seed=5)
    exp = cnnlens.explain(model, x, method, target=2)
    np.testing.assert_array_equal(exp.target, [2, 2, 2])
    assert_close(exp.maps, reference(model, x, [2, 2, 2], method)[0])


@pytest.mark.parametrize("as_type", [list, tuple, np.array])
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_per_image_targets(method, as_type):
    model = make("c_tensor_relu")
    x = images(n=3, seed=6)
    classes = [1, 8, 5]
    exp = cnnlens.explain(model, x, method, target=as_type(classes))
    np.testing.assert_array_equal(exp.target, classes)
    expected = reference(model, x, classes, method)[0]
    assert_close(exp.maps, expected)
    # each image is explained for its own class only: not for the others'
    other = reference(model, x, [8, 5, 1], method)[0]
    for i in range(3):
        assert_differs(exp.maps[i], other[i], f"image {i} for its class vs another class")


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_batching_does_not_change_the_maps(method):
    model = make("e_reused_module")
    x = images(n=3, seed=7)
    whole = cnnlens.explain(model, x, method, target=[0, 4, 9])
    one_by_one = cnnlens.explain(model, x, method, target=[0, 4, 9], batch_size=1)
    np.testing.assert_allclose(one_by_one.maps, whole.maps, rtol=1e-5, atol=1e-6 * np.abs(whole.maps).max())
    for i, c in enumerate([0, 4, 9]):
        single = cnnlens.explain(model, x[i:i + 1], method, target=c)
        assert_close(single.maps[0], reference(model, x[i:i + 1], [c], method)[0][0])


@pytest.mark.parametrize("base", ["guided_backprop", "deconvnet"])
def test_smoothgrad_without_noise_uses_the_rule(base):
    """SmoothGrad with ``noise=0`` and base=guided/deconv is that rule's gradient at x."""
    model = make("a_F_relu")
    x = images(n=2, seed=8)
    exp = cnnlens.explain(model, x, "smoothgrad", target=[3, 4], samples=2, noise=0.0, base=base)
    assert_close(exp.maps, reference(model, x, [3, 4], base)[0])


# ---------------------------------------------------------------- the reference has teeth


def _naive_input_hook_guided(model, x, classes):
    """The classic hook-based guided backprop: a forward hook on each nn.ReLU module registers a
    tensor hook on the ReLU's *input* that clamps the gradient arriving there. That gradient is the
    sum over every use of the input, skip paths included, so the rule is applied to the wrong thing."""
    m = copy.deepcopy(model).eval()
    handles = []

    def fwd(module, inputs, output):
        inputs[0].register_hook(lambda g: g.clamp(min=0))

    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            handles.append(mod.register_forward_hook(fwd))
    xt = torch.tensor(x, requires_grad=True)
    logits = m(xt)
    y = logits[torch.arange(len(x)), torch.as_tensor(classes)].sum()
    (grad,) = torch.autograd.grad(y, xt)
    for h in handles:
        h.remove()
    return grad.numpy()


def _naive_module_backward_hook_guided(model, x, classes):
    """Guided backprop with full backward hooks on nn.ReLU modules: misses functional ReLUs."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.register_full_backward_hook(lambda module, gin, gout: (gin[0].clamp(min=0),))
    xt = torch.tensor(x, requires_grad=True)
    logits = m(xt)
    y = logits[torch.arange(len(x)), torch.as_tensor(classes)].sum()
    (grad,) = torch.autograd.grad(y, xt)
    return grad.numpy()


def test_naive_hook_implementation_is_right_without_skip_and_wrong_with_skip():
    classes = [2, 5]
    x = images(n=2, seed=9)
    plain = make("e_reused_module")  # every ReLU's input feeds only that ReLU
    assert_close(_naive_input_hook_guided(plain, x, classes), reference(plain, x, classes, "guided_backprop")[0])
    skip = make("f_skip_through_relu")
    truth = reference(skip, x, classes, "guided_backprop")[0]
    assert_differs(_naive_input_hook_guided(skip, x, classes), truth, "input-hook guided backprop on a skip path")
    assert_close(cnnlens.explain(skip, x, "guided_backprop", target=classes).maps, truth)


def test_module_backward_hooks_miss_functional_relus():
    classes = [2, 5]
    x = images(n=2, seed=10)
    modular = make("e_reused_module")
    assert_close(_naive_module_backward_hook_guided(modular, x, classes),
                 reference(modular, x, classes, "guided_backprop")[0])
    functional = make("a_F_relu")
    truth = reference(functional, x, classes, "guided_backprop")[0]
    assert_differs(_naive_module_backward_hook_guided(functional, x, classes), truth,
                   "module-hook guided backprop on F.relu")
    assert_close(cnnlens.explain(functional, x, "guided_backprop", target=classes).maps, truth)


def test_reference_rules_on_a_hand_computed_case():
    """The reference Functions themselves, on one ReLU: s = [-1, 2, 3, -4], g = [5, -6, 7, 8]."""
    s = torch.tensor([-1.0, 2.0, 3.0, -4.0], requires_grad=True)
    g = torch.tensor([5.0, -6.0, 7.0, 8.0])
    (guided,) = torch.autograd.grad(RefGuided.apply(s), s, g)
    (deconv,) = torch.autograd.grad(RefDeconv.apply(s), s, g)
    (plain,) = torch.autograd.grad(torch.relu(s), s, g)
    assert guided.tolist() == [0.0, 0.0, 7.0, 0.0]
    assert deconv.tolist() == [5.0, 0.0, 7.0, 8.0]
    assert plain.tolist() == [0.0, -6.0, 7.0, 0.0]
    assert RefGuided.apply(s).tolist() == RefDeconv.apply(s).tolist() == [0.0, 2.0, 3.0, 0.0]


def test_cnnlens_rules_on_a_one_relu_model():
    """The whole model is ``y = W relu(x)``: the input gradient is the rule applied to W[c] itself."""

    class OneRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2, bias=False)
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[5.0, -6.0, 7.0, 8.0], [1.0, 1.0, 1.0, 1.0]]))

        def forward(self, x):
            return self.fc(F.relu(x).flatten(1))

    x = np.array([-1.0, 2.0, 3.0, -4.0], dtype=np.float32).reshape(1, 1, 2, 2)
    model = OneRelu()
    got = {m: cnnlens.explain(model, x, m, target=0).maps.reshape(-1).tolist()
           for m in ("guided_backprop", "deconvnet", "saliency")}
    assert got["guided_backprop"] == [0.0, 0.0, 7.0, 0.0]
    assert got["deconvnet"] == [5.0, 0.0, 7.0, 8.0]
    assert got["saliency"] == [0.0, -6.0, 7.0, 0.0]
