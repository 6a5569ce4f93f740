"""How far to trust a map: the model-parameter randomisation test (Adebayo et al. 2018) and
deletion / insertion (Petsiuk et al. 2018), for any backend (NumPy only).

The randomisation test re-draws the model's learned layers cascading from the top (the
classifier first, then down to the first convolution) and, after each step, compares each
method's new maps with the original ones: the Spearman rank correlation of absolute values
and the SSIM of the maps scaled to [0, 1]. A map that stays similar while the weights that
produced the prediction are destroyed says little about the model.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import faithfulness as faith
from . import progress
from .backend import RANDOMISE
from .errors import InvalidInputError
from .methods import Backend, LayerSpec, lookup, run
from .methods.support import require_capability
from .targets import Target, objective
from .types import Explanation


def cascade_points(count: int, steps: Optional[int]) -> List[int]:
    """How many top layers are randomised at each reported step: 1, ..., ``count`` (all of them),
    or ``steps`` of those evenly spread (always the first and the last)."""
    if count <= 0:
        raise InvalidInputError("the model has no layers with learned weights to randomise")
    if steps is None or steps >= count:
        return list(range(1, count + 1))
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidInputError(f"steps must be a positive int, got {steps!r}")
    if steps == 1:
        return [count]
    return sorted({int(round(v)) for v in np.linspace(1, count, steps)})


def _compare(original: np.ndarray, new: np.ndarray) -> Dict[str, float]:
    """Mean over images of Spearman(|a|, |b|) and SSIM of the maps scaled to [0, 1]."""
    a, b = faith.importance(original), faith.importance(new)
    return {
        "spearman": float(np.mean(faith.rank_correlation_abs(a, b))),
        "ssim": float(np.mean(faith.ssim(faith.normalise_unit(a), faith.normalise_unit(b)))),
    }


def randomisation_test(backend: Backend, x: np.ndarray, methods: Sequence[str], target: Target = None,
                       layers: Optional[Sequence[str]] = None, steps: Optional[int] = None, seed: int = 0,
                       options: Optional[Dict[str, Dict[str, Any]]] = None, layer: LayerSpec = None,
                       originals: Optional[Dict[str, Explanation]] = None) -> Dict[str, List[Dict[str, Any]]]:
    """For each method, one entry per cascade step, top layer first:
    ``{"layer": the lowest layer randomised so far, "randomised": how many, "spearman": ..., "ssim": ...}``.

    ``layers``: the layers to randomise, bottom to top (default: every layer with learned
    weights, ``backend.parameter_layers()``); ``steps``: report only this many points of the
    cascade, evenly spread. The class explained stays the original prediction (or ``target``).
    The user's model is never changed: each step explains a randomised copy. ``originals``: the
    methods' explanations of ``x`` already computed with these options, to reuse. ``layer`` goes to
    the methods that take one (the CAM family, as ``explain``'s).
    """
    require_capability(backend, RANDOMISE, "the randomisation test")
    options = options or {}
    order = list(backend.parameter_layers() if layers is None else layers)
    cascade = order[::-1]  # top first
    points = cascade_points(len(cascade), steps)
    layer_of = {m: layer if lookup(m).layered else None for m in methods}
    originals = {m: (originals or {}).get(m) or run(backend, x, m, target=target, layer=layer_of[m],
                                                    **options.get(m, {})) for m in methods}
    classes = next(iter(originals.values())).target if originals else objective(target, backend.forward(x).logits).record
    result: Dict[str, List[Dict[str, Any]]] = {m: [] for m in methods}
    with progress.task("randomisation", len(points)) as advance:
        for k in points:
            randomised = backend.randomised(cascade[:k], seed=seed)
            for m in methods:
                new = run(randomised, x, m, target=classes, layer=layer_of[m], **options.get(m, {}))
                result[m].append({"layer": cascade[k - 1], "randomised": k, **_compare(originals[m].maps, new.maps)})
            advance(1)
    return result


def deletion_insertion_auc(backend: Backend, x: np.ndarray, maps: np.ndarray, target: Target = None,
                           **kwargs: Any) -> Dict[str, float]:
    """Mean deletion and insertion AUC over the images (see ``faithfulness.deletion_insertion``)."""
    curves = faith.deletion_insertion(backend, x, maps, target, **kwargs)
    return {"deletion_auc": float(np.mean(curves["deletion_auc"])),
            "insertion_auc": float(np.mean(curves["insertion_auc"]))}
