"""TorchScript models and the export helpers.

TorchScript (traced or scripted, from a file or as a ScriptModule object) runs through the torch
backend with what TorchScript allows: saliency, smoothgrad and occlusion give the same maps as the
original module, filters are the conv weights and the layers are the submodules; the methods that
need hooks or ReLU rules raise UnsupportedError naming the ones that work. Files that are not
TorchScript archives are refused with ModelError; a pickled model is never unpickled unless trusted.

``to_onnx`` (legacy and dynamo exporters) writes a batch-dynamic file whose logits onnxruntime
reproduces, keeps BatchNorm separate from the convolutions (so filters are the torch weights),
leaves every module's ``training`` flag as it was, and writes atomically.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_onnx, to_torchscript
from cnnlens.adapters.files import atomic_path
from tests.helpers import assert_close, images, randomise_batchnorm, rel_err

SIZE = 64
NUM_CLASSES = 10
TIGHT = 1e-5
OCCLUSION = dict(window=16, stride=8)
SMOOTHGRAD = dict(samples=4, seed=1)


# ---------------------------------------------------------------- models


class ScriptableCNN(nn.Module):
    """conv-BN-F.relu, Sequential(conv, ReLU), torch.relu, GAP -> linear; torch.jit.script compiles it."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.block(h)
        h = torch.relu(self.conv3(h))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def scriptable_cnn(seed: int = 0) -> ScriptableCNN:
    torch.manual_seed(seed)
    return randomise_batchnorm(ScriptableCNN(), seed=seed, mean_scale=0.2).eval()


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(torchvision.models.resnet18(num_classes=NUM_CLASSES), seed=seed).eval()


