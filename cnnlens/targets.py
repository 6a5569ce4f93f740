"""Targets for dense outputs, as helpers over the output-weights targets: what to explain of a
segmenter's per-pixel class scores, or of a detector's raw predictions for one box. Each returns a
target ``cnnlens.explain`` (and every other call that takes ``target=``) accepts; the weights it stands for are made from the model's own
outputs for the images explained, held fixed while the method runs, and reported as
``exp.target`` (N, *output)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .core.errors import TargetError
from .core.targets import DerivedWeights

__all__ = ["segmentation", "detection"]


def segmentation(category: int, mask: Optional[np.ndarray] = None) -> DerivedWeights:
    """Class ``category``'s score summed over a region of a segmentation output (N, K, H, W):
    ``sum(output[:, category] * mask)`` — pytorch-grad-cam's ``SemanticSegmentationTarget``.

    ``mask``: (H, W) for every image or (N, H, W), the output's spatial size (bool or float
    weights); by default each image's predicted region for the class (where the arg-max over the
    classes is ``category``). A class predicted nowhere in an image is a TargetError (give a mask).

    >>> import numpy as np
    >>> outputs = np.array([[[[2.0, 0.0]], [[1.0, 3.0]]]])      # (1 image, 2 classes, 1 x 2 pixels)
    >>> segmentation(1).weights_for(outputs).weights.tolist()   # class 1 is predicted at the second pixel
    [[[[0.0, 0.0]], [[0.0, 1.0]]]]
    """
    _check_class(category, "segmentation")
    given = None if mask is None else np.asarray(mask, dtype=np.float32)

    def make(outputs: np.ndarray) -> np.ndarray:
        if outputs.ndim < 3:
            raise TargetError(f"segmentation targets a per-pixel output (N, classes, H, W); the model's output has "
                              f"shape {outputs.shape}: explain a class of a classifier with target=CLASS")
        if category >= outputs.shape[1]:
            raise TargetError(f"class {category} is out of range: the output has {outputs.shape[1]} classes")
        spatial = outputs.shape[2:]
        if given is None:
            region = (outputs.argmax(axis=1) == category).astype(np.float32)
            empty = [i for i in range(len(outputs)) if not region[i].any()]
            if empty:
                raise TargetError(f"class {category} is predicted nowhere in image(s) {empty}: give a mask, "
                                  f"cnnlens.targets.segmentation({category}, mask=...)")
        elif given.shape in (spatial, (len(outputs),) + spatial):
            region = np.broadcast_to(given, (len(outputs),) + spatial)
        else:
            raise TargetError(f"the mask has shape {given.shape}; the output's spatial size is {spatial}: give "
                              f"an {spatial} mask, or one per image {(len(outputs),) + spatial}")
        weights = np.zeros(outputs.shape, dtype=np.float32)
        weights[:, category] = region
        return weights

    where = "its predicted region" if mask is None else "the mask"
    return DerivedWeights(make, f"segmentation(class {category} over {where})")


def _check_class(category: int, helper: str) -> None:
    if isinstance(category, (bool, np.bool_)) or not isinstance(category, (int, np.integer)) or category < 0:
        raise TargetError(f"{helper}'s category must be a class index (an int, 0 or more), got {category!r}")


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each (x1, y1, x2, y2) row of ``boxes`` with ``box``."""
    x1, y1 = np.maximum(boxes[:, 0], box[0]), np.maximum(boxes[:, 1], box[1])
    x2, y2 = np.minimum(boxes[:, 2], box[2]), np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def detection(box, category: int, iou: float = 0.5) -> DerivedWeights:
    """One detection of a raw YOLO-style head (N, 4 + classes, anchors) — each anchor's box as (cx, cy,
    w, h) in input pixels, then its class scores (YOLOv8's exported layout, before NMS): class
    ``category``'s score summed over the anchors whose box overlaps ``box`` (x1, y1, x2, y2, input
    pixels) with IoU >= ``iou``. No anchor that close in an image is a TargetError (lower ``iou``).

    >>> import numpy as np
    >>> head = np.zeros((1, 6, 3))                                   # 4 box rows + 2 classes, 3 anchors
    >>> head[0, :4] = [[10, 30, 11], [10, 30, 10], [8, 8, 8], [8, 8, 8]]  # cx, cy, w, h per anchor
    >>> detection((6, 6, 14, 14), category=1).weights_for(head).weights[0, 5].tolist()
    [1.0, 0.0, 1.0]
    """
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not (box[2] > box[0] and box[3] > box[1]):
        raise TargetError(f"box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {box.tolist()}")
    _check_class(category, "detection")
    if not 0 < iou <= 1:
        raise TargetError(f"iou must be in (0, 1], got {iou!r}")

    def make(outputs: np.ndarray) -> np.ndarray:
        if outputs.ndim != 3 or outputs.shape[1] < 5:
            raise TargetError(f"detection targets a raw YOLO-style head (N, 4 + classes, anchors); the model's "
                              f"output has shape {outputs.shape}: give target weights of its shape instead")
        if 4 + category >= outputs.shape[1]:
            raise TargetError(f"class {category} is out of range: the head has {outputs.shape[1] - 4} classes")
        weights = np.zeros(outputs.shape, dtype=np.float32)
        for i, head in enumerate(np.asarray(outputs, dtype=np.float64)):
            cx, cy, w, h = head[:4]
            corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
            chosen = _iou(corners, box) >= iou
            if not chosen.any():
                raise TargetError(f"no anchor of image {i} overlaps the box {box.tolist()} with IoU >= {iou}: "
                                  f"lower iou, or check the box is in the model input's pixels")
            weights[i, 4 + category, chosen] = 1.0
        return weights

    return DerivedWeights(make, f"detection(class {category} at box {box.tolist()}, IoU >= {iou})")
