"""The randomisation test, deletion / insertion through ``cnnlens.metrics``, and ``cnnlens sanity``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens import metrics
from cnnlens.adapters.export import to_onnx
from cnnlens.cli import main
from cnnlens.core import faithfulness as faith
from cnnlens.core.metrics import spearman
from cnnlens.core.sanity import cascade_points
from tests.helpers import images

X = images(3, 3, 12, 12, seed=31)


class Linear(nn.Module):
    """y = W x + b: the saliency map of class c is W[c] itself, whatever the image."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 12 * 12, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        a = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(a.mean((2, 3)))


def make(kind, seed=7):
    torch.manual_seed(seed)
    return kind().eval()


def test_cascade_points():
    assert cascade_points(5, None) == [1, 2, 3, 4, 5]
    assert cascade_points(5, 9) == [1, 2, 3, 4, 5]
    assert cascade_points(9, 3) == [1, 5, 9]
    assert cascade_points(9, 1) == [9]
    with pytest.raises(cnnlens.InvalidInputError, match="steps"):
        cascade_points(5, 0)


def test_randomisation_of_a_linear_model_gives_the_known_correlation():
    """Saliency of a linear model is its weight row, so the test's answer can be computed from the
    weights alone: Spearman of |W[c]| and |W'[c]|, and the SSIM of the two rows as images."""
    model = make(Linear)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = metrics.randomisation_test(model, X, ["saliency"], target=2)
    assert [step["layer"] for step in result["saliency"]] == ["fc"]
    new_weight = cnnlens.load(model).randomised(["fc"], seed=0).model.fc.weight.detach().numpy()
    old_row, new_row = model.fc.weight.detach().numpy()[2], new_weight[2]
    assert not np.allclose(old_row, new_row)
    # maps are compared as importance: |g| summed over the channels
    a = np.abs(old_row.reshape(3, 12, 12)).sum(0)
    b = np.abs(new_row.reshape(3, 12, 12)).sum(0)
    step = result["saliency"][0]
    assert step["spearman"] == pytest.approx(spearman(a, b), abs=1e-9)  # the same for every image
    expected_ssim = faith.ssim((a / a.max())[None], (b / b.max())[None])[0]
    assert step["ssim"] == pytest.approx(expected_ssim, abs=1e-6)  # float32 maps
    # the user's model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_cascade_goes_from_the_top_and_grows():
    model = make(Net)
    result = metrics.randomisation_test(model, X, ["saliency", "gradcam"], seed=3)
    for method in ("saliency", "gradcam"):
        assert [s["layer"] for s in result[method]] == ["fc", "conv2", "conv1"]
        assert [s["randomised"] for s in result[method]] == [1, 2, 3]
    # each step is Spearman / SSIM against exactly the cascade's randomised copy
    backend = cnnlens.load(model)
    original = cnnlens.explain(backend, X, "saliency")
    copy = backend.randomised(["fc", "conv2"], seed=3)
    new = cnnlens.explain(copy, X, "saliency", target=original.target)
    a, b = faith.importance(original.maps), faith.importance(new.maps)
    expected = np.mean([spearman(u, v) for u, v in zip(a, b)])
    assert result["saliency"][1]["spearman"] == pytest.approx(expected, abs=1e-9)


def test_gradcam_decorrelates_when_the_head_is_randomised():
    """Grad-CAM's weights are the head's gradient: a new head gives unrelated channel weights."""
    model = make(Net)
    result = metrics.randomisation_test(model, X, ["gradcam"])
    assert result["gradcam"][0]["spearman"] < 0.9


def test_onnx_randomisation_leaves_the_file_alone(tmp_path):
    model = make(Net)
    path = to_onnx(model, str(tmp_path / "net.onnx"), input_shape=(3, 12, 12), exporter="legacy")
    data = open(path, "rb").read()
    backend = cnnlens.load(path)
    result = metrics.randomisation_test(backend, X, ["occlusion", "cam"], options={"occlusion": {"window": 4}})
    assert [s["layer"] for s in result["cam"]] == backend.parameter_layers()[::-1]
    assert open(path, "rb").read() == data
    assert result["cam"][-1]["spearman"] < 0.99 and result["occlusion"][-1]["spearman"] < 0.99
    again = cnnlens.explain(backend, X, "occlusion", window=4)
    np.testing.assert_array_equal(again.maps, cnnlens.explain(cnnlens.load(path), X, "occlusion", window=4).maps)