class Boom(nn.Module):
    """A model whose forward pass raises: every export of it must fail."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        h = self.conv(x)
        raise RuntimeError("boom: this model cannot run")


def with_mixed_flags(model: nn.Module) -> dict:
    """Train mode everywhere except one submodule in eval; returns the flags to expect afterwards."""
    model.train()
    for name, m in model.named_modules():
        if name == "bn1":
            m.eval()
    return {name: m.training for name, m in model.named_modules()}


def conv_weights(model: nn.Module) -> dict:
    return {n: m.weight.detach().numpy().copy() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def torch_saliency(model: nn.Module, x: np.ndarray, classes) -> np.ndarray:
    """Plain autograd: d logits[n, classes[n]] / d x."""
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    logits = model(xt)
    picked = logits[torch.arange(len(x)), torch.as_tensor(np.asarray(classes))].sum()
    (grad,) = torch.autograd.grad(picked, xt)
    return grad.numpy()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def x():
    return images(2, 3, SIZE, SIZE, seed=3)


@pytest.fixture(scope="module")
def res():
    return resnet(0)


@pytest.fixture(scope="module")
def small():
    return scriptable_cnn(0)


@pytest.fixture(scope="module")
def traced_path(res, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ts") / "resnet_traced.pt")
    assert to_torchscript(res, path, (3, SIZE, SIZE), method="trace") == path
    return path


@pytest.fixture(scope="module")
def scripted_path(small, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ts") / "small_scripted.pt")
    assert to_torchscript(small, path, (3, SIZE, SIZE), method="script") == path
    return path


@pytest.fixture(scope="module")
def cases(res, small, traced_path, scripted_path):
    """(original module, {how it is given to cnnlens: the TorchScript source})."""
    return {
        "trace": (res, traced_path),
        "script": (small, scripted_path),
    }


@pytest.fixture(scope="module")
def ts_sources(cases):
    """Per kind, the same TorchScript model as a path, as cnnlens.load(path), and as ScriptModule
    objects (loaded once: a fresh TorchScript module's first runs are slow while the JIT profiles)."""
    out = {}
    for kind, (_, path) in cases.items():
        loaded = torch.jit.load(path)
        out[kind] = {
            "path": path,
            "load": cnnlens.load(path),
            "jit_load_object": loaded,
            "load_object": cnnlens.load(loaded),
        }
    return out


@pytest.fixture(scope="module")
def torch_results(cases, x):
    out = {}
    for kind, (model, _) in cases.items():
        out[kind] = {
            "saliency": cnnlens.explain(model, x, "saliency"),
            "smoothgrad": cnnlens.explain(model, x, "smoothgrad", **SMOOTHGRAD),
            "occlusion": cnnlens.explain(model, x, "occlusion", **OCCLUSION),
        }
    return out


# ---------------------------------------------------------------- TorchScript: what works


def test_torchscript_files_are_real_torchscript(traced_path, scripted_path):
    for path in (traced_path, scripted_path):
        assert zipfile.is_zipfile(path)
        assert isinstance(torch.jit.load(path), torch.jit.ScriptModule)
        backend = cnnlens.load(path)
        assert backend.scripted and backend.name == "torchscript"
    assert not cnnlens.load(resnet(0)).scripted


@pytest.mark.parametrize("kind", ["trace", "script"])
@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "occlusion"])
def test_torchscript_maps_equal_original(cases, ts_sources, torch_results, x, kind, method):
    model, _ = cases[kind]
    reference = torch_results[kind][method]
    logits = torch_logits(model, x)
    options = {"smoothgrad": SMOOTHGRAD, "occlusion": OCCLUSION}.get(method, {})
    for how, source in ts_sources[kind].items():
        exp = cnnlens.explain(source, x, method, **options)
        assert exp.maps.shape == reference.maps.shape, how
        assert_close(exp.logits, logits, TIGHT)
        np.testing.assert_array_equal(exp.target, logits.argmax(1))
        np.testing.assert_array_equal(exp.target, reference.target)
        err = rel_err(exp.maps, reference.maps)
        # TorchScript runs NCHW, the eager backend NHWC on the CPU; occlusion drops are differences
        # of nearly equal logits, which magnify that rounding difference
        tol = 1e-4 if method == "occlusion" else TIGHT
        assert err <= tol, f"{kind} {method} via {how}: relative error {err:.3g}"


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_torchscript_saliency_is_the_autograd_gradient(cases, ts_sources, x, kind):
    """Independent of the torch backend: a plain autograd gradient of the original module."""
    model, _ = cases[kind]
    exp = cnnlens.explain(ts_sources[kind]["load"], x, "saliency", target=[1, 3])
    assert_close(exp.maps, torch_saliency(model, x, [1, 3]), TIGHT)
    np.testing.assert_array_equal(exp.target, [1, 3])


def test_torchscript_smoothgrad_zero_noise_is_saliency(ts_sources, res, x):
    exp = cnnlens.explain(ts_sources["trace"]["load"], x, "smoothgrad", samples=2, noise=0.0, seed=1)
    assert_close(exp.maps, torch_saliency(res, x, exp.target), TIGHT)


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_torchscript_filters_are_conv_weights(cases, ts_sources, kind):
    model, path = cases[kind]
    weights = conv_weights(model)
    first = next(iter(weights))
    for how, source in ts_sources[kind].items():
        np.testing.assert_array_equal(cnnlens.filters(source), weights[first])
        for name, w in weights.items():
            np.testing.assert_array_equal(cnnlens.filters(source, name), w, err_msg=f"{name} via {how}")
    if kind == "trace":
        np.testing.assert_array_equal(cnnlens.filters(path, "fc"), model.fc.weight.detach().numpy())


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_torchscript_layers_are_the_submodules(cases, ts_sources, kind):
    model, path = cases[kind]
    expected = [(n, type(m).__name__) for n, m in model.named_modules() if n]
    for how, source in ts_sources[kind].items():
        got = [(layer.name, layer.kind) for layer in cnnlens.layers(source)]
        assert got == expected, how


