"""The methods: each asks a backend for logits, activations and gradients as NumPy arrays and
does the rest with the core functions. METHODS.md defines what each one computes."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import cam as cam_ops
from . import progress
from .errors import InvalidInputError, LayerError, TargetError, UnknownMethodError, UnsupportedError
from .noise import RunningStats, image_generators, noise_sigma
from .occlusion import OcclusionGrid, as_baseline
from .resize import resize_bilinear
from .targets import ClassSeed, Target, is_single, one_hot, pick, resolve_targets
from .types import Explanation

#: Any object implementing ``cnnlens.backends.base.Backend`` (the core never imports backends).
Backend = Any

LayerSpec = Union[None, str, Sequence[str]]


# ---------------------------------------------------------------- helpers


def _batches(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _batch_size(backend: Backend, value: Optional[int], kind: str, x: np.ndarray) -> int:
    if value is None:
        return max(1, int(backend.batch_size(kind, x.shape[1:])))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"batch_size must be a positive int, got {value!r}")
    return int(value)


def _target_slice(target: Target, sl: slice) -> Target:
    if is_single(target):
        return target
    return list(target)[sl] if not isinstance(target, np.ndarray) else target.reshape(-1)[sl]


def _check_target_length(target: Target, n: int) -> None:
    if is_single(target):
        return
    try:
        length = len(target)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidInputError(f"target must be None, an int, or one int per image; got {target!r}") from None
    if length != n:
        raise TargetError(
            f"got {length} targets for a batch of {n} images: give one int for all images or exactly one per image"
        )


def _layer_names(backend: Backend, layer: LayerSpec, x: np.ndarray) -> Tuple[List[str], bool]:
    """(canonical names, whether a list was given)."""
    if layer is None:
        return [backend.default_layer(tuple(x.shape))], False
    if isinstance(layer, str):
        return [backend.resolve_layer(layer)], False
    names = list(layer)
    if not names or not all(isinstance(n, str) for n in names):
        raise LayerError(f"layer must be a layer name or a non-empty list of names, got {layer!r}")
    return [backend.resolve_layer(n) for n in names], True


def _spatial(name: str, activation: np.ndarray, method: str) -> np.ndarray:
    if activation.ndim != 4:
        raise LayerError(
            f"layer {name!r} outputs shape {tuple(activation.shape)}, not a (N, K, h, w) map, so {method} "
            f"cannot use it: pick a convolutional layer (`cnnlens.layers(model)` shows output shapes)"
        )
    return activation


def _clean_logits(backend: Backend, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([backend.forward(x[sl]).logits for sl in _batches(len(x), batch)])


def _layer_value(layer_names: List[str], as_list: bool) -> Union[str, List[str]]:
    return list(layer_names) if as_list else layer_names[0]


# ---------------------------------------------------------------- gradient methods


def _input_gradient(backend, x, target, relu, batch_size):
    batch = _batch_size(backend, batch_size, "backward", x)
    grads, logits = [], []
    for sl in _batches(len(x), batch):
        chunk = _target_slice(target, sl)
        p = backend.backward(x[sl], ClassSeed(chunk),
                             relu=relu, input_grad=True)
        grads.append(p.input_grad)
        logits.append(p.logits)
    logits = np.concatenate(logits)
    return np.concatenate(grads).astype(np.float32), logits, resolve_targets(target, logits)


def saliency(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
             batch_size: Optional[int] = None) -> Explanation:
    """Vanilla gradient (Simonyan et al. 2013): ``dy_c/dx``, (N, C, H, W)."""
    maps, logits, classes = _input_gradient(backend, x, target, "plain", batch_size)
    return Explanation("saliency", maps, classes, logits)


def guided_backprop(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
                    batch_size: Optional[int] = None) -> Explanation:
    """Guided backpropagation (Springenberg et al. 2014): ReLU backward ``1{s>0} 1{g>0} g``, (N, C, H, W)."""
    maps, logits, classes = _input_gradient(backend, x, target, "guided", batch_size)
    return Explanation("guided_backprop", maps, classes, logits)


def deconvnet(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
              batch_size: Optional[int] = None) -> Explanation:
    """Deconvnet (Zeiler & Fergus 2014): ReLU backward ``1{g>0} g``, (N, C, H, W)."""
    maps, logits, classes = _input_gradient(backend, x, target, "deconv", batch_size)
    return Explanation("deconvnet", maps, classes, logits)


SMOOTHGRAD_VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")
_BASE_RELU = {"saliency": "plain", "guided_backprop": "guided", "deconvnet": "deconv"}


def smoothgrad(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
               samples: int = 25, noise: float = 0.15, seed: Optional[int] = 0,
               variant: str = "smoothgrad", base: str = "saliency",
               batch_size: Optional[int] = None) -> Explanation:
    """SmoothGrad (Smilkov et al. 2017): statistics of ``dy_c/dx`` at ``x + eps`` over ``samples`` draws.

    ``eps ~ N(0, sigma^2)``, ``sigma = noise * (max(x_i) - min(x_i))`` per image. ``variant``:
    ``smoothgrad`` (mean), ``smoothgrad_sq`` (mean of squares) or ``vargrad`` (variance).
    ``base`` picks the gradient: saliency, guided_backprop or deconvnet. Each image draws its
    noise from its own seeded generator, so the result does not depend on ``batch_size``.
    The class explained is the one of the unperturbed image. (N, C, H, W).
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples <= 0:
        raise InvalidInputError(f"samples must be a positive int, got {samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) or not np.isfinite(noise) or noise < 0:
        raise InvalidInputError(f"noise must be a fraction >= 0 of each image's value range, got {noise!r}")
    if variant not in SMOOTHGRAD_VARIANTS:
        raise InvalidInputError(f"variant must be one of {', '.join(SMOOTHGRAD_VARIANTS)}; got {variant!r}")
    if base not in _BASE_RELU:
        raise InvalidInputError(f"base must be one of {', '.join(_BASE_RELU)}; got {base!r}")
    if base != "saliency" and "relu_rules" not in backend.capabilities:
        raise UnsupportedError(f"smoothgrad with base={base!r} needs ReLU rules, which the {backend.name} backend lacks: use base='saliency'")
    batch = _batch_size(backend, batch_size, "backward", x)
    logits = _clean_logits(backend, x, batch)
    classes = resolve_targets(target, logits)
    sigma = noise_sigma(x, noise)
    generators = image_generators(seed, len(x))
    stats = RunningStats(x.shape, track={"smoothgrad": ("mean",), "smoothgrad_sq": ("mean_sq",),
                                         "vargrad": ("variance",)}[variant])
    items = np.repeat(np.arange(len(x)), samples)  # image-major: image n's samples are consecutive
    with progress.task("smoothgrad", len(items)) as advance:
        for sl in _batches(len(items), batch):
            images = items[sl]
            owners, counts = np.unique(images, return_counts=True)
            noisy = x[images].copy()
            offset = 0
            for n, k in zip(owners, counts):
                eps = generators[n].standard_normal((k,) + x.shape[1:], dtype=np.float32) * np.float32(sigma[n])
                noisy[offset:offset + k] += eps
                offset += k
            p = backend.backward(noisy, one_hot(classes[images], logits.shape[1]), relu=_BASE_RELU[base],
                                 input_grad=True)
            offset = 0
            for n, k in zip(owners, counts):
                stats.update(n, p.input_grad[offset:offset + k])
                offset += k
            advance(sl.stop - sl.start)
    if variant == "smoothgrad":
        maps = stats.mean
    elif variant == "smoothgrad_sq":
        maps = stats.mean_sq
    else:
        maps = stats.variance()
    options = dict(samples=samples, noise=noise, seed=seed, variant=variant, base=base)
    return Explanation("smoothgrad", maps.astype(np.float32), classes, logits, options=options)


# ---------------------------------------------------------------- the CAM family


def _gradcam_maps(backend, x, target, layer, batch_size, method, guided=False):
    """Grad-CAM maps (N, L, H, W) or (N, H, W); with ``guided`` also the guided-backprop input
    gradient from the same forward pass."""
    names, as_list = _layer_names(backend, layer, x)
    batch = _batch_size(backend, batch_size, "backward", x)
    maps = np.empty((len(x), len(names)) + x.shape[2:], dtype=np.float32)
    guided_grads = np.empty(x.shape, dtype=np.float32) if guided else None
    logits = []
    for sl in _batches(len(x), batch):
        chunk = _target_slice(target, sl)
        p = backend.backward(x[sl], ClassSeed(chunk),
                             layers=names, relu="guided" if guided else "plain", input_grad=guided)
        for i, name in enumerate(names):
            activation = _spatial(name, p.activations[name], method)
            maps[sl, i] = resize_bilinear(cam_ops.gradcam(activation, p.gradients[name]), x.shape[2:])
        if guided:
            guided_grads[sl] = p.input_grad
        logits.append(p.logits)
    logits = np.concatenate(logits)
    cams = maps if as_list else maps[:, 0]
    return cams, guided_grads, logits, resolve_targets(target, logits), _layer_value(names, as_list)


def gradcam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
            batch_size: Optional[int] = None) -> Explanation:
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(sum_k alpha_k A_k)``, resized bilinearly, (N, H, W).

    A list of layers is served by one forward and one backward pass: (N, L, H, W).
    """
    maps, _, logits, classes, names = _gradcam_maps(backend, x, target, layer, batch_size, "gradcam")
    return Explanation("gradcam", maps, classes, logits, layer=names)


def guided_gradcam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
                   batch_size: Optional[int] = None) -> Explanation:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM, (N, C, H, W)
    ((N, L, C, H, W) for a list of layers). One forward pass serves both gradients."""
    cams, guided, logits, classes, names = _gradcam_maps(backend, x, target, layer, batch_size,
                                                         "guided_gradcam", guided=True)
    return Explanation("guided_gradcam", cam_ops.guided_gradcam(guided, cams), classes, logits, layer=names)


