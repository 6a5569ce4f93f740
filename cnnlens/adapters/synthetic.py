"""Synthetic circles-and-squares images: the data of ``cnnlens demo`` (NumPy only).

The task follows the seeds' DenseNet example: is there a square in the image? Every image has
a few circles; a positive image also has exactly one axis-aligned square. Circles and the
square are drawn from the same distributions of area, colour, and fill style (filled or
outlined), and the number of circles does not depend on the class: circles carry no evidence
either way, and global pixel statistics (channel means and standard deviations, a 32-bin
intensity histogram) let a logistic regression reach only about 63% (the square adds one
object's worth of colour). The square's shape is what a model has to find. The square never
touches a circle (circles may overlap each other), so its bounding box is exactly the square's
pixels and the pointing game has a clean ground truth.

This module imports NumPy and the standard library only, so an ONNX-only install can make the
same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

#: The normalisation the demo model is trained with, ``(x / 255 - MEAN) / STD``. MEAN is the
#: background's average level (backgrounds are greys in [0.05, 0.15]) rather than the data's
#: mean (0.165), so that 0 in model space is plain background: occlusion's default
#: baseline of 0 and Score-CAM's masked-out pixels erase to background instead of painting a
#: grey patch the model could take for a square. STD is about the data's (0.19), rounded.
MEAN: Tuple[float, float, float] = (0.1, 0.1, 0.1)
STD: Tuple[float, float, float] = (0.2, 0.2, 0.2)

# Shape sizes as fractions of the image side; "size" is the square root of the shape's area,
# so a circle and a square of the same size cover the same number of pixels.
_MIN_SIZE, _MAX_SIZE = 0.12, 0.28      # 7.7 .. 17.9 px at 64 px
_GAP = 2.0 / 64                         # clearance between the square and any circle
_BACKGROUND = (0.05, 0.15)              # the background: one shade of grey per image
_COLOUR_MIN = 0.4                       # shape colours: each channel in [_COLOUR_MIN, 1]
_NOISE = 0.03                           # std of the additive Gaussian pixel noise


@dataclass(frozen=True)
class Shape:
    """One drawn shape, in pixels: a square's box (top, left, bottom, right exclusive), or a
    circle's centre (row, col) and radius; ``filled`` or an outline ``thickness`` px wide."""

    kind: str                      # "square" or "circle"
    params: Tuple[float, ...]      # square: (top, left, bottom, right); circle: (row, col, radius)
    colour: Tuple[float, float, float]
    filled: bool
    thickness: int


