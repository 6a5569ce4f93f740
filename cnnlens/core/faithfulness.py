"""Faithfulness and sanity measures of maps (NumPy only).

Deletion and insertion curves (Petsiuk et al. 2018, RISE), the energy of a map inside an
object's box, and the similarity measures of the randomisation test (Adebayo et al. 2018):
SSIM (Wang et al. 2004) and the rank correlation of absolute values.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union, cast

import numpy as np

from . import progress
from .errors import InvalidInputError
from .methods.common import batch_size as _batch_size, batches as _batches, check_images
from .metrics import spearman
from .occlusion import as_baseline
from .targets import Objective, Target, class_scores as _as_class_scores, objective, pick

#: Any object implementing ``cnnlens.backends.base.Backend`` (the core never imports backends).
Backend = Any

Baseline = Union[float, np.ndarray, str]

SCORES = ("probability", "logit")

_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_SIZE, _SSIM_SIGMA = 11, 1.5
_BLUR_FRACTION = 0.05  # default blur sigma: 5 % of the shorter image side
_BLUR_TRUNCATE = 4.0  # kernel radius in sigmas (as scipy.ndimage.gaussian_filter)


# ---------------------------------------------------------------- orders and perturbations


def importance(maps: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """Per-pixel importance (N, H, W) of ``dtype``: (N, H, W) maps as they are, (N, C, H, W) maps
    (gradient methods) summed as |g| over channels. Other shapes: ValueError."""
    maps = np.asarray(maps, dtype=dtype)
    if maps.ndim == 4:
        summed: np.ndarray = np.abs(maps).sum(axis=1)
        return summed
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W) or (N, C, H, W), got shape {maps.shape}")
    return maps


def pixel_order(imp: np.ndarray) -> np.ndarray:
    """Row-major pixel indices (N, H*W) int64, most important first; ties keep the lower index first."""
    imp = np.asarray(imp, dtype=np.float64)
    flat = imp.reshape(len(imp), -1)
    return np.argsort(-flat, axis=1, kind="stable").astype(np.int64)


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """Pixels changed at each of the ``steps + 1`` points of a curve: round(linspace(0, pixels, steps + 1)).

    The first is 0 and the last ``pixels``. Half-way values round to even (NumPy's rounding).
    """
    _check_positive_int(steps, "steps", "e.g. steps=20")
    if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < 0:
        raise InvalidInputError(f"pixels must be an int >= 0, got {pixels!r}")
    return np.round(np.linspace(0, int(pixels), int(steps) + 1)).astype(np.int64)


def _check_positive_int(value: Any, name: str, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive int ({example}), got {value!r}")


def ranks_of(order: np.ndarray) -> np.ndarray:
    """The inverse permutation of each row of ``order`` (..., P): the place of every pixel in the order."""
    order = np.asarray(order, dtype=np.int64)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(order.shape[-1]), order.shape), axis=-1)
    return ranks


def blend_by_rank(start: np.ndarray, end: np.ndarray, ranks: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B, C, H, W): pixels whose rank (B, H*W) is below ``counts`` (B,) from ``end``, the rest from
    ``start`` (deletion / insertion's images: the first ``counts[b]`` pixels of the order changed)."""
    b, h, w = len(counts), start.shape[-2], start.shape[-1]
    take_end = (ranks < np.asarray(counts)[:, None]).reshape(b, 1, h, w)
    return np.where(take_end, end, start)


# ---------------------------------------------------------------- baselines


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """A normalised 1-D Gaussian (2 * radius + 1,) float64."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    normalised: np.ndarray = kernel / kernel.sum()
    return normalised


def _filter_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Correlate ``values`` with ``kernel`` along ``axis`` without padding (the valid part only)."""
    values = np.moveaxis(values, axis, -1)
    size = values.shape[-1] - len(kernel) + 1
    out = np.zeros(values.shape[:-1] + (size,), dtype=np.float64)
    for k, weight in enumerate(kernel):  # a loop over the kernel's taps, never over pixels
        out += weight * values[..., k:k + size]
    return np.moveaxis(out, -1, axis)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the last two axes, separable (rows, then columns), float64.

    Edges are padded by reflection with the edge pixel repeated (``np.pad`` 'symmetric', which is
    ``scipy.ndimage``'s 'reflect'); the kernel reaches ``4 * sigma`` (scipy's default), so this
    equals ``scipy.ndimage.gaussian_filter(x, (0, .., sigma, sigma), mode='reflect')``.
    """
    radius = int(_BLUR_TRUNCATE * float(sigma) + 0.5)
    kernel = gaussian_kernel(float(sigma), radius)
    pad = [(0, 0)] * (x.ndim - 2) + [(radius, radius), (radius, radius)]
    padded = np.pad(np.asarray(x, dtype=np.float64), pad, mode="symmetric")
    return _filter_axis(_filter_axis(padded, kernel, -2), kernel, -1)


def baseline_image(x: np.ndarray, baseline: Baseline, sigma: Optional[float] = None) -> np.ndarray:
    """The reference images (N, C, H, W), in ``x``'s dtype, for deletion/insertion.

    ``baseline``: a number (every pixel that value), one value per channel (C,), a (C, H, W)
    array, or ``"blur"``: each image blurred by a Gaussian of ``sigma`` pixels (default 5 % of
    the shorter side; see :func:`gaussian_blur`).
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise InvalidInputError(f"images must have 4 axes (N, C, H, W), got shape {x.shape}")
    if isinstance(baseline, str):
        return _blurred(x, baseline, sigma)
    if sigma is not None:
        raise InvalidInputError("sigma is only used with baseline='blur': leave it out for other baselines")
    try:
        value = as_baseline(baseline, x.shape[1:])
    except InvalidInputError as error:
        raise InvalidInputError(f"{error}, or 'blur'") from None
    if not np.isfinite(value).all():
        raise InvalidInputError("baseline contains NaN or infinite values: give finite numbers (e.g. 0.0) or 'blur'")
    return np.ascontiguousarray(np.broadcast_to(value.astype(x.dtype), x.shape))


def _blurred(x: np.ndarray, name: str, sigma: Optional[float]) -> np.ndarray:
    if name != "blur":
        raise InvalidInputError(
            f"unknown baseline {name!r}: give 'blur', a number (e.g. 0.0), one value per channel, "
            f"or an array of shape {x.shape[1:]}"
        )
    if sigma is None:
        sigma = _BLUR_FRACTION * min(x.shape[2:])
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) \
            or not np.isfinite(sigma) or sigma <= 0:
        raise InvalidInputError(f"blur sigma must be a positive number of pixels (e.g. 5.0), got {sigma!r}")
    return gaussian_blur(x, float(sigma)).astype(x.dtype)


