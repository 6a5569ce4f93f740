"""Pictures out: heat-map overlays and the figures of the seeds, as PNG files or bytes.

Needs the ``viz`` extra (matplotlib, Pillow), imported on first use; never imports torch or
onnx. Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never
with pyplot, so rendering is headless and safe from several threads.

Raw maps are turned into pictures with ``cnnlens.core.scaling``: per-image min-max, the
seeds' 99th-percentile capping, the positive / negative / absolute split and grayscale.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core import scaling
from ..core.errors import InvalidInputError
from ..core.roi import crop, threshold_box
from .pictures import (GRADIENT_CMAP, colorize, finite, fit_to, gradient_gray, map2d, matplotlib_module, method_kind,
                       method_panel, overlay, rgb, stack_maps)

PANEL_INCHES = 3.0


# --- lazy imports ------------------------------------------------------------------------


def new_figure(figsize: Tuple[float, float]) -> Any:
    matplotlib_module()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _pil_image() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("writing PNG files needs Pillow: pip install 'cnnlens[viz]'") from None
    return Image


# --- figures -----------------------------------------------------------------------------


def _show(ax: Any, picture: np.ndarray, title: str, cmap: Optional[str] = None, small: bool = False,
          interpolation: str = "antialiased") -> None:
    """One panel: the picture without ticks, with a title (``small`` for tiles in big grids)."""
    ax.imshow(picture, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None,
              interpolation=interpolation)
    ax.set_title(title, fontsize=7 if small else 10)
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(figure: Any, count: int, columns: int) -> List[Any]:
    """``count`` axes in rows of ``columns``; unused cells are hidden."""
    rows = max(1, math.ceil(count / columns))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return list(axes[:count])


def _aspect(shape: Tuple[int, ...]) -> float:
    return shape[0] / max(1, shape[1])


def _panel_figure(rows: int, columns: int, shape: Tuple[int, ...], title: str, inches: float = PANEL_INCHES) -> Any:
    head = 0.5 if title else 0.0
    height = rows * (inches * min(2.0, max(0.5, _aspect(shape))) + 0.35) + head
    figure = new_figure((columns * inches, height))
    if title:
        figure.suptitle(title)
    return figure


def _as_panel(gradient: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow takes: (H, W, 3) for RGB, (H, W) otherwise (C = 1: that
    channel; other C: the channel mean)."""
    if gradient.shape[0] == 3:
        return gradient.transpose(1, 2, 0)
    return gradient[0] if gradient.shape[0] == 1 else gradient.mean(axis=0)


def gradient_figure(image: np.ndarray, gradient: np.ndarray, title: str = "") -> Any:
    """Seed 000's 3 x 3 figure of an input gradient (C, H, W) for one image.

    Row 1: the image, the signed gradient as an RGB picture (min-max), grayscale (sum of |g|
    over channels, capped at the 99th percentile). Row 2: all (|g|), positive and negative
    parts, each scaled by its maximum (``scaling.split_sign``). Row 3: the same parts capped
    at their 99th percentile (``scaling.normalize_percentile``). Returns a matplotlib Figure.
    """
    image = rgb(image)
    gradient = np.asarray(gradient, dtype=np.float32)
    if gradient.ndim == 4 and gradient.shape[0] == 1:
        gradient = gradient[0]
    if gradient.ndim != 3:
        raise InvalidInputError(f"gradient must be one image's (C, H, W), got shape {gradient.shape}")
    g = finite(gradient)[None]
    positive, negative, absolute = (part[0] for part in scaling.split_sign(g))
    parts = [("all |gradient|", absolute), ("positive gradient", positive), ("negative gradient", negative)]
    gray = "gray" if gradient.shape[0] != 3 else None
    figure = _panel_figure(3, 3, gradient.shape[1:], title)
    axes = figure.subplots(3, 3, squeeze=False)
    _show(axes[0, 0], image, "image")
    _show(axes[0, 1], _as_panel(scaling.normalize_minmax(g)[0]), "gradient (min-max)", cmap=gray)
    _show(axes[0, 2], gradient_gray(gradient), "grayscale: sum |g| (99th pct)", cmap="gray")
    for column, (name, part) in enumerate(parts):
        capped = scaling.normalize_percentile(part[None], 99.0)[0]
        _show(axes[1, column], _as_panel(part), name, cmap=gray)
        _show(axes[2, column], _as_panel(capped), f"{name} (99th pct)", cmap=gray)
    return figure


