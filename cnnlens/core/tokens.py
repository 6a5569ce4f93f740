"""How a layer's output reads as (N, K, h, w) maps: convolutional maps as they are, channels-last
maps (N, h, w, C) as Swin blocks emit them, and transformer token tensors (N, T, C) or (N, C, T)
laid on their spatial grid with the class / distillation / register tokens dropped.

The grid is inferred from the tensor's shape and the input image's size: the tokens that remain
after dropping ``e`` leading ones (``0 <= e <= MAX_EXTRA_TOKENS``, the fewest that work) must fill
an ``h x w`` grid (2 x 2 or more) that one whole-pixel stride ``s`` makes of the image along both
axes (``h`` is ``H / s`` rounded down or up, ``w`` likewise) — which is what a patch embedding
makes. On a square image that means a square grid, and for grids of 4 x 4 and more exactly one
``e`` can work (the squares ``n^2`` and ``n^2 + e`` are at least ``2n + 1`` apart). Where tokens
fit along both axes (a non-square image has many grids), the grids of the model's own maps (its
patch embedding's) decide, and where both still fit, (N, T, C) — what transformer blocks emit — is
read (``exp.extras["layer_reading"]`` says so; ``channels=first`` says otherwise). Where that is not enough, the user
states it: ``reshape="14x14,drop=1,channels=last"`` (or a dict of the same, or a function
``(N, ...) -> (N, K, h, w)`` applied to activations and gradients alike, like pytorch-grad-cam's
``reshape_transform``).

>>> reading = read_as_maps("blocks.0", (2, 197, 192), (224, 224), None, "gradcam")
>>> reading.grid, reading.drop, reading.layout
((14, 14), 1, 'NTC')
>>> reading.read(np.zeros((2, 197, 192), np.float32)).shape
(2, 192, 14, 14)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Set, Tuple, Union

import numpy as np

from .errors import InvalidInputError, LayerError

#: at most this many leading tokens are dropped when the grid is inferred (a class token, a
#: distillation token and up to 4 register tokens fit, with room)
MAX_EXTRA_TOKENS = 8
#: a default layer whose output is no grid within this aspect error (1.5x) is no map at all
ROUGH_TOLERANCE = math.log(1.5)
#: the layouts a layer's output can have, by where its channels and positions are
LAYOUTS = {
    "NCHW": "a (N, K, h, w) map",
    "NHWC": "a channels-last (N, h, w, K) map",
    "NTC": "tokens (N, T, K)",
    "NCT": "tokens (N, K, T)",
}
_CHANNELS = {"first": ("NCHW", "NCT"), "last": ("NHWC", "NTC")}

#: what ``reshape=`` accepts: None (infer), a spec string or dict, or a function on NumPy arrays
ReshapeSpec = Union[None, str, Dict[str, Any], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class Reshape:
    """What a user states about a layer's layout; each field None means "infer it"."""

    grid: Optional[Tuple[int, int]] = None
    drop: Optional[int] = None
    channels: Optional[str] = None  # "first" or "last"
    function: Optional[Callable[[np.ndarray], np.ndarray]] = None