# ---------------------------------------------------------------- deletion and insertion


def auc(curve: np.ndarray, axis: int = -1) -> np.ndarray:
    """Trapezoidal area under curves sampled at evenly spaced fractions 0 .. 1 along ``axis``."""
    curve = np.moveaxis(np.asarray(curve, dtype=np.float64), axis, -1)
    points = curve.shape[-1]
    if points < 2:
        raise InvalidInputError(f"a curve needs at least 2 points for its area, got {points}")
    inner = curve.sum(axis=-1) - 0.5 * (curve[..., 0] + curve[..., -1])
    area: np.ndarray = inner / (points - 1)
    return area


def class_scores(logits: np.ndarray, classes: np.ndarray, score: str) -> np.ndarray:
    """Each row's ``score`` of its class, float64: the logit, or the softmax probability (stable)."""
    logits = _as_class_scores(np.asarray(logits, dtype=np.float64))
    if score == "logit":
        return pick(logits, classes)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = pick(shifted, classes) - np.log(np.exp(shifted).sum(axis=1))
    probability: np.ndarray = np.exp(log_p)
    return probability


def _check_maps(maps: Any, x: np.ndarray) -> np.ndarray:
    """Importance (N, H, W) of ``maps``, which must fit the images ``x`` (N, C, H, W)."""
    try:
        imp = importance(maps)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{error}: give one map per image, as an explanation's .maps") from None
    if imp.shape != (len(x),) + x.shape[2:]:
        raise InvalidInputError(
            f"maps of shape {np.shape(maps)} do not fit images of shape {x.shape}: give one "
            f"(H, W) or (C, H, W) map per image, at the images' size {x.shape[2:]}"
        )
    if not np.isfinite(imp).all():
        raise InvalidInputError("maps contain NaN or infinite values: they cannot order the pixels")
    return imp


def _curve_items(n: int, steps: int) -> Dict[str, np.ndarray]:
    """The perturbed images to score, as index arrays (image, curve, step), image-major.

    Deletion step 0 and insertion step ``steps`` are the unperturbed image, scored already.
    """
    deletion = np.arange(1, steps + 1)
    insertion = np.arange(0, steps)
    per_image_step = np.concatenate([deletion, insertion])
    per_image_curve = np.repeat([0, 1], steps)
    return {
        "image": np.repeat(np.arange(n), 2 * steps),
        "curve": np.tile(per_image_curve, n),
        "step": np.tile(per_image_step, n),
    }


