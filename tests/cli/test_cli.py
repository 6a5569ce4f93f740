"""The cnnlens command end to end on a small model: every subcommand, and the error path."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import cnnlens
from cnnlens.adapters import images
from cnnlens.cli import main
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
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.relu(self.conv2(self.relu(self.conv1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    def build():
        torch.manual_seed(0)
        return Small()

    model = build()
''')


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    yield from module_workdir(tmp_path, monkeypatch, "smallnet", MODEL_SOURCE, images=("one", "two"))


def _model():
    import smallnet

    return smallnet.build()


def _inputs(paths, size=(32, 32)):
    return images.prepare(paths, size)[0]


def test_layers_prints_a_table(workdir, capsys):
    assert main(["layers", "smallnet:build", "--input-shape", "3", "32", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "name", "kind", "output", "shape", "as", "maps", "(CAMs)"]
    assert [line.split()[1:4] for line in lines[1:]] == [
        ["conv1", "Conv2d", "Nx6x32x32"], ["relu", "ReLU", "Nx8x16x16"],
        ["conv2", "Conv2d", "Nx8x16x16"], ["fc", "Linear", "Nx3"]]
    assert [line.split()[4:] for line in lines[1:]] == [["map", "32x32"], ["map", "16x16"], ["map", "16x16"], []]


def test_explain_writes_pngs_and_maps_equal_to_the_api(workdir, capsys):
    code = main(["explain", "smallnet:model", "one.png", "two.png", "-m", "gradcam,occlusion", "-m", "saliency",
                 "--size", "32", "32", "--out", "out", "--save-maps", "--window", "8", "--stride", "4"])
    assert code == 0
    written = sorted(os.listdir("out"))
    assert written == sorted(f"{s}_{m}.{e}" for s in ("one", "two") for m in ("gradcam", "occlusion", "saliency")
                             for e in ("png", "npy"))
    x = _inputs(["one.png", "two.png"])
    for method, options in [("gradcam", {}), ("occlusion", {"window": 8, "stride": 4}), ("saliency", {})]:
        exp = cnnlens.explain(_model(), x, method, **options)
        for i, stem in enumerate(("one", "two")):
            np.testing.assert_allclose(np.load(f"out/{stem}_{method}.npy"), exp.maps[i], rtol=1e-6, atol=1e-7)
            with Image.open(f"out/{stem}_{method}.png") as png:
                assert png.size[0] > 100
    assert "wrote 12 files to out" in capsys.readouterr().out


def test_explain_target_and_layer(workdir):
    assert main(["explain", "smallnet:build", "one.png", "-m", "gradcam", "-l", "conv1", "-t", "2",
                 "--size", "32", "32", "--out", "o", "--save-maps"]) == 0
    exp = cnnlens.explain(_model(), _inputs(["one.png"]), "gradcam", layer="conv1", target=2)
    np.testing.assert_allclose(np.load("o/one_gradcam.npy"), exp.maps[0], rtol=1e-6, atol=1e-7)


def test_a_flag_goes_to_the_chosen_methods_that_take_it(workdir):
    """-l and --steps with gradcam and integrated_gradients: the layer is gradcam's, the steps IG's."""
    assert main(["explain", "smallnet:build", "one.png", "-m", "gradcam,integrated_gradients", "-l", "conv1",
                 "--steps", "3", "--size", "32", "32", "--out", "o", "--save-maps"]) == 0
    x = _inputs(["one.png"])
    np.testing.assert_allclose(np.load("o/one_gradcam.npy"), cnnlens.explain(_model(), x, "gradcam", layer="conv1").maps[0],
                               rtol=1e-6, atol=1e-7)
    want = cnnlens.explain(_model(), x, "integrated_gradients", steps=3).maps[0]
    np.testing.assert_allclose(np.load("o/one_integrated_gradients.npy"), want, rtol=1e-5, atol=1e-7)


def test_compare_torch_and_onnx(workdir, capsys):
    from cnnlens.adapters.export import to_onnx

    to_onnx(_model(), "small.onnx", (3, 32, 32), exporter="legacy")
    assert main(["compare", "smallnet:build", "small.onnx", "one.png", "two.png", "-m", "occlusion,feature_maps",
                 "-l", "conv2", "--window", "8", "--stride", "4"]) == 0
    out = capsys.readouterr().out
    assert "occlusion" in out and "feature_maps at 'conv2' / '/conv2/Conv'" in out
    assert out.count("agree") == 4
    worst = float(out.strip().splitlines()[-1].split(":")[1])
    assert worst < 1e-4


def test_report_writes_one_self_contained_file(workdir, capsys):
    assert main(["report", "smallnet:build", "one.png", "two.png", "--size", "32", "32", "--out", "r.html",
                 "-m", "gradcam,occlusion"]) == 0
    page = (workdir / "r.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 * 3
    assert "src=\"http" not in page and "one.png" in page and "Layer browser" in page


@pytest.mark.parametrize("argv,message", [
    (["explain", "smallnet:build", "one.png", "-m", "gradcm", "--size", "32", "32"], "unknown method 'gradcm'"),
    (["explain", "missing.onnx", "one.png"], "no such model file"),
    (["explain", "smallnet:nothing", "one.png"], "has no attribute"),
    (["explain", "nosuchmodule:build", "one.png"], "cannot import"),
    (["explain", "smallnet:build", "missing.png", "--size", "32", "32"], "missing.png"),
    (["explain", "smallnet:build", "one.png", "-m", "gradcam", "-l", "conv9", "--size", "32", "32"], "conv1"),
    (["explain", "smallnet:build", "one.png", "-m", "saliency", "-t", "7", "--size", "32", "32"], "out of range"),
    (["explain", "smallnet:build", "one.png", "-m", "occlusion", "--window", "99", "--size", "32", "32"],
     "larger than the image"),
    # a flag that applies to none of the chosen methods is refused, never dropped
    (["explain", "smallnet:build", "one.png", "-m", "saliency", "-l", "conv1", "--size", "32", "32"],
     "--layer does not apply to saliency: it explains the input. Layers are for gradcam"),
    (["explain", "smallnet:build", "one.png", "-m", "gradcam,occlusion", "--steps", "4", "--size", "32", "32"],
     "--steps does not apply to gradcam, occlusion: it is an option of integrated_gradients"),
    (["sanity", "smallnet:build", "one.png", "-m", "saliency", "-l", "conv1", "--size", "32", "32"],
     "--layer does not apply to saliency"),
    (["compare", "smallnet:build", "smallnet:build", "one.png", "-m", "cam", "--masks", "9", "--size", "32", "32"],
     "--masks does not apply to cam: it is an option of rise"),
])
def test_errors_are_one_line_and_exit_2(workdir, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists("cnnlens-out") or not os.listdir("cnnlens-out")


def test_console_script_and_python_m(workdir):
    for command in (["cnnlens"], [sys.executable, "-m", "cnnlens"]):
        if command == ["cnnlens"] and not _on_path("cnnlens"):
            continue
        done = subprocess.run(command + ["explain", "smallnet:build", "one.png", "-m", "nope"],
                              capture_output=True, text=True, cwd=workdir)
        assert done.returncode == 2 and done.stderr.startswith("error: unknown method")
        done = subprocess.run(command + ["layers", "smallnet:build", "--input-shape", "3", "32", "32"],
                              capture_output=True, text=True, cwd=workdir)
        assert done.returncode == 0 and "conv2" in done.stdout
        assert "\r" not in done.stderr  # no progress bar when output is not a terminal


def _on_path(name):
    import shutil

    return shutil.which(name) is not None
