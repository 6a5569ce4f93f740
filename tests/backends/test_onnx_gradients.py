"""Gradients on whole ONNX models: seeded torchvision exports (both exporters), the relu-rule test
models, a hand-built opset-9 graph, an LRN network exported at opset 9 with its batch fixed at 1,
each against PyTorch autograd of the original module; and every method through ``cnnlens.compare``
between a module and its export."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

import cnnlens
from cnnlens.adapters.export import to_onnx
from cnnlens.core.methods import METHODS
from tests.helpers import assert_close, images, randomise_batchnorm
from tests.onnx_models import hand_forward, hand_model, lrn_net_forward, lrn_net_model

TOL = 1e-4


def _seeded(factory, seed):
    torch.manual_seed(seed)
    return randomise_batchnorm(factory(), seed=seed).eval()


def small_convnext():
    """ConvNeXt's ops (LayerNorm, GELU, permutes, Linear on channels-last, layer scale) at test size."""
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=7)


#: (factory, image size, exporters): every family whose ops differ from the others'.
ZOO = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 64, ("legacy", "dynamo")),
    "densenet": (lambda: torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                                      num_classes=3), 64, ("legacy", "dynamo")),
    "mobilenet_v3": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 64, ("legacy",)),
    "efficientnet": (lambda: torchvision.models.efficientnet_b0(num_classes=10), 64, ("dynamo",)),
    "shufflenet": (lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10), 64, ("legacy",)),
    "squeezenet": (lambda: torchvision.models.squeezenet1_1(num_classes=10), 64, ("legacy",)),
    "convnext": (small_convnext, 32, ("legacy", "dynamo")),
}
CASES = [(name, exporter) for name, (_, _, exporters) in ZOO.items() for exporter in exporters]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """{(name, exporter): (module, onnx backend, images)}, exported once per module."""
    folder = tmp_path_factory.mktemp("zoo")
    built = {}
    for i, (name, (factory, size, exporters)) in enumerate(ZOO.items()):
        model = _seeded(factory, i)
        for exporter in exporters:
            path = to_onnx(model, str(folder / f"{name}_{exporter}.onnx"), input_shape=(3, size, size),
                           exporter=exporter)
            built[name, exporter] = (model, cnnlens.load(path), images(3, 3, size, size, seed=40 + i))
    return built


def autograd(model, x, classes, layers=()):
    """PyTorch autograd of ``sum_i y_{c_i}``: (input gradient, {layer: gradient}) (a layer's output
    must not be changed in place later)."""
    modules = dict(model.named_modules())
    kept = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: kept.__setitem__(n, o)) for n in layers]
    try:
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        logits = model(xt)
        score = logits[torch.arange(len(x)), torch.as_tensor(classes)].sum()
        grads = torch.autograd.grad(score, [xt] + [kept[n] for n in layers])
    finally:
        for h in handles:
            h.remove()
    return grads[0].numpy(), {n: g.numpy() for n, g in zip(layers, grads[1:])}


def torch_backend(model):
    backend = cnnlens.load(model)
    backend.channels_last = False  # plain NCHW PyTorch: the reference, to float32 rounding
    return backend


@pytest.mark.parametrize("name,exporter", CASES)
def test_input_and_layer_gradients_equal_autograd(zoo, name, exporter):
    model, backend, x = zoo[name, exporter]
    assert {"input_gradients", "layer_gradients", "relu_rules"} <= backend.capabilities
    classes = np.array([1, 2, 0])
    seed = np.eye(backend.forward(x[:1]).logits.shape[1], dtype=np.float32)[classes]
    reference = torch_backend(model)
    torch_layer = reference.default_layer(x.shape)
    onnx_layer = backend.resolve_layer(torch_layer)
    got = backend.backward(x, seed, layers=[onnx_layer], rules="plain", input_grad=True)
    want_input, _ = autograd(model, x, classes)
    assert_close(got.input_grad, want_input, TOL)
    # the layer's gradient as the torch backend takes it (its hooks survive DenseNet's in-place ReLU)
    want_layer = reference.backward(x, seed, layers=[torch_layer], input_grad=False).gradients[torch_layer]
    assert_close(got.gradients[onnx_layer], want_layer, TOL)