def _layer_title(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        return f"{entry[0]}\n({entry[1]})"
    name, kind = getattr(entry, "name", None), getattr(entry, "kind", None)
    if name is not None:
        return f"{name}\n({kind})" if kind else str(name)
    return str(entry)


def layer_grid(image: np.ndarray, maps: np.ndarray, names: Sequence[Any], title: str = "",
               columns: int = 4) -> Any:
    """The layer-by-layer Grad-CAM grid: one overlay per layer, ``columns`` per row.

    ``maps`` (L, H, W) (or (1, L, H, W)); ``names``: one per layer, each a name, a
    ``(name, kind)`` pair or a ``cnnlens.Layer``; panels are titled with name and kind.
    Each layer's map is min-max scaled on its own. Returns a matplotlib Figure.
    """
    image = rgb(image)
    maps = stack_maps(maps, "maps")
    names = list(names)
    if len(names) != len(maps):
        raise InvalidInputError(f"{len(maps)} maps but {len(names)} names: pass one name per layer")
    columns = max(1, min(int(columns), len(maps)))
    rows = math.ceil(len(maps) / columns)
    figure = _panel_figure(rows, columns, image.shape, title, inches=2.6)
    for ax, heat, entry in zip(_grid(figure, len(maps), columns), maps, names):
        label = _layer_title(entry)
        if not np.any(finite(heat) > 0):
            label += " [map all 0]"
        _show(ax, overlay(image, heat), label, small=len(maps) > 8)
    return figure


def gradient_layer_grid(image: np.ndarray, maps: np.ndarray, names: Sequence[Any], title: str = "",
                        columns: int = 4) -> Any:
    """One input attribution per layer (L, C, H, W) (guided Grad-CAM of several layers): each as
    ``method_panel`` shows a gradient, titled with its layer."""
    maps = np.asarray(maps, dtype=np.float32)
    names = list(names)
    if maps.ndim != 4 or len(names) != len(maps):
        raise InvalidInputError(f"gradient maps per layer must be (L, C, H, W) with one name per layer, got "
                                f"{maps.shape} and {len(names)} names")
    image = rgb(image)
    shape = image.shape[:2]
    columns = max(1, min(int(columns), len(maps)))
    figure = _panel_figure(math.ceil(len(maps) / columns), columns, image.shape, title, inches=2.6)
    for ax, gradient, entry in zip(_grid(figure, len(maps), columns), maps, names):
        _show(ax, colorize(fit_to(gradient_gray(gradient), shape), GRADIENT_CMAP), _layer_title(entry),
              small=len(maps) > 8)
    return figure


def feature_map_grid(maps: np.ndarray, max_maps: int = 64, title: str = "") -> Any:
    """The first ``max_maps`` of one image's feature maps (K, h, w), each min-max, viridis,
    titled with its channel index. Returns a matplotlib Figure."""
    maps = finite(stack_maps(maps, "maps"))
    if max_maps < 1:
        raise InvalidInputError(f"max_maps must be at least 1, got {max_maps!r}")
    shown = maps[:max_maps]
    scaled = scaling.normalize_minmax(shown)
    columns = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / columns)
    inches = 1.5 if columns > 4 else 2.2
    heading = title or (f"feature maps (first {len(shown)} of {len(maps)})" if len(shown) < len(maps) else "")
    figure = _panel_figure(rows, columns, shown.shape[1:], heading, inches=inches)
    for i, ax in enumerate(_grid(figure, len(shown), columns)):
        _show(ax, scaled[i], f"#{i}", cmap="viridis", small=True, interpolation="nearest")
    return figure


