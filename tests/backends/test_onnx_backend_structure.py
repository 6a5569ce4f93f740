"""How the ONNX backend keeps its state: capabilities read off the model's ops, sessions keyed by
request, the default layer and the CAM head found once, quiet trial runs, clear device errors."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.backends.onnx import head as head_module
from tests.helpers import images


class WithCumSum(nn.Module):
    """A running sum (no backward rule) at ``where``: after the first convolution or in the head."""

    def __init__(self, where: str):
        super().__init__()
        torch.manual_seed(0)
        self.where = where
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        if self.where == "early":
            h = h.cumsum(3)
        h = torch.relu(self.conv2(h)).mean(dim=(2, 3))
        if self.where == "head":
            h = h.cumsum(1)
        return self.fc(h)


def _export(model, shape=(1, 3, 16, 16), **kwargs) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(shape),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], **kwargs)
    return buffer.getvalue()


def _dynamic(model) -> bytes:
    return _export(model, dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n"}})


def test_capabilities_follow_the_models_ops():
    full = cnnlens.load(_dynamic(WithCumSum("none")))
    assert {"input_gradients", "layer_gradients", "relu_rules"} <= full.capabilities and full.limits == {}
    early = cnnlens.load(_dynamic(WithCumSum("early")))
    assert "layer_gradients" in early.capabilities
    assert not {"input_gradients", "relu_rules"} & early.capabilities
    assert "CumSum" in early.limits["input_gradients"]
    x = images(2, 3, 16, 16, seed=1)
    assert cnnlens.explain(early, x, "gradcam").maps.shape == (2, 16, 16)  # above the CumSum: fine
    head = cnnlens.load(_dynamic(WithCumSum("head")))
    assert not {"input_gradients", "layer_gradients", "relu_rules"} & head.capabilities
    with pytest.raises(cnnlens.UnsupportedError, match=r"gradcam needs layer_gradients.*op CumSum"):
        cnnlens.explain(head, x, "gradcam")
    assert cnnlens.explain(head, x, "occlusion", window=8).maps.shape == (2, 16, 16)


def test_a_request_that_cannot_be_built_leaves_the_backend_working():
    backend = cnnlens.load(_dynamic(WithCumSum("early")))
    x = images(2, 3, 16, 16, seed=2)
    before = cnnlens.explain(backend, x, "gradcam").maps
    with pytest.raises(cnnlens.UnsupportedError, match="from this layer"):
        cnnlens.explain(backend, x, "gradcam", layer="/conv1/Conv")
    np.testing.assert_array_equal(cnnlens.explain(backend, x, "gradcam").maps, before)


def test_an_input_gradient_that_cannot_be_built_becomes_a_limit():
    """Where the ops check passed but the gradient model cannot be built from the input, the backend
    drops the input-gradient capabilities and records the op in the way as the reason (read from the
    error's ``reason``, not parsed back out of its message), which later refusals quote."""
    backend = cnnlens.load(_dynamic(WithCumSum("early")))
    backend.capabilities = backend.capabilities | {"input_gradients", "relu_rules"}  # as if the check had passed
    backend.limits = {}
    x = images(2, 3, 16, 16, seed=3)
    seed = np.ones_like(backend.forward(x).logits)
    with pytest.raises(cnnlens.UnsupportedError, match="from the input to its scores: op CumSum") as info:
        backend.backward(x, seed, input_grad=True)
    assert not {"input_gradients", "relu_rules"} & backend.capabilities
    assert backend.limits["input_gradients"] == backend.limits["relu_rules"] == info.value.reason
    assert info.value.reason.startswith("op CumSum") and "On this model" not in info.value.reason
    with pytest.raises(cnnlens.UnsupportedError, match=re.escape(f"for this model ({info.value.reason})")):
        cnnlens.explain(backend, x, "saliency")


def test_sessions_are_keyed_by_request_and_image_size():
    backend = cnnlens.load(_dynamic(WithCumSum("none")))
    x = images(3, 3, 16, 16, seed=3)
    for method in ("saliency", "saliency", "guided_backprop", "gradcam", "guided_gradcam"):
        cnnlens.explain(backend, x, method)
    keys = [k for k in backend._sessions._sessions if k is not None]
    kinds = [(k[0], k[1].rules, k[1].input_grad, bool(k[1].layers)) for k in keys if k[0] == "gradient"]
    # saliency twice: one session; guided backprop: another rule; Grad-CAM: layers, no input gradient;
    # Guided Grad-CAM: both, from one model
    assert kinds == [("gradient", "plain", True, False), ("gradient", "guided", True, False),
                     ("gradient", "plain", False, True), ("gradient", "guided", True, True)]
    cnnlens.explain(backend, images(2, 3, 20, 20, seed=3), "saliency")  # another size: a model of its own
    assert len([k for k in backend._sessions._sessions if k is not None and k[0] == "gradient"]) == 5


def test_default_layer_and_head_are_found_once_per_image_size(monkeypatch):
    backend = cnnlens.load(_dynamic(WithCumSum("none")))
    calls = []
    original = head_module.find_head
    monkeypatch.setattr("cnnlens.backends.onnx.passes.find_head",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    for n in (1, 4, 7):
        x = images(n, 3, 16, 16, seed=n)
        cnnlens.explain(backend, x, "cam")
        cnnlens.explain(backend, x, "gradcam")
    assert len(calls) == 1
    assert list(backend._default_layers) == [(3, 16, 16)] and list(backend._types) == [(3, 16, 16)]


def test_a_layer_name_is_resolved_once_per_backend(monkeypatch):
    """A torch module path costs a walk over the graph to find its node: done once per name and
    backend, not on every pass (the layer's maps equal the node name's)."""
    backend = cnnlens.load(_dynamic(WithCumSum("none")))
    node = backend.resolve_layer("conv2")
    walks = []
    original = backend.graph.node_for_module
    monkeypatch.setattr(backend.graph, "node_for_module", lambda path: walks.append(path) or original(path))
    x = images(3, 3, 16, 16, seed=1)
    for _ in range(3):
        by_path = cnnlens.explain(backend, x, "gradcam", layer="conv2").maps
    assert walks == []  # resolved when first asked, above
    np.testing.assert_array_equal(by_path, cnnlens.explain(backend, x, "gradcam", layer=node).maps)
    fresh = cnnlens.load(_dynamic(WithCumSum("none")))
    monkeypatch.setattr(fresh.graph, "node_for_module", lambda path: walks.append(path) or original(path))
    for _ in range(3):
        cnnlens.explain(fresh, x, "gradcam", layer="conv2")
    assert walks == ["conv2"]


def test_fixed_batch_trial_run_prints_nothing(capfd):
    class HardBatch1(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)).reshape(1, -1))

    backend = cnnlens.load(_export(HardBatch1()))
    capfd.readouterr()
    x = images(3, 3, 16, 16, seed=4)
    for method in ("occlusion", "saliency", "gradcam"):
        cnnlens.explain(backend, x, method)
    assert backend._per_image
    out, err = capfd.readouterr()  # onnxruntime logs from C++ to the process's own stderr
    assert "onnxruntime" not in err and "Non-zero status" not in err, err


