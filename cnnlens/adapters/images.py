"""Images in: read files with Pillow, fit them to a model's input size, normalise them.

Needs the ``viz`` extra (Pillow); never imports torch or onnx, so it works in an ONNX-only
install. ``import cnnlens`` does not import this module.

The pipeline is ``prepare(paths, size)`` = ``load_image`` -> ``fit`` -> ``normalize``; it
returns the network input (float32 (N, C, H, W)) and the pictures it was made from (uint8
(N, H, W, 3)) for display.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.backend import Backend
from ..core.errors import InvalidInputError
from ..core.types import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported: the CLI's and the page's defaults)

# ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

Size = Union[int, Sequence[int]]
Stats = Union[float, Sequence[float]]
PathLike = Union[str, "os.PathLike[str]"]


def _pil() -> Any:
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'cnnlens[viz]'") from None
    return Image, ImageOps


# --- loading -----------------------------------------------------------------------------


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB.

    RGB is kept as is; grayscale ("L", "1", 16-bit "I;16" scaled by 255/65535) is replicated
    to three channels; images with transparency (RGBA, LA, palette or RGB with a transparent
    colour) are composited over a white background; the EXIF orientation is applied. For
    multi-frame files (GIF, TIFF) the first frame is read.
    """
    Image, ImageOps = _pil()
    name = os.fspath(path)
    if not os.path.exists(name):
        raise InvalidInputError(f"image file {name!r} does not exist: check the path")
    if os.path.isdir(name):
        raise InvalidInputError(f"{name!r} is a folder, not an image file: pass the image files in it")
    try:
        with Image.open(name) as img:
            img.load()  # decode now, so a truncated or corrupt file fails here
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as error:
        raise InvalidInputError(f"image file {name!r} is too large to read safely ({error})") from None
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError) as error:
        raise InvalidInputError(
            f"cannot read image file {name!r} ({type(error).__name__}: {error}): it is not an image "
            f"Pillow can read, or it is truncated or corrupt; re-save or re-download it as PNG or JPEG"
        ) from None


def _to_rgb(img: Any) -> np.ndarray:
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return _over_white(np.asarray(img.convert("RGBA")))
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in ("L", "1", "P"):
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        gray = _wide_to_uint8(np.asarray(img), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    try:
        return np.array(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as error:
        raise InvalidInputError(
            f"images of mode {mode!r} cannot be converted to RGB ({error}); save the image as RGB"
        ) from None


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite uint8 RGBA over white: ``c * a + 255 * (1 - a)`` with ``a`` in [0, 1]."""
    rgb = rgba[:, :, :3].astype(np.float32)
    alpha = rgba[:, :, 3:].astype(np.float32) / 255.0
    return np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def _wide_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float grayscale -> uint8. Integers within [0, 65535] are taken as
    16-bit (scaled by 255/65535); anything else is min-max scaled to [0, 255]."""
    values = values.astype(np.float64)
    if mode != "F" and values.size and values.min() >= 0 and values.max() <= 65535:
        scaled = values * (255.0 / 65535.0)
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


# --- resizing ----------------------------------------------------------------------------


def _target(size: Size) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair: Tuple[Any, ...] = (int(size), int(size))
    else:
        try:
            pair = tuple(int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            pair = ()
    if len(pair) != 2 or min(pair) <= 0:
        raise InvalidInputError(f"size must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def _check_uint8_image(image: Any, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            f"{what} must be a uint8 (H, W, 3) RGB array (as load_image returns), got {image.dtype} {image.shape}"
        )
    return image


def fit(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize uint8 (h, w, 3) so it covers ``size`` = (H, W) (or H = W = size), then centre-crop.

    The scale is ``max(H / h, W / w)``: for a square target the shorter side becomes the
    target. Resizing is Pillow's bilinear (antialiased when shrinking); the resized length of
    the other side is truncated and the crop offset is ``round((length - target) / 2)``, as
    torchvision's ``Resize`` + ``CenterCrop`` do. Returns uint8 (H, W, 3).
    """
    Image, _ = _pil()
    image = _check_uint8_image(image)
    out_h, out_w = _target(size)
    h, w = image.shape[:2]
    new_h, new_w, top, left = fit_geometry((h, w), (out_h, out_w))
    if (new_h, new_w) != (h, w):
        bilinear = getattr(Image, "Resampling", Image).BILINEAR
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), bilinear))
    return np.ascontiguousarray(image[top:top + out_h, left:left + out_w])


def fit_geometry(shape: Tuple[int, int], size: Size) -> Tuple[int, int, int, int]:
    """What :func:`fit` does to an image of ``shape`` = (h, w): the resized (height, width) and
    the crop's (top, left) offset in the resized image."""
    h, w = int(shape[0]), int(shape[1])
    out_h, out_w = _target(size)
    if out_h * w >= out_w * h:  # height is the binding side
        new_h, new_w = out_h, max(out_w, int(out_h * w / h))
    else:
        new_h, new_w = max(out_h, int(out_w * h / w)), out_w
    return new_h, new_w, int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0))


def fit_box(box: Sequence[float], shape: Tuple[int, int], size: Size) -> Tuple[int, int, int, int]:
    """A box (top, left, bottom, right; bottom/right exclusive) in the pixels of an image of
    ``shape`` = (h, w), mapped through :func:`fit`'s resize and crop to the model input's pixels.

    Edges scale with the image (``edge * new / old`` per axis) and shift by the crop; a pixel
    belongs to the mapped box when its centre lies inside it. Clipped to the input; a box
    cropped away entirely comes back empty (bottom <= top or right <= left).
    """
    h, w = int(shape[0]), int(shape[1])
    out_h, out_w = _target(size)
    new_h, new_w, top, left = fit_geometry((h, w), (out_h, out_w))
    t, l, b, r = (float(v) for v in box)
    rows = (t * new_h / h - top, b * new_h / h - top)
    cols = (l * new_w / w - left, r * new_w / w - left)
    # pixel i is inside [a, b) when a <= i + 0.5 < b, i.e. ceil(a - 0.5) <= i < ceil(b - 0.5)
    first = [int(np.clip(np.ceil(v - 0.5), 0, limit)) for v, limit in ((rows[0], out_h), (cols[0], out_w))]
    last = [int(np.clip(np.ceil(v - 0.5), 0, limit)) for v, limit in ((rows[1], out_h), (cols[1], out_w))]
    return first[0], first[1], last[0], last[1]


# --- normalising -------------------------------------------------------------------------


def _stats(values: Stats, channels: int, what: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, dtype=np.float32))
    if array.ndim != 1:
        raise InvalidInputError(f"{what} must be a number or one number per channel, got {values!r}")
    if channels == 1 and array.size == 3:
        array = np.array([float(LUMA @ array)], dtype=np.float32)  # the gray of the RGB statistics
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.size != channels:
        raise InvalidInputError(f"{what} has {array.size} values but the model takes {channels} channels: "
                                f"give one value per channel, or a single value for all")
    if what == "std" and np.any(array == 0):
        raise InvalidInputError(f"std must not contain zeros, got {values!r}")
    return array.reshape(1, channels, 1, 1)


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise InvalidInputError(f"channels must be 1 (grayscale models) or 3 (RGB), got {channels!r}")
    return channels


def normalize(images: np.ndarray, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD,
              channels: int = 3) -> np.ndarray:
    """uint8 (N, H, W, 3) or one (H, W, 3) -> float32 (N, C, H, W): ``(x / 255 - mean) / std``.

    ``channels=1`` first converts to luminance (Pillow's "L" weights) for 1-channel models; a
    3-value ``mean``/``std`` is then converted the same way.
    """
    _check_channels(channels)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise InvalidInputError(f"images must be uint8 (N, H, W, 3) or (H, W, 3), got {images.dtype} {images.shape}")
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    if channels == 1:
        # element-wise, not tensordot: BLAS's order of fused multiply-adds varies with the CPU and the
        # image size, and the web page (preprocess.js) must give the same float32 bits
        x = (LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2]) + LUMA[2] * x[:, 2:3]
    out = (x - _stats(mean, channels, "mean")) / _stats(std, channels, "std")
    return np.ascontiguousarray(out, dtype=np.float32)


