"""Input attributions from gradients, (N, C, H, W): saliency, guided backprop, deconvnet,
Input x Gradient, Integrated Gradients, and SmoothGrad over any of them."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import progress
from ..backend import INPUT_GRADIENTS, RELU_RULES
from ..errors import InvalidInputError
from ..integration import INTEGRATION_RULES, integration_points
from ..noise import RunningStats, image_generators, noise_sigma
from ..occlusion import as_baseline
from ..relevance import Rules
from ..targets import ClassSeed, Target, objective
from ..types import Explanation, Pass
from .common import Backend, LayerSpec, backward_batch, batches, clean_pass, seed
from .support import require
from .registry import BASELINE, INPUT, METHODS, SEED, Option, fraction, lookup, one_of, positive_int, register

Attribution = Tuple[np.ndarray, np.ndarray]  # (maps, outputs at the images)


def input_gradients(backend: Backend, x: np.ndarray, target: Target, rules: Rules,
                    batch: int) -> Tuple[np.ndarray, np.ndarray, Pass]:
    """(the input gradient under ``rules``, the outputs, the first batch's pass: what a backend says
    beside the arrays), one backward pass per batch."""
    grads: List[np.ndarray] = []
    outputs: List[np.ndarray] = []
    first: Optional[Pass] = None
    for sl in batches(len(x), batch):
        p = backend.backward(x[sl], seed(target, sl), rules=rules, input_grad=True)
        assert p.input_grad is not None  # asked for with input_grad=True
        grads.append(p.input_grad)
        outputs.append(p.logits)
        first = first or p
    assert first is not None  # x holds at least one image
    return np.concatenate(grads).astype(np.float32), np.concatenate(outputs), first


def _gradients(backend: Backend, x: np.ndarray, target: Target, relu: str, batch: int) -> Attribution:
    """``d(score)/dx`` under ``relu`` and the outputs, one backward pass per batch."""
    grads, outputs, _ = input_gradients(backend, x, target, relu, batch)
    return grads, outputs


def _explanation(name: str, maps: np.ndarray, outputs: np.ndarray, target: Target, **kw: Any) -> Explanation:
    return Explanation(name, maps, objective(target, outputs).record, outputs, **kw)


def _plain(backend: Backend, x: np.ndarray, target: Target, batch: int) -> Attribution:
    return _gradients(backend, x, target, "plain", batch)


def _guided(backend: Backend, x: np.ndarray, target: Target, batch: int) -> Attribution:
    return _gradients(backend, x, target, "guided", batch)


def _deconv(backend: Backend, x: np.ndarray, target: Target, batch: int) -> Attribution:
    return _gradients(backend, x, target, "deconv", batch)


@register("saliency", needs={INPUT_GRADIENTS}, kind=INPUT, attribute=_plain)
def saliency(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
             batch_size: Optional[int] = None) -> Explanation:
    """Vanilla gradient (Simonyan et al. 2013): ``dy_c/dx``, signed."""
    maps, outputs = _plain(backend, x, target, backward_batch(backend, batch_size, x))
    return _explanation("saliency", maps, outputs, target)


@register("guided_backprop", needs={INPUT_GRADIENTS, RELU_RULES}, kind=INPUT, attribute=_guided)
def guided_backprop(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
                    batch_size: Optional[int] = None) -> Explanation:
    """Guided backpropagation (Springenberg et al. 2014): ReLU backward ``1{s>0} 1{g>0} g``."""
    maps, outputs = _guided(backend, x, target, backward_batch(backend, batch_size, x))
    return _explanation("guided_backprop", maps, outputs, target)


@register("deconvnet", needs={INPUT_GRADIENTS, RELU_RULES}, kind=INPUT, attribute=_deconv)
def deconvnet(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
              batch_size: Optional[int] = None) -> Explanation:
    """Deconvnet (Zeiler & Fergus 2014): ReLU backward ``1{g>0} g``."""
    maps, outputs = _deconv(backend, x, target, backward_batch(backend, batch_size, x))
    return _explanation("deconvnet", maps, outputs, target)


def _input_x_gradient(backend: Backend, x: np.ndarray, target: Target, batch: int) -> Attribution:
    grads, outputs = _gradients(backend, x, target, "plain", batch)
    return x * grads, outputs


@register("input_x_gradient", needs={INPUT_GRADIENTS}, kind=INPUT, attribute=_input_x_gradient)
def input_x_gradient(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
                     batch_size: Optional[int] = None) -> Explanation:
    """Input x Gradient (Shrikumar et al. 2016): ``x * dy_c/dx``."""
    maps, outputs = _input_x_gradient(backend, x, target, backward_batch(backend, batch_size, x))
    return _explanation("input_x_gradient", maps, outputs, target)


# ---------------------------------------------------------------- Integrated Gradients

STEPS = Option("steps", 50, "points on the path from the baseline (50)",
               lambda v: _steps(v), int)
RULE = Option("rule", "gausslegendre", " | ".join(INTEGRATION_RULES) + " (gausslegendre)", one_of("rule", INTEGRATION_RULES), str)


def _steps(value: Any) -> int:
    steps = positive_int("steps")(value)
    if steps < 2:
        raise InvalidInputError(f"steps must be at least 2 (the quadrature needs two points), got {steps}")
    return steps


def _integrated(backend: Backend, x: np.ndarray, target: Target, batch: int, steps: int = 50,
                baseline: Any = 0.0, rule: str = "gausslegendre") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attributions, outputs at x, completeness error per image)."""
    reference = as_baseline(baseline, x.shape[1:])
    alphas, weights = integration_points(rule, steps)
    outputs, goal = clean_pass(backend, x, target, batch)
    # the baseline is one image for all: its outputs from one pass
    base = backend.forward(np.broadcast_to(reference, (1,) + x.shape[1:]).astype(np.float32)).logits
    base_outputs = np.broadcast_to(base, (len(x),) + base.shape[1:])
    delta = x - reference
    total = np.zeros(x.shape, dtype=np.float64)
    owners = np.repeat(np.arange(len(x)), steps)
    where = np.tile(np.arange(steps), len(x))
    with progress.task("integrated_gradients", len(owners)) as advance:
        for sl in batches(len(owners), batch):
            n, k = owners[sl], where[sl]
            points = (reference + alphas[k].astype(np.float32)[:, None, None, None] * delta[n]).astype(np.float32)
            p = backend.backward(points, ClassSeed(goal.target_for(n)), rules="plain", input_grad=True)
            assert p.input_grad is not None  # asked for with input_grad=True
            grads = p.input_grad.reshape(len(n), -1)
            for image in np.unique(n):  # each image's points in this batch, weighted, in one product
                rows = n == image
                # einsum, not BLAS: BLAS's threads would still be spinning when the next pass starts
                total[image] += np.einsum("b,bf->f", weights[k[rows]], grads[rows]).reshape(x.shape[1:])
            advance(sl.stop - sl.start)
    attributions = (delta * total).astype(np.float32)
    owners_all = np.arange(len(x))
    gap = goal.score(outputs, owners_all) - goal.score(base_outputs, owners_all)
    completeness = attributions.reshape(len(x), -1).sum(axis=1, dtype=np.float64) - gap
    return attributions, outputs, completeness


