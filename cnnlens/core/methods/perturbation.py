"""Methods that only run the model forward on changed inputs (or a changed layer): Score-CAM and
Ablation-CAM ((N, H, W), a layer's channels weighted by what they do to the score), occlusion and
RISE ((N, H, W), what hiding parts of the image does to the score)."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union, cast

import numpy as np

from .. import cam as cam_ops
from .. import progress
from ..errors import InvalidInputError
from ..backend import ACTIVATIONS, FORWARD, INCREMENTAL_OCCLUSION, REPLACE_LAYER, Occluding
from ..occlusion import OcclusionGrid, as_baseline, as_pair
from ..resize import resize_bilinear
from ..rise import RiseMasks
from ..targets import Objective, Target, objective
from ..types import Explanation
from ..tokens import ReshapeSpec
from .common import Backend, LayerMaps, LayerSpec, batches, clean_pass, forward_batch, forward_layers, one_layer
from .registry import BASELINE, CAM, ONE_LAYER, RESHAPE, SEED, Option, fraction, positive_int, register


def _layer_activations(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, batch: int, method: str,
                       reshape: ReshapeSpec) -> Tuple[str, np.ndarray, np.ndarray, Objective, LayerMaps]:
    """(layer name, its activations as it outputs them, outputs, objective, how they read as maps)
    from one forward pass per batch."""
    name = one_layer(backend, layer, x, method)
    activations, outputs = forward_layers(backend, x, [name], batch)
    return name, activations[name], outputs, objective(target, outputs), LayerMaps(backend, x, reshape, method, layer)


@register("scorecam", needs={ACTIVATIONS}, kind=CAM, layer=ONE_LAYER, options=[RESHAPE])
def scorecam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *, reshape: ReshapeSpec = None,
             batch_size: Optional[int] = None) -> Explanation:
    """Score-CAM (Wang et al. 2020): ``ReLU(sum_k beta_k A_k)``, ``beta = softmax_k y_c(x * M_k)``.

    ``M_k`` is channel k upsampled to the input and min-max normalised. The N * K masked images go
    through the model ``batch_size`` at a time, across images; channels that are constant (dead
    ReLU channels) all share the zero image, scored once.
    """
    batch = forward_batch(backend, batch_size, x)
    name, raw, outputs, goal, read = _layer_activations(backend, x, target, layer, batch, "scorecam", reshape)
    activations = read.activation(name, raw)
    k = activations.shape[1]
    scores = np.empty((len(x), k), dtype=np.float64)
    # A constant channel's mask is all zeros, so its masked image is the zero image whatever the
    # image: one forward pass scores every such channel of every image.
    constant = activations.max(axis=(2, 3)) == activations.min(axis=(2, 3))
    if constant.any():
        zero = backend.forward(np.zeros((1,) + x.shape[1:], dtype=x.dtype)).logits
        owners = np.nonzero(constant)[0]
        scores[constant] = goal.score(np.broadcast_to(zero, (len(owners),) + zero.shape[1:]), owners)
    owners, channels = np.nonzero(~constant)
    with progress.task("scorecam", len(owners)) as advance:
        for sl in batches(len(owners), batch):
            n, c = owners[sl], channels[sl]
            masks = cam_ops.normalize_masks(resize_bilinear(activations[n, c], x.shape[2:]))  # (B, H, W)
            scores[n, c] = goal.score(backend.forward(x[n] * masks[:, None]).logits, n)
            advance(sl.stop - sl.start)
    beta = cam_ops.softmax(scores, axis=1)
    maps = resize_bilinear(cam_ops.weighted_sum(activations, beta), x.shape[2:])
    return Explanation("scorecam", maps, goal.record, outputs, layer=name, extras=read.extras())


#: by default, Ablation-CAM's copies of one layer output per pass stay within this many elements
#: (64 MB of float32) and 64 copies
ABLATION_ELEMENTS = 2 ** 24


@register("ablationcam", needs={ACTIVATIONS, REPLACE_LAYER}, kind=CAM, layer=ONE_LAYER, options=[RESHAPE],
          not_exportable="it runs the network on from the layer once per channel, and the explainer does not "
          "write that network twice yet")
def ablationcam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *, reshape: ReshapeSpec = None,
                batch_size: Optional[int] = None) -> Explanation:
    """Ablation-CAM (Desai & Ramaswamy 2020): ``ReLU(sum_k w_k A_k)``, ``w_k`` the score's relative drop with channel k zeroed.

    The network runs on from the layer with one channel zeroed per copy, ``batch_size`` copies at a
    time (by default up to 64, as the layer's size allows), the part before the layer once per image
    and batch (so a small ``batch_size`` costs more than a forward-only method's). Channels that are
    already all zero change nothing and are not run. On token tensors a channel is zeroed at the
    grid's tokens (the map ``A_k``), not at the class / register tokens that are dropped from it.
    """
    batch = forward_batch(backend, batch_size, x)
    name, raw, outputs, goal, read = _layer_activations(backend, x, target, layer, batch, "ablationcam", reshape)
    reading, activations = read.reading(name, raw), read.activation(name, raw)
    if batch_size is None:  # copies run only the network after the layer: more per pass, within a budget
        batch = max(batch, min(64, ABLATION_ELEMENTS // max(1, raw[0].size)))
    clean = goal.score(outputs, np.arange(len(x)))
    ablated = np.repeat(clean[:, None], activations.shape[1], axis=1)
    owners, channels = np.nonzero(np.abs(activations).max(axis=(2, 3)) > 0)
    with progress.task("ablationcam", len(owners)) as advance:
        for sl in batches(len(owners), batch):
            for n in np.unique(owners[sl]):  # each image's copies meet its one pass at the layer
                mine = channels[sl][owners[sl] == n]
                values = np.repeat(raw[n:n + 1], len(mine), axis=0)
                reading.zero_channels(values, mine)
                scores = backend.replaced(x[n:n + 1], name, values)
                ablated[n, mine] = goal.score(scores, np.full(len(mine), n))
            advance(sl.stop - sl.start)
    weights = cam_ops.ablation_weights(clean, ablated)
    maps = resize_bilinear(cam_ops.weighted_sum(activations, weights), x.shape[2:])
    return Explanation("ablationcam", maps, goal.record, outputs, layer=name, extras=read.extras())


def _incremental_flag(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"incremental must be True or False, got {value!r}")
    return bool(value)


def _yes_no(text: str) -> bool:
    """The command line's ``--incremental yes|no``."""
    words = {"yes": True, "true": True, "1": True, "on": True, "no": False, "false": False, "0": False, "off": False}
    if text.lower() not in words:
        raise InvalidInputError(f"--incremental takes yes or no, got {text!r}")
    return words[text.lower()]


@register("occlusion", needs={FORWARD}, kind=CAM, not_exportable="it runs the model once per window; the explainer "
          "does not write such a loop yet", options=[
    Option("window", None, "window side in pixels (1/14 of the shorter side)", None, int),
    Option("stride", None, "step in pixels (half the window)", None, int),
    BASELINE,
    Option("incremental", True, "recompute only what each window changes, where the backend can and the cost "
           "model says it pays (torch modules torch.fx traces; the same maps to float rounding); False: brute force",
           _incremental_flag, _yes_no),
])
def occlusion(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
              window: Union[int, Tuple[int, int], None] = None, stride: Union[int, Tuple[int, int], None] = None,
              baseline: Union[float, np.ndarray] = 0.0, incremental: bool = True,
              batch_size: Optional[int] = None) -> Explanation:
    """Occlusion (Zeiler & Fergus 2014): the mean drop of ``y_c`` over the windows covering each pixel.

    ``window`` defaults to 1/14 of the shorter side (16 px at 224), ``stride`` to half the window.
    Windows cover all channels; ``baseline`` is a number, one value per channel, or a (C, H, W) array.
    ``incremental``: on a backend that can (torch modules fx can trace), each layer recomputes only
    the region a window changes, from the clean image's cached activations: the same scores, less
    work; where the cost model (a dry run per model and size) says it would not pay, brute force runs.
    ``exp.extras["occlusion_engine"]`` says per image what ran ("incremental", "brute force",
    "brute force (<why>)" when the cost model said it would not pay, or "brute force: <why>" when
    it could not run).
    """
    side = min(x.shape[2:])
    window = as_pair(max(1, int(round(side / 14))) if window is None else window, "window")
    stride = as_pair(max(1, min(window) // 2), "stride") if stride is None else stride
    grid = OcclusionGrid(x.shape[2:], window, stride)
    fill = as_baseline(baseline, x.shape[1:])
    batch = forward_batch(backend, batch_size, x)
    outputs, goal = clean_pass(backend, x, target, batch)
    clean = goal.score(outputs, np.arange(len(x)))
    positions = len(grid)
    owners = np.repeat(np.arange(len(x)), positions)
    where = np.tile(np.arange(positions), len(x))
    drops = np.empty(len(owners), dtype=np.float64)
    engines = np.full(len(x), "brute force", dtype=object)
    done = np.zeros(len(x), dtype=bool)
    with progress.task("occlusion", len(owners)) as advance:
        if incremental and INCREMENTAL_OCCLUSION in backend.capabilities:
            for i in range(len(x)):
                done[i], engines[i] = _occlude_incrementally(backend, x, i, grid, fill, batch, batch_size is not None,
                                                             goal, clean, drops, advance)
        todo = np.flatnonzero(~done)
        rows = np.flatnonzero(np.isin(owners, todo))
        for sl in batches(len(rows), batch):
            picked = rows[sl]
            scores = backend.forward(grid.occlude(x, owners[picked], where[picked], fill)).logits
            drops[picked] = clean[owners[picked]] - goal.score(scores, owners[picked])
            advance(len(picked))
    maps = grid.accumulate(drops.reshape(len(x), positions))
    return Explanation("occlusion", maps, goal.record, outputs, options=dict(window=grid.window, stride=grid.stride),
                       extras={"occlusion_engine": engines.astype(str)})


def _occlude_incrementally(backend: Backend, x: np.ndarray, i: int, grid: OcclusionGrid, fill: np.ndarray,
                           batch: int, explicit: bool, goal: Any, clean: np.ndarray, drops: np.ndarray,
                           advance: Any) -> Tuple[bool, str]:
    """Image ``i``'s score drops (into ``drops``) from the backend's occluder: (True, what ran), or
    (False, what runs instead and why) when the backend will not do it (nothing done)."""
    score, engine = cast(Occluding, backend).occluder(x[i], grid.window)
    if score is None:
        return False, engine
    positions = len(grid)
    # the caller's batch_size when given; else up to 4x the backend's choice (an incremental pass
    # holds little but the layers past its regions), at most the occluder's own preference
    per_pass = batch if explicit else max(batch, min(score.batch, 4 * batch))
    full = np.broadcast_to(fill, x.shape[1:])
    (wh, ww), owner = grid.window, np.full(positions, i)
    for sl in batches(positions, per_pass):
        top, left = grid.corners(np.arange(sl.start, sl.stop))
        values = np.stack([full[:, t:t + wh, l:l + ww] for t, l in zip(top, left)])
        outputs = score(top, left, values)
        drops[i * positions + sl.start:i * positions + sl.stop] = clean[owner[sl]] - goal.score(outputs, owner[sl])
        advance(sl.stop - sl.start)
    return True, engine


@register("rise", needs={FORWARD}, kind=CAM, not_exportable="it draws thousands of random masks per call; stored "
          "in the file they would outweigh most models", options=[
    Option("masks", 4000, "random masks per image (4000)", positive_int("masks"), int),
    Option("cell", 7, "the masks' grid is cell x cell (7)", positive_int("cell"), int),
    Option("p", 0.5, "probability that a grid cell is kept (0.5)", fraction("p", 0.0, 1.0, open_low=True), float),
    SEED,
])
def rise(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
         masks: int = 4000, cell: int = 7, p: float = 0.5, seed: Optional[int] = 0,
         batch_size: Optional[int] = None) -> Explanation:
    """RISE (Petsiuk et al. 2018): ``sum_m y_c(x * M_m) M_m / (masks * p)`` over random smooth masks.

    The masks depend on ``seed`` only (the same for every image), so a map depends neither on the
    batch size nor on the other images. Forward passes only.
    """
    if cell > min(x.shape[2:]):
        raise InvalidInputError(f"cell {cell} is larger than the image side {min(x.shape[2:])}: choose a smaller cell")
    batch = forward_batch(backend, batch_size, x)
    outputs, goal = clean_pass(backend, x, target, batch)
    generator = RiseMasks(x.shape[2:], masks, cell, p, seed)
    sums = np.zeros((len(x),) + x.shape[2:], dtype=np.float64)
    # mask-major: a batch holds few masks, each upsampled once for all the images it meets
    owners = np.tile(np.arange(len(x)), masks)
    which = np.repeat(np.arange(masks), len(x))
    with progress.task("rise", len(owners)) as advance:
        for sl in batches(len(owners), batch):
            n, m = owners[sl], which[sl]
            unique, inverse = np.unique(m, return_inverse=True)
            shown = generator.batch(unique)[inverse]
            scores = goal.score(backend.forward(x[n] * shown[:, None]).logits, n)
            for image in np.unique(n):
                rows = n == image
                # einsum, not BLAS: BLAS's threads would still be spinning when the next pass starts
                sums[image] += np.einsum("b,bhw->hw", scores[rows], shown[rows])
            advance(sl.stop - sl.start)
    maps = (sums / (masks * p)).astype(np.float32)
    return Explanation("rise", maps, goal.record, outputs)
