"""How far to trust a map, with the same code on every backend.

- ``deletion_insertion``: the deletion and insertion curves and their AUC (Petsiuk et al. 2018,
  RISE): remove (or insert) pixels in order of importance and follow the class score.
- ``pointing_game`` (Zhang et al. 2018) and ``energy_in_box``: does the map point at the object?
- ``randomisation_test``: the model-parameter randomisation test (Adebayo et al. 2018).
- ``sanity``: the randomisation test and deletion / insertion for several methods at once, as
  ``cnnlens sanity`` prints it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .api import _as_numpy
from .backends import backend_for
from .core import faithfulness as _faith
from .core import sanity as _sanity
from .core.errors import InvalidInputError
from .core.faithfulness import auc, energy_in_box, ssim
from .core.methods import LAYER_MAP, LayerSpec, check_images, lookup, run
from .core.metrics import pointing_game, pointing_hits, spearman
from .core.targets import Target
from .core.types import Explanation

__all__ = ["deletion_insertion", "pointing_game", "pointing_hits", "energy_in_box", "randomisation_test",
           "sanity", "auc", "ssim", "spearman"]


def _maps(maps: Union[np.ndarray, Explanation]) -> np.ndarray:
    return maps.maps if isinstance(maps, Explanation) else np.asarray(maps)


def deletion_insertion(model: Any, x: Any, maps: Union[np.ndarray, Explanation], target: Target = None, *,
                       steps: int = 20, baseline: Union[float, str, np.ndarray] = 0.0, score: str = "probability",
                       batch_size: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Deletion and insertion curves of ``maps`` (an Explanation or its maps) for ``model`` on ``x``.

    ``steps`` + 1 points per curve; ``baseline`` is what removed pixels become (a number, one value
    per channel, an image, or "blur"); ``score`` "probability" (softmax) or "logit". The target
    defaults to the Explanation's. Returns ``deletion`` / ``insertion`` (N, steps + 1) curves,
    ``deletion_auc`` / ``insertion_auc`` (N,) and ``target`` (N,). Lower deletion and higher
    insertion AUC mean a more faithful map.
    """
    if target is None and isinstance(maps, Explanation):
        target = maps.target
    images = check_images(_as_numpy(x))
    return _faith.deletion_insertion(backend_for(model), images, _maps(maps), target, steps=steps,
                                     baseline=baseline, score=score, batch_size=batch_size)


def randomisation_test(model: Any, x: Any, methods: Union[str, Sequence[str]], target: Target = None, *,
                       layers: Optional[Sequence[str]] = None, steps: Optional[int] = None, seed: int = 0,
                       options: Optional[Dict[str, Dict[str, Any]]] = None,
                       layer: LayerSpec = None) -> Dict[str, List[Dict[str, Any]]]:
    """The cascading model-parameter randomisation test: for each method, one entry per step (top
    layer first) with the Spearman rank correlation of |maps| and the SSIM between the original
    and the randomised model's maps; ``layer`` goes to the methods that take one. See
    ``cnnlens.core.sanity.randomisation_test``."""
    names = [methods] if isinstance(methods, str) else list(methods)
    return _sanity.randomisation_test(backend_for(model), check_images(_as_numpy(x)), names, target,
                                      layers=layers, steps=steps, seed=seed, options=options, layer=layer)


def sanity(model: Any, x: Any, methods: Sequence[str], target: Target = None, *, steps: Optional[int] = None,
           seed: int = 0, deletion_steps: int = 20, baseline: Union[float, str, np.ndarray] = 0.0,
           layer: LayerSpec = None, options: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """``{"methods": {method: {"randomisation": [{"layer", "randomised", "spearman", "ssim"}, ...],
    "deletion_auc": ..., "insertion_auc": ...}}}``, the randomisation steps in the order applied
    (top layer first), the AUCs averaged over the images. ``layer`` goes to the layered methods."""
    backend = backend_for(model)
    images = check_images(_as_numpy(x))
    names = [methods] if isinstance(methods, str) else list(methods)
    for m in names:
        if lookup(m).kind == LAYER_MAP:
            raise InvalidInputError(f"{m} are activations, not a saliency map: leave them out of sanity")
    methods = names
    options = {m: dict((options or {}).get(m, {})) for m in methods}
    explained = {m: run(backend, images, m, target=target, layer=layer if lookup(m).layered else None, **options[m])
                 for m in methods}
    randomisation = _sanity.randomisation_test(backend, images, list(methods), target, steps=steps, seed=seed,
                                               options=options, layer=layer, originals=explained)
    report: Dict[str, Any] = {"methods": {}}
    for m in methods:
        exp = explained[m]
        aucs = _sanity.deletion_insertion_auc(backend, images, exp.maps, exp.target, steps=deletion_steps,
                                              baseline=baseline)
        report["methods"][m] = {"randomisation": randomisation[m], **aucs}
    return report
