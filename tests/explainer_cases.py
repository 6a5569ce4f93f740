"""The models every runtime's explainer test runs (Python onnxruntime, onnxruntime-node, onnxruntime-web):
torchvision ResNet-50, MobileNet-V3-Large and DenseNet-121 (seeded random weights, BatchNorm statistics
randomised), the demo's DenseNet, tf2onnx/Keras (NHWC) models and opset-9 zoo graphs. Each is written once per
test session with its explainer (every method that exports on it, in one file) and the reference maps of
``cnnlens.explain`` on the plain ONNX file, so the runtimes' tests share the work."""

from __future__ import annotations

import functools
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
import torch

import cnnlens
from cnnlens.adapters.export import to_onnx
from cnnlens.core.methods import exportable_methods
from tests.helpers import randomise_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERAS = os.path.join(ROOT, "tests", "data", "keras")
#: the explainer's maps and cnnlens.explain's on the same file: max |a - b| / max |b|
TOLERANCE = 1e-5
#: in a runtime whose kernels round differently (onnxruntime-web's wasm, no fused multiply-add): LRP divides by
#: sums that can nearly cancel (the demo DenseNet's transitions average signed convolution outputs, the
#: proportional rule divides by that average) and DeepLIFT by differences to the baseline, so their rounding
#: shows larger there (measured: LRP 3.6e-3 on one demo DenseNet image, DeepLIFT 2.0e-5 on ResNet-50)
OTHER_RUNTIME = {"lrp": 1e-2, "deeplift": 1e-4}
BATCH = 5


@dataclass
class Case:
    """How to make one model's plain ONNX file, and which methods (and options) its explainer holds."""

    name: str
    make: Callable[[str], None]               # writes the plain ONNX file to the path given
    methods: Optional[List[str]] = None       # None: every method that exports
    options: Dict[str, Dict] = field(default_factory=dict)
    batch: int = BATCH                        # images per run (1 for a model whose batch is fixed)
    seed: int = 3                             # of the images (chosen where the float32 maps are stable)
    layer: Optional[str] = None               # for the methods that take one (None: the default layer)


@dataclass
class Built:
    case: Case
    plain: str
    path: str
    result: object                            # what export_explainer returned
    x: np.ndarray                             # NCHW images
    _references: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def feeds(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """The explainer's input for NCHW images: in the model's layout."""
        model_x = x.transpose(0, 2, 3, 1) if self.result.layout == "NHWC" else x
        return {self.result.input_name: np.ascontiguousarray(model_x, dtype=np.float32)}

    def reference(self, method: str) -> np.ndarray:
        """``cnnlens.explain`` on the plain file, for the same images, layer and options (computed once)."""
        if method not in self._references:
            options = {k: v for k, v in self.case.options.get(method, {}).items() if k not in ("layer", "batch_size")}
            layer = self.result.layers.get(method)
            self._references[method] = cnnlens.explain(self.plain, self.x, method, layer=layer, **options).maps
        return self._references[method]


def _torchvision(name: str, batchnorm: bool = True) -> Callable[[str], object]:
    """``batchnorm``: randomise the BatchNorm statistics (with them, DenseNet-121's float32 input gradient is
    unstable: torch's own differs from its float64 gradient by 7e-4 on one image of five)."""
    def make(path: str) -> object:
        import torchvision

        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        model = randomise_batchnorm(model) if batchnorm else model
        to_onnx(model, path, (3, 64, 64), exporter="legacy")
        return model
    return make


def _resnet50(path: str) -> object:
    import torchvision

    torch.manual_seed(0)
    model = randomise_batchnorm(torchvision.models.resnet50().eval())
    with torch.no_grad():  # scores of a trained model's size (random weights give ~400, where Score-CAM's softmax
        model.fc.weight.mul_(0.02)  # is ill-conditioned in float32: its relative error is |score| * 6e-8)
        model.fc.bias.mul_(0.02)
    to_onnx(model, path, (3, 64, 64), exporter="dynamo")
    return model


def _demo_densenet(path: str) -> object:
    from cnnlens.adapters.demo_model import build_model

    model = randomise_batchnorm(build_model(seed=0).eval())
    to_onnx(model, path, (3, 64, 64), exporter="legacy")
    return model


def _keras(name: str) -> Callable[[str], object]:
    def make(path: str) -> object:
        onnx.save(onnx.load(os.path.join(KERAS, name)), path)
        return None  # made by TensorFlow: no torch twin
    return make


def _zoo_resnet18(path: str) -> object:
    """As the ONNX model zoo's older files are: opset 9, batch fixed at 1, initializers listed as inputs."""
    import torchvision

    torch.manual_seed(1)
    model = randomise_batchnorm(torchvision.models.resnet18(num_classes=20).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), path, dynamo=False, opset_version=9,
                          input_names=["data"], output_names=["resnetv15_dense0_fwd"],
                          keep_initializers_as_inputs=True)
    return model


