"""``cnnlens.audit`` end to end on the local engine: rows against ``cnnlens.explain`` on the same
images preloaded, boxes, labels and targets, errors, resuming, the CLI's exit codes."""

import csv
import json
import os

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("sklearn")

import cnnlens  # noqa: E402
from cnnlens.adapters import images  # noqa: E402
from cnnlens.audit import NothingExplained, audit  # noqa: E402
from cnnlens.cli import main  # noqa: E402
from cnnlens.core.errors import InvalidInputError  # noqa: E402
from cnnlens.core.mapstats import small_maps  # noqa: E402
from tests.audit_helpers import MEAN, STD, SmallNet, read_results, write_images  # noqa: E402

SIZE = (32, 32)
KW = dict(size=SIZE, mean=MEAN, std=STD, batch_size=4, shard_size=5, map_size=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("audit-data"))
    return root, write_images(root, count=12)


@pytest.fixture(scope="module")
def model():
    return SmallNet().eval()


@pytest.fixture(scope="module")
def reference(data, model, tmp_path_factory):
    root, paths = data
    out = str(tmp_path_factory.mktemp("audit") / "run")
    result = audit(model, root, out, ["gradcam", "saliency"], **KW)
    return out, result


def test_one_row_per_image_and_method_equal_to_explain_on_preloaded_images(data, model, reference):
    root, paths = data
    out, result = reference
    table, maps = read_results(out)
    rows = table.to_pylist()
    assert [(r["path"], r["method"]) for r in rows] == sorted((p, m) for p in paths for m in ("gradcam", "saliency"))
    x, _ = images.prepare([os.path.join(root, p) for p in paths], SIZE, MEAN, STD)
    logits = model(__import__("torch").from_numpy(x)).detach().numpy()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for method in ("gradcam", "saliency"):
        exp = cnnlens.explain(model, x, method)
        expected = small_maps(exp.maps, 8)
        mine = [k for k, r in enumerate(rows) if r["method"] == method]
        np.testing.assert_allclose(maps[mine], expected, atol=1e-6)
        for k, i in zip(mine, range(len(paths))):
            r = rows[k]
            assert r["label"] == (0 if paths[i].startswith("ant") else 1)
            assert r["label_name"] == paths[i].split("/")[0]
            assert r["predicted"] == r["target"] == int(logits[i].argmax()) == int(exp.target[i])
            assert r["probability"] == pytest.approx(probs[i].max(), rel=1e-5)
            assert r["energy_in_box"] is None and r["box_top"] is None
    assert result.summary["explained"] == 12 and result.summary["rows"] == 24 and result.summary["errors"] == 0
    assert all(v.max() == pytest.approx(1.0) for v in maps if v.any())


def test_shards_clusters_summary_and_report(reference):
    import pyarrow.parquet as pq

    out, result = reference
    assert sorted(os.listdir(os.path.join(out, "results"))) == [f"part-0000{k}.parquet" for k in range(3)]
    assert [pq.read_metadata(os.path.join(out, "results", f"part-0000{k}.parquet")).num_rows for k in range(3)] == [10, 10, 4]
    clusters = pq.read_table(os.path.join(out, "clusters.parquet")).to_pylist()
    table, _ = read_results(out)
    assert sorted((c["path"], c["method"], c["target"]) for c in clusters) == \
        sorted((r["path"], r["method"], r["target"]) for r in table.to_pylist())
    summary = json.load(open(os.path.join(out, "summary.json")))
    for method, classes in summary["clusters"].items():
        for target, info in classes.items():
            members = [c for c in clusters if c["method"] == method and c["target"] == int(target)]
            assert sum(info["sizes"]) == info["maps"] == len(members)
            assert sorted(info["sizes"], reverse=True) == info["sizes"]
            assert np.bincount([c["cluster"] for c in members]).tolist() == info["sizes"]
    names = {0: "ant", 1: "bee"}  # the folders' names, for the classes that have one
    examples = [e for g in result.groups for c in g.clusters for e in c.examples]
    assert examples and all(e.predicted_name == names.get(e.predicted) for e in examples)
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "gradcam, class" in html and html.count("data:image/jpeg;base64,") > 4
    assert list(csv.reader(open(os.path.join(out, "errors.csv")))) == [["path", "method", "error"]]