#: Methods whose maps add up many passes, where one float32 near-tie shows. Integrated Gradients on
#: resnet18 (legacy export): at one of its 18 path points a MaxPool window's two largest inputs differ by
#: under 1e-6, ONNX Runtime's convolution rounds the other way, and that point's gradient differs by 1.3%
#: (PyTorch float32 agrees with float64 there; each point alone agrees to 7e-7). Ablation-CAM's weights
#: are differences of nearly equal scores divided by the score.
#: LRP divides by each layer's (and residual sum's) stabilised output: where a sum of a negative BatchNorm
#: output and a positive skip nearly cancels, float32 rounding of the two runtimes' convolutions (and of
#: the exporter's folded BatchNorm) shows relatively large there (the peer parity tests hold <= 1e-4 on
#: images where the float32 reference is stable: tests/methods/test_relevance_peers.py).
LOOSER = {"integrated_gradients": 2.5e-3, "ablationcam": 1e-3, "lrp": 1e-3}


@pytest.mark.parametrize("name,exporter", CASES)
def test_every_method_equals_the_module_through_compare(zoo, name, exporter):
    model, backend, x = zoo[name, exporter]
    reference = torch_backend(model)
    # Integrated Gradients with few steps: its points near the zero baseline are near-constant images whose
    # MaxPool windows tie to float32 rounding, where ONNX Runtime's and PyTorch's convolutions round apart
    options = {"smoothgrad": dict(samples=3), "occlusion": dict(window=16, stride=8),
               "integrated_gradients": dict(steps=6), "rise": dict(masks=64)}
    for method in METHODS:
        try:
            result = cnnlens.compare(reference, backend, x, method, **options.get(method, {}))
        except cnnlens.ModelError as error:  # no GAP -> linear head: both backends say so
            assert method == "cam" and "global average pooling" in str(error)
            with pytest.raises(cnnlens.ModelError, match="global average pooling"):
                cnnlens.explain(backend, x, "cam")
            continue
        assert result.classes_agree
        # maps made of score differences (occlusion, Score-CAM's weights) are compared on the scores' scale
        scale = (np.abs(result.a.logits).max() if method in ("occlusion", "scorecam", "rise", "ablationcam")
                 else np.abs(result.a.maps).max())
        if method in ("lrp", "deeplift") and scale < 1e-4 * np.abs(result.a.logits).max():
            # relevance that never reaches the input (ConvNeXt's LayerNorms have no LRP rule; a random
            # EfficientNet's saturated outputs leave DeepLIFT maps of 1e-13): both say so, the rest is noise
            assert np.abs(result.b.maps).max() < 1e-4 * np.abs(result.b.logits).max(), method
            continue
        assert scale > 0, method
        worst = float(np.abs(result.a.maps - result.b.maps).max() / scale)
        assert worst <= LOOSER.get(method, TOL), (method, worst)


def test_grad_cam_over_several_layers_is_one_run_and_equals_each_alone(zoo):
    model, backend, x = zoo["resnet18", "dynamo"]
    layers = ["layer2", "layer3", "layer4"]
    together = cnnlens.explain(backend, x, "gradcam", layer=layers)
    assert together.maps.shape == (3, 3, 64, 64)
    for i, layer in enumerate(layers):
        alone = cnnlens.explain(backend, x, "gradcam", layer=layer)
        assert_close(together.maps[:, i], alone.maps, 1e-6)
        want = cnnlens.explain(torch_backend(model), x, "gradcam", layer=layer)
        assert_close(alone.maps, want.maps, TOL)


def test_argmax_made_in_the_graph_equals_the_classes_given(zoo):
    _, backend, x = zoo["resnet18", "legacy"]
    free = cnnlens.explain(backend, x, "saliency")
    given = cnnlens.explain(backend, x, "saliency", target=list(free.target))
    np.testing.assert_array_equal(free.maps, given.maps)
    np.testing.assert_array_equal(free.target, free.logits.argmax(1))


# ---------------------------------------------------------------- guided and deconvnet rules


def test_relu_rules_on_exports_equal_the_independent_reference(tmp_path):
    """The relu-rule test models (functional, in-place, reused and skip-connected ReLUs) exported:
    the rules apply to every Relu node, as the reference applies them to every ReLU call."""
    from tests.methods.test_relu_rules import MODELS, images as relu_images, make, reference

    x = relu_images()
    for name in MODELS:
        model = make(name)
        for exporter in ("legacy", "dynamo"):
            backend = cnnlens.load(to_onnx(model, str(tmp_path / f"{name}_{exporter}.onnx"), (3, 16, 16),
                                           exporter=exporter))
            for method in ("guided_backprop", "deconvnet", "saliency"):
                exp = cnnlens.explain(backend, x, method, target=[3, 5])
                want, _ = reference(model, x, [3, 5], method)
                assert_close(exp.maps, want, 1e-5)


