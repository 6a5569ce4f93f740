"""torchvision's one-stage detectors (RetinaNet, SSD, SSDlite) as a raw YOLO-style head, so that
``cnnlens.targets.detection`` explains one of their boxes and the model exports to ONNX as such.

A torchvision detector's ``forward`` resizes the images, decodes the boxes against its anchors and
keeps the best after non-maximum suppression: none of that is what a gradient should pass, and
its output is a list of dicts. ``raw_detections(model)`` runs what comes before: the model's own
normalisation (no resizing: boxes stay in the pixels of the images given), the backbone, the head,
and the decoding of each anchor's box with the model's own anchors and box coder — giving (N, 4 +
classes, anchors): each anchor's box as (cx, cy, w, h) in input pixels, then its raw class logits
(RetinaNet: per-class sigmoid logits; SSD: softmax logits, class 0 the background). The decoding is
torchvision's own (``box_coder.decode_single``), so the boxes are the ones ``model(images)`` would
keep, before clipping and NMS (tests/methods/test_targets_torchvision.py checks that).
"""

from __future__ import annotations

from typing import Any, List

from ..core.errors import ModelError

#: the torchvision detector classes (and their subclasses) whose head ``raw_detections`` runs
KNOWN = ("RetinaNet", "SSD")


def raw_detections(detector: Any) -> Any:
    """``detector`` (a torchvision RetinaNet, SSD or SSDlite) as an ``nn.Module`` returning (N, 4 +
    classes, anchors) — boxes (cx, cy, w, h) in input pixels, then raw class logits — for
    ``cnnlens.targets.detection``. It shares the model's modules (nothing is copied) and takes images
    in [0, 1] as the model does, at their own size (for SSD, the size the model was built for)."""
    import torch
    from torch import nn

    kind = next((k for k in KNOWN if any(c.__name__ == k for c in type(detector).__mro__)), None)
    parts = ("backbone", "head", "anchor_generator", "box_coder", "transform")
    if kind is None or not all(hasattr(detector, n) for n in parts):
        raise ModelError(f"raw_detections takes a torchvision RetinaNet, SSD or SSDlite, got {type(detector).__name__}: "
                         f"for another detector, give cnnlens its raw head output (N, 4 + classes, anchors) yourself")

    class RawDetections(nn.Module):
        """(N, 4 + classes, anchors): decoded boxes (cx, cy, w, h) and raw class logits, before NMS."""

        def __init__(self, inner: nn.Module):
            super().__init__()
            self.detector = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from torchvision.models.detection.image_list import ImageList

            d = self.detector
            images = d.transform.normalize(x)  # the model's mean / std; no resizing
            features = d.backbone(images)
            levels: List[torch.Tensor] = [features] if isinstance(features, torch.Tensor) else list(features.values())
            head = d.head(levels)
            # every image of a batch has the same size, so the same anchors: one image's, for all (so
            # an export keeps a dynamic batch rather than one anchor set per traced image)
            first = ImageList(images[:1], [(int(images.shape[-2]), int(images.shape[-1]))])
            anchors = d.anchor_generator(first, [level[:1] for level in levels])[0]
            codes = head["bbox_regression"]
            boxes = d.box_coder.decode_single(codes.reshape(-1, 4), anchors.repeat(codes.shape[0], 1))
            boxes = boxes.reshape(codes.shape)  # (N, A, 4) as x1, y1, x2, y2
            centre = (boxes[..., :2] + boxes[..., 2:]) / 2
            size = boxes[..., 2:] - boxes[..., :2]
            return torch.cat([centre, size, head["cls_logits"]], dim=2).transpose(1, 2)

    wrapper = RawDetections(detector)
    wrapper.training = detector.training  # the wrapper's own flag only: the detector is left as it is
    return wrapper
