"""A cnnlens call never changes the model it explains.

After every method -- and after calls that raise half-way -- no hook is left on any module (nor
globally), every module's ``training`` flag is exactly what it was, ``requires_grad`` flags,
parameter ``.grad`` (None or a tensor) and every state_dict value (BN running statistics) are
unchanged, and the ReLU-rule mode is gone (a plain torch ReLU differentiates normally again).
Explanations are computed in eval mode, so a model left in train mode gives the same maps, and
inside ``torch.no_grad()`` / ``torch.inference_mode()`` calls give the same maps as outside.
Grad-CAM's backward pass stops at the earliest requested layer, and Grad-CAM on a layer whose
output is later modified in place agrees with a plain-PyTorch Grad-CAM.
"""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.modules.module as torch_module
from torch import nn

import cnnlens
from tests.helpers import randomise_batchnorm

NUM_CLASSES = 10


# ---------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """conv-BN-ReLU(inplace)-Dropout2d, conv-BN-ReLU, GAP -> linear (a CAM head)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(0.5)
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, NUM_CLASSES)

    def forward(self, x):
        h = self.drop(self.relu1(self.bn1(self.conv1(x))))
        h = self.block(h)
        return self.fc(self.pool(h).flatten(1))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    model = SmallCNN()
    randomise_batchnorm(model, mean_scale=0.2)
    return model


def resnet18(seed=0):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    randomise_batchnorm(model, mean_scale=0.2)
    return model


