"""``cnnlens.targets.detection`` on a small YOLO-style model written for the tests (a raw head
(N, 4 + classes, anchors) with boxes as (cx, cy, w, h) in input pixels, YOLOv8's exported layout):
the anchors chosen against torchvision's own IoU, the maps against PyTorch autograd of the same
weighted sum, and the same maps from its ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.targets import detection
from tests.helpers import images, rel_err

CLASSES, STRIDE, SIDE = 3, 4, 32


class TinyYolo(nn.Module):
    """Two convolutions to a stride-4 grid, one 1x1 head: per cell a box (cx, cy from the cell and a
    sigmoid offset, w and h from an exponential) and sigmoid class scores; (N, 4 + 3, 64 anchors)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU(),
                                  nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.SiLU())
        self.head = nn.Conv2d(16, 4 + CLASSES, 1)
        side = SIDE // STRIDE
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys]).float().reshape(1, 2, -1))

    def forward(self, x):
        raw = self.head(self.body(x)).flatten(2)  # (N, 4 + C, anchors)
        centre = (self.grid + torch.sigmoid(raw[:, :2])) * STRIDE
        size = torch.exp(raw[:, 2:4].clamp(max=4)) * STRIDE * 2
        return torch.cat([centre, size, torch.sigmoid(raw[:, 4:])], dim=1)


X = images(2, 3, SIDE, SIDE, seed=3)
BOX = (6.0, 6.0, 18.0, 18.0)


def _chosen_by_torchvision(head: np.ndarray, iou: float) -> np.ndarray:
    from torchvision.ops import box_convert, box_iou

    boxes = box_convert(torch.from_numpy(head[:4].T.copy()), "cxcywh", "xyxy")
    return (box_iou(boxes, torch.tensor([BOX])).numpy()[:, 0] >= iou)


def test_the_anchors_near_the_box_weigh_the_class_and_the_maps_are_its_gradient():
    model = TinyYolo().eval()
    with torch.no_grad():
        heads = model(torch.from_numpy(X)).numpy()
    iou = 0.3
    exp = cnnlens.explain(model, X, "saliency", target=detection(BOX, 1, iou=iou))
    expected = np.zeros_like(heads, dtype=np.float32)
    for i in range(len(X)):
        expected[i, 4 + 1] = _chosen_by_torchvision(heads[i], iou)
    assert expected.sum() > 0
    np.testing.assert_array_equal(exp.target, expected)
    xt = torch.from_numpy(X).requires_grad_(True)
    score = (model(xt) * torch.from_numpy(expected)).sum()
    grad, = torch.autograd.grad(score, [xt])
    assert rel_err(exp.maps, grad.numpy()) < 1e-6


def test_the_same_maps_from_the_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    from cnnlens.adapters.export import to_onnx

    model = TinyYolo().eval()
    target = detection(BOX, 2, iou=0.3)
    for exporter in ("legacy", "dynamo"):
        path = to_onnx(model, str(tmp_path / f"yolo-{exporter}.onnx"), (3, SIDE, SIDE), exporter=exporter)
        for method in ("gradcam", "saliency"):
            a = cnnlens.explain(model, X, method, target=target)
            b = cnnlens.explain(path, X, method, target=target)
            np.testing.assert_array_equal(a.target, b.target)
            assert rel_err(b.maps, a.maps) < 1e-4, (exporter, method)


def test_refusals_say_what_to_do():
    model = TinyYolo().eval()
    with pytest.raises(cnnlens.TargetError, match="no anchor of image 0"):
        cnnlens.explain(model, X, "saliency", target=detection((0, 0, 0.5, 0.5), 0, iou=0.9))
    with pytest.raises(cnnlens.TargetError, match="x2 > x1"):
        detection((5, 5, 1, 1), 0)
    with pytest.raises(cnnlens.TargetError, match="out of range"):
        cnnlens.explain(model, X, "saliency", target=detection(BOX, 7))
    with pytest.raises(cnnlens.TargetError, match="YOLO-style head"):
        cnnlens.explain(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 4)).eval(), X, "saliency",
                        target=detection(BOX, 0))


def test_the_command_line_takes_a_class_and_a_box(tmp_path, capsys):
    from PIL import Image

    from cnnlens.adapters.images import prepare
    from cnnlens.cli import main

    rng = np.random.default_rng(6)
    path = str(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(path)
    flat = ["--size", str(SIDE), str(SIDE), "--mean", "0", "0", "0", "--std", "1", "1", "1"]
    x, _ = prepare([path], (SIDE, SIDE), mean=(0, 0, 0), std=(1, 1, 1))
    assert main(["explain", "tests.methods.test_targets_detection:TinyYolo", path, "-m", "saliency",
                 "--target-class", "2", "--target-box", "6,6,18,18", "--target-iou", "0.3", "--out",
                 str(tmp_path / "out"), "--save-maps", *flat]) == 0
    want = cnnlens.explain(TinyYolo().eval(), x, "saliency", target=detection(BOX, 2, iou=0.3)).maps
    np.testing.assert_allclose(np.load(tmp_path / "out" / "a_saliency.npy"), want[0], rtol=1e-5, atol=1e-8)
    capsys.readouterr()
    assert main(["explain", "tests.methods.test_targets_detection:TinyYolo", path, "-m", "saliency",
                 "--target-class", "2", "--target-box", "6,6,18", *flat]) == 2
    assert "x1,y1,x2,y2" in capsys.readouterr().err
