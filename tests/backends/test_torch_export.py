"""torch.export programs (``.pt2``): every method equal to the original module's, the original
module paths as layers, the CLI, compare, state safety, and archives that would run code refused."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_exported
from cnnlens.core.errors import ModelError
from tests.helpers import images, randomise_batchnorm, rel_err

SIZE = (3, 48, 48)


class FunctionalNet(nn.Module):
    """Functional and in-place ReLUs everywhere, one on a skip path after ``+=``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        out = self.block(x)
        out += x
        out = F.relu(out, inplace=True)
        out = self.down(out).relu_()
        return self.head(torch.relu(out).mean(dim=(2, 3)))


def _models():
    torch.manual_seed(0)
    resnet = randomise_batchnorm(torchvision.models.resnet18(num_classes=6)).eval()  # in-place ReLUs on skip paths
    torch.manual_seed(1)
    mobile = randomise_batchnorm(torchvision.models.mobilenet_v3_small(num_classes=4)).eval()
    from cnnlens.adapters.demo_model import build_model

    dense = randomise_batchnorm(build_model(num_classes=3, seed=2)).eval()  # concatenations, F.relu in forward
    return {"resnet18": resnet, "mobilenet_v3_small": mobile, "densenet": dense,
            "functional": randomise_batchnorm(FunctionalNet()).eval()}


MODELS = _models()
OPTIONS = {"occlusion": {"window": 16, "stride": 16, "incremental": False},  # the formats, not the engines "rise": {"masks": 16}, "smoothgrad": {"samples": 2},
           "integrated_gradients": {"steps": 4}}


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pt2")
    out = {}
    for name, model in MODELS.items():
        path = str(folder / f"{name}.pt2")
        to_exported(model, path, SIZE)
        out[name] = path
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_on_the_program_equals_the_module(name, programs):
    model, program = MODELS[name], cnnlens.load(programs[name])
    x = images(2, *SIZE, seed=4)
    methods = [m for m in cnnlens.METHODS if cnnlens.METHODS[m].needs <= program.capabilities]
    assert methods == [m for m in cnnlens.METHODS if cnnlens.METHODS[m].needs <= cnnlens.load(model).capabilities]
    for method in methods:
        try:
            want = cnnlens.explain(model, x, method, **OPTIONS.get(method, {}))
        except cnnlens.CnnlensError as error:  # e.g. CAM on a head that is not GAP -> linear: the same error
            with pytest.raises(type(error)):
                cnnlens.explain(program, x, method, **OPTIONS.get(method, {}))
            continue
        got = cnnlens.explain(program, x, method, **OPTIONS.get(method, {}))
        assert got.layer == want.layer, method  # the same default layer, by its original module path
        np.testing.assert_array_equal(got.target, want.target)
        if method in ("lrp", "deeplift") and np.abs(want.maps).max() < 1e-4 * np.abs(want.logits).max():
            # relevance that never reaches the input (a random MobileNetV3's merged BatchNorm biases absorb
            # it: maps of 1e-12 against outputs of 1e-2): both say so, the rest is noise
            assert np.abs(got.maps).max() < 1e-4 * np.abs(got.logits).max(), method
        elif np.abs(want.maps).max() > 0:
            assert rel_err(got.maps, want.maps) <= 1e-5, method
        else:
            assert np.abs(got.maps).max() == 0, method


@pytest.mark.parametrize("name", list(MODELS))
def test_layers_are_the_original_module_paths_in_call_order(name, programs):
    model, program = MODELS[name], cnnlens.load(programs[name])
    want, got = cnnlens.layers(model, SIZE), cnnlens.layers(program)  # the program knows its input size
    assert [(l.name, l.kind, l.shape) for l in got] == [(l.name, l.kind, l.shape) for l in want]
    some = [l.name for l in want if l.spatial][::5]
    a = cnnlens.explain(model, images(1, *SIZE, seed=1), "gradcam", layer=some).maps
    b = cnnlens.explain(program, images(1, *SIZE, seed=1), "gradcam", layer=some).maps
    assert rel_err(b, a) <= 1e-5


