"""LRP and DeepLIFT checked value by value against their peers, on torch and on ONNX exports.

LRP against zennit 1.0. Relevance starts at the output as ``R = onehot(c) * y_c``; zennit's side is
``with composite.context(model) as m: grad(m(x), x, grad_outputs=onehot * m(x))``, with the canonizers
that make zennit's module-level rules mean what cnnlens applies per call: VGG-16 (no BN:
SequentialMergeBatchNorm finds nothing), VGG-16-BN (VGGCanonizer), ResNet-18 / ResNet-50
(ResNetCanonizer: BN merged, the residual add a Sum module with the Norm rule), the demo DenseNet
(NamedMergeBatchNorm with its true conv -> BN pairs; see ``densenet_bn_pairs`` and ``ModulePoolDenseNet``).
DeepLIFT (Rescale) against Captum 0.9 where Captum computes cnnlens's definition, and against an
independent plain-autograd Rescale reimplementation on ResNet-18 (Captum refuses its reused ReLU).

Every case is checked twice:

* the definition, in float64: cnnlens runs a float64 copy of the model in float64 (its maps come back
  float32) and the peer runs the same copy; they agree to ~1e-7 of max|R| on every image
  (``EXACT`` = 1e-6). This is where a wrong rule, stabiliser, merge or first layer shows.
* float32, against the float64 peer, max|ours - peer| <= 1e-5 max|peer| per image, on the images
  where float32 is stable: the peer is run in float32 twice, on contiguous and on channels-last
  input (cnnlens's torch backend runs CPU convolutions channels-last, whose oneDNN kernels round
  differently), and an image is compared only if both runs are within 1e-5 / 2 of float64 (half the
  tolerance, so that a third float32 computation has room to round its own way). The others are
  counted as skipped in MEASURED, and only held to at most 3x the peer's own float32 error there.
  They are not rare here: random deep nets have a few units where a residual sum or an average pool
  cancels to ~1e-6 (next to the 1e-6 stabiliser; e.g. ResNet-18 layer1.0's sum, -0.4826 + 0.4826),
  or where a DeepLIFT unit's x and baseline pre-activations straddle zero closely, and float32 moves
  such images by 1e-5 to 1e-3 in any implementation (zennit's and Captum's own float32 maps included).

The models' biases are random (so the rules' bias terms count) and their linear layers He-initialised
(torchvision gives VGG's classifier std 0.01, which leaves activations next to the epsilon stabiliser).
ONNX: the same maps from each model's legacy export (BN folded into the convolutions), <= 1e-4 of
max|R| per float32-stable image. VGG-16 / VGG-16-BN are not exported: at these sizes the legacy
exporter refuses VGG's AdaptiveAvgPool2d(7) on a 1 x 1 or 2 x 2 map ("output size that are not
factor of input size"), and at 224 px (7 x 7, where it exports) the file is ~550 MB and the model
far too slow for this file's budget. ResNet-18 and the DenseNet cover the folded BN, the residual
add, the concatenations and the global average pool there.

Seeded random weights, small images (32-64 px), a few images per batch.
"""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum's hook warnings

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("zennit")
pytest.importorskip("captum.attr")

from captum.attr import DeepLift  # noqa: E402
from captum.attr._core import deep_lift as captum_deep_lift  # noqa: E402
from torch import nn  # noqa: E402
from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Convolution  # noqa: E402

import cnnlens  # noqa: E402
from cnnlens.adapters.demo_model import build_model  # noqa: E402
from tests.helpers import one_torch_thread, randomise_batchnorm, rel_err  # noqa: E402


RTOL = 1e-5       # float32 against the float64 peer, on float32-stable images
STABLE = RTOL / 2  # an image is float32-stable when both float32 peer runs are this close to float64
EXACT = 1e-6      # float64 cnnlens against the float64 peer (measured ~1e-7: the float32 cast of the maps)
ONNX_RTOL = 1e-4  # ONNX export (BN folded, another runtime) against the torch result
SIZE = 64
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
IMAGENET_LOW = (0.0 - MEAN) / STD
IMAGENET_HIGH = (1.0 - MEAN) / STD
MEASURED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    yield from one_torch_thread()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for key, value in MEASURED.items():
        print(key, value)


