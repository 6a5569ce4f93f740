"""Models laid out (N, H, W, C): Keras models converted by tf2onnx (committed fixtures, opsets 9, 13
and 18, with TensorFlow's own gradients from tf.GradientTape as the reference) and a torch module
that permutes its input, exported with both exporters. Images go in NCHW and maps come out NCHW,
as for every other model."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_onnx
from cnnlens.adapters.images import input_size
from cnnlens.cli import main as cli
from cnnlens.core.methods import METHODS
from tests.helpers import assert_close, images, randomise_batchnorm

KERAS = pathlib.Path(__file__).resolve().parents[1] / "data" / "keras"
KERAS_MODELS = ["keras_small_cnn", "keras_mixed_ops", "keras_mobilenet_like"]
OPSETS = [9, 13, 18]
TOL = 1e-4


def _reference(name):
    ref = np.load(KERAS / f"{name}_reference.npz")
    nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    return dict(x=nchw(ref["x"]), logits=ref["logits"], target=ref["target"], input_grad=nchw(ref["input_grad"]),
                layer=str(ref["layer_onnx_name"]), act=nchw(ref["layer_act"]), grad=nchw(ref["layer_grad"]))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", KERAS_MODELS)
def test_keras_export_gradients_equal_tensorflows(name, opset):
    backend = cnnlens.load(str(KERAS / f"{name}_opset{opset}.onnx"))
    ref = _reference(name)
    assert backend.layout == "NHWC" and backend.input_shape[1:] == (32, 32, 3)
    assert backend.image_shape == (3, 32, 32) and input_size(backend) == (3, 32, 32)
    assert {"input_gradients", "layer_gradients", "relu_rules"} <= backend.capabilities
    seed = np.eye(10, dtype=np.float32)[ref["target"]]
    got = backend.backward(ref["x"], seed, layers=[ref["layer"]], input_grad=True)
    assert_close(got.logits, ref["logits"], TOL)
    assert_close(got.input_grad, ref["input_grad"], TOL)
    assert_close(got.activations[ref["layer"]], ref["act"], TOL)
    assert_close(got.gradients[ref["layer"]], ref["grad"], TOL)
    saliency = cnnlens.explain(backend, ref["x"], "saliency")
    np.testing.assert_array_equal(saliency.target, ref["target"])
    assert_close(saliency.maps, ref["input_grad"], TOL)


#: the slow methods' options for these tests
FAST = {"smoothgrad": dict(samples=2), "integrated_gradients": dict(steps=6), "rise": dict(masks=64)}


@pytest.mark.parametrize("opset", OPSETS)
def test_keras_export_every_method_runs_with_nchw_in_and_out(opset):
    backend = cnnlens.load(str(KERAS / f"keras_small_cnn_opset{opset}.onnx"))
    ref = _reference("keras_small_cnn")
    x = ref["x"]
    assert backend.default_layer(x.shape) == backend.resolve_layer(ref["layer"])  # the last conv block, not a Transpose
    shapes = {l.name: l.shape for l in cnnlens.layers(backend)}
    assert shapes[backend.default_layer(x.shape)] == (None, 16, 6, 6)  # reported NCHW
    for method, spec in METHODS.items():
        exp = cnnlens.explain(backend, x, method, **FAST.get(method, {}))
        want = {"activations": (2, 16, 6, 6), "cam": (2, 32, 32), "input": x.shape}[spec.kind]
        assert exp.maps.shape == want, method
        assert np.isfinite(exp.maps).all() and np.abs(exp.maps).max() > 0, method
    # CAM (GAP -> MatMul -> Softmax): its map is Grad-CAM's at the pooled layer up to the softmax's factor
    cam = cnnlens.explain(backend, x, "cam")
    assert cam.layer == backend.resolve_layer(ref["layer"])


def test_forcing_the_wrong_layout_says_which_layout_was_assumed():
    path = str(KERAS / "keras_small_cnn_opset13.onnx")
    forced = cnnlens.load(path, layout="NCHW")
    assert forced.layout == "NCHW"
    with pytest.raises(cnnlens.InvalidInputError, match=r"axis 1 must be 32\).*read as NCHW: if it is NHWC, load "
                                                         r"it with cnnlens\.load\(path, layout='NHWC'\)"):
        cnnlens.explain(forced, images(1, 3, 32, 32, seed=0), "occlusion")
    with pytest.raises(cnnlens.ModelError, match="layout must be 'auto', 'NCHW' or 'NHWC'"):
        cnnlens.load(path, layout="HWC")


# ---------------------------------------------------------------- a torch module that permutes first


class ChannelsLast(nn.Module):
    """Takes (N, H, W, C) images, as a TensorFlow-style pipeline feeds them."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=6)

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def permuting(tmp_path_factory):
    torch.manual_seed(3)
    model = randomise_batchnorm(ChannelsLast(), seed=3).eval()
    folder = tmp_path_factory.mktemp("nhwc")
    paths = {e: to_onnx(model, str(folder / f"nhwc_{e}.onnx"), input_shape=(64, 64, 3), exporter=e)
             for e in ("legacy", "dynamo")}
    return model, paths


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_permuting_module_every_method_equals_the_module(permuting, exporter):
    model, paths = permuting
    backend = cnnlens.load(paths[exporter])
    assert backend.layout == "NHWC" and backend.image_shape == (3, 64, 64)
    reference = cnnlens.load(model, layout="NHWC")
    reference.channels_last = False
    x = images(2, 3, 64, 64, seed=5)
    xt = torch.from_numpy(x.transpose(0, 2, 3, 1).copy()).requires_grad_(True)
    logits = model(xt)
    classes = logits.argmax(1)
    (grad,) = torch.autograd.grad(logits[torch.arange(2), classes].sum(), xt)
    saliency = cnnlens.explain(backend, x, "saliency")
    assert_close(saliency.maps, grad.numpy().transpose(0, 3, 1, 2), TOL)  # NCHW, from TF-style input
    for method in METHODS:
        options = {**FAST, "occlusion": dict(window=16, stride=16)}.get(method, {})
        result = cnnlens.compare(reference, backend, x, method, **options)
        scored = method in ("occlusion", "scorecam", "rise", "ablationcam")  # maps of score differences
        scale = np.abs(result.a.logits if scored else result.a.maps).max()
        # Ablation-CAM's weights are differences of nearly equal scores divided by the score
        tolerance = 1e-3 if method == "ablationcam" else TOL
        assert np.abs(result.a.maps - result.b.maps).max() <= tolerance * scale, method
    assert reference.default_layer(x.shape) == "net.layer4"


def test_cli_reads_nhwc_models_and_takes_layout(tmp_path, permuting, capsys):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    keras = str(KERAS / "keras_small_cnn_opset9.onnx")
    assert cli(["layers", keras]) == 0
    assert "N x 16 x 6 x 6".replace(" x ", "x") in capsys.readouterr().out  # NCHW shapes
    out = tmp_path / "out"
    assert cli(["explain", keras, str(tmp_path / "a.png"), "-m", "gradcam,guided_backprop", "--out", str(out),
                "--save-maps", "--mean", "0", "0", "0", "--std", "1", "1", "1"]) == 0
    assert np.load(out / "a_gradcam.npy").shape == (32, 32)
    assert np.load(out / "a_guided_backprop.npy").shape == (3, 32, 32)
    assert cli(["explain", keras, str(tmp_path / "a.png"), "-m", "occlusion", "--layout", "NCHW",
                "--out", str(tmp_path / "no")]) == 2
    assert "read as NCHW" in capsys.readouterr().err
    model, paths = permuting
    assert cli(["compare", paths["legacy"], paths["dynamo"], str(tmp_path / "a.png"), "-m", "gradcam",
                "--layout", "NHWC"]) == 0
