"""Reliability (GitHub issue "Reliability"): every user mistake raises a ``cnnlens.CnnlensError``
whose message says what was wrong and what to do; the CLI prints it as exactly one ``error:``
line on stderr, no traceback, and exits with status 2.

Extends ``test_api.test_errors_say_what_to_do`` and ``test_cli.test_errors_are_one_line_and_exit_2``
to broken model files, broken image files, bad arrays, layers, targets and method options, on both
the torch and the ONNX backend.
"""

import os
import re
import sys
import textwrap
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_onnx
from cnnlens.cli import main

from tests.helpers import images

# ---------------------------------------------------------------- models

MODEL_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            x = self.relu(self.conv2(self.relu(self.conv1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    def build():
        torch.manual_seed(0)
        return Small()

    class Odd(nn.Module):
        """A running sum (CumSum: no backward rule on ONNX) between two convolutions."""
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x)).cumsum(3)))
            return self.fc(x.mean(dim=(2, 3)))

    def odd():
        torch.manual_seed(0)
        return Odd()

    def flat():
        """No global average pooling: the head flattens a 16x16 map."""
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16 * 16, 3))
''')
_namespace: dict = {}
exec(MODEL_SOURCE, _namespace)  # the same classes the CLI imports as relnet:build / relnet:flat
build, flat, odd = _namespace["build"], _namespace["flat"], _namespace["odd"]


def conv_only():
    """A model whose output has the wrong rank: (N, 4, 16, 16)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())


class TwoLayerHead(nn.Module):
    """GAP -> Linear -> ReLU -> Linear: not the single linear layer CAM needs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).mean(dim=(2, 3)))))


def max_pool_head():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


class MultiOutput(nn.Module):
    """A classifier that also returns its feature map, as a tuple or as a dict."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        logits = self.fc(features.mean(dim=(2, 3)))
        if self.kind == "tuple":
            return logits, features
        return {"logits": logits, "aux": features}


class WrongRank(nn.Module):
    """Returns ``kind``: a (N, C, H, W) map, a (N,) vector, or a tuple led by the map."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if self.kind == "map":
            return y
        if self.kind == "vector":
            return y.mean(dim=(1, 2, 3))
        if self.kind == "none":
            return None
        return y, y.mean(dim=(2, 3))


def scripted():
    """The small model as TorchScript (input gradients only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 marks TorchScript deprecated
        return torch.jit.trace(build().eval(), torch.zeros(1, 3, 16, 16))


X = images(2, 3, 16, 16, seed=0)
#: Several outputs: cnnlens may warn which one it explains (not what these tests are about).
MANY_OUTPUTS = pytest.mark.filterwarnings("ignore:the model returns a:UserWarning")


# ---------------------------------------------------------------- files


def _with(value, index, fill):
    out = value.copy()
    out.flat[index] = fill
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder with a good ONNX model (fixed 16x16), broken model files, and good and broken images."""
    root = tmp_path_factory.mktemp("reliability")
    (root / "relnet.py").write_text(MODEL_SOURCE)
    to_onnx(build(), str(root / "good.onnx"), input_shape=(3, 16, 16), exporter="legacy")
    to_onnx(conv_only(), str(root / "maps.onnx"), input_shape=(3, 16, 16), exporter="legacy")
    to_onnx(odd(), str(root / "odd.onnx"), input_shape=(3, 16, 16), exporter="legacy")
    data = (root / "good.onnx").read_bytes()
    (root / "trunc.onnx").write_bytes(data[:len(data) // 2])
    (root / "m.onnx").write_bytes(b"")
    rng = np.random.default_rng(1)
    (root / "random.onnx").write_bytes(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
    (root / "text.pt").write_text("this is not a TorchScript archive\n")
    (root / "model.d").mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "img.png")
    png = (root / "img.png").read_bytes()
    (root / "trunc.png").write_bytes(png[:len(png) // 2])
    (root / "corrupt.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (root / "text.jpg").write_text("hello, I am not a JPEG\n")
    (root / "imgs").mkdir()
    return root


@pytest.fixture(scope="module")
def ctx(files):
    return SimpleNamespace(
        model=build(),
        onnx=cnnlens.load(str(files / "good.onnx")),
        maps_onnx=cnnlens.load(str(files / "maps.onnx")),
        odd_onnx=cnnlens.load(str(files / "odd.onnx")),
        p=lambda name: str(files / name),
    )


@pytest.fixture()
def workdir(files, monkeypatch):
    monkeypatch.chdir(files)
    monkeypatch.syspath_prepend(str(files))
    sys.modules.pop("relnet", None)
    yield files
    sys.modules.pop("relnet", None)


# ---------------------------------------------------------------- the API

#: what runs on odd.onnx, whose CumSum has no backward rule: every method but those that need input gradients
ODD_METHODS = (r"On this backend use one of: gradcam, gradcampp, xgradcam, layercam, hirescam, cam, eigencam, scorecam, "
               r"ablationcam, occlusion, rise, feature_maps")
ODD_WHY = r"for this model \(the gradient cannot pass op CumSum \(node '/CumSum'\): no backward rule for this op\)"


def case(id_, call, error, message, *marks):
    return pytest.param(call, error, message, id=id_, marks=marks)


def on_torch(c, *args, **kwargs):
    """explain on the torch model."""
    return cnnlens.explain(c.model, *args, **kwargs)


def on_onnx(c, *args, **kwargs):
    """explain on the ONNX model (fixed 3x16x16 input)."""
    return cnnlens.explain(c.onnx, *args, **kwargs)


API_CASES = [
    # ------------------------------------------------ model files
    case("model-missing", lambda c: cnnlens.load(c.p("nope.onnx")), cnnlens.ModelError,
         r"no such model file: .*nope\.onnx.*(check|give|pass|export)"),
    case("model-missing-explain-pt", lambda c: cnnlens.explain(c.p("gone.pt"), X, "saliency"),
         cnnlens.ModelError, r"no such model file: .*gone\.pt.*(check|give|pass|export)"),
    case("model-empty", lambda c: cnnlens.load(c.p("m.onnx")), cnnlens.ModelError,
         r"m\.onnx is empty: export the model again"),
    case("model-random-bytes", lambda c: cnnlens.load(c.p("random.onnx")), cnnlens.ModelError,
         r"random\.onnx is not a readable ONNX model \(.+\): is the file complete\? Export it again"),
    case("model-truncated-onnx", lambda c: cnnlens.load(c.p("trunc.onnx")), cnnlens.ModelError,
         r"trunc\.onnx is not a readable ONNX model \(.+\): is the file complete\? Export it again"),
    case("model-garbage-bytes", lambda c: cnnlens.load(b"\x00\x01 not onnx"), cnnlens.ModelError,
         r"not a readable ONNX model \(.+\): is the file complete\? Export it again"),
    case("model-text-pt", lambda c: cnnlens.load(c.p("text.pt")), cnnlens.ModelError,
         r"text\.pt is not a TorchScript archive.*: export it with cnnlens\.adapters\.export\.to_torchscript"),
    case("model-folder", lambda c: cnnlens.load(c.p("model.d")), cnnlens.ModelError,
         r"model\.d is a folder, not a model file.*(pass|give|choose|point)"),
    case("model-wrong-type", lambda c: cnnlens.explain(np.zeros(3), X, "saliency"), cnnlens.ModelError,
         r"cannot explain an object of type numpy\.ndarray: pass a torch\.nn\.Module"),
    # ------------------------------------------------ arrays
    case("hwc-3d", lambda c: on_torch(c, X[0].transpose(1, 2, 0), "saliency"), cnnlens.InvalidInputError,
         r"4 axes \(N, C, H, W\), got shape \(16, 16, 3\).*\(H, W, C\): use x\.transpose\(2, 0, 1\)\[None\]"),
    case("nhwc-4d", lambda c: on_torch(c, X.transpose(0, 2, 3, 1), "gradcam"), cnnlens.InvalidInputError,
         r"\(2, 16, 16, 3\) look channels-last.*use x\.transpose\(0, 3, 1, 2\)"),
    case("nhwc-4d-onnx", lambda c: on_onnx(c, X.transpose(0, 2, 3, 1), "occlusion"), cnnlens.InvalidInputError,
         r"\(2, 16, 16, 3\) look channels-last.*use x\.transpose\(0, 3, 1, 2\)"),
    case("channels-torch", lambda c: on_torch(c, X[:, :2], "saliency"), cnnlens.InvalidInputError,
         r"failed on images of shape \(2, 2, 16, 16\).*3 channels.*[:;.] ?(give|pass|use|convert|make|check)\b"),
    case("channels-onnx", lambda c: on_onnx(c, X[:, :2], "occlusion"), cnnlens.InvalidInputError,
         r"axis 1 must be 3\), got images of shape \(2, 2, 16, 16\): convert them to 3 channels"),
    case("spatial-onnx", lambda c: on_onnx(c, images(2, 3, 20, 20, 1), "occlusion"), cnnlens.InvalidInputError,
         r"axis 2 must be 16\), got images of shape \(2, 3, 20, 20\): resize or crop them to the model's input size"),
    case("spatial-onnx-width-cam", lambda c: on_onnx(c, images(1, 3, 16, 12, 1), "cam"), cnnlens.InvalidInputError,
         r"axis 3 must be 16\), got images of shape \(1, 3, 16, 12\): resize or crop them"),
    case("spatial-onnx-scorecam", lambda c: on_onnx(c, images(1, 3, 8, 8, 1), "scorecam"), cnnlens.InvalidInputError,
         r"axis 2 must be 16\).*resize or crop"),
    case("nan", lambda c: on_torch(c, _with(X, 5, np.nan), "saliency"), cnnlens.InvalidInputError,
         r"NaN or infinite values: clean or re-normalise them"),
    case("plus-inf", lambda c: on_torch(c, _with(X, 7, np.inf), "occlusion"), cnnlens.InvalidInputError,
         r"NaN or infinite values: clean or re-normalise them"),
    case("minus-inf-onnx", lambda c: on_onnx(c, _with(X, 9, -np.inf), "occlusion"), cnnlens.InvalidInputError,
         r"NaN or infinite values: clean or re-normalise them"),
    case("nan-torch-tensor", lambda c: on_torch(c, torch.from_numpy(_with(X, 3, np.nan)), "gradcam"),
         cnnlens.InvalidInputError, r"NaN or infinite values: clean or re-normalise them"),
    case("strings", lambda c: on_torch(c, np.array([[["a", "b"]]]), "saliency"), cnnlens.InvalidInputError,
         r"images must be a float array of shape \(N, C, H, W\)"),
    case("object-array", lambda c: on_torch(c, np.array([[[[1.0, "x"]]]], dtype=object), "saliency"),
         cnnlens.InvalidInputError, r"images must be a float array of shape \(N, C, H, W\)"),
    case("object-array-of-dicts", lambda c: on_torch(c, np.full((1, 3, 4, 4), {}, dtype=object), "saliency"),
         cnnlens.InvalidInputError, r"images must be a float array of shape \(N, C, H, W\)"),
    case("string-path-as-images", lambda c: on_torch(c, "img.png", "saliency"), cnnlens.InvalidInputError,
         r"images must be a float array of shape \(N, C, H, W\)"),
    # ------------------------------------------------ methods and layers
    case("unknown-method", lambda c: on_torch(c, X, "smoothgrd"), cnnlens.UnknownMethodError,
         r"unknown method 'smoothgrd'\. Did you mean 'smoothgrad'\? Methods: saliency"),
    case("unknown-method-dash", lambda c: on_onnx(c, X, "feature-maps"), cnnlens.UnknownMethodError,
         r"unknown method 'feature-maps'\. Did you mean 'feature_maps'"),
    case("unknown-method-case", lambda c: on_torch(c, X, "GradCAM"), cnnlens.UnknownMethodError,
         r"unknown method 'GradCAM'\. Did you mean 'gradcam'"),
    case("unknown-layer", lambda c: on_torch(c, X, "gradcam", layer="conv"), cnnlens.LayerError,
         r"unknown layer 'conv'\. Did you mean (?=.*'conv1')(?=.*'conv2').*`cnnlens\.layers\(model\)` lists all"),
    case("unknown-layer-in-list", lambda c: on_torch(c, X, "feature_maps", layer=["conv1", "cnv2"]), cnnlens.LayerError,
         r"unknown layer 'cnv2'\. Did you mean 'conv2'.*cnnlens\.layers\(model\)"),
    case("unknown-layer-onnx", lambda c: on_onnx(c, X, "scorecam", layer="conv3"), cnnlens.LayerError,
         r"unknown layer 'conv3'\. Did you mean .*'conv1'.*cnnlens\.layers\(model\)"),
    case("unknown-layer-cam", lambda c: on_torch(c, X, "cam", layer="relux"), cnnlens.LayerError,
         r"unknown layer 'relux'\. Did you mean 'relu'"),
    case("non-spatial-scorecam", lambda c: on_torch(c, X, "scorecam", layer="fc"), cnnlens.LayerError,
         r"layer 'fc' outputs shape \(2, 3\), not a \(N, K, h, w\) map or a token tensor \(N, T, C\), so scorecam "
         r"cannot use it: pick a convolutional or transformer-block layer"),
    case("non-spatial-guided-gradcam", lambda c: on_torch(c, X, "guided_gradcam", layer="fc"), cnnlens.LayerError,
         r"layer 'fc' .*not a \(N, K, h, w\) map or a token tensor \(N, T, C\), so guided_gradcam cannot use it: pick a "
         r"convolutional or transformer-block layer"),
    case("non-spatial-in-gradcam-list", lambda c: on_torch(c, X, "gradcam", layer=["conv2", "fc"]), cnnlens.LayerError,
         r"layer 'fc' .*so gradcam cannot use it: pick a convolutional or transformer-block layer"),
    case("non-spatial-onnx-scorecam", lambda c: on_onnx(c, X, "scorecam", layer="fc"), cnnlens.LayerError,
         r"outputs shape \(2, 3\), not a \(N, K, h, w\) map or a token tensor \(N, T, C\), so scorecam cannot use it: "
         r"pick a convolutional or transformer-block layer"),
    case("layer-not-a-string", lambda c: on_torch(c, X, "gradcam", layer=[3]), cnnlens.LayerError,
         r"layer must be a layer name or a non-empty list of names, got \[3\]"),
    case("cam-layer-not-pooled", lambda c: on_torch(c, X, "cam", layer="fc"), cnnlens.LayerError,
         r"cam can only use the tensor the head pools \('relu'\), not 'fc': leave layer unset, or use gradcam"),
    case("cam-two-layer-head", lambda c: cnnlens.explain(TwoLayerHead(), X, "cam"), cnnlens.ModelError,
         r"cam needs .*global average pooling followed by one linear layer.*Use gradcam"),
    case("cam-max-pool-head", lambda c: cnnlens.explain(max_pool_head(), X, "cam"), cnnlens.ModelError,
         r"cam needs .*global average pooling followed by one linear layer.*Use gradcam"),
    case("cam-onnx-no-head", lambda c: cnnlens.explain(c.maps_onnx, X, "cam"), cnnlens.ModelError,
         r"global average pooling followed by one Gemm or MatMul.*Use gradcam, scorecam or occlusion"),
    *[case(f"gradient-on-onnx-op-without-rule-{m}", lambda c, m=m: cnnlens.explain(c.odd_onnx, X, m),
           cnnlens.UnsupportedError, rf"{m} needs input_gradients.*which the onnx backend does not provide "
           rf"{ODD_WHY}\. {ODD_METHODS}")
      for m in ("saliency", "guided_backprop", "smoothgrad", "deconvnet", "guided_gradcam")],
    case("gradient-on-onnx-with-options", lambda c: cnnlens.explain(c.odd_onnx, X, "smoothgrad", samples=2, target=1),
         cnnlens.UnsupportedError, rf"smoothgrad needs .*{ODD_METHODS}"),
    case("gradcam-on-onnx-below-an-op-without-rule",
         lambda c: cnnlens.explain(c.odd_onnx, X, "gradcam", layer="conv1"), cnnlens.UnsupportedError,
         r"cannot differentiate this ONNX model from this layer to its scores: op CumSum \(node '/CumSum'\) has "
         r"no gradient rule.*name a layer above that node, or use cam, eigencam, scorecam, ablationcam, occlusion, rise, "
         r"feature_maps"),
    case("layer-method-on-torchscript",
         lambda c: cnnlens.explain(scripted(), X, "gradcam"),
         cnnlens.UnsupportedError,
         r"gradcam needs .*torchscript backend does not provide\. On this backend use one of: saliency, "
         r"input_x_gradient, integrated_gradients, smoothgrad, occlusion, rise"),
    # ------------------------------------------------ targets
    case("target-too-large", lambda c: on_torch(c, X, "saliency", target=99), cnnlens.TargetError,
         r"target 99 is out of range: the model has 3 outputs, so targets must be in 0\.\.2"),
    case("target-too-large-onnx", lambda c: on_onnx(c, X, "occlusion", target=3, window=8), cnnlens.TargetError,
         r"target 3 is out of range: the model has 3 outputs, so targets must be in 0\.\.2"),
    case("target-negative", lambda c: on_torch(c, X, "gradcam", target=-1), cnnlens.TargetError,
         r"target -1 is out of range: .*targets must be in 0\.\.2"),
    case("target-list-one-out-of-range", lambda c: on_torch(c, X, "scorecam", target=[0, 5]), cnnlens.TargetError,
         r"target 5 is out of range: .*0\.\.2"),
    case("target-list-too-short", lambda c: on_torch(c, X, "saliency", target=[0]), cnnlens.TargetError,
         r"got 1 targets for a batch of 2 images: give one int for all images or exactly one per image"),
    case("target-array-too-long", lambda c: on_onnx(c, X, "feature_maps", target=np.array([0, 1, 2])),
         cnnlens.TargetError,
         r"got 3 targets for a batch of 2 images: give one int"),
    case("target-float", lambda c: on_torch(c, X, "saliency", target=1.5), cnnlens.TargetError,
         r"target must be an int class index, got 1\.5"),
    case("target-str", lambda c: on_torch(c, X, "gradcam", target="cat"), cnnlens.TargetError,
         r"target must be an int class index, got 'cat'"),
    case("target-list-with-str", lambda c: on_torch(c, X, "saliency", target=[0, "1"]), cnnlens.TargetError,
         r"target must be an int class index, got '1'"),
    case("target-bool", lambda c: on_onnx(c, X, "occlusion", target=True, window=8), cnnlens.TargetError,
         r"target must be an int class index or a list of them, got True"),
    case("target-not-a-sequence", lambda c: on_torch(c, X, "saliency", target=object()), cnnlens.CnnlensError,
         r"target must be None, an int, one int per image, or an array of output weights"),
    # ------------------------------------------------ occlusion options
    case("window-larger-than-image", lambda c: on_torch(c, X, "occlusion", window=17), cnnlens.InvalidInputError,
         r"occlusion window 17 is larger than the image side 16: choose a window <= 16"),
    case("window-pair-too-wide", lambda c: on_onnx(c, X, "occlusion", window=(4, 20), stride=2),
         cnnlens.InvalidInputError,
         r"occlusion window 20 is larger than the image side 16: choose a window <= 16"),
    case("window-zero-onnx", lambda c: on_onnx(c, X, "occlusion", window=0), cnnlens.InvalidInputError,
         r"window must be positive, got 0"),
    case("window-negative", lambda c: on_torch(c, X, "occlusion", window=-3, stride=1), cnnlens.InvalidInputError,
         r"window must be positive, got -3"),
    case("window-float", lambda c: on_torch(c, X, "occlusion", window=4.5), cnnlens.InvalidInputError,
         r"window must be an int or a pair of ints, got 4\.5"),
    case("stride-zero", lambda c: on_torch(c, X, "occlusion", window=4, stride=0), cnnlens.InvalidInputError,
         r"stride must be positive, got 0"),
    case("stride-negative-pair", lambda c: on_onnx(c, X, "occlusion", window=4, stride=(2, -2)),
         cnnlens.InvalidInputError,
         r"stride must be positive, got \(2, -2\)"),
    case("stride-larger-than-window", lambda c: on_torch(c, X, "occlusion", window=4, stride=6),
         cnnlens.InvalidInputError,
         r"stride \(6, 6\) is larger than the window \(4, 4\).*use a stride <= the window"),
    case("baseline-wrong-shape", lambda c: on_torch(c, X, "occlusion", window=8, baseline=np.zeros(5)),
         cnnlens.InvalidInputError,
         r"baseline of shape \(5,\) does not fit images of shape \(3, 16, 16\): give a number"),
    case("baseline-string", lambda c: on_torch(c, X, "occlusion", window=8, baseline="gray"), cnnlens.InvalidInputError,
         r"baseline.*give a number"),
    # ------------------------------------------------ smoothgrad and batch_size
    case("samples-negative", lambda c: on_torch(c, X, "smoothgrad", samples=-2), cnnlens.InvalidInputError,
         r"samples must be a positive int, got -2"),
    case("samples-float", lambda c: on_torch(c, X, "smoothgrad", samples=2.5), cnnlens.InvalidInputError,
         r"samples must be a positive int, got 2\.5"),
    case("samples-bool", lambda c: on_torch(c, X, "smoothgrad", samples=True), cnnlens.InvalidInputError,
         r"samples must be a positive int, got True"),
    case("noise-negative", lambda c: on_torch(c, X, "smoothgrad", noise=-0.5, samples=2), cnnlens.InvalidInputError,
         r"noise must be a fraction >= 0 of each image's value range, got -0\.5"),
    case("noise-nan", lambda c: on_torch(c, X, "smoothgrad", noise=float("nan")), cnnlens.InvalidInputError,
         r"noise must be a fraction >= 0 .*got nan"),
    case("noise-string", lambda c: on_torch(c, X, "smoothgrad", noise="0.1"), cnnlens.InvalidInputError,
         r"noise must be a fraction >= 0"),
    case("smoothgrad-base-unknown", lambda c: on_torch(c, X, "smoothgrad", base="gradcam"), cnnlens.InvalidInputError,
         r"base must be one of saliency, guided_backprop, deconvnet, input_x_gradient, integrated_gradients, lrp, deeplift; got 'gradcam'"),
    case("batch-size-negative", lambda c: on_torch(c, X, "gradcam", batch_size=-1), cnnlens.InvalidInputError,
         r"batch_size must be a positive int, got -1"),
    case("batch-size-bool", lambda c: on_torch(c, X, "saliency", batch_size=True), cnnlens.InvalidInputError,
         r"batch_size must be a positive int, got True"),
    case("batch-size-float", lambda c: on_torch(c, X, "smoothgrad", batch_size=2.0), cnnlens.InvalidInputError,
         r"batch_size must be a positive int, got 2\.0"),
    case("batch-size-zero-onnx", lambda c: on_onnx(c, X, "occlusion", batch_size=0), cnnlens.InvalidInputError,
         r"batch_size must be a positive int, got 0"),
    case("batch-size-str-scorecam", lambda c: on_torch(c, X, "scorecam", batch_size="4"), cnnlens.InvalidInputError,
         r"batch_size must be a positive int, got '4'"),
    # ------------------------------------------------ model outputs
    case("output-map", lambda c: cnnlens.explain(WrongRank("map"), X, "saliency"), cnnlens.TargetError,
         r"output has shape \(2, 4, 16, 16\), not \(N, classes\), so a class index does not say what to explain: "
         r"give target weights"),
    case("output-map-forward", lambda c: cnnlens.explain(WrongRank("map"), X, "occlusion", window=8),
         cnnlens.TargetError, r"output has shape \(2, 4, 16, 16\), not \(N, classes\).*give target weights"),
    case("output-vector", lambda c: cnnlens.explain(WrongRank("vector"), X, "gradcam"), cnnlens.TargetError,
         r"output has shape \(2,\), not \(N, classes\).*give target weights"),
    case("output-tuple-led-by-map", lambda c: cnnlens.explain(WrongRank("tuple"), X, "saliency"), cnnlens.TargetError,
         r"output has shape \(2, 4, 16, 16\), not \(N, classes\).*give target weights"),
    case("output-none", lambda c: cnnlens.explain(WrongRank("none"), X, "occlusion", window=8), cnnlens.ModelError,
         r"returned NoneType with no tensor in it: .*wrap it in a module that returns them"),
    case("output-map-onnx", lambda c: cnnlens.explain(c.maps_onnx, X, "occlusion", window=8), cnnlens.TargetError,
         r"output has shape \(2, 4, 16, 16\), not \(N, classes\).*give target weights"),
]


@MANY_OUTPUTS
@pytest.mark.parametrize("call,error,message", API_CASES)
def test_api_errors_say_what_was_wrong_and_what_to_do(ctx, call, error, message):
    with pytest.raises(error, match=message) as info:
        call(ctx)
    assert isinstance(info.value, cnnlens.CnnlensError)
    assert "\n" not in str(info.value)


def test_unsupported_error_is_a_type_error():
    # (the ValueError subclasses are checked in test_api)
    assert issubclass(cnnlens.UnsupportedError, TypeError)
    assert issubclass(cnnlens.UnsupportedError, cnnlens.CnnlensError)


# ---------------------------------------------------------------- models with several outputs


@MANY_OUTPUTS
@pytest.mark.parametrize("kind", ["tuple", "dict"])
@pytest.mark.parametrize("target", [None, 2])
def test_explains_the_first_tensor_output(kind, target):
    model = MultiOutput(kind).eval()
    exp = cnnlens.explain(model, X, "saliency", target=target)

    xt = torch.from_numpy(X.copy()).requires_grad_(True)
    out = model(xt)
    logits = out[0] if kind == "tuple" else out["logits"]
    classes = logits.argmax(dim=1) if target is None else torch.full((len(X),), target)
    grad, = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), xt)

    np.testing.assert_array_equal(exp.target, classes.numpy())
    np.testing.assert_allclose(exp.logits, logits.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(grad.numpy()).max() > 0
    np.testing.assert_allclose(exp.maps, grad.numpy(), rtol=1e-5, atol=1e-7)


@MANY_OUTPUTS
@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_several_outputs_work_for_layer_methods(kind):
    model = MultiOutput(kind).eval()
    exp = cnnlens.explain(model, X, "gradcam", layer="conv", target=1)
    assert exp.maps.shape == (2, 16, 16) and exp.logits.shape == (2, 3)


# ---------------------------------------------------------------- the CLI

T = ["--size", "16", "16"]  # torch models: the input size


def cli(argv):
    """The exit status of ``cnnlens ARGV``, also when argparse exits."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


CLI_CASES = [
    # ------------------------------------------------ model files
    pytest.param(["explain", "gone.pt", "img.png"], r"no such model file: gone\.pt.*(check|give|pass|export)",
                 id="model-missing-pt"),
    pytest.param(["explain", "m.onnx", "img.png"], r"m\.onnx is empty: export the model again", id="model-empty"),
    pytest.param(["explain", "random.onnx", "img.png"],
                 r"random\.onnx is not a readable ONNX model \(.+\): is the file complete\? Export it again",
                 id="model-random-bytes"),
    pytest.param(["explain", "trunc.onnx", "img.png", "-m", "occlusion"],
                 r"trunc\.onnx is not a readable ONNX model .*Export it again", id="model-truncated-onnx"),
    pytest.param(["layers", "trunc.onnx"], r"trunc\.onnx is not a readable ONNX model .*Export it again",
                 id="layers-truncated-onnx"),
    pytest.param(["explain", "text.pt", "img.png"],
                 r"text\.pt is not a TorchScript archive.*export it with cnnlens\.adapters\.export\.to_torchscript",
                 id="model-text-pt"),
    pytest.param(["explain", "model.d", "img.png"], r"model\.d is a folder, not a model file.*(pass|give|choose)",
                 id="model-folder"),
    pytest.param(["compare", "relnet:build", "trunc.onnx", "img.png"],
                 r"trunc\.onnx is not a readable ONNX model .*Export it again", id="compare-truncated-onnx"),
    pytest.param(["explain", "relnet", "img.png"], r"neither a file nor module:attr: give an \.onnx, \.pt2 or TorchScript file",
                 id="model-neither-file-nor-module"),
    # ------------------------------------------------ image files
    pytest.param(["explain", "relnet:build", "imgs/missing.jpg", *T],
                 r"image file 'imgs/missing\.jpg' does not exist: check the path", id="image-missing"),
    pytest.param(["explain", "good.onnx", "img.png", "corrupt.png", "-m", "occlusion"],
                 r"cannot read image file 'corrupt\.png' \(.+\): .*truncated or corrupt; re-save or re-download it",
                 id="image-corrupt-png"),
    pytest.param(["explain", "relnet:build", "trunc.png", *T],
                 r"cannot read image file 'trunc\.png' \(.+\): .*truncated or corrupt; re-save or re-download it",
                 id="image-truncated-png"),
    pytest.param(["explain", "relnet:build", "text.jpg", *T],
                 r"cannot read image file 'text\.jpg' \(.+\): it is not an image Pillow can read.*re-save",
                 id="image-text-jpg"),
    pytest.param(["explain", "relnet:build", "imgs", *T],
                 r"'imgs' is a folder, not an image file: pass the image files in it", id="image-folder"),
    pytest.param(["report", "relnet:build", "corrupt.png", *T, "--out", "r.html"],
                 r"cannot read image file 'corrupt\.png'.*re-save", id="report-corrupt-png"),
    pytest.param(["compare", "relnet:build", "good.onnx", "trunc.png", "-m", "occlusion"],
                 r"cannot read image file 'trunc\.png'.*re-save", id="compare-truncated-png"),
    # ------------------------------------------------ sizes and preprocessing
    pytest.param(["explain", "good.onnx", "img.png", "--size", "20", "20", "-m", "occlusion"],
                 r"axis 2 must be 16\), got images of shape \(1, 3, 20, 20\): resize or crop them", id="size-onnx"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "--mean", "0.5", "0.5"],
                 r"mean has 2 values but the model takes 3 channels.*(give|pass|use)",
                 id="mean-wrong-channel-count"),
    # ------------------------------------------------ methods and layers
    pytest.param(["explain", "good.onnx", "img.png", "-m", "scorecm"],
                 r"unknown method 'scorecm'\. Did you mean 'scorecam'", id="unknown-method-onnx"),
    *[pytest.param(["explain", "odd.onnx", "img.png", "-m", m],
                   rf"{m} needs .*which the onnx backend does not provide {ODD_WHY}\. {ODD_METHODS}", id=f"onnx-{m}")
      for m in ("saliency", "guided_backprop", "smoothgrad")],
    pytest.param(["explain", "odd.onnx", "img.png", "-m", "gradcam", "-l", "conv1"],
                 r"op CumSum \(node '/CumSum'\) has no gradient rule", id="onnx-gradcam-below-cumsum"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "gradcam", "-l", "conv"],
                 r"unknown layer 'conv'\. Did you mean (?=.*'conv1')(?=.*'conv2')", id="unknown-layer"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "scorecam", "-l", "fc"],
                 r"layer 'fc' outputs shape \(1, 3\), not a \(N, K, h, w\) map.*pick a convolutional or transformer-block layer",
                 id="non-spatial-layer"),
    pytest.param(["explain", "relnet:flat", "img.png", *T, "-m", "cam"],
                 r"cam needs .*global average pooling.*Use gradcam", id="cam-without-gap"),
    # ------------------------------------------------ targets
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "saliency", "-t", "-1"],
                 r"target -1 is out of range: .*targets must be in 0\.\.2", id="target-negative"),
    pytest.param(["explain", "good.onnx", "img.png", "-m", "occlusion", "-t", "3"],
                 r"target 3 is out of range: .*0\.\.2", id="target-too-large-onnx"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "saliency", "-t", "cat"],
                 r"^error: .*--target.*invalid int value: 'cat'", id="target-str"),
    # ------------------------------------------------ method options
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "occlusion", "--window", "17"],
                 r"occlusion window 17 is larger than the image side 16: choose a window <= 16", id="window-too-large"),
    pytest.param(["explain", "good.onnx", "img.png", "-m", "occlusion", "--window", "0"],
                 r"window must be positive, got 0", id="window-zero"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "occlusion", "--window", "-4"],
                 r"window must be positive, got -4", id="window-negative"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "occlusion", "--window", "4", "--stride", "0"],
                 r"stride must be positive, got 0", id="stride-zero"),
    pytest.param(["explain", "good.onnx", "img.png", "-m", "occlusion", "--window", "4", "--stride", "-1"],
                 r"stride must be positive, got -1", id="stride-negative"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "occlusion", "--window", "4", "--stride", "5"],
                 r"stride \(5, 5\) is larger than the window \(4, 4\).*use a stride <= the window",
                 id="stride-larger-than-window"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "smoothgrad", "--samples", "0"],
                 r"samples must be a positive int, got 0", id="samples-zero"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "smoothgrad", "--samples", "-3"],
                 r"samples must be a positive int, got -3", id="samples-negative"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "smoothgrad", "--noise", "-0.1"],
                 r"noise must be a fraction >= 0 of each image's value range, got -0\.1", id="noise-negative"),
    pytest.param(["explain", "relnet:build", "img.png", *T, "-m", "gradcam", "--batch-size", "0"],
                 r"batch_size must be a positive int, got 0", id="batch-size-zero"),
    pytest.param(["explain", "good.onnx", "img.png", "-m", "scorecam", "--batch-size", "-2"],
                 r"batch_size must be a positive int, got -2", id="batch-size-negative"),
]


@pytest.mark.parametrize("argv,message", CLI_CASES)
def test_cli_errors_are_one_line_and_exit_2(workdir, capsys, argv, message):
    code = cli(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert not os.path.exists("cnnlens-out") or not os.listdir("cnnlens-out")  # nothing written for a failed run