def test_scriptmodule_object_in_memory(small, x):
    """A ScriptModule that was never saved is accepted too (torch.jit.script / torch.jit.trace objects)."""
    scripted = torch.jit.script(scriptable_cnn(0).eval())
    traced = torch.jit.trace(scriptable_cnn(0).eval(), torch.zeros(1, 3, SIZE, SIZE))
    reference = cnnlens.explain(small, x, "saliency", target=2)
    for module in (scripted, traced):
        assert cnnlens.load(module).scripted
        exp = cnnlens.explain(module, x, "saliency", target=2)
        assert_close(exp.maps, reference.maps, TIGHT)
        assert_close(exp.maps, torch_saliency(small, x, [2, 2]), TIGHT)


# ---------------------------------------------------------------- TorchScript: what does not


WORKS = {"saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "occlusion", "rise"}


@pytest.mark.parametrize("method,options", [
    ("gradcam", {}), ("gradcam", {"layer": "layer4"}), ("guided_backprop", {}), ("deconvnet", {}),
    ("guided_gradcam", {}), ("cam", {}), ("feature_maps", {"layer": "layer3"}), ("scorecam", {}),
])
def test_torchscript_unsupported_methods_name_what_works(traced_path, x, method, options):
    with pytest.raises(cnnlens.UnsupportedError) as info:
        cnnlens.explain(traced_path, x, method, **options)
    message = str(info.value)
    assert method in message and "torchscript" in message
    listed = message.split("use one of:")[1].strip().rstrip(".")
    assert {m.strip() for m in listed.split(",")} == WORKS


def test_torchscript_smoothgrad_with_guided_base_unsupported(traced_path, x):
    with pytest.raises(cnnlens.UnsupportedError, match="base='saliency'"):
        cnnlens.explain(traced_path, x, "smoothgrad", samples=2, base="guided_backprop")
    with pytest.raises(cnnlens.UnsupportedError, match="base='saliency'"):
        cnnlens.explain(torch.jit.load(traced_path), x, "smoothgrad", samples=2, base="deconvnet")


def test_unsupported_is_a_cnnlens_error():
    assert issubclass(cnnlens.UnsupportedError, cnnlens.CnnlensError)
    assert issubclass(cnnlens.ModelError, cnnlens.CnnlensError)


# ---------------------------------------------------------------- files that are not TorchScript


class Trap:
    """Unpickling this creates ``marker``: proof that a file was (or was not) unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_model_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled.txt"
    path = tmp_path / "m.pt"
    torch.save({"model": scriptable_cnn(0), "trap": Trap(str(marker))}, str(path))
    assert zipfile.is_zipfile(path)
    with pytest.raises(cnnlens.ModelError, match="pickled PyTorch file.*trust_pickle=True") as info:
        cnnlens.load(str(path))
    assert "torch.save" in str(info.value)
    assert not marker.exists()
    with pytest.raises(cnnlens.ModelError, match="pickled PyTorch file"):
        cnnlens.explain(str(path), images(1, 3, 8, 8, 0), "saliency")
    assert not marker.exists()
    # the trap works: a real unpickle would have created the marker
    torch.load(str(path), weights_only=False)
    assert marker.exists()


def test_pickled_whole_model_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(scriptable_cnn(0), str(path))
    with pytest.raises(cnnlens.ModelError, match="pickled PyTorch file.*trust_pickle=True"):
        cnnlens.load(str(path))


def test_plain_pickle_named_pt_is_refused(tmp_path):
    marker = tmp_path / "unpickled.txt"
    path = tmp_path / "m.pth"
    path.write_bytes(pickle.dumps(Trap(str(marker))))
    with pytest.raises(cnnlens.ModelError, match="pickled PyTorch file.*trust_pickle=True"):
        cnnlens.load(str(path))
    assert not marker.exists()


def test_text_file_named_pt_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("this is not a model\n")
    with pytest.raises(cnnlens.ModelError, match="not a TorchScript") as info:
        cnnlens.load(str(path))
    assert str(path) in str(info.value)


def test_missing_path_is_refused(tmp_path):
    path = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(cnnlens.ModelError, match="no such model file") as info:
        cnnlens.load(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(cnnlens.ModelError):
        cnnlens.explain(str(tmp_path / "missing.onnx"), images(1, 3, 8, 8, 0), "occlusion")


@pytest.mark.parametrize("name", ["model.pt", "model.onnx", "model"])
def test_empty_file_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(cnnlens.ModelError, match="empty"):
        cnnlens.load(str(path))


def test_folder_is_refused(tmp_path):
    with pytest.raises(cnnlens.ModelError, match="folder"):
        cnnlens.load(str(tmp_path))


# ---------------------------------------------------------------- to_torchscript


@pytest.mark.parametrize("method", ["trace", "script"])
def test_to_torchscript_keeps_training_flags_and_exports_eval_mode(tmp_path, method):
    model = scriptable_cnn(1)
    flags = with_mixed_flags(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = str(tmp_path / "m.pt")
    to_torchscript(model, path, (3, 16, 16), method=method)
    assert {n: m.training for n, m in model.named_modules()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    x16 = images(3, 3, 16, 16, 5)
    model.eval()
    expected = torch_logits(model, x16)
    loaded = torch.jit.load(path)
    loaded.eval()
    assert_close(torch_logits(loaded, x16), expected, TIGHT)


def test_to_torchscript_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception):
        to_torchscript(Boom(), str(tmp_path / "m.pt"), (3, 8, 8), method="trace")
    assert os.listdir(tmp_path) == []


def test_to_torchscript_bad_method(tmp_path):
    with pytest.raises(ValueError, match="trace"):
        to_torchscript(scriptable_cnn(0), str(tmp_path / "m.pt"), (3, 8, 8), method="compile")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- to_onnx


EXPORTERS = ["legacy", "dynamo"]


@pytest.fixture(scope="module")
def onnx_paths(res, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    for exporter in EXPORTERS:
        path = str(folder / f"resnet_{exporter}.onnx")
        assert to_onnx(res, path, (3, SIZE, SIZE), exporter=exporter) == path
        paths[exporter] = path
    return paths


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_onnx_runs_in_onnxruntime_with_dynamic_batch(onnx_paths, res, exporter):
    path = onnx_paths[exporter]
    model = onnx.load(path)
    onnx.checker.check_model(model)
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert not first.HasField("dim_value"), "the batch dimension must be symbolic"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for n in (1, 3):
        xb = images(n, 3, SIZE, SIZE, seed=10 + n)
        (got,) = session.run(["logits"], {"input": xb})
        assert got.shape == (n, NUM_CLASSES)
        assert_close(got, torch_logits(res, xb), 1e-4)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_onnx_keeps_batchnorm_and_filters_are_torch_weights(onnx_paths, res, exporter):
    path = onnx_paths[exporter]
    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in res.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in res.modules())
    assert ops.count("BatchNormalization") == n_bn == 20
    assert ops.count("Conv") == n_conv
    weights = conv_weights(res)  # definition order == call order in a ResNet
    backend = cnnlens.load(path)
    conv_nodes = [layer.name for layer in backend.layers((3, SIZE, SIZE)) if layer.kind == "Conv"]
    assert len(conv_nodes) == len(weights)
    for node, (module, w) in zip(conv_nodes, weights.items()):
        np.testing.assert_array_equal(cnnlens.filters(backend, node), w, err_msg=f"{node} vs {module}")
    np.testing.assert_array_equal(cnnlens.filters(path), weights["conv1"])
    np.testing.assert_array_equal(cnnlens.filters(path, conv_nodes[-1]), weights["layer4.1.conv2"])
    # torch module paths name the same filters
    for module in ("conv1", "layer1.0.conv1", "layer2.1.conv2", "layer4.1.conv2"):
        np.testing.assert_array_equal(cnnlens.filters(backend, module), weights[module], err_msg=module)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_onnx_filters_of_nested_sequential_by_module_path(onnx_paths, res, exporter):
    """``layer3.0.downsample.0`` is a Sequential's child inside a named child: the legacy exporter
    writes its scope as /layer3/layer3.0/downsample/downsample.0/, which must map back to that path."""
    backend = cnnlens.load(onnx_paths[exporter])
    for module in ("layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"):
        w = dict(res.named_modules())[module].weight.detach().numpy()
        np.testing.assert_array_equal(cnnlens.filters(backend, module), w, err_msg=module)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_to_onnx_keeps_training_flags_and_exports_eval_mode(tmp_path, exporter):
    model = scriptable_cnn(2)
    flags = with_mixed_flags(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = str(tmp_path / "m.onnx")
    to_onnx(model, path, (3, 16, 16), exporter=exporter)
    assert {n: m.training for n, m in model.named_modules()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    x16 = images(3, 3, 16, 16, 6)
    (got,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x16})
    model.eval()
    assert_close(got, torch_logits(model, x16), 1e-4)  # BN with running statistics: eval mode
    model.train()
    with torch.no_grad():
        train_logits = model(torch.from_numpy(x16)).numpy()
    assert rel_err(got, train_logits) > 1e-2  # the check above can tell the modes apart


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_to_onnx_failure_leaves_no_file(tmp_path, monkeypatch, exporter):
    monkeypatch.chdir(tmp_path)
    model = Boom()
    flags = with_mixed_flags(model)
    with pytest.raises(Exception):
        to_onnx(model, str(tmp_path / "m.onnx"), (3, 8, 8), exporter=exporter)
    assert os.listdir(tmp_path) == []
    assert {n: m.training for n, m in model.named_modules()} == flags


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_to_onnx_failure_keeps_existing_file(tmp_path, monkeypatch, exporter):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(Exception):
        to_onnx(Boom(), str(path), (3, 8, 8), exporter=exporter)
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert path.read_bytes() == b"previous export"


def test_to_onnx_unknown_exporter_leaves_nothing(tmp_path):
    model = scriptable_cnn(0)
    flags = with_mixed_flags(model)
    with pytest.raises(ValueError, match="legacy"):
        to_onnx(model, str(tmp_path / "m.onnx"), (3, 8, 8), exporter="tflite")
    assert os.listdir(tmp_path) == []
    assert {n: m.training for n, m in model.named_modules()} == flags


# ---------------------------------------------------------------- atomic_path


def test_atomic_path_success_replaces_existing_file(tmp_path):
    target = tmp_path / "out.onnx"
    target.write_text("old")
    with atomic_path(str(target)) as temporary:
        assert os.path.dirname(temporary) == str(tmp_path)
        assert os.path.basename(temporary).startswith(".cnnlens-") and temporary.endswith(".onnx")
        assert os.path.exists(temporary)
        assert target.read_text() == "old"  # not replaced before the block ends
        with open(temporary, "w") as f:
            f.write("new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_atomic_path_exception_removes_temp_and_keeps_existing(tmp_path):
    target = tmp_path / "out.pt"
    target.write_text("old")
    seen = []
    with pytest.raises(KeyError):
        with atomic_path(str(target)) as temporary:
            seen.append(temporary)
            with open(temporary, "w") as f:
                f.write("half written")
            raise KeyError("interrupted")
    assert not os.path.exists(seen[0])
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.pt"]


def test_atomic_path_exception_without_existing_file(tmp_path):
    target = tmp_path / "sub" / "out.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as temporary:
            os.remove(temporary)  # even a block that removed its temp file fails cleanly
            raise RuntimeError("export failed")
    assert not target.exists()
    assert os.listdir(tmp_path / "sub") == []
