"""``cnnlens export-explainer`` end to end: a torch module named module:attr and an ONNX file, methods and their
options from the command line, the maps it writes against cnnlens.explain, the web page, and errors as one line
with exit status 2 and no file left behind."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

import cnnlens
from cnnlens.cli import main
from tests.helpers import module_workdir

SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    def build():
        torch.manual_seed(0)
        return Small()
''')


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    yield from module_workdir(tmp_path, monkeypatch, "explainer_small", SOURCE, images=("one",))


def _run(path, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))


def test_a_module_becomes_an_explainer_file(workdir, capsys):
    assert main(["export-explainer", "explainer_small:build", "-m", "gradcam,integrated_gradients", "-m", "saliency",
                 "--steps", "5", "--size", "24", "24", "--layer", "conv1", "-o", "x.onnx"]) == 0
    printed = capsys.readouterr().out
    assert "map_gradcam" in printed and "map_integrated_gradients" in printed and "map_saliency" in printed
    import explainer_small

    model = explainer_small.build()
    x = np.random.default_rng(0).standard_normal((3, 3, 24, 24)).astype(np.float32)
    got = _run("x.onnx", x)
    for method, options in (("gradcam", {"layer": "conv1"}), ("integrated_gradients", {"steps": 5}), ("saliency", {})):
        want = cnnlens.explain(model, x, method, **options).maps
        assert np.abs(got[f"map_{method}"] - want).max() <= 1e-4 * np.abs(want).max(), method


def test_normalized_maps_target_input_and_the_page(workdir, capsys):
    assert main(["export-explainer", "explainer_small:build", "--size", "24", "24", "-o", "model.onnx", "-m",
                 "feature_maps"]) == 0
    capsys.readouterr()
    assert main(["export-explainer", "model.onnx", "-m", "gradcam,guided_backprop", "--normalize", "--target",
                 "input", "-o", "x.onnx", "--web", "page", "--mean", "0.5", "--std", "0.25", "--ort",
                 "https://example.org/ort.js"]) == 0
    assert "web page: page" in capsys.readouterr().out
    session = ort.InferenceSession("x.onnx", providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input", "target"]
    html = open(os.path.join("page", "index.html"), encoding="utf-8").read()
    config = json.loads(html.split('id="cnnlens-config">', 1)[1].split("</script>", 1)[0])
    assert config["mean"] == [0.5] and config["std"] == [0.25] and config["target"] == "input"
    assert config["normalized"] is True and config["size"] == [24, 24] and config["layout"] == "NCHW"
    assert '<script src="https://example.org/ort.js">' in html
    assert os.path.getsize(os.path.join("page", "explainer.onnx")) == os.path.getsize("x.onnx")


@pytest.mark.parametrize("argv, message", [
    (["-m", "smoothgrad"], "smoothgrad cannot be written into an explainer file"),
    (["-m", "gradcam", "--steps", "3"], "option 'steps' does not apply to gradcam: it is an option of integrated_gradients"),
    (["-m", "gradcam", "--labels", "l.txt"], "--labels and --ort are for the web page"),
    (["-m", "gradcam", "--target", "weights", "--web", "page"], "the web page explains classes"),
])
def test_errors_are_one_line_and_leave_no_file(workdir, capsys, argv, message):
    status = main(["export-explainer", "explainer_small:build", "--size", "24", "24", "-o", "x.onnx"] + argv)
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error:") and message in err and "\n" not in err
    if "--web" not in argv:
        assert not os.path.exists("x.onnx")