def boxed_images(n: int, size: int, seed: int) -> np.ndarray:
    """ImageNet-normalised images of uniform pixels in [0, 1]: inside ZBox's default box."""
    pixels = np.random.default_rng(seed).uniform(0.0, 1.0, (n, 3, size, size))
    return ((pixels - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)


X4 = boxed_images(4, SIZE, seed=11)
X = X4[:2]
X32 = boxed_images(2, 32, seed=12)
XD = boxed_images(4, SIZE, seed=12)  # the DenseNet: float32-unstable on about half its images
INPUTS = {"x64": X, "x64x4": X4, "x32": X32, "dense": XD}


def liven(model: nn.Module, seed: int) -> nn.Module:
    """Random biases on every conv / linear that has one, He-initialised linear layers, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, (2.0 / m.in_features) ** 0.5, generator=g)
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.05, generator=g)
    return model.eval()


def vgg(constructor, seed: int) -> nn.Module:
    """A torchvision VGG made on the meta device and initialised here (torchvision's He init of the
    convolutions, fan out), which skips torchvision's 120M-weight classifier init that ``liven`` redoes."""
    with torch.device("meta"):
        model = constructor(num_classes=10)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=g)
    return model


def logits_of(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def classes_for(target, logits: np.ndarray) -> np.ndarray:
    if target is None:
        return logits.argmax(1)
    if isinstance(target, int):
        return np.full(len(logits), target)
    return np.asarray(target)


def as_input(x: np.ndarray, dtype, channels_last: bool = False) -> torch.Tensor:
    t = torch.from_numpy(x).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def compare(name: str, ours32: np.ndarray, ours64: np.ndarray, ref64: np.ndarray, ref32s) -> dict:
    """The two checks of the module docstring, recorded in MEASURED[name]: ``ours64`` against ``ref64``
    on every image (<= EXACT), ``ours32`` against ``ref64`` on the images where every float32 peer
    run in ``ref32s`` is within STABLE of ``ref64`` (<= RTOL)."""
    n = len(ref64)
    assert ours32.dtype == np.float32 and ours32.shape == ref64.shape == ours64.shape
    for i in range(n):
        assert np.abs(ref64[i]).max() > 0, f"{name}: image {i}'s reference is all zero"
    exact = [rel_err(ours64[i], ref64[i]) for i in range(n)]
    screen = [max(rel_err(r[i], ref64[i]) for r in ref32s) for i in range(n)]
    stable = [i for i in range(n) if screen[i] <= STABLE]
    f32 = {i: rel_err(ours32[i], ref64[i]) for i in stable}
    unstable = {i: rel_err(ours32[i], ref64[i]) / screen[i] for i in range(n) if i not in f32}
    record = dict(float64=max(exact), float32=max(f32.values(), default=None),
                  peer_float32=[float(f"{v:.2g}") for v in screen], skipped=n - len(stable),
                  skipped_ours_over_peer=max(unstable.values(), default=None))
    MEASURED[name] = record
    for i in range(n):
        assert exact[i] <= EXACT, f"{name}: image {i}: float64 cnnlens vs float64 peer {exact[i]:.3g} > {EXACT:g}"
    for i, err in f32.items():
        assert err <= RTOL, f"{name}: image {i}: float32 cnnlens vs float64 peer {err:.3g} > {RTOL:g} ({record})"
    # a skipped image still may not be worse than 3x the peer's own float32 error (measured <= 1.6x)
    for i, ratio in unstable.items():
        assert ratio <= 3, f"{name}: image {i}: float32 cnnlens {ratio:.3g}x the peer's own float32 error ({record})"
    return record


# ---------------------------------------------------------------- models (seeded, built once)


@pytest.fixture(scope="module")
def vgg16():
    return liven(vgg(torchvision.models.vgg16, 0), 10)


@pytest.fixture(scope="module")
def vgg16_bn():
    return liven(randomise_batchnorm(vgg(torchvision.models.vgg16_bn, 1), 21), 11)  # every BN tensor set


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(2)
    return liven(randomise_batchnorm(torchvision.models.resnet18(num_classes=10), 22), 12)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(3)
    return liven(randomise_batchnorm(torchvision.models.resnet50(num_classes=10), 23), 13)


@pytest.fixture(scope="module")
def densenet():
    return liven(randomise_batchnorm(build_model(seed=0), 24), 14)


class SmoothCNN(nn.Sequential):
    """nn.ReLU / nn.Sigmoid / nn.Tanh modules, each called once, and average pools only: Captum's
    DeepLift computes exactly the Rescale rule here (no MaxPool, no reused module)."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.Sigmoid(),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.Tanh(),
            nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(12, 16), nn.Tanh(),
            nn.Linear(16, 5),
        )


class BiasFreeCNN(nn.Sequential):
    """No biases, Norm-rule (average) pools only: the Epsilon rule conserves relevance up to its
    stabilisers, so sum R = y_c to ~1e-6."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, 5, bias=False),
        )