@pytest.mark.parametrize("device,message", [("cuda:x", r"unknown device 'cuda:x'.*cuda:N"),
                                            ("gpu", r"unknown device 'gpu'"), (3, "device must be a string")])
def test_bad_devices_raise_model_errors(device, message):
    with pytest.raises(cnnlens.ModelError, match=message):
        cnnlens.load(_dynamic(WithCumSum("none")), device=device)


def test_backend_reports_layout_and_image_shape():
    backend = cnnlens.load(_export(WithCumSum("none")))
    assert backend.layout == "NCHW" and backend.image_shape == (3, 16, 16)
    assert cnnlens.load(_dynamic(WithCumSum("none"))).image_shape == (3, None, None)
    assert "NCHW" in repr(backend)
    model = onnx.load_from_string(_dynamic(WithCumSum("none")))
    assert cnnlens.load(model, layout="NCHW").layout == "NCHW"


def test_a_wrapper_whose_container_was_never_called_keeps_its_torch_module_paths(tmp_path):
    """The legacy exporter records no scope for a container whose forward never runs (a wrapper that
    calls ``self.inner.body`` itself): ``inner.body.0`` still names the layer, through the one recorded
    path it ends with (one only: where two recorded paths end alike the name stays unknown)."""
    from cnnlens.adapters.export import to_onnx

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.other = nn.Sequential(nn.Conv2d(4, 4, 1))

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inner = Inner()
            self.twin = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 1)))

        def forward(self, x):
            y = self.inner.other(self.inner.body(x))
            return self.twin(y).mean((2, 3))

    model = Wrapper().eval()
    path = to_onnx(model, str(tmp_path / "wrapped.onnx"), (3, 12, 12), exporter="legacy")
    backend = cnnlens.load(path)
    x = images(2, 3, 12, 12, seed=1)
    a = cnnlens.explain(model, x, "gradcam", layer="inner.body.0")
    b = cnnlens.explain(backend, x, "gradcam", layer="inner.body.0")
    assert np.abs(a.maps).max() > 0 and np.abs(b.maps - a.maps).max() <= 1e-5 * np.abs(a.maps).max()
    assert backend.resolve_layer("inner.other.0") == backend.resolve_layer("other.0")
    # and back: the torch module finds "body.0" (the path the ONNX file recorded) under "inner", so
    # compare maps a node of the file to the module's layer
    torch_backend = cnnlens.load(model)
    assert torch_backend.resolve_layer("body.0") == "inner.body.0"
    node = backend.resolve_layer("inner.body.0")
    assert backend.module_of(node) == "body.0"
    result = cnnlens.compare(model, backend, x, "gradcam", layer=node)
    assert result.a.layer == "inner.body.0" and result.worst_relative_error <= 1e-5
    assert backend.resolve_layer("twin.0.0") != backend.resolve_layer("other.0")
    with pytest.raises(cnnlens.LayerError, match="unknown layer"):
        backend.resolve_layer("nothing.body.1.5")  # no recorded path ends like it


@pytest.mark.parametrize("name, paths, expected", [
    ("backbone.features.0", ["detector.backbone.features.0", "detector.head"], "detector.backbone.features.0"),
    ("detector.backbone.features.0", ["backbone.features.0", "head"], "backbone.features.0"),
    ("fc", ["net.fc", "net.conv"], "net.fc"),
    ("conv1", ["a.conv1", "b.conv1"], None),              # two paths end alike: never a guess
    ("layer9.0.conv1", ["conv1", "layer1.0.conv1"], None),  # a sequence index is no container to drop
    ("1.conv2", ["layer3.1.conv2", "layer4.1.conv2"], None),
    ("nothing", ["a.b"], None),
])
def test_module_paths_by_suffix(name, paths, expected):
    from cnnlens.backends.base import path_by_suffix

    assert path_by_suffix(name, paths) == expected
