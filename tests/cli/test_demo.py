"""`cnnlens demo` end to end, on a tiny configuration (the real one trains for minutes)."""

import json
import os

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens.adapters import synthetic
from cnnlens.adapters.demo import DemoConfig, run_demo
from cnnlens.adapters.demo_segmentation import SegmentationConfig, build_segmenter, square_masks
from cnnlens.adapters.images import load_image
from cnnlens.core.methods import LAYER_MAP, METHODS

TINY = DemoConfig(train_images=240, epochs=1, held_out=12, pointing_images=3, report_images=(1, 1),
                  smoothgrad_samples=2, occlusion=(16, 8), deletion_steps=4, randomisation_images=2,
                  randomisation_steps=2, segmentation=SegmentationConfig(train_images=120, epochs=4, explained=2))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    return out, run_demo(out, config=TINY)


def test_writes_everything_the_issue_names(demo):
    out, summary = demo
    for name in ("report.html", "summary.json", "model.onnx", "model.pt", "methods.png", "gradcam_layers.png",
                 "gradients_saliency.png", "gradients_guided_backprop.png", "roi.png", "filters.png",
                 "feature_maps.png", "inputs/positive_00.png", "inputs/negative_00.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "summary.json")) as handle:
        written = json.load(handle)
    assert written == json.loads(json.dumps(summary))
    assert set(written["pointing_game"]) == {m for m, spec in METHODS.items() if spec.kind != LAYER_MAP}
    assert set(written["seconds"]) == set(written["pointing_game"]) | {"feature_maps"}
    assert all(0 <= v <= 1 for v in written["pointing_game"].values()) and 0 <= written["accuracy"] <= 1
    assert set(written["onnx"]["pointing_game"]) == set(written["pointing_game"])  # every method on the export too
    differences = written["onnx"]["difference_to_torch"]
    assert set(differences) == set(written["seconds"])
    for method, difference in differences.items():  # the export's maps are the module's, to float rounding
        assert difference <= 1e-3, (method, difference)


def test_summary_and_report_carry_the_sanity_numbers(demo):
    out, summary = demo
    torch_sanity, onnx_sanity = summary["sanity"]["torch"], summary["sanity"]["onnx"]
    assert set(torch_sanity) == set(summary["pointing_game"]) == set(onnx_sanity)
    for entry in list(torch_sanity.values()) + list(onnx_sanity.values()):
        assert 0 <= entry["deletion_auc"] <= 1 and 0 <= entry["insertion_auc"] <= 1
        steps = entry["randomisation"]
        assert len(steps) == TINY.randomisation_steps and steps[-1]["layer"] in ("features.conv0", "/features/conv0/Conv")
        assert steps[0]["layer"] in ("classifier", "/classifier/Gemm")  # top layer first
    page = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "deletion AUC" in page and "insertion AUC" in page and "Spearman" in page
    gradcam = torch_sanity["gradcam"]
    assert f"{gradcam['deletion_auc']:.3f}" in page


def test_inputs_are_the_held_out_images(demo):
    out, _ = demo
    held = synthetic.make_shapes(TINY.held_out, size=TINY.size, seed=TINY.seed + 1000)
    first_positive = held.images[np.flatnonzero(held.labels == 1)[0]]
    first_negative = held.images[np.flatnonzero(held.labels == 0)[0]]
    np.testing.assert_array_equal(load_image(os.path.join(out, "inputs/positive_00.png")), first_positive)
    np.testing.assert_array_equal(load_image(os.path.join(out, "inputs/negative_00.png")), first_negative)


def test_exports_match_the_trained_weights(demo):
    out, summary = demo
    from cnnlens.adapters import demo_model

    model = demo_model.build_model(num_classes=2)
    model.load_state_dict(torch.load(os.path.join(out, "model_state.pt"), weights_only=True))
    x = synthetic.normalize(synthetic.make_shapes(4, size=TINY.size, seed=5).images)
    reference = cnnlens.explain(model, x, "occlusion", window=16, stride=8)
    for exported in ("model.onnx", "model.pt"):
        exp = cnnlens.explain(os.path.join(out, exported), x, "occlusion", window=16, stride=8)
        np.testing.assert_allclose(exp.logits, reference.logits, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(exp.maps, reference.maps, rtol=1e-3, atol=1e-5 * np.abs(reference.maps).max())


def test_rerun_uses_the_cached_model(demo):
    out, summary = demo
    again = run_demo(out, config=TINY)
    assert again["training_seconds"] == 0 and again["accuracy"] == summary["accuracy"]
    assert again["pointing_game"] == summary["pointing_game"]


def test_cli_demo_subcommand(tmp_path, monkeypatch, capsys):
    """`cnnlens demo --quick --out DIR` runs the demo (here with the tiny configuration)."""
    from cnnlens.adapters import demo as demo_module
    from cnnlens.cli import main

    monkeypatch.setattr(demo_module, "QUICK", TINY)
    out = tmp_path / "cli-demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out / "summary.json") as handle:
        summary = json.load(handle)
    for method, score in summary["pointing_game"].items():
        line = next(l for l in printed.splitlines() if l.startswith(method + " ") and " torch " in l)
        assert f"{score:.2f}" in line
    assert "report.html" in printed


def test_the_demo_exports_its_explainer_and_its_page(demo):
    """One ONNX file returning the scores and the maps of cnnlens.explain, and the page that runs it."""
    out, summary = demo
    explainer = summary["explainer"]
    assert os.path.getsize(os.path.join(out, "explainer", "explained.onnx")) > 0
    for name in ("index.html", "explainer.onnx", "preprocess.js", "explainer-page.js"):
        assert os.path.getsize(os.path.join(out, "explainer", "web", name)) > 0, name
    assert set(explainer["difference_to_explain"]) == set(explainer["methods"])
    for method, difference in explainer["difference_to_explain"].items():
        assert difference <= 1e-5, (method, difference)


def test_the_segmentation_case_explains_the_square_class_on_torch_and_onnx(demo):
    """The segmenter over the DenseNet's features: its Grad-CAM of the square class over its predicted
    region is the same map on the ONNX export, the numbers reach summary.json and the report."""
    out, summary = demo
    seg = summary["segmentation"]
    assert seg["images"] == 2 and seg["layer"] == "head.2" and 0 <= seg["iou"] <= 1
    assert seg["onnx_difference_to_torch"] <= 1e-4 and 0 <= seg["pointing_game"] <= 1
    assert os.path.getsize(os.path.join(out, "segmenter.onnx")) > 0
    page = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "Segmentation: the square class over its predicted region" in page
    assert "Grad-CAM, ONNX" in page and "the region: " in page
    assert seg["region"] in ("the pixels it predicts as square",
                             "the true square (the segmenter marks no square pixel on these images)")


def test_square_masks_and_the_segmenter_shape():
    data = synthetic.make_shapes(6, size=32, seed=4)
    masks = square_masks(data)
    for i in range(len(data)):
        if data.labels[i]:
            top, left, bottom, right = data.boxes[i]
            assert masks[i].sum() == (bottom - top) * (right - left) and masks[i, top:bottom, left:right].all()
        else:
            assert not masks[i].any()
    from cnnlens.adapters.demo_model import build_model

    segmenter = build_segmenter(build_model(seed=0).features).eval()
    with torch.no_grad():
        assert segmenter(torch.zeros(2, 3, 32, 32)).shape == (2, 2, 32, 32)
