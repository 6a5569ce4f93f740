"""The contract every registered method keeps, on every backend that can run it.

Parametrised over ``cnnlens.METHODS`` read at import time (a newly registered method is covered
without touching this file) x the torch, torch.export (``.pt2``), TorchScript (traced and scripted
files) and ONNX backends:

- a method the backend's capabilities exclude raises UnsupportedError naming the method;
- maps are float32 of the shape the method's kind says (INPUT (N, C, H, W), CAM (N, H, W),
  LAYER_MAP (N, K, h, w));
- ``batch_size=1`` gives the default batching's maps (bit for bit for forward-only methods);
- the model is left as it was: state_dict, ``training`` flags (a model in train mode stays so),
  no hook left on any module;
- an unknown option is refused with InvalidInputError listing the method's options;
- ``exp.options`` reports every declared option at its default (a ``None`` default meaning
  "chosen automatically" may be reported as the value chosen, which then gives the same maps);
- the layer mode is honoured (NO_LAYER refuses ``layer=``; ONE_LAYER / HEAD_LAYER refuse a list;
  LAYERS serves a list with one extra axis);
- the torch and ONNX backends agree to 1e-4.

And the registry against the command line: shared option names share a CLI type, every CLI option
is a flag of ``cnnlens explain``, and ``cnnlens explain --help`` lists every method.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_exported, to_onnx, to_torchscript
from cnnlens.cli import build_parser, main
from cnnlens.core.methods import (LAYER_MAP, CAM, HEAD_LAYER, INPUT, LAYERS, METHODS, NO_LAYER, ONE_LAYER, all_options,
                                  supported_methods)
from cnnlens.core.backend import CAPABILITIES, GRADIENTS, INCREMENTAL_OCCLUSION, Backend, Occluding
from cnnlens.core.methods.registry import register
from cnnlens.core.methods.support import require, runs
from tests.helpers import randomise_batchnorm, rel_err

SIZE = 32
NAMES = list(METHODS)
BACKENDS = ["torch", "torch.export", "torchscript-trace", "torchscript-script", "onnx"]
#: small options for the slow methods (methods not listed run with their defaults)
FAST = {
    "rise": dict(masks=64),
    "smoothgrad": dict(samples=3),
    "integrated_gradients": dict(steps=4),
    "occlusion": dict(window=8, stride=8),
}
GRADIENT_NEEDS = GRADIENTS


class Tiny(nn.Module):
    """conv-BN-ReLU, conv(stride 2)-ReLU (4 channels: cheap for Score-CAM / Ablation-CAM), GAP -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.conv2(h))
        return self.fc(torch.flatten(self.pool(h), 1))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    with torch.no_grad():
        model = randomise_batchnorm(Tiny(), seed=seed, mean_scale=0.2)
        model.conv2.bias.add_(0.3)  # keep most ReLU channels alive
    return model.eval()


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def fast(method: str) -> dict:
    return dict(FAST.get(method, {}))


def forward_only(method: str) -> bool:
    return not (METHODS[method].needs & GRADIENT_NEEDS)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract")
    model = tiny()
    paths = {
        "onnx": to_onnx(model, str(folder / "tiny.onnx"), (3, SIZE, SIZE)),
        "torch.export": to_exported(model, str(folder / "tiny.pt2"), (3, SIZE, SIZE)),
        "torchscript-trace": to_torchscript(model, str(folder / "tiny_trace.pt"), (3, SIZE, SIZE), method="trace"),
        "torchscript-script": to_torchscript(model, str(folder / "tiny_script.pt"), (3, SIZE, SIZE), method="script"),
    }
    return paths


@pytest.fixture(scope="module")
def backends(files):
    loaded = {"torch": cnnlens.load(tiny())}
    for kind, path in files.items():
        loaded[kind] = cnnlens.load(path)
    return loaded


def _backend_or_skip(backends, kind, method):
    b = backends[kind]
    if method not in supported_methods(b.capabilities):
        pytest.skip(f"the {kind} backend does not run {method}")
    return b


# ---------------------------------------------------------------- capabilities


@pytest.mark.parametrize("kind", BACKENDS)
def test_excluded_methods_raise_unsupported(backends, kind):
    b = backends[kind]
    runs = supported_methods(b.capabilities)
    for method in NAMES:
        if method in runs:
            continue
        with pytest.raises(cnnlens.UnsupportedError) as info:
            cnnlens.explain(b, images(1), method, **fast(method))
        message = str(info.value)
        assert message.startswith(method + " "), message  # names the method first
        missing = sorted(METHODS[method].needs - b.capabilities)
        assert all(m in message for m in missing), (missing, message)
        assert all(r in message for r in runs), message  # and what does run