def cam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
        batch_size: Optional[int] = None) -> Explanation:
    """CAM (Zhou et al. 2016) for a model ending in GAP -> linear: ``ReLU(sum_k W[c, k] A_k)``, resized, (N, H, W)."""
    if layer is not None and not isinstance(layer, str):
        raise LayerError("cam takes one layer (the tensor the head pools), not a list")
    batch = _batch_size(backend, batch_size, "forward", x)
    maps = np.empty((len(x),) + x.shape[2:], dtype=np.float32)
    logits, used = [], None
    for sl in _batches(len(x), batch):
        lg, features, weights, used = backend.linear_head(x[sl], layer)
        classes = resolve_targets(_target_slice(target, sl), lg)
        maps[sl] = resize_bilinear(cam_ops.cam(features, weights, classes), x.shape[2:])
        logits.append(lg)
    logits = np.concatenate(logits)
    return Explanation("cam", maps, resolve_targets(target, logits), logits, layer=used)


def scorecam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
             batch_size: Optional[int] = None) -> Explanation:
    """Score-CAM (Wang et al. 2020): ``ReLU(sum_k beta_k A_k)``, ``beta = softmax_k y_c(x * M_k)``, with
    ``M_k`` the channel upsampled to the input and min-max normalised; resized, (N, H, W).

    The N * K masked images go through the model ``batch_size`` at a time, across images; channels
    that are constant (dead ReLU channels) all share the zero image, scored once.
    """
    names, as_list = _layer_names(backend, layer, x)
    if as_list and len(names) != 1:
        raise LayerError("scorecam takes one layer at a time")
    name = names[0]
    batch = _batch_size(backend, batch_size, "forward", x)
    parts, logit_parts = [], []
    for sl in _batches(len(x), batch):
        p = backend.forward(x[sl], layers=[name])
        parts.append(_spatial(name, p.activations[name], "scorecam"))
        logit_parts.append(p.logits)
    activations, logits = np.concatenate(parts), np.concatenate(logit_parts)
    classes = resolve_targets(target, logits)
    k = activations.shape[1]
    scores = np.empty((len(x), k), dtype=np.float64)
    # A constant channel's mask is all zeros, so its masked image is the zero image whatever the
    # image: one forward pass scores every such channel of every image.
    constant = activations.max(axis=(2, 3)) == activations.min(axis=(2, 3))
    if constant.any():
        zero_logits = backend.forward(np.zeros((1,) + x.shape[1:], dtype=x.dtype)).logits[0]
        scores[constant] = zero_logits[np.broadcast_to(classes[:, None], constant.shape)[constant]]
    owners, channels = np.nonzero(~constant)
    with progress.task("scorecam", len(owners)) as advance:
        for sl in _batches(len(owners), batch):
            n, c = owners[sl], channels[sl]
            masks = cam_ops.normalize_masks(resize_bilinear(activations[n, c], x.shape[2:]))  # (B, H, W)
            scores[n, c] = pick(backend.forward(x[n] * masks[:, None]).logits, classes[n])
            advance(sl.stop - sl.start)
    beta = cam_ops.softmax(scores, axis=1)
    maps = resize_bilinear(cam_ops.weighted_sum(activations, beta), x.shape[2:])
    return Explanation("scorecam", maps, classes, logits, layer=name)


