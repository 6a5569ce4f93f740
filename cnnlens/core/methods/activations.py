"""A layer's activations, (N, K, h, w)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..backend import ACTIVATIONS
from ..errors import LayerError
from ..targets import Target, objective
from ..types import Explanation
from ..tokens import ReshapeSpec
from .common import Backend, LayerMaps, LayerSpec, forward_batch, forward_layers, layer_names, layer_value
from .registry import LAYER_MAP, LAYERS, RESHAPE, register


@register("feature_maps", needs={ACTIVATIONS}, kind=LAYER_MAP, layer=LAYERS, options=[RESHAPE])
def feature_maps(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *, reshape: ReshapeSpec = None,
                 batch_size: Optional[int] = None) -> Explanation:
    """A layer's activations ``A`` as (N, K, h, w) maps (the last spatial layer when ``layer`` is None).

    Token tensors and channels-last maps are laid out as maps (see ``reshape``); a layer whose output
    is no map at all is returned as it is.
    """
    names, as_list = layer_names(backend, layer, x)
    activations, outputs = forward_layers(backend, x, names, forward_batch(backend, batch_size, x))
    read = LayerMaps(backend, x, reshape, "feature_maps", layer)
    stacked = [_as_maps(read, n, activations[n]).astype(np.float32) for n in names]
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
                       layer=layer_value(names, as_list), extras=read.extras())


def _as_maps(read: LayerMaps, name: str, value: np.ndarray) -> np.ndarray:
    """``value`` as maps where it is a 4-D map, tokens on a grid, or a reshape says how; else (a
    (N, K) vector, tokens on no grid of the image) as it is: feature_maps returns any layer's output."""
    if value.ndim == 4 or read.reshape is not None:
        return read.activation(name, value)
    if value.ndim == 3:
        try:
            return read.activation(name, value)
        except LayerError:
            return value
    return value