def test_backends_have_the_expected_breadth(backends):
    assert set(supported_methods(backends["torch"].capabilities)) == set(NAMES)
    assert set(supported_methods(backends["onnx"].capabilities)) == set(NAMES)
    for kind in ("torchscript-trace", "torchscript-script"):
        runs = set(supported_methods(backends[kind].capabilities))
        assert {"saliency", "occlusion", "rise"} <= runs < set(NAMES)


@pytest.mark.parametrize("kind", BACKENDS)
def test_every_backend_keeps_the_contract_in_core_backend(backends, kind):
    """Each backend is a ``core.backend.Backend`` with declared capabilities only, and ``require`` /
    ``runs`` (the one judge of what runs where) agree with the registry's list and with ``explain``."""
    b = backends[kind]
    assert isinstance(b, Backend)
    assert INCREMENTAL_OCCLUSION not in b.capabilities or isinstance(b, Occluding)
    assert b.capabilities <= set(CAPABILITIES), b.capabilities - set(CAPABILITIES)
    listed = set(supported_methods(b.capabilities))
    for method in NAMES:
        assert runs(b, method) == (method in listed)
        if runs(b, method):
            assert require(b, method) is METHODS[method]
            continue
        with pytest.raises(cnnlens.UnsupportedError) as judged:
            require(b, method)
        with pytest.raises(cnnlens.UnsupportedError) as explained:
            cnnlens.explain(b, images(1), method, **fast(method))
        assert str(judged.value) == str(explained.value)


@pytest.mark.parametrize("kind", BACKENDS)
def test_every_backend_declares_the_protocols_members(backends, kind):
    """The members the protocol declares, read directly (no ``getattr`` with a default anywhere): the
    model, the output choice, the limits, the image shape, the layer lists, the module of a layer."""
    b = backends[kind]
    assert b.model is not None and b.layout in ("NCHW", "NHWC")
    assert isinstance(dict(b.limits), dict)
    assert b.image_shape is None or len(b.image_shape) == 3
    if kind in ("onnx", "torch.export"):
        assert tuple(b.image_shape) == (3, SIZE, SIZE)  # a file declares its input; a module does not
    assert set(b.parameter_layers()) <= set(b.weighted_layers())
    if kind == "torch":
        assert b.module_of("conv2") == "conv2"  # a module's layer is the module itself
    if kind == "onnx":
        node = b.resolve_layer("conv2")  # the torch name of a node, read from the exporter's record
        assert b.module_of(node) == "conv2"


@pytest.mark.parametrize("kind", BACKENDS)
def test_every_backend_travels_as_its_spec(backends, kind):
    """``spec()`` pickles, and ``cnnlens.load(spec)`` builds the same kind of backend giving the same
    maps bit for bit (what the Ray engine sends its actors); ``load(backend, output=, layout=)``
    makes the same model again through it."""
    b = backends[kind]
    spec = b.spec()
    assert spec.kind == {"torch": "module", "onnx": "onnx", "torch.export": "exported"}.get(kind, "torchscript")
    assert spec.layout == "auto" and spec.output == b.output
    copy = cnnlens.load(pickle.loads(pickle.dumps(spec)))
    assert type(copy) is type(b) and copy.name == b.name and copy.capabilities == b.capabilities
    x = images(2)
    method = "gradcam" if runs(b, "gradcam") else "saliency"
    np.testing.assert_array_equal(cnnlens.explain(copy, x, method).maps, cnnlens.explain(b, x, method).maps)
    again = cnnlens.load(b, output=0 if kind != "onnx" else b.output)
    assert type(again) is type(b) and again is not b
    np.testing.assert_array_equal(cnnlens.explain(again, x, method).maps, cnnlens.explain(b, x, method).maps)


def test_the_onnx_backends_old_output_name_still_reads_with_a_deprecation(backends):
    b = backends["onnx"]
    with pytest.warns(DeprecationWarning, match="backend.output"):
        assert b.output_name == b.output