@pytest.fixture(scope="module")
def smooth_cnn():
    torch.manual_seed(4)
    return liven(SmoothCNN(), 15)


@pytest.fixture(scope="module")
def bias_free_cnn():
    """He-initialised times 2: logits ~10, so the stabilisers (1e-6) absorb ~1e-6 of the relevance."""
    torch.manual_seed(5)
    model = BiasFreeCNN().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                m.weight.mul_(2.0)
    return model


# ---------------------------------------------------------------- zennit, the LRP reference


class ModulePoolDenseNet(nn.Module):
    """torchvision's DenseNet forward with its final ReLU and global average pool as modules.

    torchvision calls ``F.relu`` and ``F.adaptive_avg_pool2d`` functionally, which zennit's module
    hooks cannot see (it would take the plain gradient through the pool), while cnnlens rules every
    *call* (the pool gets the Norm rule, the ReLU passes relevance). As modules zennit applies the
    same definition. (The ReLU as a module changes nothing: what reaches it is zero wherever its
    output is, so passing and the gradient coincide; it is a module only to make that plain.)
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        return self.net.classifier(torch.flatten(self.pool(self.relu(self.net.features(x))), 1))


def densenet_bn_pairs(net: nn.Module, prefix: str = "net."):
    """The conv -> BN pairs a torchvision DenseNet executes: conv0 -> norm0 and each dense layer's
    conv1 -> norm2. (SequentialMergeBatchNorm pairs by registration order and would also merge a
    dense layer's conv2 into the *next* layer's norm1, and the last conv2 into transition.norm /
    norm5: adjacent as registered, but those BNs normalise a concatenation, not that conv's output.)"""
    pairs = [((prefix + "features.conv0",), prefix + "features.norm0")]
    for name, module in net.named_modules():
        if type(module).__name__ == "_DenseLayer":
            pairs.append(((f"{prefix}{name}.conv1",), f"{prefix}{name}.norm2"))
    return pairs


class Peer:
    """One model's copies: ``model64`` (float64, for cnnlens and Captum; zennit never touches it) and
    zennit's float32 / float64 copies, made on first use.

    zennit gets copies of its own because leaving a zennit context restores module attributes with
    ``object.__setattr__``, after which ``.double()`` no longer reaches the restored BN statistics,
    and a merge leaves a zero ``bias`` parameter registered on a bias-free convolution."""

    def __init__(self, model: nn.Module, canonizers, wrap=None):
        self.model = model
        self.model64 = copy.deepcopy(model).double()
        self.canonizers = canonizers  # () -> a fresh list
        self.wrap = wrap or (lambda m: m)
        self._zennit: dict = {}

    def zennit_model(self, dtype):
        if dtype not in self._zennit:
            source = self.model if dtype == torch.float32 else self.model64
            self._zennit[dtype] = self.wrap(copy.deepcopy(source))
        return self._zennit[dtype]

    def composite(self, name: str, dtype, low=None, high=None, epsilon: float = 1e-6):
        canonizers = self.canonizers()
        if name == "epsilon_plus_flat":
            return EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers)
        if name == "epsilon_alpha2_beta1":
            return EpsilonAlpha2Beta1(epsilon=epsilon, canonizers=canonizers)
        if name == "epsilon_alpha2_beta1_flat":
            return EpsilonAlpha2Beta1Flat(epsilon=epsilon, canonizers=canonizers)
        if name == "epsilon_gamma_box":
            return EpsilonGammaBox(low=low.to(dtype), high=high.to(dtype), epsilon=epsilon, canonizers=canonizers)
        if name == "epsilon":
            rule = [(Convolution, Epsilon(epsilon=epsilon)), (nn.Linear, Epsilon(epsilon=epsilon))]
            return LayerMapComposite(layer_map=layer_map_base() + rule, canonizers=canonizers)
        raise ValueError(name)

    def relevance(self, x: np.ndarray, classes, name: str, dtype=torch.float32, channels_last=False,
                  **kwargs) -> np.ndarray:
        xr = as_input(x, dtype, channels_last).requires_grad_(True)
        composite = self.composite(name, dtype, **kwargs)
        with composite.context(self.zennit_model(dtype)) as modified:
            out = modified(xr)
            onehot = torch.zeros_like(out)
            onehot[torch.arange(len(x)), torch.as_tensor(np.asarray(classes))] = 1
            (rel,) = torch.autograd.grad(out, xr, grad_outputs=onehot * out)
        return rel.detach().double().numpy()