@dataclass(frozen=True)
class MapReading:
    """How one layer's output of a given shape becomes (N, K, h, w): its ``layout`` (a key of
    LAYOUTS), the ``grid`` (h, w), the leading tokens dropped, or a user's ``function``."""

    layout: str
    grid: Tuple[int, int]
    drop: int = 0
    function: Optional[Callable[[np.ndarray], np.ndarray]] = None

    @property
    def plain(self) -> bool:
        """Whether the output is already an (N, K, h, w) map, read as it is."""
        return self.layout == "NCHW" and self.function is None

    def read(self, value: np.ndarray) -> np.ndarray:
        """``value`` (the layer's activation or its gradient) as an (N, K, h, w) map."""
        if self.function is not None:
            return _called(self.function, value)
        n, (h, w) = value.shape[0], self.grid
        if self.layout == "NCHW":
            return value
        if self.layout == "NHWC":
            return np.ascontiguousarray(value.transpose(0, 3, 1, 2))
        if self.layout == "NTC":
            return np.ascontiguousarray(value[:, self.drop:, :].reshape(n, h, w, -1).transpose(0, 3, 1, 2))
        return np.ascontiguousarray(value[:, :, self.drop:].reshape(n, -1, h, w))

    def map_shape(self, shape: Sequence[int]) -> Tuple[int, int, int, int]:
        """The (N, K, h, w) shape ``read`` makes of an output of ``shape`` (not for a function)."""
        n, (h, w) = int(shape[0]), self.grid
        channels = {"NCHW": 1, "NHWC": 3, "NTC": 2, "NCT": 1}[self.layout]
        return n, int(shape[channels]), h, w

    def zero_channels(self, values: np.ndarray, channels: np.ndarray) -> None:
        """In place: copy ``i`` of the layer's output (``values[i]``) with its map's channel
        ``channels[i]`` zeroed at every grid position (dropped tokens are not part of the map)."""
        if self.function is not None:
            raise LayerError("Ablation-CAM zeroes one channel of the layer's own output, which a reshape function "
                             "cannot say where to find: state the layout instead (reshape='HxW,drop=D,"
                             "channels=first|last')")
        rows = np.arange(len(values))
        if self.layout == "NCHW":
            values[rows, channels] = 0
        elif self.layout == "NHWC":
            values[rows, :, :, channels] = 0
        elif self.layout == "NTC":
            values[rows[:, None], np.arange(self.drop, values.shape[1])[None, :], channels[:, None]] = 0
        else:
            values[rows[:, None], channels[:, None], np.arange(self.drop, values.shape[2])[None, :]] = 0

    def describe(self, name: str, shape: Sequence[int]) -> str:
        """One sentence for ``exp.extras``: what was read how."""
        shown = tuple(int(d) for d in shape)
        if self.function is not None:
            return f"layer {name!r}: output {shown} read as maps by the given reshape function"
        h, w = self.grid
        dropped = (f"; the first {self.drop} token{'s' if self.drop > 1 else ''} (class / distillation / "
                   f"register) dropped" if self.drop else "")
        return f"layer {name!r}: {LAYOUTS[self.layout]} {shown} read as a {h}x{w} grid{dropped}"


def _called(function: Callable[[np.ndarray], np.ndarray], value: np.ndarray) -> np.ndarray:
    try:
        result = np.asarray(function(value))
    except Exception as error:  # the user's function: say whose error it is
        raise LayerError(f"the reshape function failed on an array of shape {value.shape}: "
                         f"{type(error).__name__}: {error}") from error
    if result.ndim != 4 or result.shape[0] != value.shape[0]:
        raise LayerError(f"the reshape function must return (N, K, h, w) maps; given {value.shape} it returned "
                         f"{result.shape}")
    return np.ascontiguousarray(result, dtype=np.float32)


def parse_reshape(value: ReshapeSpec) -> Reshape:
    """``reshape=`` as a Reshape: None; ``"14x14"``, ``"14x14,drop=1"``, ``"drop=1,channels=last"``;
    ``{"grid": (14, 14), "drop": 1, "channels": "last"}``; or a function (N, ...) -> (N, K, h, w)."""
    if value is None or isinstance(value, Reshape):
        return value or Reshape()
    if callable(value):
        return Reshape(function=value)
    if isinstance(value, str):
        fields: Dict[str, Any] = {}
        for part in (p.strip() for p in value.split(",") if p.strip()):
            key, sep, text = part.partition("=")
            if not sep:
                key, text = "grid", part
            fields[key.strip()] = text.strip()
        return _reshape_fields(fields, value)
    if isinstance(value, dict):
        return _reshape_fields(dict(value), value)
    raise InvalidInputError(f"reshape must be None, a string such as '14x14,drop=1,channels=last', a dict with "
                            f"grid / drop / channels, or a function returning (N, K, h, w) maps; got {value!r}")


