"""Maps as pictures, in NumPy: colour maps, heat-map overlays on images, one panel per method
(a CAM over the image, a gradient in grayscale, feature maps as a mosaic), with the checks on
what is pictured. ``render`` builds figures and files from them. Needs matplotlib for its colour
maps (the ``viz`` extra), imported on first use.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Tuple

import numpy as np

from ..core import scaling
from ..core.errors import InvalidInputError
from ..core.resize import resize_bilinear

#: how each kind of map (``Method.kind`` in the method registry) is pictured
_PICTURE = {"cam": "cam", "input": "gradient", "activations": "features"}

GRADIENT_CMAP = "inferno"  # sequential, black for "no gradient"


def matplotlib_module() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("drawing pictures needs matplotlib: pip install 'cnnlens[viz]'") from None
    return matplotlib


# --- checks ------------------------------------------------------------------------------


def rgb(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}; for a network input use "
            f"cnnlens.adapters.images.denormalize(x) to get it back as pixels"
        )
    return image


def map2d(values: Any, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise InvalidInputError(f"{what} must be one (H, W) map, got shape {values.shape}")
    return values


def stack_maps(values: Any, what: str) -> np.ndarray:
    """(K, h, w), also accepting (1, K, h, w): one image's stack of maps."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 3:
        raise InvalidInputError(f"{what} must be (K, h, w) for one image, got shape {values.shape}")
    return values


def fit_to(heat: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    return heat if heat.shape == tuple(shape) else resize_bilinear(heat, shape)


def finite(values: np.ndarray) -> np.ndarray:
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


# --- arrays ------------------------------------------------------------------------------


def colormap(cmap: str) -> Any:
    colormaps = matplotlib_module().colormaps
    try:
        return colormaps[cmap]
    except KeyError:
        close = difflib.get_close_matches(str(cmap), list(colormaps), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InvalidInputError(f"unknown colormap {cmap!r}.{hint} See matplotlib's colormap list.") from None


def colorize(values: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Values in [0, 1] (H, W) -> uint8 (H, W, 3) through ``matplotlib.colormaps[cmap]``.

    Values are clipped to [0, 1]; NaN counts as 0.
    """
    values = np.clip(finite(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    return np.ascontiguousarray(colormap(cmap)(values, bytes=True)[..., :3])


def _normalise_one(heat: np.ndarray, scale: str) -> np.ndarray:
    heat = finite(heat)[None]
    if scale == "minmax":
        return scaling.normalize_minmax(heat)[0]
    if scale == "percentile":
        return scaling.normalize_percentile(heat, 99.0)[0]
    raise InvalidInputError(f"scale must be 'minmax' or 'percentile', got {scale!r}")


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet",
            scale: str = "minmax") -> np.ndarray:
    """A raw map (h, w) over uint8 (H, W, 3): ``(1 - alpha) * image + alpha * colorize(map)``.

    The map is resized bilinearly to the image when the sizes differ, then scaled to [0, 1]
    per image: ``"minmax"``, or ``"percentile"`` (capped at the 99th percentile). Returns uint8.
    """
    image = rgb(image)
    if not 0.0 <= float(alpha) <= 1.0:
        raise InvalidInputError(f"alpha must lie in [0, 1], got {alpha!r}")
    heat = fit_to(map2d(heat, "heat"), image.shape[:2])
    colour = colorize(_normalise_one(heat, scale), cmap).astype(np.float32)
    blended = (1.0 - float(alpha)) * image.astype(np.float32) + float(alpha) * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def gradient_gray(gradient: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) in [0, 1]: the sum of |g| over channels, capped at the 99th percentile."""
    return scaling.normalize_percentile(scaling.grayscale(finite(gradient)[None]), 99.0)[0]


def _nearest(tile: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    rows = np.arange(shape[0]) * tile.shape[0] // shape[0]
    cols = np.arange(shape[1]) * tile.shape[1] // shape[1]
    return tile[rows[:, None], cols[None, :]]


def _mosaic(maps: np.ndarray, shape: Tuple[int, int], max_maps: int = 16, gap: int = 1) -> np.ndarray:
    """The first ``max_maps`` maps (K, h, w), each min-max and viridis, tiled (nearest, keeping
    the maps' aspect) and centred on a white uint8 (H, W, 3) canvas."""
    maps = finite(maps[:max_maps])
    count, (h, w) = len(maps), maps.shape[1:]
    side = math.ceil(math.sqrt(count))
    rows = math.ceil(count / side)
    zoom = min((shape[0] - gap * (rows - 1)) / (rows * h), (shape[1] - gap * (side - 1)) / (side * w))
    tile_h, tile_w = max(1, int(h * zoom)), max(1, int(w * zoom))
    top0 = max(0, (shape[0] - rows * tile_h - gap * (rows - 1)) // 2)
    left0 = max(0, (shape[1] - side * tile_w - gap * (side - 1)) // 2)
    out = np.full(tuple(shape) + (3,), 255, dtype=np.uint8)
    for i, tile in enumerate(colorize(scaling.normalize_minmax(maps), "viridis")):
        top = top0 + (i // side) * (tile_h + gap)
        left = left0 + (i % side) * (tile_w + gap)
        block = _nearest(tile, (tile_h, tile_w))
        out[top:top + tile_h, left:left + tile_w] = block[: shape[0] - top, : shape[1] - left]
    return out


def method_kind(method: str) -> str:
    """"cam", "gradient" or "features": read off the method's description (its kind of map)."""
    from ..core.errors import UnknownMethodError
    from ..core.methods import lookup

    try:
        return _PICTURE[lookup(method).kind]
    except UnknownMethodError as error:
        raise InvalidInputError(f"no picture for method {method!r}: {str(error).split('. ', 1)[-1]}") from None


def method_panel(image: np.ndarray, exp_map: np.ndarray, method: str) -> np.ndarray:
    """One uint8 (H, W, 3) picture of one image's explanation, the size of ``image``.

    CAM family and occlusion: (H, W), (N, H, W) or (N, L, H, W) (first image, deepest layer)
    -> ``overlay``. Gradient methods: (C, H, W) or (N, C, H, W) (first image) -> the sum of
    |g| over channels capped at the 99th percentile, in a sequential colormap. feature_maps:
    (K, h, w) or (N, K, h, w) -> a mosaic of the first 16 maps.
    """
    image = rgb(image)
    kind = method_kind(method)
    maps = np.asarray(exp_map, dtype=np.float32)
    shape = image.shape[:2]
    if kind == "cam":
        if maps.ndim == 3:  # (N, H, W)
            maps = maps[0]
        elif maps.ndim == 4:  # (N, L, H, W): the deepest layer
            maps = maps[0, -1]
        return overlay(image, map2d(maps, f"a {method} map"))
    if kind == "gradient":
        maps = maps[0] if maps.ndim == 4 else maps
        if maps.ndim != 3:
            raise InvalidInputError(f"a {method} map must be (C, H, W) or (N, C, H, W), got shape {maps.shape}")
        return colorize(fit_to(gradient_gray(maps), shape), GRADIENT_CMAP)
    return _mosaic(stack_maps(maps[:1] if maps.ndim == 4 else maps, "feature maps"), shape)