CANONIZERS = {
    "vgg16": lambda model: [SequentialMergeBatchNorm()],  # finds nothing to merge: no BN
    "vgg16_bn": lambda model: [VGGCanonizer()],
    "resnet18": lambda model: [ResNetCanonizer()],
    "resnet50": lambda model: [ResNetCanonizer()],
    "densenet": lambda model: [NamedMergeBatchNorm(densenet_bn_pairs(model))],
    "bias_free_cnn": lambda model: [],
    "smooth_cnn": lambda model: [],
}


@pytest.fixture(scope="module")
def peers():
    """``peers(name, model)``: built on first use, so a test pays only for the copies it needs; the
    other models' zennit copies are let go then (the cases come grouped by model, and a VGG's copies
    hold GBs: keeping them all made the later VGG cases twice as slow)."""
    built: dict = {}

    def get(name, model):
        for other, peer in built.items():
            if other != name and peer._zennit:
                peer._zennit.clear()
                gc.collect()
        if name not in built:
            built[name] = Peer(model, lambda: CANONIZERS[name](model),
                               wrap=ModulePoolDenseNet if name == "densenet" else None)
        return built[name]
    return get


def box_tensors(low, high, shape):
    """low / high as zennit's ZBox takes them: float64 tensors broadcast to the input's shape."""
    def full(value, default):
        value = np.asarray(default if value is None else value, dtype=np.float64)
        value = value.reshape(-1, 1, 1) if value.ndim else value
        return torch.from_numpy(np.broadcast_to(value, shape).copy())
    return full(low, IMAGENET_LOW), full(high, IMAGENET_HIGH)


def check_extras(exp, logits: np.ndarray) -> None:
    """relevance_sum = sum R, explained_score = y_c, conservation_error = their difference; canonization
    a sequence of strings."""
    classes = np.asarray(exp.target)
    total = exp.maps.astype(np.float64).sum(axis=(1, 2, 3))
    scale = np.abs(exp.maps).astype(np.float64).sum(axis=(1, 2, 3))
    score = logits[np.arange(len(logits)), classes].astype(np.float64)
    extras = exp.extras
    np.testing.assert_allclose(np.asarray(extras["relevance_sum"], dtype=np.float64), total,
                               rtol=0, atol=1e-5 * scale.max())
    np.testing.assert_allclose(np.asarray(extras["explained_score"], dtype=np.float64), score,
                               rtol=0, atol=1e-5 * np.abs(score).max())
    np.testing.assert_allclose(np.asarray(extras["conservation_error"], dtype=np.float64), total - score,
                               rtol=0, atol=1e-5 * max(scale.max(), np.abs(score).max()))
    canonization = extras["canonization"]  # documented as a list of strings; cnnlens gives a str array
    assert np.ndim(canonization) == 1 and all(isinstance(s, str) for s in list(canonization)), canonization


def check_lrp(case, peer: Peer, x, composite, target=None, low=None, high=None, epsilon=None):
    """cnnlens's LRP against zennit's (see ``compare``); returns the float32 explanation."""
    options = {} if epsilon is None else {"epsilon": epsilon}
    if low is not None:
        options.update(low=low, high=high)
    exp = cnnlens.explain(peer.model, x, "lrp", target=target, composite=composite, **options)
    logits = logits_of(peer.model, x)
    classes = classes_for(target, logits)
    np.testing.assert_array_equal(exp.target, classes)
    assert exp.maps.dtype == np.float32 and exp.maps.shape == x.shape
    check_extras(exp, logits)
    exp64 = cnnlens.explain(peer.model64, x, "lrp", target=[int(c) for c in classes], composite=composite, **options)
    compare(case, exp.maps, exp64.maps, *zennit_runs(peer, x, classes, composite, low, high, epsilon))
    return exp