def _reshape_fields(fields: Dict[str, Any], given: Any) -> Reshape:
    unknown = sorted(set(fields) - {"grid", "drop", "channels"})
    if unknown:
        raise InvalidInputError(f"reshape {given!r}: unknown part {', '.join(unknown)}; it takes grid (HxW), "
                                f"drop=<tokens> and channels=first|last")
    grid, drop, channels = fields.get("grid"), fields.get("drop"), fields.get("channels")
    if grid is not None:
        try:
            parts = grid.lower().split("x") if isinstance(grid, str) else list(grid)
            grid = (int(parts[0]), int(parts[1])) if len(parts) == 2 else None
        except (TypeError, ValueError):
            grid = None
        if grid is None or min(grid) <= 0:
            raise InvalidInputError(f"reshape {given!r}: the grid must be two positive sizes, e.g. '14x14' or "
                                    f"(14, 14)")
    if drop is not None:
        try:
            drop = int(drop)
        except (TypeError, ValueError):
            drop = -1
        if drop < 0:
            raise InvalidInputError(f"reshape {given!r}: drop must be a count of leading tokens (0 or more)")
    if channels is not None and channels not in _CHANNELS:
        raise InvalidInputError(f"reshape {given!r}: channels must be 'first' or 'last', got {channels!r}")
    return Reshape(grid, drop, channels)


def _aspect_error(grid: Tuple[int, int], image: Tuple[int, int]) -> float:
    """How far (relative, in log terms) the grid's aspect ratio is from the image's."""
    return abs(math.log((grid[0] / grid[1]) / (image[0] / image[1])))