def test_manifest_boxes_follow_the_crop_and_energy_is_the_heat_inside(tmp_path, model):
    from PIL import Image

    rng = np.random.default_rng(5)
    rows = []
    for k in range(4):  # 64 x 96 images: halved to 32 x 48, 8 columns cropped off each side
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(tmp_path / f"p{k}.png")
        rows.append(f"p{k}.png,{k % 2},10,20,40,60" if k < 3 else f"p{k}.png,1,,,,")
    (tmp_path / "m.csv").write_text("path,label,top,left,bottom,right\n" + "\n".join(rows) + "\n")
    audit(model, str(tmp_path / "m.csv"), str(tmp_path / "out"), ["gradcam"], labels=["a", "b", "c"], **KW)
    table, _ = read_results(str(tmp_path / "out"))
    x, _ = images.prepare([str(tmp_path / f"p{k}.png") for k in range(4)], SIZE, MEAN, STD)
    heat = np.maximum(cnnlens.explain(model, x, "gradcam").maps, 0)
    for k, r in enumerate(table.to_pylist()):
        assert r["path"] == f"p{k}.png" and r["label_name"] == "ab"[k % 2] if k < 3 else r["label"] == 1
        if k == 3:
            assert r["energy_in_box"] is None and r["box_top"] is None
            continue
        assert (r["box_top"], r["box_left"], r["box_bottom"], r["box_right"]) == (5, 2, 20, 22)  # 10/2, 20/2-8, ...
        assert r["energy_in_box"] == pytest.approx(heat[k, 5:20, 2:22].sum() / heat[k].sum(), rel=1e-5)


def test_target_label_explains_the_label(data, model, tmp_path):
    root, paths = data
    audit(model, root, str(tmp_path / "out"), ["gradcam"], target="label", **KW)
    table, maps = read_results(str(tmp_path / "out"))
    rows = table.to_pylist()
    assert all(r["target"] == r["label"] for r in rows) and any(r["target"] != r["predicted"] for r in rows)
    x, _ = images.prepare([os.path.join(root, p) for p in paths], SIZE, MEAN, STD)
    labels = [r["label"] for r in rows]
    np.testing.assert_allclose(maps, small_maps(cnnlens.explain(model, x, "gradcam", target=labels).maps, 8), atol=1e-6)


def test_target_class_explains_that_class_on_every_image_as_explain_does(data, model, tmp_path, capsys):
    """``--target K`` means what it means for ``cnnlens explain``: class K on every image; ``--layer``
    is spelled as for every subcommand, one layer per audit."""
    root, paths = data
    assert main(["audit", "tests.audit_helpers:SmallNet", root, "--out", str(tmp_path / "out"), "-m", "gradcam",
                 "--target", "1", "--size", "32", "32", "--mean", *map(str, MEAN), "--std", *map(str, STD),
                 "--map-size", "8"]) == 0
    table, maps = read_results(str(tmp_path / "out"))
    assert {r["target"] for r in table.to_pylist()} == {1}
    x, _ = images.prepare([os.path.join(root, p) for p in sorted(paths)], SIZE, MEAN, STD)
    reference = cnnlens.explain(SmallNet(), x, "gradcam", target=1)
    np.testing.assert_allclose(maps, small_maps(reference.maps, 8), atol=1e-6)
    assert json.load(open(tmp_path / "out" / "summary.json"))["target"] == 1
    capsys.readouterr()
    assert main(["audit", "tests.audit_helpers:SmallNet", root, "--out", str(tmp_path / "two"), "-l", "features.0",
                 "-l", "features.2"]) == 2
    assert "--layer is given 2 times" in capsys.readouterr().err
    assert main(["audit", "tests.audit_helpers:SmallNet", root, "--out", str(tmp_path / "bad"), "--target", "banana"]) == 2
    assert "give predicted, label or a class index" in capsys.readouterr().err


def test_unreadable_images_are_listed_and_the_rest_explained(data, model, tmp_path):
    root, paths = data
    (tmp_path / "broken.png").write_bytes(b"not a png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "\n".join([os.path.join(root, paths[0]), "broken.png", "missing.png",
                                               os.path.join(root, paths[1])]) + "\n")
    code = main(["audit", "tests.audit_helpers:SmallNet", str(manifest), "--out", str(tmp_path / "out"), "--size", "32", "32",
                 "--map-size", "8", "--no-report"])
    assert code == 0
    errors = list(csv.DictReader(open(tmp_path / "out" / "errors.csv")))
    assert [e["path"] for e in errors] == ["broken.png", "missing.png"]
    assert "cannot read image file" in errors[0]["error"] and "does not exist" in errors[1]["error"]
    table, _ = read_results(str(tmp_path / "out"))
    assert table.column("path").to_pylist() == sorted([os.path.join(root, paths[0]), os.path.join(root, paths[1])])