def zennit_runs(peer: Peer, x, classes, composite, low=None, high=None, epsilon=None):
    """zennit's float64 maps and its float32 ones on contiguous and on channels-last input."""
    kwargs = {} if epsilon is None else {"epsilon": epsilon}
    if composite == "epsilon_gamma_box":
        kwargs["low"], kwargs["high"] = box_tensors(low, high, x.shape)
    z64 = peer.relevance(x, classes, composite, torch.float64, **kwargs)
    z32 = [peer.relevance(x, classes, composite, torch.float32, channels_last=cl, **kwargs) for cl in (False, True)]
    return z64, z32


# ---------------------------------------------------------------- LRP against zennit


PER_CHANNEL_BOX = dict(low=[-2.2, -2.1, -1.9], high=[2.3, 2.5, 2.7])  # holds the ImageNet box
LRP_CASES = [
    # (model, composite, input, options)
    ("vgg16", "epsilon_plus_flat", "x64", {}),           # 2 x 2 features: the 7 x 7 adaptive pool overlaps
    ("vgg16_bn", "epsilon_plus_flat", "x32", {}),
    ("vgg16_bn", "epsilon_gamma_box", "x32", {}),        # the default (ImageNet) box
    ("vgg16_bn", "epsilon_alpha2_beta1", "x32", {}),
    ("resnet18", "epsilon_plus_flat", "x64", {"target": [7, 2]}),
    ("resnet18", "epsilon_gamma_box", "x64", PER_CHANNEL_BOX),
    ("resnet18", "epsilon_alpha2_beta1", "x64", {}),
    ("resnet18", "epsilon_alpha2_beta1_flat", "x64", {"target": 3}),
    ("resnet18", "epsilon", "x64", {"epsilon": 0.1}),   # zennit's epsilon: the Epsilon rule's (Norm keeps 1e-6)
    ("resnet50", "epsilon_plus_flat", "x32", {}),       # bottleneck blocks (32 px: 1 x 1 at the end)
    ("densenet", "epsilon_plus_flat", "dense", {}),
    ("bias_free_cnn", "epsilon", "x32", {}),
    ("bias_free_cnn", "epsilon_gamma_box", "x32", {"low": -2.2, "high": 2.7}),
    ("smooth_cnn", "epsilon_plus_flat", "x32", {}),      # Sigmoid / Tanh pass relevance too
]


def case_id(case):
    name, composite, _, options = case
    return "-".join([name, composite] + [f"{k}={v}" for k, v in options.items() if k != "high"])


@pytest.mark.parametrize("case", LRP_CASES, ids=[case_id(c) for c in LRP_CASES])
def test_lrp_matches_zennit(request, peers, case):
    name, composite, inputs, options = case
    model = request.getfixturevalue(name)
    exp = check_lrp(case_id(case), peers(name, model), INPUTS[inputs], composite, **options)
    if name in ("vgg16_bn", "resnet18", "resnet50", "densenet"):  # BN merged: cnnlens says what it did
        assert any("BatchNorm" in s for s in list(exp.extras["canonization"])), exp.extras["canonization"]


def test_epsilon_lrp_conserves_relevance_on_a_bias_free_cnn(bias_free_cnn):
    x = X32
    exp = cnnlens.explain(bias_free_cnn, x, "lrp", composite="epsilon")
    logits = logits_of(bias_free_cnn, x)
    score = logits[np.arange(len(x)), exp.target].astype(np.float64)
    total = exp.maps.astype(np.float64).sum(axis=(1, 2, 3))
    scale = np.abs(exp.maps).astype(np.float64).sum(axis=(1, 2, 3))
    assert (np.abs(score) > 1).all(), score
    relative = np.abs(total - score) / np.abs(score)
    MEASURED["conservation bias_free_cnn epsilon"] = dict(rel=float(relative.max()))
    assert relative.max() <= 1e-5, relative  # ~1.3e-6 (the stabilisers' share; zennit float64 the same)
    np.testing.assert_allclose(np.asarray(exp.extras["conservation_error"], dtype=np.float64), total - score,
                               rtol=0, atol=1e-6 * scale.max())


