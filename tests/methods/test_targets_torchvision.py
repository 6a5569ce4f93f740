"""torchvision's RetinaNet and SSDlite explained for one box: ``cnnlens.adapters.detectors.raw_detections``
gives their raw head as (N, 4 + classes, anchors) and ``cnnlens.targets.detection`` picks the anchors.

The decoded boxes are checked against what ``model(images)`` itself keeps (every detection it returns,
with its score, is one of the wrapper's anchors, clipped as torchvision clips), the maps against
PyTorch autograd of the same sum and a plain-torch Grad-CAM, and the wrapper's ONNX export against
the module. Seeded random weights; score threshold 0 so the random detectors keep boxes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
det = pytest.importorskip("torchvision.models.detection")

import cnnlens  # noqa: E402
from cnnlens.adapters.detectors import raw_detections  # noqa: E402
from cnnlens.targets import detection  # noqa: E402
from tests.helpers import one_torch_thread, rel_err  # noqa: E402

H, W = 128, 160


@pytest.fixture(scope="module", autouse=True)
def _threads():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def retinanet():
    torch.manual_seed(0)
    return det.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=5, min_size=H,
                                         max_size=W, score_thresh=0.0, detections_per_img=30).eval()


@pytest.fixture(scope="module")
def ssdlite():
    torch.manual_seed(0)
    return det.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5, score_thresh=0.0,
                                             detections_per_img=30).eval()


def _corners(head: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(anchors, 4) x1, y1, x2, y2 from a (4 + classes, anchors) head, clipped as torchvision clips."""
    cx, cy, w, h = head[:4]
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


@pytest.mark.parametrize("name, size, probabilities", [
    ("retinanet", (H, W), lambda logits: torch.sigmoid(logits)),
    ("ssdlite", (320, 320), lambda logits: torch.softmax(logits, dim=-1)),
])
def test_the_decoded_boxes_are_the_ones_the_detector_keeps(request, name, size, probabilities):
    model = request.getfixturevalue(name)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        kept = model(list(x))
        raw = raw_detections(model)(x)
    assert raw.shape[:2] == (2, 4 + 5)
    for i, found in enumerate(kept):
        assert len(found["boxes"]) == 30
        boxes, scores = _corners(raw[i], *size), probabilities(raw[i, 4:].T)
        for box, label, score in zip(found["boxes"], found["labels"], found["scores"]):
            distance = (boxes - box).abs().max(dim=1).values
            j = int(distance.argmin())
            assert distance[j] < 1e-3 and abs(float(scores[j, label] - score)) < 1e-5


def _top_box(model, x: np.ndarray):
    with torch.no_grad():
        found = model(list(torch.from_numpy(x)))[0]
    return [float(v) for v in found["boxes"][0]], int(found["labels"][0])


def test_a_box_of_retinanet_explained_as_autograd_and_plain_torch_grad_cam_compute_it(retinanet):
    from torchvision.ops import box_iou

    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(2)).numpy()
    box, label = _top_box(retinanet, x)
    head = raw_detections(retinanet)
    target = detection(box, label, iou=0.5)
    exp = cnnlens.explain(head, x, "saliency", target=target)
    with torch.no_grad():
        raw = head(torch.from_numpy(x))
    chosen = box_iou(_corners(raw[0], 10 ** 6, 10 ** 6), torch.tensor([box]))[:, 0] >= 0.5  # unclipped IoU
    assert chosen.any()
    expected = np.zeros(raw.shape, np.float32)
    expected[0, 4 + label] = chosen.numpy()
    np.testing.assert_array_equal(exp.target, expected)
    xt = torch.from_numpy(x).requires_grad_(True)
    score = (head(xt)[0, 4 + label] * chosen).sum()
    grad, = torch.autograd.grad(score, [xt])
    assert rel_err(exp.maps, grad.numpy()) < 1e-5
    # Grad-CAM at the FPN's finest level, by hand
    layer = "detector.backbone.fpn.layer_blocks.0"
    cam_exp = cnnlens.explain(head, x, "gradcam", layer=layer, target=target)
    kept = {}
    hook = retinanet.backbone.fpn.layer_blocks[0].register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    try:
        score = (head(torch.from_numpy(x))[0, 4 + label] * chosen).sum()
    finally:
        hook.remove()
    g, = torch.autograd.grad(score, [kept["a"]])
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * kept["a"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    assert rel_err(cam_exp.maps, cam.detach().numpy()) < 1e-5
    assert not retinanet.training and all(p.grad is None for p in retinanet.parameters())


def test_ssdlite_the_same_maps_from_the_onnx_export(ssdlite, tmp_path):
    pytest.importorskip("onnxruntime")
    from cnnlens.adapters.export import to_onnx

    x = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(3)).numpy()
    box, label = _top_box(ssdlite, x)
    head = raw_detections(ssdlite)
    path = to_onnx(head, str(tmp_path / "ssdlite.onnx"), (3, 320, 320), exporter="legacy")
    target = detection(box, label, iou=0.4)
    layer = "detector.backbone.features.0.3"
    a = cnnlens.explain(head, x, "gradcam", layer=layer, target=target)
    b = cnnlens.explain(path, x, "gradcam", layer=layer, target=target)
    np.testing.assert_array_equal(a.target, b.target)
    assert np.abs(a.maps).max() > 0
    assert rel_err(b.maps, a.maps) < 1e-4


def test_other_detectors_are_refused_with_what_to_do():
    torch.manual_seed(0)
    faster = det.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(cnnlens.ModelError, match="RetinaNet, SSD or SSDlite.*raw head output"):
        raw_detections(faster)