def denormalize(x: np.ndarray, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> np.ndarray:
    """float (N, C, H, W) or one (C, H, W) network input -> uint8 (N, H, W, 3) for display.

    Undoes ``normalize`` (``(x * std + mean) * 255``, rounded, clipped to [0, 255]); a
    1-channel input becomes gray RGB.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise InvalidInputError(f"x must be (N, C, H, W) with C = 1 or 3, got shape {x.shape}")
    channels = x.shape[1]
    pixels = (x * _stats(std, channels, "std") + _stats(mean, channels, "mean")) * 255.0
    out = np.clip(np.round(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if channels == 1:
        out = np.repeat(out, 3, axis=3)
    return np.ascontiguousarray(out)


def prepare(paths: Union[PathLike, Sequence[PathLike]], size: Size, mean: Stats = IMAGENET_MEAN,
            std: Stats = IMAGENET_STD, channels: int = 3) -> Tuple[np.ndarray, np.ndarray]:
    """Load, fit and normalise image files.

    Returns ``(x, display)``: the network input float32 (N, C, H, W) and the fitted pictures
    uint8 (N, H, W, 3) it was made from.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]  # type: ignore[list-item]
    paths = list(paths)  # type: ignore[arg-type]
    if not paths:
        raise InvalidInputError("no image files given: pass at least one path")
    _check_channels(channels)
    target = _target(size)
    display = np.stack([fit(load_image(p), target) for p in paths])
    return normalize(display, mean, std, channels), display


def input_size(backend: Backend) -> Optional[Tuple[Optional[int], Optional[int], Optional[int]]]:
    """The (C, H, W) a model takes (NCHW, whatever its own layout), from an ONNX backend's
    ``image_shape``.

    Each entry is an int, or None where the graph leaves it symbolic. Returns None when the
    backend declares no 4-D input shape (torch modules): the caller then needs a size.
    """
    shape = backend.image_shape
    if shape is None or len(shape) != 3:
        return None
    dims = tuple(
        int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 else None
        for d in shape
    )
    return dims  # type: ignore[return-value]


def input_geometry(backend: Backend, size: Optional[Tuple[int, int]] = None) -> Tuple[int, Tuple[int, int]]:
    """(channels, (H, W)) to prepare images for ``backend``: the ONNX input's size, else ``size``,
    else 224 x 224; channels from the input, else the first convolution's, else 3."""
    from ..core.errors import CnnlensError, ModelError

    known = input_size(backend)
    channels = known[0] if known and known[0] else None
    fitted = tuple(size) if size else (tuple(known[1:]) if known and all(known[1:]) else None)
    if channels is None:
        try:
            channels = int(backend.weights(None).shape[1])
        except (CnnlensError, AttributeError, IndexError):
            channels = 3
    layout = backend.layout
    if channels not in (1, 3):
        other = "NCHW" if layout == "NHWC" else "NHWC"
        raise ModelError(f"the model's input, read as {layout}, takes images of {channels} channels, "
                         f"and image files have 1 or 3: if the model is laid out {other}, give --layout {other}")
    return channels, fitted or (224, 224)  # type: ignore[return-value]