# ---------------------------------------------------------------- DeepLIFT against Captum


def captum_deeplift(model, x, classes, baseline=0.0, dtype=torch.float32, channels_last=False) -> np.ndarray:
    attr = DeepLift(model).attribute(as_input(x, dtype, channels_last), baselines=baseline,
                                     target=[int(c) for c in classes])
    return attr.detach().double().numpy()


def check_delta(exp, model, x, baseline, tol):
    """extras["delta"] = sum attr - (y_c(x) - y_c(x')); returns |delta| / |y_c(x) - y_c(x')|."""
    classes = np.asarray(exp.target)
    rows = np.arange(len(x))
    y = logits_of(model, x)[rows, classes].astype(np.float64)
    y_ref = logits_of(model, np.full_like(x, baseline))[rows, classes].astype(np.float64)
    total = exp.maps.astype(np.float64).sum(axis=(1, 2, 3))
    scale = np.abs(exp.maps).astype(np.float64).sum(axis=(1, 2, 3)).max()
    np.testing.assert_allclose(np.asarray(exp.extras["delta"], dtype=np.float64), total - (y - y_ref),
                               rtol=0, atol=tol * max(scale, np.abs(y - y_ref).max()))
    return np.abs(total - (y - y_ref)) / np.abs(y - y_ref)


@pytest.mark.parametrize("baseline", [0.0, -0.3])
def test_deeplift_matches_captum_on_sigmoid_tanh_relu(peers, smooth_cnn, baseline):
    """(In float32 no image is stable here: Captum's own float32 maps are 2e-5 to 3e-3 off its float64
    ones, from (f(s) - f(s')) / (s - s') at Sigmoid / Tanh units where s - s' is small; so the float32
    check skips them all and the float64 one carries the comparison.)"""
    peer = peers("smooth_cnn", smooth_cnn)
    x = X32
    options = {} if baseline == 0.0 else {"baseline": baseline}
    exp = cnnlens.explain(smooth_cnn, x, "deeplift", **options)
    np.testing.assert_array_equal(exp.target, logits_of(smooth_cnn, x).argmax(1))
    exp64 = cnnlens.explain(peer.model64, x, "deeplift", target=[int(c) for c in exp.target], **options)
    ref64 = captum_deeplift(peer.model64, x, exp.target, baseline, torch.float64)
    ref32 = [captum_deeplift(smooth_cnn, x, exp.target, baseline, torch.float32, cl) for cl in (False, True)]
    compare(f"deeplift smooth_cnn baseline={baseline}", exp.maps, exp64.maps, ref64, ref32)
    # no MaxPool: the Rescale rule is complete, sum attr = y_c(x) - y_c(x')
    completeness = check_delta(exp, smooth_cnn, x, baseline, 1e-5)
    MEASURED[f"deeplift smooth_cnn baseline={baseline}"]["delta_rel"] = float(completeness.max())
    assert completeness.max() <= 1e-4


def test_deeplift_matches_captum_on_vgg16(peers, vgg16, monkeypatch):
    """VGG-16: every ReLU module called once, every MaxPool right after a ReLU.

    Captum 0.9 has a DeepLIFT rule of its own for nn.MaxPool2d (``deep_lift.maxpool``: the cross
    maximum max(pool(x), pool(x')) through the unpooled indices, over x - x'), where cnnlens passes
    MaxPool's plain gradient. But on VGG-16 that rule never reaches the result: the ReLU before each
    pool stores its output gradient in a tensor hook registered on the same tensor *before* the
    pool's input hook, so it keeps the plain pool gradient and its Rescale multiplier overwrites the
    pool's (measured: a MaxPool after a conv instead differs by 24%; after a ReLU, by 0). So stock
    Captum computes cnnlens's definition here; with the MaxPool entry taken out of Captum's table
    (the plain gradient through MaxPool by construction) it gives the same maps, bit for bit.

    (Float32: VGG-16's Rescale multipliers include units whose x and baseline pre-activations straddle
    zero closely, and Captum's float32 maps are ~3e-6 off float64 on contiguous input but 1e-5 to
    3e-5 on channels-last input, where cnnlens runs: typically no image passes the screen.)"""
    peer = peers("vgg16", vgg16)
    x = X32
    classes = [3, 8]
    exp = cnnlens.explain(vgg16, x, "deeplift", target=classes)
    exp64 = cnnlens.explain(peer.model64, x, "deeplift", target=classes)
    ref64 = captum_deeplift(peer.model64, x, classes, 0.0, torch.float64)
    ref32 = [captum_deeplift(vgg16, x, classes, 0.0, torch.float32, cl) for cl in (False, True)]
    compare("deeplift vgg16", exp.maps, exp64.maps, ref64, ref32)
    monkeypatch.delitem(captum_deep_lift.SUPPORTED_NON_LINEAR, nn.MaxPool2d)
    np.testing.assert_array_equal(captum_deeplift(vgg16, x, classes), ref32[0])
    delta = check_delta(exp, vgg16, x, 0.0, 1e-5)
    MEASURED["deeplift vgg16"]["delta_rel"] = [round(float(d), 6) for d in delta]


