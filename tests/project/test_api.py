"""The public API around the methods: layers, the default layer, filters, load, and the errors."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import cnnlens


class Reordered(nn.Module):
    """Modules registered in one order and called in another; one module called twice."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def test_layers_in_call_order_with_shapes():
    layers = cnnlens.layers(Reordered(), input_shape=(2, 10, 10))
    assert [(l.name, l.kind, l.shape) for l in layers] == [
        ("conv1", "Conv2d", (None, 4, 10, 10)),
        ("act", "ReLU", (None, 6, 5, 5)),         # listed at its first call; shape of its last (what it explains)
        ("conv2", "Conv2d", (None, 6, 5, 5)),
        ("head", "Linear", (None, 3)),
    ]


def test_layers_default_input_shape_from_first_conv():
    names = [l.name for l in cnnlens.layers(torchvision.models.resnet18(num_classes=4))]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert "layer4.1.conv2" in names and names[-1] == "fc"
    shapes = {l.name: l.shape for l in cnnlens.layers(torchvision.models.resnet18(num_classes=4))}
    assert shapes["layer4"] == (None, 512, 7, 7) and shapes["avgpool"] == (None, 512, 1, 1)


def test_layers_bad_input_shape_says_what_to_do():
    with pytest.raises(cnnlens.ModelError, match="input_shape"):
        cnnlens.layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)))


@pytest.mark.parametrize("size,expected", [(224, "layer4"), (32, "layer3"), (64, "layer4")])
def test_default_layer_is_last_spatial_output(size, expected):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    exp = cnnlens.explain(model, x, "gradcam")
    assert exp.layer == expected  # at 32 px layer4 is 1x1: nothing spatial is left there
    same = cnnlens.explain(model, x, "gradcam", layer=expected)
    np.testing.assert_array_equal(exp.maps, same.maps)


def test_default_layer_densenet_is_features():
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3)
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
    assert cnnlens.explain(model, x, "feature_maps").layer == "features"


def test_filters():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    np.testing.assert_array_equal(cnnlens.filters(model), model.conv1.weight.detach().numpy())
    np.testing.assert_array_equal(cnnlens.filters(model, "layer2.0.conv1"),
                                  model.layer2[0].conv1.weight.detach().numpy())
    w = cnnlens.filters(model)
    w[:] = 0  # a copy: the model's weights are untouched
    assert model.conv1.weight.abs().sum() > 0
    with pytest.raises(cnnlens.LayerError, match="no weight"):
        cnnlens.filters(model, "relu")


def test_load_returns_a_backend_every_function_accepts():
    torch.manual_seed(0)
    model = Reordered()
    loaded = cnnlens.load(model, device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 2, 10, 10)).astype(np.float32)
    a = cnnlens.explain(loaded, x, "saliency")
    b = cnnlens.explain(model, torch.from_numpy(x), "saliency")  # a tensor is accepted too
    np.testing.assert_array_equal(a.maps, b.maps)
    assert [l.name for l in cnnlens.layers(loaded, (2, 10, 10))] == ["conv1", "act", "conv2", "head"]


def test_explanation_records_options():
    x = np.random.default_rng(0).standard_normal((1, 2, 10, 10)).astype(np.float32)
    exp = cnnlens.explain(Reordered(), x, "occlusion", window=4, stride=2)
    assert exp.options["window"] == (4, 4) and exp.options["stride"] == (2, 2) and exp.options["baseline"] == 0.0
    assert "occlusion" in repr(exp)


# ---------------------------------------------------------------- errors

X = np.random.default_rng(0).standard_normal((2, 2, 10, 10)).astype(np.float32)