def test_deletion_insertion_through_the_api_uses_the_explanations_target():
    model = make(Net)
    exp = cnnlens.explain(model, X, "gradcam", target=[1, 2, 3])
    curves = metrics.deletion_insertion(model, X, exp, steps=4)
    np.testing.assert_array_equal(curves["target"], [1, 2, 3])
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(X)).double(), 1).numpy()
    np.testing.assert_allclose(curves["deletion"][:, 0], probs[np.arange(3), [1, 2, 3]], rtol=1e-5)
    np.testing.assert_allclose(curves["insertion"][:, -1], probs[np.arange(3), [1, 2, 3]], rtol=1e-5)
    np.testing.assert_allclose(curves["deletion_auc"], faith.auc(curves["deletion"]))


def test_sanity_report_structure_and_values():
    model = make(Net)
    report = metrics.sanity(model, X, ["saliency", "gradcam"], steps=2, deletion_steps=4)
    assert list(report) == ["methods"] and list(report["methods"]) == ["saliency", "gradcam"]
    for method, entry in report["methods"].items():
        assert [s["layer"] for s in entry["randomisation"]] == ["fc", "conv1"]
        exp = cnnlens.explain(model, X, method)
        curves = metrics.deletion_insertion(model, X, exp, steps=4)
        assert entry["deletion_auc"] == pytest.approx(float(curves["deletion_auc"].mean()))
        assert entry["insertion_auc"] == pytest.approx(float(curves["insertion_auc"].mean()))
    with pytest.raises(cnnlens.InvalidInputError, match="feature_maps"):
        metrics.sanity(model, X, ["feature_maps"])


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sanitynet.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n"
        "    torch.manual_seed(7)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, 3))\n")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path


def test_cli_sanity_json(workdir, capsys):
    argv = ["sanity", "sanitynet:build", "a.png", "--size", "16", "16", "-m", "saliency,gradcam",
            "--deletion-steps", "4", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["methods"]) == ["saliency", "gradcam"]
    steps = report["methods"]["gradcam"]["randomisation"]
    assert [s["layer"] for s in steps] == ["4", "0"]  # top layer first
    assert set(steps[0]) == {"layer", "randomised", "spearman", "ssim"}
    assert 0 <= report["methods"]["saliency"]["deletion_auc"] <= 1


def test_cli_sanity_table(workdir, capsys):
    assert main(["sanity", "sanitynet:build", "a.png", "--size", "16", "16", "-m", "gradcam",
                 "--deletion-steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "deletion AUC" in out and "insertion AUC" in out and "randomisation" in out
    assert out.count("/") >= 2


# ---------------------------------------------------------------- pointing game on constructed maps


def test_pointing_game_on_constructed_maps():
    maps = np.zeros((4, 20, 20))
    maps[0, 5, 5] = 1.0     # inside box 0
    maps[1, 19, 19] = 1.0   # far outside box 1
    maps[2, 10, 13] = 1.0   # one pixel right of box 2 (cols 0..11 inclusive-exclusive 12): inside once grown
    maps[3] = 0.5           # a constant map: the first maximum, (0, 0), is inside box 3
    boxes = np.array([[2, 2, 8, 8], [0, 0, 5, 5], [8, 4, 12, 12], [0, 0, 3, 3]])
    hits = metrics.pointing_hits(maps, boxes, tolerance=0.0)
    np.testing.assert_array_equal(hits, [True, False, False, True])
    assert metrics.pointing_game(maps, boxes, tolerance=0.0) == 0.5
    # the paper's 15 px at 224 px grows a 20 px box by 1.34 px: the pixel one column right is in
    np.testing.assert_array_equal(metrics.pointing_hits(maps, boxes), [True, False, True, True])
    # a channel axis counts as the sum of |g|: a strong negative peak points too
    signed = np.zeros((1, 3, 20, 20))
    signed[0, 1, 6, 6] = -5.0
    signed[0, 0, 15, 15] = 1.0
    assert metrics.pointing_hits(signed, boxes[:1], tolerance=0.0).tolist() == [True]