# ---------------------------------------------------------------- DeepLIFT on ResNet-18, own reference


class RefRescale(torch.autograd.Function):
    """relu(s) forward; backward g * (relu(s) - relu(s')) / (s - s'), the plain gradient where |s - s'| < 1e-10."""

    @staticmethod
    def forward(ctx, s, s_ref):
        ctx.save_for_backward(s, s_ref)
        return torch.relu(s)

    @staticmethod
    def backward(ctx, g):
        s, s_ref = ctx.saved_tensors
        d = s - s_ref
        near = d.abs() < 1e-10
        slope = (torch.relu(s) - torch.relu(s_ref)) / torch.where(near, torch.ones_like(d), d)
        return g * torch.where(near, (s > 0).to(g.dtype), slope), None


def resnet_basic_forward(m, x, act):
    """torchvision's ResNet (BasicBlock) forward written out over the model's own modules; ``act(key, s)``
    is each ReLU (the stem's, and each block's two)."""
    h = m.maxpool(act("stem", m.bn1(m.conv1(x))))
    for li, layer in enumerate((m.layer1, m.layer2, m.layer3, m.layer4)):
        for bi, block in enumerate(layer):
            identity = h if block.downsample is None else block.downsample(h)
            out = act((li, bi, 1), block.bn1(block.conv1(h)))
            out = block.bn2(block.conv2(out))
            h = act((li, bi, 2), out + identity)
    return m.fc(torch.flatten(m.avgpool(h), 1))


def reference_deeplift_resnet(m, x: np.ndarray, classes, baseline=0.0, channels_last=False) -> np.ndarray:
    dtype = next(m.parameters()).dtype
    xt = as_input(x, dtype, channels_last)
    x_ref = torch.full_like(xt, baseline)
    recorded = {}

    def record(key, s):
        recorded[key] = s.detach().clone()
        return torch.relu(s)

    with torch.no_grad():
        resnet_basic_forward(m, x_ref, record)
        # the written-out forward is the model's
        assert rel_err(resnet_basic_forward(m, xt, lambda k, s: torch.relu(s)), m(xt)) <= 1e-6
    xr = xt.clone().requires_grad_(True)
    out = resnet_basic_forward(m, xr, lambda key, s: RefRescale.apply(s, recorded[key]))
    score = out[torch.arange(len(x)), torch.as_tensor(np.asarray(classes))].sum()
    (grad,) = torch.autograd.grad(score, xr)
    return ((xt - x_ref) * grad).detach().double().numpy()


@pytest.mark.parametrize("target", [None, [4, 6]], ids=["predicted", "list"])
def test_deeplift_resnet18_matches_a_plain_rescale_reference(peers, resnet18, target):
    peer = peers("resnet18", resnet18)
    x = X
    exp = cnnlens.explain(resnet18, x, "deeplift", target=target)
    np.testing.assert_array_equal(exp.target, classes_for(target, logits_of(resnet18, x)))
    classes = [int(c) for c in exp.target]
    exp64 = cnnlens.explain(peer.model64, x, "deeplift", target=classes)
    ref64 = reference_deeplift_resnet(peer.model64, x, classes)
    ref32 = [reference_deeplift_resnet(resnet18, x, classes, channels_last=cl) for cl in (False, True)]
    name = f"deeplift resnet18 target={target}"
    compare(name, exp.maps, exp64.maps, ref64, ref32)
    delta = check_delta(exp, resnet18, x, 0.0, 1e-5)
    MEASURED[name]["delta_rel"] = [float(f"{d:.2g}") for d in delta]
    # MaxPool's plain gradient is exact summation-to-delta here: the baseline's activations before the
    # stem's pool are constant over each channel (zero image, bias-free conv, BN), so pool(x) - pool(x')
    # is the difference at the argmax. (On VGG-16, whose padded convs have biases, it is not: there delta
    # is of the order of y_c(x) - y_c(x') itself, see MEASURED.)
    assert delta.max() <= 1e-4, delta