@pytest.mark.parametrize("call,error,message", [
    (lambda m: cnnlens.explain(m, X, "gradcm"), cnnlens.UnknownMethodError, "Did you mean 'gradcam'"),
    (lambda m: cnnlens.explain(m, X, "gradcam", layer="conv3"), cnnlens.LayerError, "'conv1'"),
    (lambda m: cnnlens.explain(m, X, "gradcam", layer="head"), cnnlens.LayerError, "not a \\(N, K, h, w\\) map"),
    (lambda m: cnnlens.explain(m, X, "gradcam", layer=[]), cnnlens.LayerError, "non-empty list"),
    (lambda m: cnnlens.explain(m, X, "saliency", layer="conv1"), cnnlens.LayerError, "takes no layer"),
    (lambda m: cnnlens.explain(m, X, "saliency", samples=3), cnnlens.InvalidInputError, "no option 'samples'"),
    (lambda m: cnnlens.explain(m, X, "smoothgrad", samples=0), cnnlens.InvalidInputError, "positive"),
    (lambda m: cnnlens.explain(m, X, "smoothgrad", noise=-1.0), cnnlens.InvalidInputError, "noise"),
    (lambda m: cnnlens.explain(m, X, "smoothgrad", variant="sq"), cnnlens.InvalidInputError, "vargrad"),
    (lambda m: cnnlens.explain(m, X, "occlusion", window=11), cnnlens.InvalidInputError, "larger than the image"),
    (lambda m: cnnlens.explain(m, X, "occlusion", window=0), cnnlens.InvalidInputError, "positive"),
    (lambda m: cnnlens.explain(m, X, "occlusion", window=4, stride=-1), cnnlens.InvalidInputError, "positive"),
    (lambda m: cnnlens.explain(m, X, "saliency", batch_size=0), cnnlens.InvalidInputError, "batch_size"),
    (lambda m: cnnlens.explain(m, X, "saliency", target=3), cnnlens.TargetError, "0..2"),
    (lambda m: cnnlens.explain(m, X, "saliency", target=[0, 1, 2]), cnnlens.TargetError, "3 targets for a batch of 2"),
    (lambda m: cnnlens.explain(m, X[0], "saliency"), cnnlens.InvalidInputError, "add a batch axis"),
    (lambda m: cnnlens.explain(m, np.zeros((10, 10, 3)), "saliency"), cnnlens.InvalidInputError, "H, W, C"),
    (lambda m: cnnlens.explain(m, np.zeros((2, 10, 10, 3)), "saliency"), cnnlens.InvalidInputError, "channels-last"),
    (lambda m: cnnlens.explain(m, np.full_like(X, np.nan), "saliency"), cnnlens.InvalidInputError, "NaN"),
    (lambda m: cnnlens.explain(m, X[:, :1], "saliency"), cnnlens.InvalidInputError, "failed on images of shape"),
    (lambda m: cnnlens.explain(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(192, 2)), X, "cam"),
     cnnlens.ModelError, "global average pooling"),
    (lambda m: cnnlens.explain("missing.onnx", X, "saliency"), cnnlens.ModelError, "no such model file"),
    (lambda m: cnnlens.explain(object(), X, "saliency"), cnnlens.ModelError, "cnnlens.load"),
])
def test_errors_say_what_to_do(call, error, message):
    with pytest.raises(error, match=message):
        call(Reordered())


def test_errors_are_cnnlens_errors_and_value_errors():
    for cls in (cnnlens.InvalidInputError, cnnlens.LayerError, cnnlens.TargetError, cnnlens.UnknownMethodError,
                cnnlens.ModelError):
        assert issubclass(cls, cnnlens.CnnlensError) and issubclass(cls, ValueError)


def test_unsupported_method_names_the_ones_that_work():
    from cnnlens.core.methods import run

    class ForwardOnly:
        name = "demo"
        capabilities = frozenset({"forward", "activations"})
        limits: dict = {}

    with pytest.raises(cnnlens.UnsupportedError, match="eigencam, scorecam, occlusion, rise, feature_maps"):
        run(ForwardOnly(), X, "gradcam")


def test_audit_is_callable_and_its_modules_import_through_it():
    """``cnnlens.audit(...)`` is the audit, and ``import cnnlens.audit.job`` (a fresh interpreter: the
    package's modules reached through the public name) works too."""
    import subprocess
    import sys

    from cnnlens.audit.run import audit

    assert callable(cnnlens.audit) and cnnlens.audit.audit is audit
    code = "import cnnlens.audit.job as job, cnnlens; assert callable(cnnlens.audit); print(job.TARGETS)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "predicted" in done.stdout, done.stderr