# ---------------------------------------------------------------- old opsets, fixed batches, LRN


def test_hand_built_opset9_graph_with_softmax_and_a_fixed_batch():
    backend = cnnlens.load(hand_model())
    x = images(4, 3, 16, 16, seed=50)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    probs, _, _, a2 = hand_forward(xt)
    a2.retain_grad()
    classes = probs.detach().numpy().argmax(1)
    probs[torch.arange(4), torch.as_tensor(classes)].sum().backward()
    saliency = cnnlens.explain(backend, x, "saliency")
    np.testing.assert_array_equal(saliency.target, classes)
    assert_close(saliency.maps, xt.grad.numpy(), TOL)
    gradcam = cnnlens.explain(backend, x, "gradcam", layer="/features/relu2/Relu")
    weights = a2.grad.numpy().mean(axis=(2, 3))
    cam = np.maximum(np.einsum("nk,nkhw->nhw", weights, a2.detach().numpy()), 0)
    want = F.interpolate(torch.from_numpy(cam[:, None].astype(np.float32)), size=(16, 16), mode="bilinear",
                         align_corners=False)[:, 0].numpy()
    assert_close(gradcam.maps, want, TOL)


def test_model_zoo_style_alexnet_with_native_lrn_at_opset9():
    """Native LRN nodes, a grouped convolution, a batch fixed at 1 by a Reshape (so run image by image),
    Dropout and a Softmax end; guided backprop against the independent reference rule."""
    from tests.methods.test_relu_rules import RefGuided

    backend = cnnlens.load(lrn_net_model())
    assert {"input_gradients", "layer_gradients", "relu_rules"} <= backend.capabilities
    x = images(3, 3, 32, 32, seed=52)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    probs, a2 = lrn_net_forward(xt)
    a2.retain_grad()
    classes = probs.detach().numpy().argmax(1)
    probs[torch.arange(3), torch.as_tensor(classes)].sum().backward()
    got = backend.backward(x, np.eye(6, dtype=np.float32)[classes], layers=["relu2"])
    assert backend._per_image
    assert_close(got.logits, probs.detach().numpy(), TOL)
    assert_close(got.input_grad, xt.grad.numpy(), TOL)
    assert_close(got.gradients["relu2"], a2.grad.numpy(), TOL)
    xg = torch.from_numpy(x.copy()).requires_grad_(True)
    guided_probs, _ = lrn_net_forward(xg, relu=RefGuided.apply)
    (want,) = torch.autograd.grad(guided_probs[torch.arange(3), torch.as_tensor(classes)].sum(), xg)
    assert_close(cnnlens.explain(backend, x, "guided_backprop").maps, want.numpy(), TOL)


class LrnNet(nn.Module):
    """AlexNet's pattern: conv, ReLU, LRN, overlapping max pooling, a flattening linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(inplace=True),
                                      nn.LocalResponseNorm(5, alpha=1e-3, beta=0.75, k=2.0),
                                      nn.MaxPool2d(3, 2), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.LocalResponseNorm(3), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(12 * 3 * 3, 6))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_lrn_network_exported_at_opset9_with_batch_fixed_at_1(tmp_path):
    model = _seeded(LrnNet, 3)
    path = str(tmp_path / "lrn9.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), path, dynamo=False, opset_version=9)
    backend = cnnlens.load(path)
    assert backend.input_shape[0] == 1
    x = images(3, 3, 32, 32, seed=51)
    logits = backend.forward(x).logits
    classes = logits.argmax(1)
    want_input, want = autograd(model, x, classes, ["features.5"])
    got = backend.backward(x, np.eye(6, dtype=np.float32)[classes], layers=["/features/features.5/Relu"])
    assert_close(got.input_grad, want_input, TOL)
    assert_close(got.gradients["/features/features.5/Relu"], want["features.5"], TOL)
    assert_close(cnnlens.explain(backend, x, "guided_backprop").maps,
                 cnnlens.explain(torch_backend(model), x, "guided_backprop").maps, TOL)