def _hand_opset9(path: str) -> object:
    from tests.onnx_models import hand_model

    onnx.save(hand_model(), path)
    return None  # its torch form (onnx_models.hand_forward) has no modules to name layers by


def _lrn_net(path: str) -> object:
    from tests.onnx_models import lrn_net_model

    onnx.save(lrn_net_model(), path)
    return None


#: Integrated Gradients' two Gauss-Legendre points, one per Loop pass. The more points on the path, the likelier
#: one sits on a kink of the random piecewise-linear network (a ReLU input that is 0 to float32 rounding), where
#: float32 runtimes disagree: with 4 points, onnxruntime-web's kernels (no fused multiply-add) differ from the CPU's
#: by up to 3e-3 on 3 of ResNet-50's 5 images, as torch's float32 gradient differs from its float64 one there
IG = {"steps": 2, "batch_size": 1}
CASES = {
    "resnet50": Case("resnet50", _resnet50, options={"integrated_gradients": IG,
                                                     "scorecam": {"layer": "layer1.0.conv1"}}),
    # no GAP -> linear head (CAM); DeepLIFT's maps on this random-weight model are ~1e-10 against outputs of
    # ~0.03 (they barely move from the baseline's): float32 noise on every backend, nothing to compare
    "mobilenet_v3_large": Case("mobilenet_v3_large", _torchvision("mobilenet_v3_large"),
                               methods=[m for m in exportable_methods() if m not in ("cam", "deeplift")],
                               options={"integrated_gradients": IG, "scorecam": {"layer": "features.1"}}),
    "densenet121": Case("densenet121", _torchvision("densenet121", batchnorm=False), layer="/Relu", seed=4,
                        options={"integrated_gradients": IG, "scorecam": {"layer": "features.conv0"}}),
    "demo_densenet": Case("demo_densenet", _demo_densenet, options={"integrated_gradients": IG}),
    "keras_small_cnn_opset9": Case("keras_small_cnn_opset9", _keras("keras_small_cnn_opset9.onnx"),
                                   options={"integrated_gradients": IG}),
    "keras_mobilenet_like_opset13": Case("keras_mobilenet_like_opset13", _keras("keras_mobilenet_like_opset13.onnx"),
                                         methods=[m for m in exportable_methods() if m != "cam"],  # no CAM head
                                         options={"integrated_gradients": IG}),
    "zoo_resnet18_opset9": Case("zoo_resnet18_opset9", _zoo_resnet18, options={"integrated_gradients": IG,
                                                                               "scorecam": {"layer": "/conv1/Conv"}}),
    "hand_opset9": Case("hand_opset9", _hand_opset9, options={"integrated_gradients": IG}),
    "lrn_net_opset9": Case("lrn_net_opset9", _lrn_net, methods=[m for m in exportable_methods() if m != "cam"],
                           options={"integrated_gradients": IG}, batch=1, seed=4),
}

_FOLDER: List[str] = []


def folder() -> str:
    if not _FOLDER:
        _FOLDER.append(tempfile.mkdtemp(prefix="cnnlens-explainer-cases-"))
    return _FOLDER[0]


@functools.lru_cache(maxsize=None)
def built(name: str) -> Built:
    """The case's plain file, its explainer (every method in one file) and its images, made once."""
    case = CASES[name]
    plain = os.path.join(folder(), f"{name}.onnx")
    case.make(plain)
    backend = cnnlens.load(plain)
    methods = case.methods or exportable_methods()
    path = os.path.join(folder(), f"{name}_explained.onnx")
    result = cnnlens.export_explainer(backend, path, methods, options=case.options, layer=case.layer)
    c, h, w = backend.image_shape
    x = np.random.default_rng(case.seed).standard_normal((case.batch, c, h, w)).astype(np.float32)
    return Built(case, plain, path, result, x)


def compare(built_case: Built, outputs: Dict[str, np.ndarray], images: slice = slice(None),
            looser: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Each method's relative error (max |a - b| / max |b|, per image) against cnnlens.explain, asserted within
    TOLERANCE (or ``looser[method]``); returns the worst per method."""
    errors, bad = {}, {}
    for method in built_case.result.methods:
        got = outputs[built_case.result.outputs[method]]
        ref = built_case.reference(method)[images]
        assert got.shape == ref.shape, (method, got.shape, ref.shape)
        worst = 0.0
        for i in range(len(ref)):
            scale = float(np.abs(ref[i]).max())
            assert scale > 0, f"{method}: image {i}'s reference map is all zero, which would prove nothing"
            error = float(np.abs(got[i].astype(np.float64) - ref[i]).max() / scale)
            if not error <= (looser or {}).get(method, TOLERANCE):
                bad[f"{method}[{i}]"] = error
            worst = max(worst, error)
        errors[method] = worst
    assert not bad, f"{built_case.case.name}: maps differ from cnnlens.explain beyond {TOLERANCE}: {bad}"
    return errors


def case_names() -> Tuple[str, ...]:
    return tuple(CASES)