def test_in_memory_program_dynamic_batch_and_layout(programs):
    model = MODELS["resnet18"]
    program = torch.export.export(model, (torch.zeros(2, *SIZE),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    backend = cnnlens.load(program)
    assert backend.name == "torch.export" and backend.channels_last == cnnlens.load(model).channels_last
    for n in (1, 3, 5):  # the batch is dynamic
        x = images(n, *SIZE, seed=n)
        assert rel_err(cnnlens.explain(backend, x, "guided_backprop").maps,
                       cnnlens.explain(model, x, "guided_backprop").maps) <= 1e-5
    loaded = cnnlens.load(programs["resnet18"])
    assert loaded.image_shape == SIZE and loaded.layers()[0].shape == (None, 64, 24, 24)


def test_a_call_leaves_the_program_as_it_was(programs):
    backend = cnnlens.load(programs["functional"])
    state = {k: v.clone() for k, v in backend.program.state_dict.items()}
    graph = str(backend.program.graph)
    x = images(2, *SIZE, seed=2)
    for method in ("guided_gradcam", "ablationcam", "gradcam"):
        cnnlens.explain(backend, x, method)
    with pytest.raises(cnnlens.LayerError):
        cnnlens.explain(backend, x, "gradcam", layer="no.such.layer")
    assert str(backend.program.graph) == graph
    assert all(torch.equal(v, state[k]) for k, v in backend.program.state_dict.items())
    for name, m in backend.model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, name
    assert all(not p.requires_grad or p.grad is None for p in backend.model.parameters())


def test_randomised_copies_match_the_modules_own_reset(programs):
    model, program = MODELS["resnet18"], cnnlens.load(programs["resnet18"])
    layers = ["fc", "layer4.1.bn2", "layer4.1.conv2"]
    a = cnnlens.load(model).randomised(layers, seed=7)
    b = program.randomised(layers, seed=7)
    for name in layers:
        np.testing.assert_array_equal(b.model.get_submodule(name).weight.detach().numpy(),
                                      a.model.get_submodule(name).weight.detach().numpy())
    x = images(1, *SIZE, seed=5)
    assert rel_err(cnnlens.explain(b, x, "saliency").maps, cnnlens.explain(a, x, "saliency").maps) <= 1e-5
    assert not np.allclose(cnnlens.explain(b, x, "saliency").maps, cnnlens.explain(program, x, "saliency").maps)


def test_a_program_travels_to_other_processes_as_its_own_bytes(programs):
    backend = cnnlens.load(programs["densenet"])
    spec = backend.spec()
    assert spec.kind == "exported" and isinstance(spec.payload, bytes)
    copy = cnnlens.load(pickle.loads(pickle.dumps(spec)))
    assert type(copy) is type(backend)  # a program again, not the unflattened module as a plain module
    x = images(2, *SIZE, seed=6)
    np.testing.assert_array_equal(cnnlens.explain(copy, x, "gradcam").maps, cnnlens.explain(backend, x, "gradcam").maps)
    moved = cnnlens.load(backend, device="cpu")  # a loaded program made again for a device stays a program
    assert type(moved) is type(backend)
    np.testing.assert_array_equal(cnnlens.explain(moved, x, "gradcam").maps, cnnlens.explain(backend, x, "gradcam").maps)


def test_cli_and_compare_between_module_program_and_onnx(programs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from cnnlens.adapters.export import to_onnx
    from cnnlens.cli import main

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    path = programs["resnet18"]
    assert main(["layers", path]) == 0
    assert "layer4.1.conv2" in capsys.readouterr().out
    assert main(["explain", path, str(tmp_path / "a.png"), "-m", "gradcam,guided_backprop", "--out", str(tmp_path / "o")]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["a_gradcam.png", "a_guided_backprop.png"]
    onnx_path = str(tmp_path / "m.onnx")
    to_onnx(MODELS["resnet18"], onnx_path, SIZE)
    x = images(2, *SIZE, seed=9)
    for a, b in ((MODELS["resnet18"], path), (path, onnx_path)):
        result = cnnlens.compare(a, b, x, "gradcam")
        assert result.worst_relative_error <= 1e-4


def _rewrite(path, out, change):
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = change(item.filename, src.read(item.filename))
            if data is not None:
                dst.writestr(item, data)
    return out


class Payload:
    marker = ""

    def __reduce__(self):
        return (open, (Payload.marker, "w"))


def test_archives_that_would_run_code_are_refused_unless_trusted(programs, tmp_path):
    path = programs["functional"]
    Payload.marker = str(tmp_path / "ran")
    evil = io.BytesIO()
    torch.save(Payload(), evil)

    def pickled_weight(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        return evil.getvalue() if name.endswith("/weight_0") else data

    def guards(name, data):
        if name.endswith("models/model.json"):
            model = json.loads(data)
            model["guards_code"] = ["import os; os.system('true')"]
            return json.dumps(model).encode()
        return data

    def sample_inputs(name, data):
        return evil.getvalue() if "/sample_inputs/" in name else data

    cases = {"pickled_weight": (pickled_weight, "pickled tensor"), "guards": (guards, "guards_code"),
             "sample": (sample_inputs, "full unpickle")}
    for label, (change, message) in cases.items():
        bad = _rewrite(path, str(tmp_path / f"{label}.pt2"), change)
        with pytest.raises(ModelError, match=f"{message}.*trust_pickle=True"):
            cnnlens.load(bad)
        assert not os.path.exists(Payload.marker), label
    extra = _rewrite(path, str(tmp_path / "extra.pt2"), lambda n, d: d)
    with zipfile.ZipFile(extra, "a") as archive:
        top = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{top}/notes/readme.txt", b"hello")
    with pytest.raises(ModelError, match="notes/readme.txt"):
        cnnlens.load(extra)
    trusted = cnnlens.load(extra, trust_pickle=True)  # a harmless extra member loads when trusted
    x = images(1, *SIZE, seed=3)
    assert rel_err(cnnlens.explain(trusted, x, "saliency").maps, cnnlens.explain(MODELS["functional"], x, "saliency").maps) <= 1e-5


def test_a_program_exported_in_training_mode_is_refused():
    model = FunctionalNet().train()
    program = torch.export.export(model, (torch.zeros(2, *SIZE),))
    with pytest.raises(ModelError, match="training mode.*model.eval"):
        cnnlens.load(program)