def _integrated_attribution(backend: Backend, x: np.ndarray, target: Target, batch: int, steps: int = 50,
                            baseline: Any = 0.0, rule: str = "gausslegendre") -> Attribution:
    maps, outputs, _ = _integrated(backend, x, target, batch, steps, baseline, rule)
    return maps, outputs


@register("integrated_gradients", needs={INPUT_GRADIENTS}, kind=INPUT, options=[STEPS, BASELINE, RULE],
          attribute=_integrated_attribution)
def integrated_gradients(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
                         steps: int = 50, baseline: Any = 0.0, rule: str = "gausslegendre",
                         batch_size: Optional[int] = None) -> Explanation:
    """Integrated Gradients (Sundararajan et al. 2017), Captum 0.9's rules; ``extras["completeness_error"]``."""
    maps, outputs, completeness = _integrated(backend, x, target, backward_batch(backend, batch_size, x), steps, baseline, rule)
    exp = _explanation("integrated_gradients", maps, outputs, target)
    exp.extras["completeness_error"] = completeness
    return exp


# ---------------------------------------------------------------- SmoothGrad

SMOOTHGRAD_VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")
_TRACKED = {"smoothgrad": ("mean",), "smoothgrad_sq": ("mean_sq",), "vargrad": ("variance",)}