def deletion_insertion(backend: Backend, x: np.ndarray, maps: np.ndarray, target: Target = None,
                       steps: int = 20, baseline: Baseline = 0.0, score: str = "probability",
                       batch_size: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Deletion and insertion curves (Petsiuk et al. 2018) of each image's target class.

    Pixels are ordered by :func:`importance` of ``maps`` (most important first). Deletion starts
    from the image and sets the most important pixels (all channels) to the baseline first;
    insertion starts from the baseline image and puts the most important pixels back first.
    At each of the ``steps + 1`` points (:func:`step_counts` pixels changed) the model's
    ``score`` ("probability": softmax; "logit") of the target class is recorded. ``target``:
    None (the class predicted for the unperturbed image), an int, one int per image, or output
    weights (then the score is ``sum(w * output)`` whatever ``score`` says).
    ``baseline``: see :func:`baseline_image`. All perturbed images go through the model
    ``batch_size`` at a time, across images.

    Returns float64 ``deletion`` and ``insertion`` (N, steps + 1), their areas ``deletion_auc``
    and ``insertion_auc`` (N,) (:func:`auc`), and the int64 ``target`` (N,). A faithful map
    has a low deletion and a high insertion area.
    """
    x = check_images(x)
    imp = _check_maps(maps, x)
    _check_positive_int(steps, "steps", "e.g. steps=20")
    if score not in SCORES:
        raise InvalidInputError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    base = baseline_image(x, baseline)
    batch = _batch_size(backend, batch_size, "forward", x)
    logits = np.concatenate([backend.forward(x[sl]).logits for sl in _batches(len(x), batch)])
    goal = objective(target, logits)
    curves = np.empty((len(x), 2, steps + 1), dtype=np.float64)
    clean = _scores(goal, logits, np.arange(len(x)), score)
    curves[:, 0, 0], curves[:, 1, steps] = clean, clean
    _score_perturbed(backend, x, base, ranks_of(pixel_order(imp)), goal, score, steps, batch, curves)
    return {
        "deletion": curves[:, 0],
        "insertion": curves[:, 1],
        "deletion_auc": auc(curves[:, 0]),
        "insertion_auc": auc(curves[:, 1]),
        "target": goal.record,
    }


def _scores(goal: Objective, outputs: np.ndarray, owners: np.ndarray, score: str) -> np.ndarray:
    """The recorded score: of a class, its ``score``; of output weights, ``sum(w * output)``."""
    if goal.classes is None:
        return goal.score(outputs, owners)
    return class_scores(outputs, goal.classes[owners], score)


def _score_perturbed(backend: Backend, x: np.ndarray, base: np.ndarray, ranks: np.ndarray,
                     goal: Objective, score: str, steps: int, batch: int, curves: np.ndarray) -> None:
    """Fill ``curves`` (N, 2, steps + 1) with the scores of the perturbed images, batch by batch."""
    items = _curve_items(len(x), steps)
    counts = step_counts(ranks.shape[1], steps)
    with progress.task("deletion/insertion", len(items["image"])) as advance:
        for sl in _batches(len(items["image"]), batch):
            n, curve, step = items["image"][sl], items["curve"][sl], items["step"][sl]
            insertion = (curve == 1)[:, None, None, None]
            start = np.where(insertion, base[n], x[n])
            end = np.where(insertion, x[n], base[n])
            scores = backend.forward(blend_by_rank(start, end, ranks[n], counts[step])).logits
            curves[n, curve, step] = _scores(goal, scores, n, score)
            advance(sl.stop - sl.start)


# ---------------------------------------------------------------- localisation


def energy_in_box(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction (N,) of each map's positive energy, ``sum(max(importance, 0))``, inside its box.

    ``maps`` (N, H, W) or (N, C, H, W) (see :func:`importance`); ``boxes`` (N, 4) as
    (top, left, bottom, right) in pixels, bottom/right exclusive (as in ``metrics.pointing_hits``).
    An all-zero (or all-negative) map gives 0.0: it puts none of its evidence in the box.

    >>> maps = np.zeros((1, 4, 4)); maps[0, 0, 0] = 3.0; maps[0, 3, 3] = 1.0
    >>> energy_in_box(maps, [[0, 0, 2, 2]])
    array([0.75])
    """
    try:
        energy = np.maximum(importance(maps), 0.0)
    except ValueError as error:
        raise InvalidInputError(str(error)) from None
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (len(energy), 4):
        raise InvalidInputError(
            f"boxes must have shape ({len(energy)}, 4): one (top, left, bottom, right) per map; got {boxes.shape}"
        )
    return box_share(energy, boxes, empty=0.0)


def box_share(heat: np.ndarray, boxes: np.ndarray, empty: float) -> np.ndarray:
    """The share (N,) of each non-negative map ``heat`` (N, H, W) inside its box (``boxes`` (N, 4),
    (top, left, bottom, right), bottom/right exclusive; a row of NaN: no box, NaN). A map with no
    heat at all scores ``empty``: 0.0 for the metric :func:`energy_in_box`, NaN for the audit's
    statistics (where an empty map has none)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rows = np.arange(heat.shape[1])[None, :]
    cols = np.arange(heat.shape[2])[None, :]
    top, left, bottom, right = (b[:, None] for b in boxes.T)
    inside = ((rows >= top) & (rows < bottom))[:, :, None] & ((cols >= left) & (cols < right))[:, None, :]
    total = heat.sum(axis=(1, 2), dtype=np.float64)
    within = (heat * inside).sum(axis=(1, 2), dtype=np.float64)
    share = np.where(total > 0, within / np.where(total > 0, total, 1.0), empty)
    result: np.ndarray = np.where(np.isnan(boxes).any(axis=1), np.nan, share)
    return result


# ---------------------------------------------------------------- similarity (randomisation test)


def normalise_unit(maps: np.ndarray) -> np.ndarray:
    """Per image (first axis), |maps| divided by its maximum, float64; an all-zero map stays 0.

    Use it on maps before :func:`ssim`, which expects values in [0, 1].
    """
    magnitude = np.abs(np.asarray(maps, dtype=np.float64))
    peak = magnitude.reshape(len(magnitude), -1).max(axis=1)
    peak = peak.reshape((-1,) + (1,) * (magnitude.ndim - 1))
    return magnitude / np.where(peak > 0, peak, 1.0)


def _check_pair(a: Any, b: Any, name: str) -> Tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2 or len(a) == 0:
        raise InvalidInputError(
            f"{name} compares two stacks of maps of equal shape (N, ...), got {a.shape} and {b.shape}"
        )
    return a, b


def _local_means(values: np.ndarray) -> np.ndarray:
    """Gaussian-weighted means (11x11, sigma 1.5) over the valid windows of (N, H, W), or one
    uniform window over the whole image when it is smaller than 11x11: (N, h, w)."""
    if min(values.shape[1:]) < _SSIM_SIZE:
        means: np.ndarray = values.mean(axis=(1, 2), keepdims=True)
        return means
    kernel = gaussian_kernel(_SSIM_SIGMA, _SSIM_SIZE // 2)
    return _filter_axis(_filter_axis(values, kernel, 1), kernel, 2)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity (Wang et al. 2004) per image of two (N, H, W) stacks, float64 (N,).

    The Gaussian window: 11x11, sigma 1.5, with K1 = 0.01, K2 = 0.03 and ``data_range`` L; local
    (biased, weighted) statistics at every position where the window fits (no padding), and
    the mean of the SSIM map over them. An image smaller than 11 on either side is one window
    (plain means and variances). Callers normalise maps to [0, 1] first (:func:`normalise_unit`).
    """
    a, b = _check_pair(a, b, "ssim")
    if a.ndim != 3:
        raise InvalidInputError(f"ssim takes (N, H, W) stacks, got shape {a.shape}: reduce channels first (importance)")
    # cast: np.isscalar's TypeIs narrows data_range to NumPy's scalar union (without float), which float() rejects
    if isinstance(data_range, bool) or not np.isscalar(data_range) or not float(cast(float, data_range)) > 0:
        raise InvalidInputError(f"data_range must be a positive number (1.0 for maps in [0, 1]), got {data_range!r}")
    data_range = cast(float, data_range)  # the float it was declared (undoes np.isscalar's narrowing)
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _local_means(a), _local_means(b)
    var_a = _local_means(a * a) - mu_a ** 2
    var_b = _local_means(b * b) - mu_b ** 2
    cov = _local_means(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    similarity: np.ndarray = index.mean(axis=(1, 2))
    return similarity


def rank_correlation_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image (first axis), the Spearman correlation of |a| and |b| over all its values, (N,)."""
    a, b = _check_pair(a, b, "rank_correlation_abs")
    return np.array([spearman(np.abs(ai), np.abs(bi)) for ai, bi in zip(a, b)], dtype=np.float64)