def test_capability_names_are_declared_once():
    """A method needing a capability no backend can declare (a typo) fails when it is registered, and
    no module but core/backend.py spells a capability's name."""
    with pytest.raises(TypeError, match="unknown capabilities.*input_gradient"):
        register("misspelt", needs={"input_gradient"}, kind=INPUT)(
            lambda backend, x, target, layer, *, batch_size=None: x)
    assert "misspelt" not in METHODS
    root = os.path.dirname(os.path.abspath(cnnlens.__file__))
    spelt = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                text = open(path, encoding="utf-8").read()
                # "forward", "activations" and "weights" are also ordinary words of other concepts
                for capability in set(CAPABILITIES) - {"forward", "activations", "weights"}:
                    if f'"{capability}"' in text or f"'{capability}'" in text:
                        spelt.setdefault(capability, []).append(os.path.relpath(path, root))
    assert all(places == [os.path.join("core", "backend.py")] for places in spelt.values()), spelt
    assert set(spelt) == set(CAPABILITIES) - {"forward", "activations", "weights"}


# ---------------------------------------------------------------- shape, dtype, batching


def batch_invariant(b, x: np.ndarray) -> bool:
    """Whether the backend's own forward pass gives each image bit for bit the same logits alone as in a
    batch (ONNX Runtime on CPU does; PyTorch's CPU convolutions do not: ~1e-8 differences)."""
    alone = np.concatenate([b.forward(x[i:i + 1]).logits for i in range(len(x))])
    return bool(np.array_equal(b.forward(x).logits, alone))


def scale(method: str, exp) -> float:
    """The scale of float32 rounding in ``exp.maps``: the maps' own, or for the forward-only methods,
    whose maps are built from (differences of) scores, that of the scores too (occlusion's drops can be
    a thousandth of the logits, and PyTorch's logits move by an ulp with the batch size)."""
    top = float(np.abs(exp.maps).max())
    return max(top, float(np.abs(exp.logits).max())) if forward_only(method) else top


def expected_shape(method: str, x: np.ndarray, maps: np.ndarray):
    kind = METHODS[method].kind
    if kind == INPUT:
        return x.shape
    if kind == CAM:
        return (x.shape[0],) + x.shape[2:]
    assert kind == LAYER_MAP, kind
    assert maps.ndim == 4, maps.shape
    return (x.shape[0],) + maps.shape[1:]


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("method", NAMES)
def test_maps_shape_dtype_and_batch_size(backends, kind, method):
    b = _backend_or_skip(backends, kind, method)
    x = images(3)
    exp = cnnlens.explain(b, x, method, **fast(method))
    assert exp.method == method
    assert exp.maps.dtype == np.float32
    assert exp.maps.shape == expected_shape(method, x, exp.maps)
    assert np.isfinite(exp.maps).all()
    assert np.abs(exp.maps).max() > 0, "all-zero maps prove nothing"
    assert exp.logits.shape == (3, 3)
    np.testing.assert_array_equal(np.asarray(exp.target), exp.logits.argmax(axis=1))

    one = cnnlens.explain(b, x, method, batch_size=1, **fast(method))
    if forward_only(method) and batch_invariant(b, x):
        np.testing.assert_array_equal(one.maps, exp.maps, err_msg=f"{method}: batch_size=1 changed a forward-only map")
    else:
        err = rel_err(one.maps, exp.maps, scale(method, exp))
        assert err <= 1e-5, f"{method}: batch_size=1 gives other maps (relative error {err:.3g})"
    np.testing.assert_array_equal(np.asarray(one.target), np.asarray(exp.target))


# ---------------------------------------------------------------- the model is left as it was


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")


def _hooks(module: nn.Module):
    found = {}
    for name, m in module.named_modules():
        for attr in HOOK_DICTS:
            assert hasattr(m, attr), (name, attr)
        for attr, value in vars(m).items():
            if "hooks" in attr and isinstance(value, dict) and value:
                found[(name, attr)] = len(value)
    return found


@pytest.mark.parametrize("method", NAMES)
def test_torch_model_is_left_unchanged(method):
    model = tiny().train()
    model.bn1.eval()  # a mixed state that no single .train() / .eval() call restores
    training = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert _hooks(model) == {}
    cnnlens.explain(model, images(2), method, **fast(method))
    assert {name: m.training for name, m in model.named_modules()} == training
    assert model.training
    assert _hooks(model) == {}, "hooks left on the model"
    after = model.state_dict()
    assert list(after) == list(state)
    for key, value in state.items():
        assert torch.equal(after[key], value), f"{method} changed {key}"
    # nothing lingers on the autograd side either: no tensor hook on any parameter
    for p in model.parameters():
        assert not p._backward_hooks