def test_the_resnet_reference_is_captums_on_distinct_relus(resnet18):
    """The reference against Captum on a copy of ResNet-18 whose blocks call two distinct nn.ReLU
    modules (Captum refuses a module called twice): the same function, so the same attributions."""
    import types

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu_a(self.bn1(self.conv1(x)))))
        return self.relu_b(out + identity)

    twin = copy.deepcopy(resnet18)
    for block in twin.modules():
        if isinstance(block, torchvision.models.resnet.BasicBlock):
            block.relu_a, block.relu_b = nn.ReLU(), nn.ReLU()
            block.forward = types.MethodType(forward, block)
    classes = logits_of(resnet18, X).argmax(1)
    err = rel_err(reference_deeplift_resnet(resnet18, X, classes), captum_deeplift(twin, X, classes))
    MEASURED["deeplift resnet18 reference vs captum (distinct ReLUs)"] = err
    assert err <= RTOL


# ---------------------------------------------------------------- ONNX exports: the same maps


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, resnet18, densenet):
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("relevance_onnx")
    paths = {}
    for name, model in (("resnet18", resnet18), ("densenet", densenet)):
        path = str(folder / f"{name}.onnx")
        torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        paths[name] = path
    return paths


ONNX_CASES = [("resnet18", "lrp", "epsilon_plus_flat", "x64"), ("densenet", "lrp", "epsilon_plus_flat", "dense"),
              ("resnet18", "deeplift", None, "x64")]


@pytest.mark.parametrize("name, method, composite, inputs", ONNX_CASES, ids=[f"{c[0]}-{c[1]}" for c in ONNX_CASES])
def test_onnx_export_gives_the_torch_maps(request, peers, onnx_files, name, method, composite, inputs):
    """The ONNX file (a path; for LRP its ``cnnlens.load``) against the torch model, per image:
    <= 1e-4 on the float32-stable images (screened as in ``compare``, with the same peers), and no
    more than 3x the peer's own float32 error on the others (they move by 1e-4 and more under any
    float32 rounding, an export's folded BN included)."""
    model = request.getfixturevalue(name)
    peer = peers(name, model)
    x = INPUTS[inputs]
    options = {} if composite is None else {"composite": composite}
    ref = cnnlens.explain(model, x, method, **options)
    classes = [int(c) for c in ref.target]
    source = cnnlens.load(onnx_files[name]) if method == "lrp" else onnx_files[name]
    exp = cnnlens.explain(source, x, method, target=classes, **options)
    np.testing.assert_array_equal(exp.target, ref.target)
    assert exp.maps.dtype == np.float32 and exp.maps.shape == ref.maps.shape
    if method == "lrp":
        ref64, ref32 = zennit_runs(peer, x, classes, composite)
    else:
        ref64 = reference_deeplift_resnet(peer.model64, x, classes)
        ref32 = [reference_deeplift_resnet(model, x, classes, channels_last=cl) for cl in (False, True)]
    screen = [max(rel_err(r[i], ref64[i]) for r in ref32) for i in range(len(x))]
    errors = [rel_err(exp.maps[i], ref.maps[i]) for i in range(len(x))]
    MEASURED[f"onnx {name} {method}"] = dict(vs_torch=[float(f"{e:.2g}") for e in errors],
                                             peer_float32=[float(f"{e:.2g}") for e in screen])
    for i, (err, peer_err) in enumerate(zip(errors, screen)):
        bound = ONNX_RTOL if peer_err <= STABLE else max(ONNX_RTOL, 3 * peer_err)
        assert err <= bound, f"{name} {method}: image {i}: ONNX vs torch {err:.3g} > {bound:.3g}"
