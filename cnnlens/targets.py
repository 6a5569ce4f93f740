"""Targets for dense outputs, as helpers over the output-weights targets: what to explain of a
segmenter's per-pixel class scores. Each returns a target ``cnnlens.explain`` (and every other
call that takes ``target=``) accepts; the weights it stands for are made from the model's own
outputs for the images explained, held fixed while the method runs, and reported as
``exp.target`` (N, *output)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .core.errors import TargetError
from .core.targets import DerivedWeights

__all__ = ["segmentation"]


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
    if isinstance(category, (bool, np.bool_)) or not isinstance(category, (int, np.integer)) or category < 0:
        raise TargetError(f"segmentation's category must be a class index (an int, 0 or more), got {category!r}")
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