@pytest.mark.parametrize("method", NAMES)
def test_torch_model_in_train_mode_gives_the_eval_maps(method):
    x = images(2)
    evaluated = cnnlens.explain(tiny().eval(), x, method, **fast(method))
    trained = cnnlens.explain(tiny().train(), x, method, **fast(method))
    np.testing.assert_allclose(trained.maps, evaluated.maps, rtol=0, atol=1e-6 * np.abs(evaluated.maps).max())


@pytest.mark.parametrize("kind", ["torchscript-trace", "torchscript-script"])
@pytest.mark.parametrize("method", NAMES)
def test_torchscript_model_is_left_unchanged(files, kind, method):
    b = cnnlens.load(files[kind])
    if method not in supported_methods(b.capabilities):
        pytest.skip(f"{kind} does not run {method}")
    module = b.model
    module.train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    cnnlens.explain(b, images(2), method, **fast(method))
    assert module.training and all(m.training for m in module.modules())
    after = module.state_dict()
    for key, value in state.items():
        assert torch.equal(after[key], value), f"{method} changed {key}"


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("method", NAMES)
def test_unknown_option_is_refused_with_the_list(backends, kind, method):
    b = _backend_or_skip(backends, kind, method)
    with pytest.raises(cnnlens.InvalidInputError) as info:
        cnnlens.explain(b, images(1), method, no_such_option=3, **fast(method))
    message = str(info.value)
    assert "no_such_option" in message
    for option in METHODS[method].options:
        assert option.name in message, (option.name, message)


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("method", NAMES)
def test_options_report_their_defaults(backends, kind, method):
    b = _backend_or_skip(backends, kind, method)
    spec = METHODS[method]
    x = images(1)
    exp = cnnlens.explain(b, x, method)  # every option at its default
    assert set(spec.defaults) <= set(exp.options), (sorted(spec.defaults), sorted(exp.options))
    chosen = {}
    for option in spec.options:
        reported = exp.options[option.name]
        if option.default is None:
            if reported is not None:
                chosen[option.name] = reported  # "automatic": the value used
        else:
            assert reported == option.default, (option.name, reported, option.default)
    if chosen:  # the value reported for an automatic option is the one that was used
        again = cnnlens.explain(b, x, method, **chosen)
        np.testing.assert_array_equal(again.maps, exp.maps)
    # options given explicitly are reported as given
    given = {k: v for k, v in fast(method).items() if spec.option(k).default is not None}
    if given:
        exp = cnnlens.explain(b, x, method, **fast(method))
        for name, value in given.items():
            assert exp.options[name] == value


# ---------------------------------------------------------------- layer modes


@pytest.mark.parametrize("kind", ["torch", "onnx"])
@pytest.mark.parametrize("method", NAMES)
def test_layer_mode_is_honoured(backends, kind, method):
    b = _backend_or_skip(backends, kind, method)
    spec = METHODS[method]
    x = images(2)
    mode = spec.layer
    assert mode in (NO_LAYER, ONE_LAYER, LAYERS, HEAD_LAYER)
    assert spec.layered == (mode != NO_LAYER)
    if mode == NO_LAYER:
        with pytest.raises(cnnlens.LayerError):
            cnnlens.explain(b, x, method, layer="conv1", **fast(method))
        return
    plain = cnnlens.explain(b, x, method, **fast(method))
    assert plain.layer is not None
    # naming the default layer explicitly changes nothing
    named = cnnlens.explain(b, x, method, layer="relu2", **fast(method))
    np.testing.assert_allclose(named.maps, plain.maps, rtol=1e-6, atol=1e-7)
    pair = ["conv2", "relu2"]  # equal shapes, so feature_maps can stack them
    if mode in (ONE_LAYER, HEAD_LAYER):
        with pytest.raises(cnnlens.LayerError):
            cnnlens.explain(b, x, method, layer=pair, **fast(method))
        if mode == HEAD_LAYER:
            with pytest.raises(cnnlens.LayerError):
                cnnlens.explain(b, x, method, layer="conv1", **fast(method))
        else:
            other = cnnlens.explain(b, x, method, layer="conv1", **fast(method))
            assert other.maps.shape == plain.maps.shape
        return
    both = cnnlens.explain(b, x, method, layer=pair, **fast(method))
    assert both.maps.shape[:2] == (2, 2) and both.maps.shape[2:] == plain.maps.shape[1:]
    assert len(both.layer) == 2
    np.testing.assert_allclose(both.maps[:, 1], plain.maps, rtol=1e-5, atol=1e-6 * np.abs(plain.maps).max())


