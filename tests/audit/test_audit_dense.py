"""The audit on dense outputs: a segmenter's class over its predicted region and a raw detection
head's class at each image's manifest box, each row's map equal to ``cnnlens.explain`` with the
same ``cnnlens.targets`` target on the same preloaded images; an image the target cannot be made for
(its class predicted nowhere, no box) is that image's error, the rest are explained; the CLI's
``--target-class`` / ``--target-boxes`` / ``--target-iou``."""

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

import cnnlens  # noqa: E402
from cnnlens.adapters import images  # noqa: E402
from cnnlens.audit import audit  # noqa: E402
from cnnlens.cli import main  # noqa: E402
from cnnlens.core.mapstats import small_maps  # noqa: E402
from cnnlens.targets import detection, segmentation  # noqa: E402
from tests.audit_helpers import MEAN, STD, read_results  # noqa: E402
from tests.methods.test_targets_detection import TinyYolo  # noqa: E402

SIZE = (32, 32)
KW = dict(size=SIZE, mean=MEAN, std=STD, batch_size=4, shard_size=5, map_size=8)


class SignSegmenter(torch.nn.Module):
    """(N, 2, H, W): a small conv body, and class 1 wherever the image is darker than its mean
    grey (so a bright image has no class-1 pixel)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x):
        shade = x.mean(1, keepdim=True) * 20
        return self.head(self.body(x)) + torch.cat([shade, -shade], dim=1)


def _write(folder, count, bright=()):
    from PIL import Image

    rng = np.random.default_rng(3)
    names = []
    for k in range(count):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        if k in bright:
            pixels[:] = 250
        Image.fromarray(pixels).save(folder / f"i{k}.png")
        names.append(f"i{k}.png")
    return names


def test_a_segmenters_class_over_its_region_image_by_image(tmp_path):
    names = _write(tmp_path, 6, bright=(4,))
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{n},{k % 2}\n" for k, n in enumerate(names)))
    model = SignSegmenter().eval()
    result = audit(model, str(tmp_path / "m.csv"), str(tmp_path / "out"), ["gradcam", "saliency"], target=1,
                   dense="segmentation", layer="body.1", **KW)
    table, maps = read_results(str(tmp_path / "out"))
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == [n for n in names if n != "i4.png" for _ in range(2)]
    assert all(r["target"] == 1 and r["predicted"] is None and r["probability"] is None for r in rows)
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert "i4.png" in errors and "predicted nowhere" in errors
    x, _ = images.prepare([str(tmp_path / n) for n in names if n != "i4.png"], SIZE, MEAN, STD)
    for method, got in (("gradcam", maps[0::2]), ("saliency", maps[1::2])):
        ref = cnnlens.explain(model, x, method, target=segmentation(1), layer="body.1" if method == "gradcam" else None)
        np.testing.assert_allclose(got, small_maps(ref.maps, 8), atol=1e-6)
    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert summary["dense"] == "segmentation" and result.summary["explained"] == 5


def test_the_label_as_each_images_class(tmp_path):
    names = _write(tmp_path, 4)
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{n},{k % 2}\n" for k, n in enumerate(names)))
    model = SignSegmenter().eval()
    audit(model, str(tmp_path / "m.csv"), str(tmp_path / "out"), ["saliency"], target="label",
          dense="segmentation", **KW)
    table, maps = read_results(str(tmp_path / "out"))
    x, _ = images.prepare([str(tmp_path / n) for n in names], SIZE, MEAN, STD)
    for k, r in enumerate(table.to_pylist()):
        assert r["target"] == k % 2
        ref = cnnlens.explain(model, x[k:k + 1], "saliency", target=segmentation(k % 2)).maps
        np.testing.assert_allclose(maps[k], small_maps(ref, 8)[0], atol=1e-6)


def test_a_detection_at_each_images_box_and_the_command_line(tmp_path, capsys):
    names = _write(tmp_path, 5)
    boxes = {0: (6, 6, 18, 18), 1: (2, 10, 20, 30), 2: (10, 4, 28, 16), 3: (8, 8, 24, 24)}  # top, left, bottom, right
    lines = [f"{n},0,{','.join(map(str, boxes[k]))}" if k in boxes else f"{n},0,,,," for k, n in enumerate(names)]
    (tmp_path / "m.csv").write_text("path,label,top,left,bottom,right\n" + "\n".join(lines) + "\n")
    model = TinyYolo().eval()
    flat = ["--size", "32", "32", "--mean", *map(str, MEAN), "--std", *map(str, STD), "--map-size", "8"]
    assert main(["audit", "tests.methods.test_targets_detection:TinyYolo", str(tmp_path / "m.csv"), "--out",
                 str(tmp_path / "out"), "-m", "saliency", "--target-class", "1", "--target-boxes", "--target-iou",
                 "0.2", *flat]) == 0
    table, maps = read_results(str(tmp_path / "out"))
    assert [r["path"] for r in table.to_pylist()] == names[:4]  # i4 has no box: its error
    assert "no box" in (tmp_path / "out" / "errors.csv").read_text()
    x, _ = images.prepare([str(tmp_path / n) for n in names[:4]], SIZE, MEAN, STD)
    for k in range(4):
        top, left, bottom, right = boxes[k]
        ref = cnnlens.explain(model, x[k:k + 1], "saliency", target=detection((left, top, right, bottom), 1, iou=0.2))
        np.testing.assert_allclose(maps[k], small_maps(ref.maps, 8)[0], atol=1e-6)
    capsys.readouterr()
    common = ["audit", "tests.methods.test_targets_detection:TinyYolo", str(tmp_path / "m.csv"), *flat]
    assert main(common + ["--out", str(tmp_path / "b"), "--target", "1", "--target-class", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "c"), "--target-boxes"]) == 2
    assert "--target-boxes goes with --target-class" in capsys.readouterr().err
    with pytest.raises(cnnlens.InvalidInputError, match="explains one class per image"):
        audit(model, str(tmp_path / "m.csv"), str(tmp_path / "d"), ["saliency"], dense="segmentation", **KW)
