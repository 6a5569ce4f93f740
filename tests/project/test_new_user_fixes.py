"""Fixes for what new users ran into, one test each.

- ``cnnlens compare A B img -m occlusoin``: exit 2, one ``error:`` line with "did you mean", no traceback;
- ``cnnlens explain MODEL img -m guided_gradcam -l a -l b``: two layers, a PNG per image;
- ``cnnlens sanity``: ``--randomisation-steps`` / ``--randomisation-seed`` for the randomisation test,
  ``--steps`` is Integrated Gradients' option (no argparse conflict); ``--seed`` reaches the methods
  that take a seed (smoothgrad, rise) and no other;
- occlusion's ``window="abc"`` / ``window=[]``: InvalidInputError;
- ``cnnlens.metrics.pointing_game`` / ``spearman`` on bad input: InvalidInputError;
- ``cnnlens.load(backend, device="cpu")`` keeps the backend's ``output=`` choice (torch tuple outputs,
  ONNX models with two outputs chosen by index or name).
"""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn

import cnnlens
import cnnlens.metrics
from cnnlens.adapters import images as image_io
from cnnlens.cli import build_parser, main
from cnnlens.core.methods import METHODS
from tests.helpers import module_workdir

MODEL_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
            self.relu2 = nn.ReLU()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.relu2(self.conv2(self.relu(self.conv1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    def build():
        torch.manual_seed(0)
        return Small()

    def other():
        torch.manual_seed(1)
        return Small()

    model = build()
''')


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    yield from module_workdir(tmp_path, monkeypatch, "usernet", MODEL_SOURCE, images=("one", "two"))


def _inputs(paths, size=(32, 32)):
    return image_io.prepare(list(paths), size)[0]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- a misspelt method


@pytest.mark.parametrize("command", ["compare", "explain", "sanity"])
def test_misspelt_method_suggests_the_right_one(workdir, capsys, command):
    models = ["usernet:build", "usernet:other"] if command == "compare" else ["usernet:build"]
    code = main([command] + models + ["one.png", "-m", "occlusoin", "--size", "32", "32"])
    assert code == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert "did you mean" in line.lower() and "'occlusion'" in line
    assert "Traceback" not in captured.out


def test_misspelt_method_in_a_list(workdir, capsys):
    assert main(["compare", "usernet:build", "usernet:other", "one.png", "-m", "saliency,GradCam", "--size", "32", "32"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "did you mean" in line.lower() and "gradcam" in line


# ---------------------------------------------------------------- guided Grad-CAM on two layers


def test_guided_gradcam_with_two_layers_writes_pngs(workdir, capsys):
    code = main(["explain", "usernet:model", "one.png", "two.png", "-m", "guided_gradcam", "-l", "conv1", "-l", "relu2",
                 "--size", "32", "32", "-o", "out", "--save-maps"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir("out")) == ["one_guided_gradcam.npy", "one_guided_gradcam.png",
                                         "two_guided_gradcam.npy", "two_guided_gradcam.png"]
    for stem in ("one", "two"):
        with Image.open(f"out/{stem}_guided_gradcam.png") as png:
            assert png.size[0] > 32 and png.size[1] > 32
    import usernet

    exp = cnnlens.explain(usernet.build(), _inputs(["one.png", "two.png"]), "guided_gradcam", layer=["conv1", "relu2"])
    assert exp.maps.shape == (2, 2, 3, 32, 32)
    for i, stem in enumerate(("one", "two")):
        np.testing.assert_allclose(np.load(f"out/{stem}_guided_gradcam.npy"), exp.maps[i], rtol=1e-6,
                                   atol=1e-7 * np.abs(exp.maps).max())
    assert "guided_gradcam" in capsys.readouterr().out


def test_gradcam_with_two_layers_writes_pngs(workdir, capsys):
    code = main(["explain", "usernet:model", "one.png", "-m", "gradcam,eigencam", "-l", "conv1", "-l", "relu2",
                 "--size", "32", "32", "-o", "out"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir("out")) == ["one_eigencam.png", "one_gradcam.png"]


# ---------------------------------------------------------------- sanity's options


def _sub(command):
    parser = build_parser()
    for action in parser._actions:
        if getattr(action, "choices", None) and command in action.choices:
            return action.choices[command]
    raise AssertionError(command)


def test_sanity_flags_do_not_conflict():
    sanity = _sub("sanity")
    flags = {s: a.dest for a in sanity._actions for s in a.option_strings}
    assert flags["--randomisation-steps"] == "randomisation_steps"
    assert flags["--randomisation-seed"] == "randomisation_seed"
    assert flags["--steps"] == "steps"  # Integrated Gradients' option, as for explain
    assert flags["--seed"] == "seed"    # the methods' seed
    args = build_parser().parse_args(["sanity", "m.onnx", "a.png", "--steps", "7", "--randomisation-steps", "2",
                                      "--randomisation-seed", "3", "--seed", "4"])
    assert (args.steps, args.randomisation_steps, args.randomisation_seed, args.seed) == (7, 2, 3, 4)
    args = build_parser().parse_args(["sanity", "m.onnx", "a.png"])
    assert args.steps is None and args.seed is None and args.randomisation_seed == 0


def test_sanity_routes_steps_and_seeds(workdir, capsys, monkeypatch):
    seen = {}
    real = cnnlens.metrics.sanity

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cnnlens.metrics, "sanity", spy)
    code = main(["sanity", "usernet:model", "one.png", "-m", "integrated_gradients,smoothgrad,rise,saliency",
                 "--steps", "3", "--samples", "2", "--masks", "16", "--seed", "5",
                 "--randomisation-steps", "2", "--randomisation-seed", "9", "--deletion-steps", "4",
                 "--size", "32", "32", "--json"])
    assert code == 0, capsys.readouterr().err
    assert seen["steps"] == 2 and seen["seed"] == 9 and seen["deletion_steps"] == 4
    options = seen["options"]
    assert options["integrated_gradients"] == {"steps": 3}
    assert options["smoothgrad"] == {"samples": 2, "seed": 5}
    assert options["rise"] == {"masks": 16, "seed": 5}
    assert options["saliency"] == {}
    report = json.loads(capsys.readouterr().out)
    assert set(report["methods"]) == {"integrated_gradients", "smoothgrad", "rise", "saliency"}
    assert all(len(r["randomisation"]) == 2 for r in report["methods"].values())


def test_seed_reaches_smoothgrad_and_rise_only(workdir, capsys, monkeypatch):
    calls = []
    real = cnnlens.explain

    def spy(model, x, method, **kwargs):
        calls.append((method, dict(kwargs)))
        return real(model, x, method, **kwargs)

    monkeypatch.setattr(cnnlens, "explain", spy)
    code = main(["explain", "usernet:model", "one.png", "-m", "smoothgrad,rise,saliency,occlusion,gradcam",
                 "--seed", "5", "--samples", "2", "--masks", "16", "--window", "8",
                 "--size", "32", "32", "-o", "out", "--save-maps"])
    assert code == 0, capsys.readouterr().err
    options = {method: {k: v for k, v in kw.items() if k not in ("target", "layer")} for method, kw in calls}
    assert options == {"smoothgrad": {"samples": 2, "seed": 5}, "rise": {"masks": 16, "seed": 5},
                       "saliency": {}, "occlusion": {"window": 8}, "gradcam": {}}
    takes_seed = sorted(m for m, spec in METHODS.items() if "seed" in spec.defaults)
    assert {"smoothgrad", "rise"} <= set(takes_seed)
    # and the seed is the one used
    import usernet

    x = _inputs(["one.png"])
    for method, extra in (("smoothgrad", {"samples": 2}), ("rise", {"masks": 16})):
        want = real(usernet.build(), x, method, seed=5, **extra).maps[0]
        np.testing.assert_allclose(np.load(f"out/one_{method}.npy"), want, rtol=1e-6, atol=1e-7 * np.abs(want).max())
        other = real(usernet.build(), x, method, seed=6, **extra).maps[0]
        assert not np.allclose(other, want)


# ---------------------------------------------------------------- occlusion's window


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def _x(n=1, size=32):
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("options", [
    dict(window="abc"), dict(window=[]), dict(window=()), dict(window=(8,)), dict(window=(8, 8, 8)),
    dict(window=0), dict(window=-4), dict(window=8.0), dict(window=True), dict(window=(8, "8")),
    dict(window=[[8, 8]]), dict(window=b"ab"), dict(window={}), dict(window=99),
    dict(stride="abc"), dict(stride=[]), dict(stride=0), dict(stride=2.5),
    dict(baseline="abc"), dict(baseline=[0.0, 1.0]),
])
def test_occlusion_bad_window_is_invalid_input(small, options):
    with pytest.raises(cnnlens.InvalidInputError):
        cnnlens.explain(small, _x(), "occlusion", **options)


def test_occlusion_good_windows(small):
    x = _x()
    a = cnnlens.explain(small, x, "occlusion", window=8, stride=4).maps
    b = cnnlens.explain(small, x, "occlusion", window=(8, 8), stride=[4, 4]).maps
    c = cnnlens.explain(small, x, "occlusion", window=np.int64(8), stride=np.array([4, 4])).maps
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------- metrics on bad input


GOOD_MAPS = np.random.default_rng(1).random((2, 8, 8))
GOOD_BOXES = np.array([[0, 0, 4, 4], [2, 2, 6, 6]], dtype=float)


@pytest.mark.parametrize("maps,boxes", [
    (np.zeros((8, 8)), GOOD_BOXES[:1]),                 # one map without a batch axis
    (np.zeros((2, 1, 1, 8, 8)), GOOD_BOXES),            # 5-D
    (np.zeros((0, 8, 8)), np.zeros((0, 4))),            # empty
    (np.zeros((2, 0, 8)), GOOD_BOXES),                  # empty image
    ([], []),
    (GOOD_MAPS, GOOD_BOXES[:1]),                        # one box for two maps
    (GOOD_MAPS, np.zeros((2, 3))),                      # boxes of 3
    (GOOD_MAPS, np.zeros((2, 4, 1))),
    ("maps", GOOD_BOXES), (GOOD_MAPS, "boxes"),
    ([["a", "b"], ["c", "d"]], GOOD_BOXES),
    (GOOD_MAPS, [[0, 0, "x", 4], [0, 0, 4, 4]]),
    (GOOD_MAPS, np.array([[0, 0, np.nan, 4], [0, 0, 4, 4]])),
    (None, GOOD_BOXES), (GOOD_MAPS, None),
    (GOOD_MAPS, [[0, 0, 4], [0, 0, 4, 4]]),             # ragged
])
def test_pointing_game_bad_input(maps, boxes):
    with pytest.raises(cnnlens.InvalidInputError):
        cnnlens.metrics.pointing_game(maps, boxes)


def test_pointing_game_good_input():
    maps = np.zeros((2, 8, 8))
    maps[0, 1, 1] = 1.0  # inside box 0
    maps[1, 7, 7] = 1.0  # outside box 1 (and outside its tolerance)
    assert cnnlens.metrics.pointing_game(maps, GOOD_BOXES, tolerance=0.0) == 0.5
    assert cnnlens.metrics.pointing_game(maps[:, None].repeat(3, axis=1), GOOD_BOXES, tolerance=0.0) == 0.5


@pytest.mark.parametrize("a,b", [
    (np.zeros(4), np.zeros(5)),
    (np.zeros((2, 3)), np.zeros((3, 3))),
    (np.array([]), np.array([])),
    ([], []),
    ("abc", "abd"), ("abc", np.zeros(3)), (np.zeros(3), ["a", "b", "c"]),
    (np.array([1.0, np.nan, 2.0]), np.arange(3.0)),
    (np.arange(3.0), np.array([1.0, np.inf, 2.0])),
    (None, np.zeros(1)),
    ([[1, 2], [3]], [1, 2, 3]),
    ({"a": 1}, {"a": 1}),
])
def test_spearman_bad_input(a, b):
    with pytest.raises(cnnlens.InvalidInputError):
        cnnlens.metrics.spearman(a, b)


def test_spearman_good_input():
    rng = np.random.default_rng(2)
    a = rng.random((4, 5))
    assert cnnlens.metrics.spearman(a, a) == pytest.approx(1.0)
    assert cnnlens.metrics.spearman(a, -a) == pytest.approx(-1.0)
    assert cnnlens.metrics.spearman(a, a.reshape(-1) ** 3) == pytest.approx(1.0)
    assert cnnlens.metrics.spearman([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


# ---------------------------------------------------------------- load(backend, device=...) keeps output=


class AuxFirst(nn.Module):
    """Returns (aux, logits): aux (N, 2) first, the class scores (N, 3) second."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.aux = nn.Linear(4, 2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.relu(self.conv(x))
        pooled = h.mean(dim=(2, 3))
        return self.aux(pooled), self.fc(pooled)


def aux_first():
    torch.manual_seed(0)
    return AuxFirst().eval()


def test_torch_reload_keeps_the_output_choice():
    model, x = aux_first(), _x(2)
    with torch.no_grad():
        aux, logits = model(torch.from_numpy(x))
    b = cnnlens.load(model, output=1)
    again = cnnlens.load(b, device="cpu")
    for backend in (b, again):
        exp = cnnlens.explain(backend, x, "saliency")
        np.testing.assert_allclose(exp.logits, logits.numpy(), rtol=1e-6, atol=1e-6)
        assert exp.logits.shape == (2, 3)
    same = cnnlens.explain(b, x, "gradcam").maps
    np.testing.assert_allclose(cnnlens.explain(again, x, "gradcam").maps, same, rtol=1e-6, atol=1e-7)
    # an explicit choice still wins
    first = cnnlens.load(b, device="cpu", output=0)
    np.testing.assert_allclose(cnnlens.explain(first, x, "saliency").logits, aux.numpy(), rtol=1e-6, atol=1e-6)


def test_torch_reload_keeps_a_dict_key():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = aux_first()

        def forward(self, x):
            aux, logits = self.inner(x)
            return {"aux": aux, "scores": logits}

    model, x = Named().eval(), _x(1)
    b = cnnlens.load(model, output="scores")
    again = cnnlens.load(b, device="cpu")
    assert cnnlens.explain(again, x, "saliency").logits.shape == (1, 3)


def two_output_onnx() -> onnx.ModelProto:
    """input (N, 3, 16, 16) -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm "aux" (N, 2) and Gemm "scores" (N, 3)."""
    rng = np.random.default_rng(3)
    w = lambda *s: (0.5 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(w(4, 3, 3, 3), "conv.weight"), numpy_helper.from_array(w(4), "conv.bias"),
             numpy_helper.from_array(w(2, 4), "aux.weight"), numpy_helper.from_array(w(2), "aux.bias"),
             numpy_helper.from_array(w(3, 4), "fc.weight"), numpy_helper.from_array(w(3), "fc.bias")]
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["c"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "aux.weight", "aux.bias"], ["aux"], name="aux_gemm", transB=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["scores"], name="fc_gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "two_outputs", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("choice", [1, "scores"])
def test_onnx_reload_keeps_the_output_choice(tmp_path, choice):
    import onnxruntime as ort

    model = two_output_onnx()
    path = str(tmp_path / "two.onnx")
    onnx.save(model, path)
    x = _x(2, size=16)
    aux, scores = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["aux", "scores"], {"input": x})
    b = cnnlens.load(path, output=choice)
    again = cnnlens.load(b, device="cpu")
    for backend in (b, again):
        exp = cnnlens.explain(backend, x, "saliency")
        assert exp.logits.shape == (2, 3)
        np.testing.assert_allclose(exp.logits, scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(exp.target, scores.argmax(axis=1))
    np.testing.assert_allclose(cnnlens.explain(again, x, "gradcam").maps, cnnlens.explain(b, x, "gradcam").maps,
                               rtol=1e-6, atol=1e-7)
    first = cnnlens.load(b, device="cpu", output="aux")
    np.testing.assert_allclose(cnnlens.explain(first, x, "saliency").logits, aux, rtol=1e-5, atol=1e-6)