# ---------------------------------------------------------------- torch and ONNX agree


@pytest.mark.parametrize("method", NAMES)
def test_torch_and_onnx_agree(backends, method):
    a, b = backends["torch"], backends["onnx"]
    both = set(supported_methods(a.capabilities)) & set(supported_methods(b.capabilities))
    if method not in both:
        pytest.skip(f"{method} does not run on both")
    x = images(2)
    ea = cnnlens.explain(a, x, method, **fast(method))
    eb = cnnlens.explain(b, x, method, **fast(method))
    np.testing.assert_array_equal(np.asarray(ea.target), np.asarray(eb.target))
    assert ea.maps.shape == eb.maps.shape
    err = rel_err(eb.maps, ea.maps)
    assert err <= 1e-4, f"{method}: torch vs onnx relative error {err:.3g}"


@pytest.mark.parametrize("kind", ["torchscript-trace", "torchscript-script"])
@pytest.mark.parametrize("method", NAMES)
def test_torch_and_torchscript_agree(backends, kind, method):
    b = _backend_or_skip(backends, kind, method)
    x = images(2)
    ea = cnnlens.explain(backends["torch"], x, method, **fast(method))
    eb = cnnlens.explain(b, x, method, **fast(method))
    err = rel_err(eb.maps, ea.maps, scale(method, ea))
    assert err <= 1e-5, f"{method}: torch vs {kind} relative error {err:.3g}"


# ---------------------------------------------------------------- the registry and the command line


def test_registry_descriptions_are_complete():
    assert NAMES, "no method registered"
    for name, spec in METHODS.items():
        assert spec.name == name
        assert spec.kind in (INPUT, CAM, LAYER_MAP)
        assert spec.needs and isinstance(spec.needs, frozenset)
        assert spec.summary, f"{name} has no summary"
        names = [o.name for o in spec.options]
        assert len(names) == len(set(names)), names
        assert "batch_size" in names
        assert spec.defaults == {o.name: o.default for o in spec.options}
        if spec.smoothable:
            assert spec.kind == INPUT
        for option in spec.options:  # every default passes its own check
            assert option.validate(option.default) == option.default or option.default is None


def test_shared_option_names_share_their_cli_type():
    seen = {}
    for spec in METHODS.values():
        for option in spec.options:
            seen.setdefault(option.name, []).append((spec.name, option.cli_type))
    for name, uses in seen.items():
        types = {t for _, t in uses}
        assert len(types) == 1, f"option {name!r} has CLI types {uses}"
    assert set(all_options()) == set(seen)


def _subparser(parser, command):
    for action in parser._actions:
        if getattr(action, "choices", None) and command in action.choices:
            return action.choices[command]
    raise AssertionError(f"no {command} subcommand")


@pytest.mark.parametrize("command", ["explain", "compare", "sanity"])
def test_every_option_is_a_cli_flag(command):
    sub = _subparser(build_parser(), command)
    flags = {s for action in sub._actions for s in action.option_strings}
    for spec in METHODS.values():
        for option in spec.options:
            flag = "--" + option.name.replace("_", "-")
            if option.cli_type is None:
                continue
            assert flag in flags, f"{spec.name}'s option {option.name} has no {flag} on `cnnlens {command}`"
    dests = {action.dest: action for action in sub._actions}
    for name, (option, _) in all_options().items():
        if option.cli_type is not None:
            assert dests[name].type is option.cli_type


def test_explain_help_lists_every_method_and_option(capsys):
    assert main(["explain", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for name in METHODS:
        assert name in text, f"`cnnlens explain --help` does not mention {name}"
    for name, (option, _) in all_options().items():
        if option.cli_type is not None:
            assert "--" + name.replace("_", "-") in text


# ---------------------------------------------------------------- quiet


@pytest.mark.parametrize("method", NAMES)
def test_onnx_methods_write_nothing_to_stderr(files, method, capfd):
    """Expected failures of trial runs (e.g. Ablation-CAM's check whether one image broadcasts over the
    copies cut at a layer) must not reach the user's terminal as onnxruntime error lines."""
    b = cnnlens.load(files["onnx"])  # fresh: trial runs happen on first use
    capfd.readouterr()
    cnnlens.explain(b, images(2), method, **fast(method))
    err = capfd.readouterr().err
    assert err == "", err