def test_nothing_explained_is_one_error_line_and_exit_2(tmp_path, capsys, model):
    (tmp_path / "m.csv").write_text("path\nnope.png\nbroken.png\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(NothingExplained, match="none of the 2 images"):
        audit(model, str(tmp_path / "m.csv"), str(tmp_path / "a"), **KW)
    code = main(["audit", "tests.audit_helpers:SmallNet", str(tmp_path / "m.csv"), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: none of the 2 images")
    assert len(list(csv.reader(open(tmp_path / "b" / "errors.csv")))) == 3


def test_a_rerun_of_a_different_job_is_refused_and_overwrite_starts_again(data, model, tmp_path):
    root, _ = data
    out = str(tmp_path / "out")
    audit(model, root, out, ["gradcam"], **KW)
    with pytest.raises(InvalidInputError, match="different job.*methods.*--overwrite"):
        audit(model, root, out, ["saliency"], **KW)
    result = audit(model, root, out, ["saliency"], overwrite=True, **KW)
    assert result.summary["methods"] == ["saliency"] and result.summary["shards_resumed"] == 0
    assert set(read_results(out)[0].column("method").to_pylist()) == {"saliency"}


def test_feature_maps_and_unknown_methods_are_refused(data, model, tmp_path):
    root, _ = data
    with pytest.raises(InvalidInputError, match="feature_maps gives activations"):
        audit(model, root, str(tmp_path / "a"), ["feature_maps"], **KW)
    with pytest.raises(cnnlens.UnknownMethodError, match="gradcam"):
        audit(model, root, str(tmp_path / "b"), ["gradcan"], **KW)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_onnx_export_audits_to_the_same_maps(data, model, reference, tmp_path):
    pytest.importorskip("onnxruntime")
    from cnnlens.adapters.export import to_onnx

    root, _ = data
    path = str(tmp_path / "m.onnx")
    to_onnx(model, path, (3,) + SIZE)
    audit(path, root, str(tmp_path / "out"), ["gradcam", "saliency"], **KW)
    torch_table, torch_maps = read_results(reference[0])
    onnx_table, onnx_maps = read_results(str(tmp_path / "out"))
    loose = ["map", "probability", "border_share", "entropy", "layer"]  # floats to rounding; layer names per format
    assert onnx_table.drop_columns(loose).equals(torch_table.drop_columns(loose))
    np.testing.assert_allclose(onnx_table.column("probability").to_numpy(), torch_table.column("probability").to_numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(onnx_maps, torch_maps, atol=1e-5)


def test_target_label_without_a_label_is_that_images_error(data, model, tmp_path):
    root, paths = data
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + f"{os.path.join(root, paths[0])},1\n{os.path.join(root, paths[1])},\n")
    result = audit(model, str(manifest), str(tmp_path / "out"), ["gradcam"], target="label", **KW)
    errors = list(csv.DictReader(open(tmp_path / "out" / "errors.csv")))
    assert [e["path"] for e in errors] == [os.path.join(root, paths[1])] and "has no label" in errors[0]["error"]
    assert result.summary["explained"] == 1 and read_results(str(tmp_path / "out"))[0].column("target").to_pylist() == [1]


def test_a_model_that_is_not_a_classifier_is_told_so(data, tmp_path):
    import torch

    class Segmenter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x)  # (N, 2, H, W): no class scores

    root, _ = data
    with pytest.raises(cnnlens.ModelError, match=r"output has shape \(1, 2, 32, 32\); an audit explains classifiers"):
        audit(Segmenter().eval(), root, str(tmp_path / "out"), ["saliency"], **KW)
    assert not os.path.exists(tmp_path / "out" / "results")  # refused before any work


def test_lrp_audits_as_explain_maps_it_with_its_options(data, model, tmp_path):
    """SpRAy's original setting: LRP maps of a dataset, clustered; rows equal cnnlens.explain's with the
    composite asked for, and the composite is part of the job (a rerun with another is refused)."""
    root, paths = data
    out = str(tmp_path / "lrp")
    options = {"lrp": {"composite": "epsilon_gamma_box", "low": -2.0, "high": 2.0}}
    audit(model, root, out, ["lrp"], options=options, **KW)
    table, maps = read_results(out)
    x, _ = images.prepare([os.path.join(root, p) for p in paths], SIZE, MEAN, STD)
    exp = cnnlens.explain(model, x, "lrp", **options["lrp"])
    np.testing.assert_allclose(maps, small_maps(exp.maps, 8), atol=1e-6)
    with pytest.raises(InvalidInputError):
        audit(model, root, out, ["lrp"], options={"lrp": {"composite": "epsilon"}}, **KW)