def filter_grid(weights: np.ndarray, max_filters: int = 64, title: str = "", scale: str = "bank") -> Any:
    """The first ``max_filters`` filters of a convolution's weights (out, in, kh, kw).

    3 input channels: RGB tiles; otherwise the mean over input channels in grayscale.
    ``scale="bank"`` min-max scales every tile with the range of the whole bank shown (so
    filters compare); ``"filter"`` scales each filter on its own. Returns a matplotlib Figure.
    """
    weights = finite(np.asarray(weights, dtype=np.float32))
    if weights.ndim != 4:
        raise InvalidInputError(
            f"filter_grid needs a convolution's (out, in, kh, kw) weights, got shape {weights.shape}"
        )
    if max_filters < 1:
        raise InvalidInputError(f"max_filters must be at least 1, got {max_filters!r}")
    shown = weights[:max_filters]
    tiles = shown if shown.shape[1] == 3 else shown.mean(axis=1, keepdims=True)
    if scale == "bank":
        tiles = scaling.normalize_minmax(tiles[None])[0]
    elif scale == "filter":
        tiles = scaling.normalize_minmax(tiles)
    else:
        raise InvalidInputError(f"scale must be 'bank' or 'filter', got {scale!r}")
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    kind = "RGB" if shown.shape[1] == 3 else f"mean of {shown.shape[1]} input channels"
    heading = title or f"filters {tuple(weights.shape)} ({kind})"
    figure = _panel_figure(rows, columns, tiles.shape[2:], heading, inches=1.2 if columns > 4 else 1.8)
    gray = None if tiles.shape[1] == 3 else "gray"
    for i, ax in enumerate(_grid(figure, len(tiles), columns)):
        _show(ax, _as_panel(tiles[i]), f"#{i}", cmap=gray, small=True, interpolation="nearest")
    return figure


def roi_figure(image: np.ndarray, cam: np.ndarray, threshold: float = 0.5) -> Any:
    """Seed 002's region of interest: the CAM overlay with the box of the pixels whose
    min-max normalised value is at least ``threshold`` (``core.roi.threshold_box``), and the
    image cropped to that box beside it. Returns a matplotlib Figure."""
    from matplotlib.patches import Rectangle

    image = rgb(image)
    if not 0.0 <= float(threshold) <= 1.0:
        raise InvalidInputError(f"threshold must lie in [0, 1], got {threshold!r}")
    heat = fit_to(finite(map2d(cam, "cam")), image.shape[:2])
    box = threshold_box(heat, threshold)
    figure = _panel_figure(1, 2, image.shape, f"region of interest (threshold {threshold:g})")
    left_ax, right_ax = figure.subplots(1, 2, squeeze=False)[0]
    _show(left_ax, overlay(image, heat), "map and box")
    if box is None:
        right_ax.set_axis_off()
        right_ax.set_title("no region: the map is constant", fontsize=10)
        return figure
    top, left, bottom, right = box
    left_ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                edgecolor="white", linewidth=2))
    _show(right_ax, crop(image, box), f"crop rows {top}:{bottom}, cols {left}:{right}")
    return figure


def _overlay_figure(image: np.ndarray, heat: np.ndarray, title: str, label: str) -> Any:
    figure = _panel_figure(1, 2, image.shape, title)
    left_ax, right_ax = figure.subplots(1, 2, squeeze=False)[0]
    _show(left_ax, image, "image")
    _show(right_ax, overlay(image, heat), label)
    return figure


