"""``run``: check a request against the method's description, then run it."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError, LayerError, TargetError
from ..targets import DerivedWeights, Target, is_single, is_weights, output_weights
from ..types import Explanation
from .common import Backend, LayerSpec, check_images, clean_outputs, forward_batch
from .support import require


def _check_target(backend: Backend, target: Target, images: np.ndarray) -> Target:
    """Class targets checked for length; output weights checked against the model's output shape
    (``backend.output_shape``: ONNX reads it off the graph, torch runs one image) and expanded to one
    row per image; weights derived from the outputs made from one forward pass over the images (then
    fixed, as given weights are)."""
    if isinstance(target, DerivedWeights):
        return target.weights_for(clean_outputs(backend, images, forward_batch(backend, None, images)))
    if is_weights(target):
        return output_weights(target, len(images), backend.output_shape(images))
    if is_single(target):
        return target
    try:
        length = len(target)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidInputError(f"target must be None, an int, one int per image, or an array of output "
                                f"weights; got {target!r}") from None
    if length != len(images):
        raise TargetError(f"got {length} targets for a batch of {len(images)} images: give one int for all "
                          f"images or exactly one per image")
    return target


def run(backend: Backend, x: Any, method: str, target: Target = None, layer: LayerSpec = None,
        **options: Any) -> Explanation:
    """Validate the request (method, capabilities, options, layer, images, target), then run ``method``."""
    spec = require(backend, method)
    checked = spec.check_options(options)
    if layer is not None and not spec.layered:
        raise LayerError(f"{method} explains the input and takes no layer; layers are for the CAM family and "
                         f"feature_maps")
    images = check_images(x)
    target = _check_target(backend, target, images)
    result: Explanation = spec.function(backend, images, target, layer, **checked)
    result.options = {**spec.defaults, **checked, **result.options}
    return result
