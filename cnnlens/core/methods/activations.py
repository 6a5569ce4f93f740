"""A layer's activations, (N, K, h, w)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..backend import ACTIVATIONS
from ..errors import LayerError
from ..targets import Target, objective
from ..types import Explanation
from .common import Backend, LayerSpec, forward_batch, forward_layers, layer_names, layer_value
from .registry import LAYER_MAP, LAYERS, register


@register("feature_maps", needs={ACTIVATIONS}, kind=LAYER_MAP, layer=LAYERS)
def feature_maps(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
                 batch_size: Optional[int] = None) -> Explanation:
    """A layer's activations ``A`` (the last spatial layer when ``layer`` is None)."""
    names, as_list = layer_names(backend, layer, x)
    activations, outputs = forward_layers(backend, x, names, forward_batch(backend, batch_size, x))
    stacked = [activations[n].astype(np.float32) for n in names]
    if as_list:
        shapes = {a.shape for a in stacked}
        if len(shapes) != 1:
            raise LayerError(
                f"feature_maps of several layers need equal shapes to stack, got {sorted(shapes)}: ask one layer at a time"
            )
        maps = np.stack(stacked, axis=1)
    else:
        maps = stacked[0]
    return Explanation("feature_maps", maps, objective(target, outputs).record, outputs,
                       layer=layer_value(names, as_list))