def explanation_figure(image: np.ndarray, exp: Any, index: int = 0) -> Any:
    """The figure for image ``index`` of an Explanation: ``gradient_figure`` for the gradient
    methods, ``layer_grid`` for a CAM over a list of layers, the image beside the overlay for
    one CAM-family or occlusion map, ``feature_map_grid`` for feature maps."""
    kind = method_kind(exp.method)
    maps = np.asarray(exp.maps)[index]
    target = np.asarray(exp.target)[index]
    what = f"class {int(target)}" if np.ndim(target) == 0 else "output weights"
    where = "" if exp.layer is None else f" at {exp.layer if isinstance(exp.layer, str) else 'each layer'}"
    title = f"{exp.method}, {what}{where}"
    if kind == "gradient" and maps.ndim == 4:  # one input attribution per layer (guided Grad-CAM of a list)
        return gradient_layer_grid(image, maps, list(exp.layer), title=title)
    if kind == "gradient":
        return gradient_figure(image, maps, title=title)
    if kind == "features":
        return feature_map_grid(maps, title=f"{exp.method} of {exp.layer}, {maps.shape[0]} maps")
    if maps.ndim == 3:
        return layer_grid(image, maps, list(exp.layer), title=title)
    return _overlay_figure(image, maps, title, exp.method if exp.layer is None else str(exp.layer))


# --- output ------------------------------------------------------------------------------


def methods_grid(images: np.ndarray, maps: Dict[str, np.ndarray], row_titles: Sequence[str] = (),
                 title: str = "") -> Any:
    """Every method side by side: one row per image (the input first), one column per method.

    ``images`` uint8 (N, H, W, 3); ``maps`` method -> that method's ``exp.maps`` (N, ...).
    Returns a matplotlib Figure.
    """
    images = np.asarray(images)
    methods = list(maps)
    columns = len(methods) + 1
    figure = _panel_figure(len(images), columns, images.shape[1:3], title, inches=1.9)
    axes = figure.subplots(len(images), columns, squeeze=False)
    for i, image in enumerate(images):
        label = row_titles[i] if i < len(row_titles) else "input"
        _show(axes[i, 0], rgb(image), label, small=True, interpolation="nearest")
        for j, method in enumerate(methods, start=1):
            _show(axes[i, j], method_panel(image, maps[method][i], method), method if i == 0 else "", small=True)
    return figure


def _is_figure(value: Any) -> bool:
    return hasattr(value, "savefig") and hasattr(value, "axes")


def _write(figure_or_array: Any, target: Any, dpi: int) -> None:
    if _is_figure(figure_or_array):
        figure_or_array.savefig(target, format="png", dpi=dpi)
        return
    array = np.asarray(figure_or_array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidInputError(
            f"can save a matplotlib Figure or a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got "
            f"{type(figure_or_array).__name__} {array.dtype} {array.shape}"
        )
    _pil_image().fromarray(np.ascontiguousarray(array)).save(target, format="PNG")


def save_png(figure_or_array: Any, path: Union[str, "os.PathLike[str]"], dpi: int = 100) -> str:
    """Write a Figure or a uint8 image array to ``path`` as PNG, atomically: to a temporary
    file beside it, then renamed; on any error no file (and no temporary) is left. Returns
    the path."""
    from .files import atomic_path

    path = os.fspath(path)
    with atomic_path(path) as temporary:
        _write(figure_or_array, temporary, dpi)
    return path


def png_bytes(figure_or_array: Any, dpi: int = 100) -> bytes:
    """The PNG encoding of a Figure or a uint8 image array (for base64 in HTML)."""
    buffer = io.BytesIO()
    _write(figure_or_array, buffer, dpi)
    return buffer.getvalue()


def save_npy(array: np.ndarray, path: Union[str, "os.PathLike[str]"]) -> str:
    """Write ``array`` to ``path`` in NumPy's .npy format, atomically like ``save_png``."""
    from .files import atomic_path

    path = os.fspath(path)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, np.asarray(array), allow_pickle=False)
    return path