def _token_grid(tokens: int, image: Tuple[int, int], drop: Optional[int],
                grid: Optional[Tuple[int, int]]) -> Optional[Tuple[Tuple[int, int], int]]:
    """(grid, tokens dropped) for ``tokens`` tokens on an image of ``image`` size, or None."""
    if grid is not None:
        dropped = tokens - grid[0] * grid[1] if drop is None else drop
        fits = 0 <= dropped <= (MAX_EXTRA_TOKENS if drop is None else dropped)
        return (grid, dropped) if fits and tokens - dropped == grid[0] * grid[1] else None
    for dropped in ([drop] if drop is not None else range(MAX_EXTRA_TOKENS + 1)):
        count = tokens - dropped
        grids = [(h, count // h) for h in range(2, count // 2 + 1) if count % h == 0 and count // h >= 2]
        fitting = [g for g in grids if _fits(g, image)]
        if fitting:
            return min(fitting, key=lambda g: _aspect_error(g, image)), dropped
    return None


def map_grids(shapes: Iterable[Optional[Sequence[Optional[int]]]]) -> Set[Tuple[int, int]]:
    """The (h, w) of every (N, K, h, w) map among these layer output shapes (batch first, unknown
    dims None) with more than one position: the grids that settle which axis of a token tensor
    holds the tokens (``read_as_maps``' ``model_grids``)."""
    return {(int(s[2]), int(s[3])) for s in shapes
            if s is not None and len(s) == 4 and s[2] is not None and s[3] is not None and s[2] * s[3] > 1}


def _roughly(grid: Sequence[int], image: Tuple[int, int]) -> bool:
    """Whether a grid could be a map of the image at all: a small one (rounding moves its aspect
    ratio far), or one within 1.5x of the image's aspect ratio."""
    return max(grid[0], grid[1]) <= 4 or _aspect_error((grid[0], grid[1]), image) <= ROUGH_TOLERANCE


def _fits(grid: Sequence[int], image: Tuple[int, int]) -> bool:
    """Whether one whole-pixel stride makes an ``grid`` of the image (each side rounded either way)."""
    h, w = int(grid[0]), int(grid[1])
    if not (0 < h <= image[0] and 0 < w <= image[1]):
        return False
    for stride in range(max(1, image[0] // (h + 1)), image[0] // max(1, h - 1) + 2):
        if h in (image[0] // stride, -(-image[0] // stride)) and w in (image[1] // stride, -(-image[1] // stride)):
            return True
    return False


def read_as_maps(name: str, shape: Sequence[int], image: Tuple[int, int], reshape: ReshapeSpec,
                 method: str, model_grids: Optional[Callable[[], Set[Tuple[int, int]]]] = None,
                 defaulted: bool = False) -> MapReading:
    """How layer ``name``'s output of ``shape`` (batch first) reads as (N, K, h, w) maps for images
    of ``image`` (H, W) pixels; a LayerError saying what to state when it cannot be told. Where
    tokens fit a grid along both axes, ``model_grids()`` (the grids of the model's own spatial
    maps: its patch embedding's) says which, else (N, T, C) is read. A 4-D output is read NCHW
    when neither reading has the image's shape, unless the layer is the backend's default
    (``defaulted``): then it is no map (a transformer's (N, heads, T, d) attention tensor) and the
    user is asked to name one."""
    spec = parse_reshape(reshape)
    shape = tuple(int(d) for d in shape)
    image = (int(image[0]), int(image[1]))
    if spec.function is not None:
        return MapReading("NCHW", (0, 0), function=spec.function)
    hint = ("state its layout with reshape= (command line: --reshape), e.g. '14x14,drop=1,channels=last', or "
            "pick another layer (`cnnlens.layers(model)` shows output shapes)")
    if len(shape) == 4:
        if spec.drop:
            raise LayerError(f"layer {name!r} outputs a 4-D map {shape}: drop= applies to token tensors (N, T, C)")
        layout = _map_layout(shape, image, spec)
        if defaulted and spec == Reshape() and not (_roughly(shape[2:4], image) or _roughly(shape[1:3], image)):
            raise LayerError(f"the default layer {name!r} outputs {shape}, which is no grid of the {image[0]}x"
                             f"{image[1]} image (a transformer's attention tensor?): name the layer {method} should "
                             f"use — on a ViT the last block's first norm (timm 'blocks.11.norm1', torchvision "
                             f"'encoder.layers.encoder_layer_11.ln_1'); `cnnlens.layers(model)` lists them")
        grid = shape[2:] if layout == "NCHW" else shape[1:3]
        if spec.grid is not None and tuple(spec.grid) != tuple(grid):
            raise LayerError(f"layer {name!r} outputs {shape}, read {LAYOUTS[layout]}, whose grid is "
                             f"{grid[0]}x{grid[1]}, not the {spec.grid[0]}x{spec.grid[1]} given")
        return MapReading(layout, (grid[0], grid[1]))
    if len(shape) == 3:
        layouts = _CHANNELS[spec.channels][1:] if spec.channels else ("NTC", "NCT")
        found = {}
        for layout in layouts:
            tokens = shape[1] if layout == "NTC" else shape[2]
            fit = _token_grid(tokens, image, spec.drop, spec.grid)
            if fit is not None:
                found[layout] = fit
        if len(found) > 1 and model_grids is not None:
            known = model_grids()
            found = {layout: fit for layout, fit in found.items() if fit[0] in known} or found
        if found:  # still both: (N, T, C), what transformer blocks emit (exp.extras says which was read)
            layout = "NTC" if "NTC" in found else next(iter(found))
            grid, drop = found[layout]
            return MapReading(layout, grid, drop)
        what = "the stated grid does not match" if spec.grid else "no grid of patches of the"
        raise LayerError(f"layer {name!r} outputs {shape}: {what} {image[0]}x{image[1]} image's tokens (after "
                         f"dropping up to {MAX_EXTRA_TOKENS} leading ones), so {method} cannot lay them out: {hint}")
    raise LayerError(f"layer {name!r} outputs shape {shape}, not a (N, K, h, w) map or a token tensor (N, T, C), "
                     f"so {method} cannot use it: pick a convolutional or transformer-block layer "
                     f"(`cnnlens.layers(model)` shows output shapes), or pass reshape= a function that makes maps")


def _map_layout(shape: Tuple[int, ...], image: Tuple[int, int], spec: Reshape) -> str:
    """NCHW unless stated otherwise, or unless only the channels-last reading has the image's shape
    (Swin's (N, 7, 7, 768) at 224 px: (7, 768) is no grid of a square image, (7, 7) is)."""
    if spec.channels is not None:
        return _CHANNELS[spec.channels][0]
    if spec.grid is not None:
        return "NHWC" if tuple(spec.grid) == shape[1:3] and tuple(spec.grid) != shape[2:] else "NCHW"
    first, last = (shape[2], shape[3]), (shape[1], shape[2])
    if not _fits(first, image) and _fits(last, image) and _aspect_error(last, image) < _aspect_error(first, image):
        return "NHWC"
    return "NCHW"