def images(n=1, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def prepare(model, state):
    """Put the model in a given mode, freeze some parameters and give some a pre-existing .grad."""
    if state == "train":
        model.train()
    elif state == "eval":
        model.eval()
    elif state == "mixed":  # flags no single .train()/.eval() call produces
        model.train()
        mods = [m for _, m in model.named_modules()]
        for i, m in enumerate(mods):
            m.training = (i % 3 != 1)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(5)
    for i, p in enumerate(params):
        if i % 4 == 1:
            p.requires_grad_(False)
        if i % 3 == 0:
            p.grad = torch.randn(p.shape, generator=g)
    return model


# ---------------------------------------------------------------- the snapshot


def _hook_counts(obj):
    return {k: len(v) for k, v in vars(obj).items() if "hook" in k and isinstance(v, dict)}


def _global_hooks():
    return {k: len(v) for k, v in vars(torch_module).items()
            if k.startswith("_global") and "hook" in k and isinstance(v, dict)}


def snapshot(model):
    return {
        "modules": [(name, type(m), id(m)) for name, m in model.named_modules()],
        "training": {name: m.training for name, m in model.named_modules()},
        "hooks": {name: _hook_counts(m) for name, m in model.named_modules()},
        "patched": {name: sorted(k for k in vars(m) if k in ("forward", "__call__", "_call_impl"))
                    for name, m in model.named_modules()},
        "inplace": {name: getattr(m, "inplace", None) for name, m in model.named_modules()},
        "global_hooks": _global_hooks(),
        "param_ids": {n: id(p) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "tensor_hooks": {n: (len(p._backward_hooks) if p._backward_hooks else 0)
                         for n, p in model.named_parameters()},
        "grad": {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "grad_ids": {n: (None if p.grad is None else id(p.grad)) for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "versions": {k: v._version for k, v in model.state_dict(keep_vars=True).items()},
        "grad_mode": (torch.is_grad_enabled(), torch.is_inference_mode_enabled()),
        "mode_stack": torch._C._len_torch_function_stack(),
    }


def assert_unchanged(before, model):
    after = snapshot(model)
    for key in ("modules", "training", "hooks", "patched", "inplace", "global_hooks", "param_ids",
                "requires_grad", "tensor_hooks", "grad_ids", "versions", "grad_mode", "mode_stack"):
        assert after[key] == before[key], f"{key} changed"
    for n, g in before["grad"].items():
        if g is None:
            assert after["grad"][n] is None, f"{n}.grad appeared"
        else:
            assert torch.equal(after["grad"][n], g), f"{n}.grad changed"
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"state_dict[{k!r}] changed"


def assert_relu_is_plain():
    """A ReLU-rule mode left active would turn these plain gradients into guided / deconvnet ones."""
    assert torch._C._len_torch_function_stack() == 0
    s = torch.tensor([-1.0, 2.0, 3.0, -4.0], requires_grad=True)
    g = torch.tensor([5.0, -6.0, 7.0, 8.0])
    expected = [0.0, -6.0, 7.0, 0.0]
    for relu in (F.relu, torch.relu, lambda t: t.relu(), nn.ReLU(), lambda t: F.relu(t * 1, inplace=True),
                 lambda t: (t * 1).relu_()):
        (grad,) = torch.autograd.grad(relu(s), s, g)
        assert grad.tolist() == expected


# ---------------------------------------------------------------- the methods on each model


SMALL_CALLS = {
    "saliency": dict(),
    "guided_backprop": dict(),
    "deconvnet": dict(),
    "smoothgrad": dict(samples=3),
    "gradcam": dict(layer=["bn1", "block.2", "block"]),
    "guided_gradcam": dict(layer="block.1"),
    "cam": dict(),
    "scorecam": dict(layer="block.2"),
    "occlusion": dict(window=8, stride=8),
    "feature_maps": dict(layer="relu1"),
}

RESNET_CALLS = {
    "saliency": dict(),
    "guided_backprop": dict(),
    "deconvnet": dict(),
    "smoothgrad": dict(samples=3),
    "gradcam": dict(layer=["layer1.0.bn2", "layer2", "layer3.1.conv2"]),
    "guided_gradcam": dict(layer="layer2.1"),
    "cam": dict(),
    "occlusion": dict(window=8, stride=8),
    "feature_maps": dict(layer="layer1"),
}


def _eval_maps(model, x, method, options, target=3):
    """The same call on an eval-mode copy with every parameter trainable and no .grad."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(True)
        p.grad = None
    return cnnlens.explain(ref, x, method, target=target, **options)


def _check_call(model, x, method, options):
    expected = _eval_maps(model, x, method, options)
    before = snapshot(model)
    exp = cnnlens.explain(model, x, method, target=3, **options)
    assert_unchanged(before, model)
    assert_relu_is_plain()
    # explained in eval mode, whatever mode the model was left in, and frozen parameters do not matter
    np.testing.assert_allclose(exp.maps, expected.maps, rtol=1e-5, atol=1e-6 * max(1e-12, np.abs(expected.maps).max()))
    np.testing.assert_allclose(exp.logits, expected.logits, rtol=1e-5, atol=1e-6)
    if method in ("saliency", "smoothgrad", "guided_backprop", "deconvnet", "gradcam", "guided_gradcam", "cam"):
        assert np.abs(exp.maps).max() > 0
    return exp


@pytest.mark.parametrize("state", ["train", "mixed", "eval"])
@pytest.mark.parametrize("method", list(SMALL_CALLS))
def test_small_cnn_unchanged(method, state):
    model = prepare(small_cnn(), state)
    _check_call(model, images(n=2, seed=1), method, SMALL_CALLS[method])


@pytest.fixture(scope="module")
def resnet_template():
    return resnet18()


@pytest.mark.parametrize("method", list(RESNET_CALLS))
def test_resnet18_unchanged(resnet_template, method):
    """Mixed flags: two thirds of the modules (most BNs among them) in training mode, the rest not."""
    model = prepare(copy.deepcopy(resnet_template), "mixed")
    assert any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    _check_call(model, images(n=1, seed=2), method, RESNET_CALLS[method])


def test_train_mode_result_is_the_eval_mode_gradient():
    """In train mode, dropout would randomise and BN would use batch statistics: cnnlens explains the
    eval-mode model, so its saliency equals a plain autograd gradient of the eval-mode model."""
    model = prepare(small_cnn(), "train")
    x = images(n=2, seed=3)
    exp1 = cnnlens.explain(model, x, "saliency", target=[1, 2])
    exp2 = cnnlens.explain(model, x, "saliency", target=[1, 2])
    np.testing.assert_array_equal(exp1.maps, exp2.maps)
    ref = copy.deepcopy(model).eval()
    xt = torch.tensor(x, requires_grad=True)
    logits = ref(xt)
    (grad,) = torch.autograd.grad(logits[0, 1] + logits[1, 2], xt)
    np.testing.assert_allclose(exp1.maps, grad.numpy(), rtol=1e-5, atol=1e-6 * grad.abs().max().item())
    assert all(m.training for m in model.modules())


def test_fully_frozen_model():
    """No parameter requires grad: Grad-CAM still has a graph from the layer on, nothing gets unfrozen."""
    model = small_cnn().eval()
    trainable = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    x = images(n=2, seed=4)
    for method, options in (("gradcam", dict(layer=["conv1", "block.2"])), ("saliency", {}),
                            ("guided_gradcam", dict(layer="block")), ("smoothgrad", dict(samples=3))):
        before = snapshot(model)
        got = cnnlens.explain(model, x, method, target=[4, 5], **options)
        assert_unchanged(before, model)
        want = cnnlens.explain(trainable, x, method, target=[4, 5], **options)
        np.testing.assert_allclose(got.maps, want.maps, rtol=1e-6, atol=1e-7 * np.abs(want.maps).max())
        assert np.abs(want.maps).max() > 0


# ---------------------------------------------------------------- calls that raise


class Bomb(nn.Module):
    """Raises in its forward while armed."""

    def __init__(self):
        super().__init__()
        self.armed = False
        self.exc = RuntimeError

    def forward(self, x):
        if self.armed:
            raise self.exc("boom on purpose")
        return x


class BackwardBomb(torch.autograd.Function):
    armed = False

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        if BackwardBomb.armed:
            raise RuntimeError("backward boom on purpose")
        return g


class Tuple2(nn.Module):
    def forward(self, x):
        return x, x


class Fragile(nn.Module):
    """SmallCNN with a Bomb after the first block, a backward bomb, and a tuple-returning module."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.3)
        self.bomb = Bomb()
        self.pair = Tuple2()
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, NUM_CLASSES)

    def forward(self, x):
        h = self.drop(self.relu1(self.bn1(self.conv1(x))))
        h = self.bomb(h)
        h = self.pair(h)[0]
        h = F.relu(self.bn2(self.conv2(BackwardBomb.apply(h))))
        return self.fc(h.mean(dim=(2, 3)))


def fragile(state="mixed"):
    torch.manual_seed(0)
    model = Fragile()
    randomise_batchnorm(model, mean_scale=0.2)
    return prepare(model, state)


def _raise_in_callback(logits):
    raise KeyError("callback boom on purpose")


FAILURES = {
    "unknown_layer": (lambda m, x: cnnlens.explain(m, x, "gradcam", layer=["bn1", "conv_2"]), cnnlens.LayerError),
    "unknown_layer_feature_maps": (lambda m, x: cnnlens.explain(m, x, "feature_maps", layer="bn3"), cnnlens.LayerError),
    "target_out_of_range_gradcam": (lambda m, x: cnnlens.explain(m, x, "gradcam", target=10, layer=["bn1", "bn2"]),
                                    cnnlens.TargetError),
    "target_out_of_range_guided": (lambda m, x: cnnlens.explain(m, x, "guided_backprop", target=[0, 99]),
                                   cnnlens.TargetError),
    "target_out_of_range_occlusion": (lambda m, x: cnnlens.explain(m, x, "occlusion", target=-1, window=8, stride=8),
                                      cnnlens.TargetError),
    "target_out_of_range_feature_maps": (lambda m, x: cnnlens.explain(m, x, "feature_maps", target=10, layer="bn2"),
                                         cnnlens.TargetError),
    "tuple_layer": (lambda m, x: cnnlens.explain(m, x, "gradcam", layer=["bn1", "pair"]), cnnlens.LayerError),
    "forward_raises_gradcam": (lambda m, x: cnnlens.explain(m, x, "gradcam", layer=["bn1", "relu1", "bn2"]),
                               (RuntimeError, cnnlens.CnnlensError), "bomb"),
    "forward_raises_guided": (lambda m, x: cnnlens.explain(m, x, "guided_backprop"),
                              (RuntimeError, cnnlens.CnnlensError), "bomb"),
    "forward_raises_valueerror_deconv": (lambda m, x: cnnlens.explain(m, x, "deconvnet"), ValueError, "bomb_value"),
    "forward_raises_feature_maps": (lambda m, x: cnnlens.explain(m, x, "feature_maps", layer="bn1"),
                                    (RuntimeError, cnnlens.CnnlensError), "bomb"),
    "backward_raises_gradcam": (lambda m, x: cnnlens.explain(m, x, "gradcam", layer=["bn1"]), RuntimeError, "backward"),
    "backward_raises_guided": (lambda m, x: cnnlens.explain(m, x, "guided_backprop"), RuntimeError, "backward"),
    "grad_logits_raises_guided": (lambda m, x: cnnlens.load(m).backward(x, _raise_in_callback, layers=["bn1", "bn2"],
                                                                       rules="guided"), KeyError),
    "grad_logits_raises_deconv": (lambda m, x: cnnlens.load(m).backward(x, _raise_in_callback, layers=["relu1"],
                                                                       rules="deconv"), KeyError),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_call_leaves_model_untouched(case):
    call, error, *arm = FAILURES[case]
    model = fragile()
    x = images(n=2, size=16, seed=6)
    good = cnnlens.explain(model, x, "saliency", target=[1, 2]).maps
    before = snapshot(model)
    try:
        if arm == ["bomb"]:
            model.bomb.armed = True
        elif arm == ["bomb_value"]:
            model.bomb.armed, model.bomb.exc = True, ValueError
        elif arm == ["backward"]:
            BackwardBomb.armed = True
        with pytest.raises(error):
            call(model, x)
    finally:
        model.bomb.armed = False
        BackwardBomb.armed = False
    assert_unchanged(before, model)
    assert_relu_is_plain()
    # and the model still explains exactly as before: nothing half-installed survives
    again = cnnlens.explain(model, x, "saliency", target=[1, 2]).maps
    np.testing.assert_array_equal(again, good)
    ref = copy.deepcopy(model).eval()
    xt = torch.tensor(x, requires_grad=True)
    logits = ref(xt)
    (grad,) = torch.autograd.grad(logits[0, 1] + logits[1, 2], xt)
    np.testing.assert_allclose(again, grad.numpy(), rtol=1e-5, atol=1e-6 * grad.abs().max().item())


def test_relu_is_plain_after_failed_guided_call_on_a_functional_relu_model():
    """The model's own F.relu, called by the caller right after a failed guided call, is plain."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bomb = Bomb()
            self.fc = nn.Linear(4, NUM_CLASSES)

        def forward(self, x):
            h = F.relu(self.conv(x))
            h = self.bomb(h)
            return self.fc(F.relu(h - 0.1).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    x = images(n=1, size=16, seed=7)
    xt = torch.tensor(x, requires_grad=True)
    logits = model(xt)
    (plain_before,) = torch.autograd.grad(logits[0, 3], xt)
    model.bomb.armed = True
    try:
        with pytest.raises((RuntimeError, cnnlens.CnnlensError)):
            cnnlens.explain(model, x, "guided_backprop", target=3)  # raises inside the ReLU-rule mode
    finally:
        model.bomb.armed = False
    assert_relu_is_plain()
    with pytest.raises(KeyError):
        cnnlens.load(model).backward(x, _raise_in_callback, rules="guided")  # raises after the guided forward
    assert_relu_is_plain()
    xt = torch.tensor(x, requires_grad=True)
    logits = model(xt)
    (plain_after,) = torch.autograd.grad(logits[0, 3], xt)
    assert torch.equal(plain_after, plain_before)
    guided = cnnlens.explain(model, x, "guided_backprop", target=3).maps
    assert np.abs(guided - plain_before.numpy()).max() > 1e-3 * np.abs(guided).max()


# ---------------------------------------------------------------- grad mode of the caller


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("method", list(SMALL_CALLS))
def test_same_maps_inside_no_grad_and_inference_mode(method, context):
    model = prepare(small_cnn(), "eval")
    x = images(n=2, seed=8)
    options = SMALL_CALLS[method]
    outside = cnnlens.explain(model, x, method, target=[3, 6], **options)
    before = snapshot(model)
    ctx = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    with ctx:
        inside_flags = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        inside = cnnlens.explain(model, x, method, target=[3, 6], **options)
        assert (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) == inside_flags
    assert_unchanged(before, model)
    np.testing.assert_array_equal(inside.maps, outside.maps)
    np.testing.assert_array_equal(inside.logits, outside.logits)
    np.testing.assert_array_equal(inside.target, [3, 6])


def test_inference_mode_tensor_input():
    """An input tensor created under inference_mode is accepted and gives the same gradient."""
    model = small_cnn().eval()
    x = images(n=1, seed=9)
    with torch.inference_mode():
        xt = torch.tensor(x)
        inside = cnnlens.explain(model, xt, "guided_backprop", target=2).maps
    outside = cnnlens.explain(model, x, "guided_backprop", target=2).maps
    np.testing.assert_array_equal(inside, outside)


# ---------------------------------------------------------------- the backward pass stops early


class Spy(torch.autograd.Function):
    backward_calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        Spy.backward_calls += 1
        return g


class SpyNet(nn.Module):
    """conv0 (has parameters, so its output needs grad) -> Spy -> conv1 -> relu -> conv2 -> relu -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        h = Spy.apply(self.conv0(x))
        h = F.relu(self.conv1(h))
        h = F.relu(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


def _spy_run(model, method, **options):
    Spy.backward_calls = 0
    param_hook_calls = []
    handles = [p.register_hook(lambda g, n=n: param_hook_calls.append(n)) for n, p in model.named_parameters()]
    try:
        before = snapshot(model)
        exp = cnnlens.explain(model, images(n=2, size=16, seed=10), method, target=1, **options)
        for n, p in model.named_parameters():
            assert p.grad is None, f"{n}.grad was set"
        assert_unchanged(before, model)
    finally:
        for h in handles:
            h.remove()
    return Spy.backward_calls, param_hook_calls, exp


def test_gradcam_backward_stops_at_the_earliest_requested_layer():
    torch.manual_seed(0)
    model = SpyNet().eval()
    calls, param_grads, exp = _spy_run(model, "gradcam", layer="conv2")
    assert calls == 0
    assert param_grads == []  # no parameter's gradient was even computed
    assert np.abs(exp.maps).max() > 0
    calls, param_grads, _ = _spy_run(model, "gradcam", layer=["conv2", "conv1"])
    assert calls == 0 and param_grads == []
    # the spy works: a pass that must go through it counts
    calls, param_grads, _ = _spy_run(model, "saliency")
    assert calls > 0
    assert param_grads == []
    # a layer before the spy (conv0's output is Spy's input): the pass must go through it
    calls, param_grads, _ = _spy_run(model, "gradcam", layer=["conv2", "conv0"])
    assert calls > 0 and param_grads == []


# ---------------------------------------------------------------- Grad-CAM vs a plain-torch reference


def plain_gradcam_clone_hook(model, x, layer, classes, clone=True):
    """Grad-CAM in plain torch: a forward hook keeps the layer's output and hands the model a clone,
    so the model's later in-place ops cannot touch the kept tensor."""
    m = copy.deepcopy(model).eval()
    module = dict(m.named_modules())[layer]
    kept = {}

    def hook(mod, inputs, output):
        kept["a"] = output
        return output.clone() if clone else None

    handle = module.register_forward_hook(hook)
    try:
        logits = m(torch.tensor(x))
    finally:
        handle.remove()
    y = logits[torch.arange(len(x)), torch.as_tensor(classes)].sum()
    (grad,) = torch.autograd.grad(y, kept["a"])
    return _cam(kept["a"].detach(), grad, x.shape[2:])


def _cam(a, grad, size):
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[:, 0].numpy()


def _basic_block_no_inplace(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    return self.relu(out + identity)


def plain_gradcam_out_of_place_twin(model, x, layer, classes):
    """Grad-CAM on a twin of resnet18 with no in-place operation at all (out-of-place ReLU and add),
    where keeping the layer's output needs no clone."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
        if type(mod).__name__ == "BasicBlock":
            mod.forward = types.MethodType(_basic_block_no_inplace, mod)
    module = dict(m.named_modules())[layer]
    kept = {}
    handle = module.register_forward_hook(lambda mod, i, o: kept.__setitem__("a", o))
    try:
        logits = m(torch.tensor(x))
    finally:
        handle.remove()
    y = logits[torch.arange(len(x)), torch.as_tensor(classes)].sum()
    (grad,) = torch.autograd.grad(y, kept["a"])
    return _cam(kept["a"].detach(), grad, x.shape[2:])


INPLACE_LAYERS = ["layer1.0.bn2", "layer1.1.bn1", "layer2.0.bn2", "bn1"]


def test_gradcam_on_layers_modified_in_place(resnet_template):
    model = copy.deepcopy(resnet_template).eval()
    x = images(n=2, seed=11)
    classes = [2, 7]
    exp = cnnlens.explain(model, x, "gradcam", target=classes, layer=INPLACE_LAYERS)
    assert exp.maps.shape == (2, len(INPLACE_LAYERS), 32, 32)
    for i, layer in enumerate(INPLACE_LAYERS):
        clone_ref = plain_gradcam_clone_hook(model, x, layer, classes)
        twin_ref = plain_gradcam_out_of_place_twin(model, x, layer, classes)
        scale = np.abs(twin_ref).max()
        assert scale > 0
        np.testing.assert_allclose(clone_ref, twin_ref, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(exp.maps[:, i], twin_ref, rtol=1e-4, atol=1e-5 * scale)
        single = cnnlens.explain(model, x, "gradcam", target=classes, layer=layer)
        np.testing.assert_allclose(single.maps, twin_ref, rtol=1e-4, atol=1e-5 * scale)
    # the test has teeth: keeping the output without a clone sees the in-place add / ReLU
    naive = plain_gradcam_clone_hook(model, x, "layer1.0.bn2", classes, clone=False)
    ref = plain_gradcam_out_of_place_twin(model, x, "layer1.0.bn2", classes)
    assert np.abs(naive - ref).max() > 1e-3 * np.abs(ref).max()


# ---------------------------------------------------------------- the caller's images


class InPlaceInput(nn.Module):
    """A model that normalises its input in place (``x.sub_(...)``), as some user code does."""

    def __init__(self, inplace=True):
        super().__init__()
        self.inplace = inplace
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        # (a leaf that requires grad cannot be modified in place, in plain torch either)
        x = x.sub_(0.5).div_(2.0) if self.inplace and not x.requires_grad else (x - 0.5) / 2.0
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["feature_maps", "occlusion", "scorecam", "saliency"])
def test_callers_images_are_not_modified(method):
    """The array passed to explain() is the caller's: cnnlens must not hand its memory to the model.
    (Fails today: TorchBackend._input wraps x with torch.from_numpy, which shares memory, so a model that
    writes to its input overwrites the caller's array and later passes see the modified images.)"""
    torch.manual_seed(0)
    model = InPlaceInput().eval()
    x = images(n=2, size=16, seed=12)
    original = x.copy()
    options = dict(window=8, stride=8) if method == "occlusion" else {}
    layer = "conv" if method in ("feature_maps", "scorecam") else None
    twin = InPlaceInput(inplace=False).eval()
    twin.load_state_dict(model.state_dict())
    expected = cnnlens.explain(twin, x, method, target=1, layer=layer, **options)
    np.testing.assert_array_equal(x, original)
    exp = cnnlens.explain(model, x, method, target=1, layer=layer, **options)
    # occlusion and Score-CAM build their perturbed inputs from x after a forward pass has run on it
    np.testing.assert_allclose(exp.maps, expected.maps, rtol=1e-5, atol=1e-6 * np.abs(expected.maps).max())
    np.testing.assert_array_equal(x, original)