@dataclass
class ShapesData:
    """A batch of synthetic images.

    ``images`` uint8 (N, H, W, 3); ``labels`` int64 (N,), 1 when a square is present;
    ``boxes`` int64 (N, 4), the square's (top, left, bottom, right) in pixels, bottom/right
    exclusive, and -1 rows for negatives; ``shapes`` what was drawn on each image.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    shapes: List[Tuple[Shape, ...]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "ShapesData":
        """The images at ``index`` (a slice, an index array or a boolean mask), as a new ShapesData."""
        idx = np.arange(len(self))[index]
        return ShapesData(self.images[idx], self.labels[idx], self.boxes[idx],
                          [self.shapes[i] for i in idx] if self.shapes else [])


def _circle_alpha(size: int, row: float, col: float, radius: float, filled: bool, thickness: int):
    """Anti-aliased coverage of a disc (or a ring ``thickness`` px wide) on the pixels of its
    bounding patch: returns (row slice, col slice, alpha)."""
    r0, r1 = max(0, int(math.floor(row - radius - 1))), min(size, int(math.ceil(row + radius + 2)))
    c0, c1 = max(0, int(math.floor(col - radius - 1))), min(size, int(math.ceil(col + radius + 2)))
    yy = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    xx = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
    d = np.sqrt((yy - row) ** 2 + (xx - col) ** 2)
    alpha = np.clip(radius + 0.5 - d, 0.0, 1.0)
    if not filled:
        alpha = alpha - np.clip(radius - thickness + 0.5 - d, 0.0, 1.0)
    return slice(r0, r1), slice(c0, c1), alpha


def _square_alpha(side: int, filled: bool, thickness: int) -> np.ndarray:
    alpha = np.ones((side, side), dtype=np.float64)
    if not filled:
        alpha[thickness:side - thickness, thickness:side - thickness] = 0.0
    return alpha


def _paint(canvas: np.ndarray, rows: slice, cols: slice, alpha: np.ndarray, colour: np.ndarray) -> None:
    patch = canvas[rows, cols]
    a = alpha[..., None]
    patch *= 1.0 - a
    patch += a * colour


def _draw_one(rng: np.random.Generator, noise_rng: np.random.Generator, size: int, positive: bool,
              n_circles: int, noise: float) -> Tuple[np.ndarray, Tuple[int, int, int, int], Tuple[Shape, ...]]:
    background = rng.uniform(*_BACKGROUND)
    canvas = np.full((size, size, 3), background, dtype=np.float64)
    scale = size / 64.0
    max_thick = max(2, int(round(2 * scale)))

    def style():
        colour = rng.uniform(_COLOUR_MIN, 1.0, size=3)
        filled = bool(rng.random() < 0.5)
        thickness = int(rng.integers(1, max_thick + 1))
        return colour, filled, thickness

    shapes: List[Shape] = []
    box = (-1, -1, -1, -1)
    if positive:
        side = int(round(rng.uniform(_MIN_SIZE, _MAX_SIZE) * size))
        margin = 1
        top = int(rng.integers(margin, size - side - margin + 1))
        left = int(rng.integers(margin, size - side - margin + 1))
        colour, filled, thickness = style()
        _paint(canvas, slice(top, top + side), slice(left, left + side),
               _square_alpha(side, filled, thickness), colour)
        box = (top, left, top + side, left + side)
        shapes.append(Shape("square", box, tuple(float(c) for c in colour), filled, thickness))

    gap = _GAP * size
    for _ in range(n_circles):
        radius = rng.uniform(_MIN_SIZE, _MAX_SIZE) * size / math.sqrt(math.pi)
        colour, filled, thickness = style()
        for _attempt in range(100):
            row = rng.uniform(radius + 1, size - radius - 1)
            col = rng.uniform(radius + 1, size - radius - 1)
            if not positive:
                break
            # Distance from the centre to the square's box (0 inside it), against the radius
            # plus the gap plus the anti-aliasing half pixel: circles never touch the square.
            top, left, bottom, right = box
            dy = max(top - row, 0.0, row - bottom)
            dx = max(left - col, 0.0, col - right)
            if math.hypot(dy, dx) > radius + 0.5 + gap:
                break
        else:
            continue  # no room left for this circle: draw one fewer
        rows, cols, alpha = _circle_alpha(size, row, col, radius, filled, thickness)
        _paint(canvas, rows, cols, alpha, colour)
        shapes.append(Shape("circle", (float(row), float(col), float(radius)),
                            tuple(float(c) for c in colour), filled, thickness))

    if noise > 0:
        canvas += noise_rng.normal(0.0, noise, size=canvas.shape)
    image = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    return image, box, tuple(shapes)


def make_shapes(n: int, size: int = 64, seed: int = 0, positive_fraction: float = 0.5,
                circles: Tuple[int, int] = (2, 5), noise: float = _NOISE) -> ShapesData:
    """``n`` seeded images (size x size RGB) of circles, half of them (``positive_fraction``)
    with one square.

    Each image has between ``circles[0]`` and ``circles[1]`` circles (whatever its class;
    rarely one fewer on a positive image when no room is left beside the square), shapes' sizes
    between 12% and 28% of the side (the square root of the area), random colours, filled or
    outlined (1 or 2 px at 64 px), on a dark grey background with Gaussian noise of
    std ``noise`` (in [0, 1] units; 0 for exact colours). Exactly ``round(n *
    positive_fraction)`` images are positive, in shuffled order. The same arguments give
    byte-identical data, and the noise comes from its own random stream, so ``noise=0`` gives
    the same shapes, noise-free.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    lo, hi = int(circles[0]), int(circles[1])
    if not 0 <= lo <= hi:
        raise ValueError(f"circles must be (min, max) with 0 <= min <= max, got {circles}")
    # Two streams, so the layout does not depend on the noise: noise=0 draws the same shapes.
    layout_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    rng, noise_rng = np.random.default_rng(layout_seq), np.random.default_rng(noise_seq)
    labels = np.zeros(n, dtype=np.int64)
    labels[:int(round(n * positive_fraction))] = 1
    rng.shuffle(labels)
    counts = rng.integers(lo, hi + 1, size=n)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    boxes = np.full((n, 4), -1, dtype=np.int64)
    shapes: List[Tuple[Shape, ...]] = []
    for i in range(n):
        images[i], boxes[i], drawn = _draw_one(rng, noise_rng, size, bool(labels[i]), int(counts[i]), float(noise))
        shapes.append(drawn)
    return ShapesData(images, labels, boxes, shapes)


def to_tensor_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) (or one (H, W, 3) image) to float32 (N, 3, H, W) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) to the model's input: float32 (N, 3, H, W), ``(x / 255 - MEAN) / STD``."""
    x = to_tensor_range(images)
    mean = np.asarray(MEAN, dtype=np.float32)[None, :, None, None]
    std = np.asarray(STD, dtype=np.float32)[None, :, None, None]
    return (x - mean) / std