# ---------------------------------------------------------------- forward-only methods


def occlusion(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
              window: Union[int, Tuple[int, int], None] = None, stride: Union[int, Tuple[int, int], None] = None,
              baseline: Union[float, np.ndarray] = 0.0, batch_size: Optional[int] = None) -> Explanation:
    """Occlusion (Zeiler & Fergus 2014): the mean drop of ``y_c`` over the windows covering each pixel, (N, H, W).

    ``window`` defaults to 1/14 of the shorter side (16 px at 224), ``stride`` to half the window.
    Windows cover all channels; ``baseline`` is a number, one value per channel, or a (C, H, W) array.
    """
    side = min(x.shape[2:])
    window = max(1, int(round(side / 14))) if window is None else window
    if stride is None:
        w = window if np.isscalar(window) else min(window)  # type: ignore[arg-type]
        stride = max(1, int(w) // 2)
    grid = OcclusionGrid(x.shape[2:], window, stride)
    fill = as_baseline(baseline, x.shape[1:])
    batch = _batch_size(backend, batch_size, "forward", x)
    logits = _clean_logits(backend, x, batch)
    classes = resolve_targets(target, logits)
    clean = pick(logits, classes)
    positions = len(grid)
    owners = np.repeat(np.arange(len(x)), positions)
    where = np.tile(np.arange(positions), len(x))
    drops = np.empty(len(owners), dtype=np.float64)
    with progress.task("occlusion", len(owners)) as advance:
        for sl in _batches(len(owners), batch):
            scores = backend.forward(grid.occlude(x, owners[sl], where[sl], fill)).logits
            drops[sl] = clean[owners[sl]] - pick(scores, classes[owners[sl]])
            advance(sl.stop - sl.start)
    maps = grid.accumulate(drops.reshape(len(x), positions))
    options = dict(window=grid.window, stride=grid.stride)
    return Explanation("occlusion", maps, classes, logits, options=options)


def feature_maps(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
                 batch_size: Optional[int] = None) -> Explanation:
    """A layer's activations ``A``, (N, K, h, w) (the last spatial layer when ``layer`` is None)."""
    names, as_list = _layer_names(backend, layer, x)
    batch = _batch_size(backend, batch_size, "forward", x)
    parts: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    logits = []
    for sl in _batches(len(x), batch):
        p = backend.forward(x[sl], layers=names)
        for n in names:
            parts[n].append(p.activations[n])
        logits.append(p.logits)
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
    logits = np.concatenate(logits)
    return Explanation("feature_maps", maps, resolve_targets(target, logits), logits,
                       layer=_layer_value(names, as_list))


# ---------------------------------------------------------------- registry and dispatch


@dataclass(frozen=True)
class Method:
    """A method's function, the backend capabilities it needs, and whether it takes a layer."""

    function: Callable[..., Explanation]
    needs: FrozenSet[str]
    layered: bool = False

    @property
    def options(self) -> Dict[str, Any]:
        """Keyword options and their defaults."""
        params = inspect.signature(self.function).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


METHODS: Dict[str, Method] = {
    "saliency": Method(saliency, frozenset({"input_gradients"})),
    "guided_backprop": Method(guided_backprop, frozenset({"input_gradients", "relu_rules"})),
    "deconvnet": Method(deconvnet, frozenset({"input_gradients", "relu_rules"})),
    "smoothgrad": Method(smoothgrad, frozenset({"input_gradients"})),
    "gradcam": Method(gradcam, frozenset({"layer_gradients"}), layered=True),
    "guided_gradcam": Method(guided_gradcam, frozenset({"layer_gradients", "input_gradients", "relu_rules"}), layered=True),
    "cam": Method(cam, frozenset({"linear_head"}), layered=True),
    "scorecam": Method(scorecam, frozenset({"activations"}), layered=True),
    "occlusion": Method(occlusion, frozenset({"forward"})),
    "feature_maps": Method(feature_maps, frozenset({"activations"}), layered=True),
}


def supported_methods(capabilities: FrozenSet[str]) -> List[str]:
    """The method names a backend with these capabilities can run."""
    return [name for name, m in METHODS.items() if m.needs <= capabilities]


def check_images(x: Any) -> np.ndarray:
    """Validated float32 (N, C, H, W) images."""
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"images must be a float array of shape (N, C, H, W): {error}") from None
    if x.ndim == 3:
        channels_last = x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4)
        hint = (" It looks like one image (H, W, C): use x.transpose(2, 0, 1)[None]." if channels_last else
                " It looks like one image (C, H, W): add a batch axis with x[None].")
        raise InvalidInputError(f"images must have 4 axes (N, C, H, W), got shape {x.shape}.{hint}")
    if x.ndim != 4:
        raise InvalidInputError(f"images must have 4 axes (N, C, H, W), got shape {x.shape}")
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] > 4:
        raise InvalidInputError(
            f"images of shape {x.shape} look channels-last (N, H, W, C): cnnlens wants (N, C, H, W); "
            f"use x.transpose(0, 3, 1, 2)"
        )
    if 0 in x.shape:
        raise InvalidInputError(f"images must not be empty, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("images contain NaN or infinite values: clean or re-normalise them first")
    return np.ascontiguousarray(x)


def run(backend: Backend, x: Any, method: str, target: Target = None, layer: LayerSpec = None,
        **options: Any) -> Explanation:
    """Validate the request, then run ``method`` on ``backend``."""
    if method not in METHODS:
        lowered = {m.lower(): m for m in METHODS}
        close = [lowered[c] for c in difflib.get_close_matches(str(method).lower(), lowered, n=3)]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownMethodError(f"unknown method {method!r}.{hint} Methods: {', '.join(METHODS)}")
    spec = METHODS[method]
    missing = spec.needs - backend.capabilities
    if missing:
        limits = getattr(backend, "limits", None) or {}
        reasons = list(dict.fromkeys(limits[m] for m in sorted(missing) if m in limits))
        why = f" for this model ({'; '.join(reasons)})" if reasons else ""
        raise UnsupportedError(
            f"{method} needs {', '.join(sorted(missing))}, which the {backend.name} backend does not "
            f"provide{why}. On this backend use one of: {', '.join(supported_methods(backend.capabilities))}"
        )
    allowed = spec.options
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) if allowed else "none"
        raise InvalidInputError(f"{method} has no option {', '.join(map(repr, unknown))}; its options: {listed}")
    if layer is not None and not spec.layered:
        raise LayerError(f"{method} explains the input and takes no layer; layers are for the CAM family and feature_maps")
    images = check_images(x)
    _check_target_length(target, len(images))
    result = spec.function(backend, images, target, layer, **options)
    result.options = {**{k: v for k, v in allowed.items()}, **options, **result.options}
    return result