def _base_name(value: Any) -> str:
    method = lookup(value) if isinstance(value, str) else None
    if method is None or not method.smoothable:
        smoothable = [m.name for m in METHODS.values() if m.smoothable]
        raise InvalidInputError(f"base must be one of {', '.join(smoothable)}; got {value!r}")
    return method.name


def _base_options(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"base_options must be a dict of the base method's options, got {value!r}")
    return dict(value)


@register("smoothgrad", needs={INPUT_GRADIENTS}, kind=INPUT, not_exportable="it draws fresh noise on every call: "
          "a file can only repeat stored noise, which for an image weighs as much as a model", options=[
    Option("samples", 25, "noisy samples per image (25)", positive_int("samples"), int),
    Option("noise", 0.15, "noise sigma as a fraction of each image's value range (0.15)",
           fraction("noise", what="a fraction >= 0 of each image's value range"), float),
    SEED,
    Option("variant", "smoothgrad", " | ".join(SMOOTHGRAD_VARIANTS) + " (smoothgrad)",
           one_of("variant", SMOOTHGRAD_VARIANTS), str),
    Option("base", "saliency", "the input attribution to smooth: any of "
           "saliency, guided_backprop, deconvnet, input_x_gradient, integrated_gradients, lrp, deeplift (saliency)", _base_name, str),
    Option("base_options", None, "the base method's own options, a dict (Python only)", _base_options),
])
def smoothgrad(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
               samples: int = 25, noise: float = 0.15, seed: Optional[int] = 0,
               variant: str = "smoothgrad", base: str = "saliency", base_options: Optional[Dict[str, Any]] = None,
               batch_size: Optional[int] = None) -> Explanation:
    """SmoothGrad (Smilkov et al. 2017): statistics of an input attribution at ``x + eps`` over ``samples`` draws.

    ``eps ~ N(0, sigma^2)``, ``sigma = noise * (max(x_i) - min(x_i))`` per image. ``variant``:
    ``smoothgrad`` (mean), ``smoothgrad_sq`` (mean of squares) or ``vargrad`` (variance). ``base``:
    any input attribution (saliency, guided_backprop, deconvnet, input_x_gradient,
    integrated_gradients) with its ``base_options``. Each image draws its noise from its own seeded
    generator, so the result does not depend on ``batch_size``. The target of the unperturbed image
    is explained.
    """
    base_method = require(backend, base, context=f"smoothgrad's base={base!r}: ", instead="Use base='saliency'")
    extra = base_method.check_options(base_options or {}, skip=("batch_size",), context="base_options: ")
    batch = backward_batch(backend, batch_size, x)
    outputs, goal = clean_pass(backend, x, target, batch)
    sigma = noise_sigma(x, noise)
    generators = image_generators(seed, len(x))
    stats = RunningStats(x.shape, track=_TRACKED[variant])
    assert base_method.attribute is not None  # the base option's check (_base_name) admits smoothable methods only
    items = np.repeat(np.arange(len(x)), samples)  # image-major: image n's samples are consecutive
    with progress.task("smoothgrad", len(items)) as advance:
        for sl in batches(len(items), batch):
            images = items[sl]
            owners, counts = np.unique(images, return_counts=True)
            noisy = x[images].copy()
            offset = 0
            for n, k in zip(owners, counts):
                eps = generators[n].standard_normal((k,) + x.shape[1:], dtype=np.float32) * np.float32(sigma[n])
                noisy[offset:offset + k] += eps
                offset += k
            maps, _ = base_method.attribute(backend, noisy, goal.target_for(images), batch, **extra)
            offset = 0
            for n, k in zip(owners, counts):
                stats.update(n, maps[offset:offset + k])
                offset += k
            advance(sl.stop - sl.start)
    result = {"smoothgrad": lambda: stats.mean, "smoothgrad_sq": lambda: stats.mean_sq,
              "vargrad": stats.variance}[variant]()
    assert result is not None  # the variant's statistic is tracked
    return Explanation("smoothgrad", result.astype(np.float32), goal.record, outputs)
