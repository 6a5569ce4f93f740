"""A layer's activations, (N, K, h, w)."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..errors import LayerError
from ..targets import Target, objective
from ..types import Explanation
from .common import Backend, LayerSpec, batch_size, batches, layer_names, layer_value
from .registry import ACTIVATIONS, LAYERS, register


@register("feature_maps", needs=["activations"], kind=ACTIVATIONS, layer=LAYERS)
def feature_maps(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
                 batch_size: Optional[int] = None) -> Explanation:
    """A layer's activations ``A`` (the last spatial layer when ``layer`` is None)."""
    names, as_list = layer_names(backend, layer, x)
    size = _batch(backend, batch_size, x)
    parts: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    outputs = []
    for sl in batches(len(x), size):
        p = backend.forward(x[sl], layers=names)
        for n in names:
            parts[n].append(p.activations[n])
        outputs.append(p.logits)
    stacked = [np.concatenate(parts[n]).astype(np.float32) for n in names]
    if as_list:
        shapes = {a.shape for a in stacked}
        if len(shapes) != 1:
            raise LayerError(
                f"feature_maps of several layers need equal shapes to stack, got {sorted(shapes)}: ask one layer at a time"
            )
        maps = np.stack(stacked, axis=1)
    else:
        maps = stacked[0]
    outputs = np.concatenate(outputs)
    return Explanation("feature_maps", maps, objective(target, outputs).record, outputs,
                       layer=layer_value(names, as_list))


def _batch(backend: Backend, value: Optional[int], x: np.ndarray) -> int:
    return batch_size(backend, value, "forward", x)
