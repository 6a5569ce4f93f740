"""The relevance methods, (N, C, H, W): LRP with a composite (Bach et al. 2015; Montavon et al.
2019) and DeepLIFT's Rescale rule (Shrikumar et al. 2017). Both are one backward pass under a rule
set of ``core.relevance`` that the backend applies; METHODS.md defines what they compute."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from ..backend import INPUT_GRADIENTS, RELEVANCE_RULES
from ..errors import InvalidInputError
from ..occlusion import as_baseline
from ..relevance import COMPOSITES, DeepLiftRules, LrpRules, box_of, conservation
from ..targets import Target, objective
from ..types import Explanation
from .common import Backend, LayerSpec, backward_batch
from .input_gradients import Attribution, input_gradients
from .registry import BASELINE, INPUT, Option, fraction, one_of, register

Bound = Union[None, float, Sequence[float]]


def _bound(name: str) -> Callable[[Any], Optional[Tuple[float, ...]]]:
    def check(value: Any) -> Optional[Tuple[float, ...]]:
        if value is None:
            return None
        values = np.atleast_1d(np.asarray(value, dtype=object))
        try:
            floats = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            floats = ()
        if not floats or values.ndim != 1 or not all(np.isfinite(floats)):
            raise InvalidInputError(f"{name} must be a number or one number per channel, got {value!r}")
        return floats
    return check


def _numbers(text: str) -> Tuple[float, ...]:
    """A command line's ``-1.5`` or ``-2.1,-2.0,-1.8``."""
    return tuple(float(part) for part in text.split(","))


COMPOSITE = Option("composite", "epsilon_plus_flat", " | ".join(COMPOSITES) + " (epsilon_plus_flat)",
                   one_of("composite", list(COMPOSITES)), str)
EPSILON = Option("epsilon", 1e-6, "the epsilon rule's stabiliser, added with the sign of z (1e-6)",
                 fraction("epsilon", open_low=True), float)
GAMMA = Option("gamma", 0.25, "the gamma rule's share of positive weights (0.25)", fraction("gamma"), float)
LOW = Option("low", None, "the zB rule's lowest input value, one number or one per channel (default: pixels in "
             "[0, 1] after the images' mean/std: ImageNet's in Python, --mean/--std on the command line)",
             _bound("low"), _numbers)
HIGH = Option("high", None, "the zB rule's highest input value, as low (default: pixels in [0, 1] after the "
              "mean/std)", _bound("high"), _numbers)


def lrp_rules(composite: str, epsilon: float, gamma: float, low: Bound, high: Bound) -> LrpRules:
    """The rule set of these options; the zB box defaults to ImageNet's [0, 1] pixel box."""
    if (low is None) != (high is None):
        raise InvalidInputError("give both low= and high= (the zB box), or neither")
    if low is None or high is None:
        low, high = box_of()
    low_t, high_t = tuple(np.atleast_1d(low).astype(float)), tuple(np.atleast_1d(high).astype(float))
    if len(low_t) != len(high_t) or any(lo > hi for lo, hi in zip(low_t, high_t)):
        raise InvalidInputError(f"low must be below high, channel by channel: got low={low_t}, high={high_t}")
    return LrpRules(composite, float(epsilon), float(gamma), low_t, high_t)


def _lrp(backend: Backend, x: np.ndarray, target: Target, batch: int, composite: str = "epsilon_plus_flat",
         epsilon: float = 1e-6, gamma: float = 0.25, low: Bound = None, high: Bound = None) -> Attribution:
    maps, outputs, _ = input_gradients(backend, x, target, lrp_rules(composite, epsilon, gamma, low, high), batch)
    return maps, outputs


@register("lrp", needs={INPUT_GRADIENTS, RELEVANCE_RULES}, kind=INPUT, options=[COMPOSITE, EPSILON, GAMMA, LOW, HIGH],
          attribute=_lrp)
def lrp(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *, composite: str = "epsilon_plus_flat",
        epsilon: float = 1e-6, gamma: float = 0.25, low: Bound = None, high: Bound = None,
        batch_size: Optional[int] = None) -> Explanation:
    """Layer-wise relevance propagation with a composite (Bach et al. 2015; Montavon et al. 2019), as zennit 1.0.

    Relevance starts as the explained score ``y_c`` at the output and is redistributed layer by
    layer to the input; ``extras``: ``relevance_sum``, ``explained_score``, ``conservation_error``
    per image, and ``canonization`` (what the backend merged and which rule each layer got).
    """
    rules = lrp_rules(composite, epsilon, gamma, low, high)
    maps, outputs, first = input_gradients(backend, x, target, rules, backward_batch(backend, batch_size, x))
    goal = objective(target, outputs)
    exp = Explanation("lrp", maps, goal.record, outputs)
    exp.extras.update(conservation(maps, goal.score(outputs, np.arange(len(x)))))
    exp.extras["canonization"] = np.array(first.notes, dtype=str)
    if composite == "epsilon_gamma_box":
        exp.extras["box"] = np.array([rules.low, rules.high], dtype=np.float64)
    return exp


def _deeplift(backend: Backend, x: np.ndarray, target: Target, batch: int,
              baseline: Any = 0.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Tuple[str, ...]]:
    """(attributions, outputs, the summation-to-delta error per image, notes)."""
    reference = np.array(np.broadcast_to(as_baseline(baseline, x.shape[1:]), x.shape[1:]), dtype=np.float32)
    multipliers, outputs, first = input_gradients(backend, x, target, DeepLiftRules(reference), batch)
    attributions = ((x - reference) * multipliers).astype(np.float32)
    # the baseline's scores as the rules explain them (a final Softmax skipped, as for the images)
    base = first.baseline_logits
    assert base is not None  # a backend's DeepLIFT pass returns them
    notes = first.notes
    goal = objective(target, outputs)
    owners = np.arange(len(x))
    gap = goal.score(outputs, owners) - goal.score(np.broadcast_to(base, (len(x),) + base.shape[1:]), owners)
    delta = attributions.reshape(len(x), -1).sum(axis=1, dtype=np.float64) - gap
    return attributions, outputs, delta, notes


def _deeplift_attribution(backend: Backend, x: np.ndarray, target: Target, batch: int,
                          baseline: Any = 0.0) -> Attribution:
    maps, outputs, _, _ = _deeplift(backend, x, target, batch, baseline)
    return maps, outputs


@register("deeplift", needs={INPUT_GRADIENTS, RELEVANCE_RULES}, kind=INPUT, options=[BASELINE],
          attribute=_deeplift_attribution)
def deeplift(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *, baseline: Any = 0.0,
             batch_size: Optional[int] = None) -> Explanation:
    """DeepLIFT, Rescale rule (Shrikumar et al. 2017), as Captum 0.9 computes it: ``(x - x') * multipliers``.

    Every elementwise nonlinearity passes ``g (f(s) - f(s')) / (s - s')`` (its inputs on the images and
    on the baseline); ``extras["delta"]``: ``sum(attributions) - (y_c(x) - y_c(x'))`` per image.
    """
    maps, outputs, delta, notes = _deeplift(backend, x, target, backward_batch(backend, batch_size, x), baseline)
    goal = objective(target, outputs)
    return Explanation("deeplift", maps, goal.record, outputs, extras={"delta": delta,
                                                                         "rules": np.array(notes, dtype=str)})
