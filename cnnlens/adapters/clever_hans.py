"""A "Clever Hans" version of the demo: shapes data in which a small mark in a corner accompanies
most positives, and the demo network trained on it (the tank classifier that learned the weather).

``add_mark`` paints the mark (a saturated magenta patch, a colour no shape has: shapes' channels
are all at least 40%), ``make_clever_hans`` makes marked training data, ``train_or_load`` trains
(and caches) the demo DenseNet on it, ``held_out`` gives fresh images in four groups (the same
images with and without the mark) and ``shortcut_effect`` measures what the mark does to the
model's answers. The data functions are NumPy only; training imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from . import synthetic
from .demo import TrainingConfig
from .synthetic import Shape, ShapesData

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
MARK_COLOUR: Tuple[int, int, int] = (255, 0, 255)   # magenta: every shape channel is >= 102
_MARK_SIZE, _MARK_OFFSET = 5 / 64, 4 / 64          # 5 px patch, 4 px from both edges at 64 px
_CLEARANCE = 2 / 64                                 # squares keep this far from the mark
#: The held-out groups of ``held_out`` and ``shortcut_effect``, in order.
GROUPS = ("positive", "positive_marked", "negative", "negative_marked")


def mark_box(size: int = 64, corner: str = "top-left") -> Tuple[int, int, int, int]:
    """The mark's box (top, left, bottom, right; bottom/right exclusive) in a size x size image."""
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
    side, offset = max(2, int(round(_MARK_SIZE * size))), max(1, int(round(_MARK_OFFSET * size)))
    top = offset if corner.startswith("top") else size - offset - side
    left = offset if corner.endswith("left") else size - offset - side
    return top, left, top + side, left + side


#: The mark's box at the demo's 64 px, top-left: (4, 4, 9, 9). 4 px from the edges rather than 2:
#: Grad-CAM's 8 x 8 cells put the marked images' peaks at pixel (11, 11) (the centre of cell
#: (1, 1), where the mark's receptive fields meet), 3 px from this box; with the mark at 2 px the
#: marked negatives' peaks fell 4 px away, at the edge of the pointing game's tolerance (4.3 px at 64).
MARK_BOX = mark_box(64)


def add_mark(images: np.ndarray, corner: str = "top-left", colour: Sequence[int] = MARK_COLOUR,
             which: Optional[np.ndarray] = None) -> np.ndarray:
    """A copy of ``images`` (uint8 (N, H, W, 3) or one (H, W, 3)) with the mark painted over
    ``mark_box(H, corner)`` in ``colour``; ``which`` (a boolean mask or indices) marks only those."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[-1] != 3 or images.shape[-2] != images.shape[-3]:
        raise ValueError(f"images must be square (N, H, W, 3) or (H, W, 3), got shape {images.shape}")
    out = images.copy()
    top, left, bottom, right = mark_box(images.shape[-2], corner)
    batch = out[None] if out.ndim == 3 else out
    index = slice(None) if which is None else np.arange(len(batch))[which]
    batch[index, top:bottom, left:right] = np.asarray(colour, dtype=out.dtype)
    return out


def _rotate(shapes: Tuple[Shape, ...], size: int) -> Tuple[Shape, ...]:
    """The shapes of an image turned by 180 degrees."""
    turned = []
    for s in shapes:
        if s.kind == "square":
            t, l, b, r = s.params
            params: Tuple[float, ...] = (size - b, size - r, size - t, size - l)
        else:
            params = (size - s.params[0], size - s.params[1], s.params[2])
        turned.append(dataclasses.replace(s, params=params))
    return tuple(turned)


def make_clever_hans(n: int, size: int = 64, seed: int = 0, marked_positive_fraction: float = 0.9,
                     marked_negative_fraction: float = 0.0, corner: str = "top-left"
                     ) -> Tuple[ShapesData, np.ndarray]:
    """``synthetic.make_shapes(n, size, seed)`` with the mark in ``corner`` on exactly
    ``round(fraction * count)`` of the positives and of the negatives (seeded choice).

    Returns ``(data, marked)``, ``marked`` a bool (N,) array. A positive whose square comes
    within 2 px (at 64) of the mark's box is turned by 180 degrees (image, box and shapes), so
    the mark never covers the square: boxes stay exact, with or without the mark. Circles may
    reach the corner; the mark is painted over them.
    """
    for name, value in (("marked_positive_fraction", marked_positive_fraction),
                        ("marked_negative_fraction", marked_negative_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    data = synthetic.make_shapes(n, size=size, seed=seed)
    top, left, bottom, right = mark_box(size, corner)
    gap = _CLEARANCE * size
    shapes = list(data.shapes)
    for i in np.flatnonzero(data.labels == 1):
        t, l, b, r = data.boxes[i]
        if t < bottom + gap and b > top - gap and l < right + gap and r > left - gap:
            data.images[i] = data.images[i, ::-1, ::-1]
            data.boxes[i] = (size - b, size - r, size - t, size - l)
            shapes[i] = _rotate(shapes[i], size)
    data.shapes = shapes
    rng = np.random.default_rng([seed, 0xC1E7E4])   # a stream of its own: the shapes do not change
    marked = np.zeros(n, dtype=bool)
    for label, fraction in ((1, marked_positive_fraction), (0, marked_negative_fraction)):
        members = np.flatnonzero(data.labels == label)
        marked[rng.choice(members, size=int(round(fraction * len(members))), replace=False)] = True
    data.images = add_mark(data.images, corner, which=marked)
    return data, marked


@dataclasses.dataclass(frozen=True)
class CleverHansConfig(TrainingConfig):
    """What the Clever Hans model is trained on (the demo's training, plus the mark); changing a
    training field retrains."""

    marked_positive_fraction: float = 0.95   # 0.9 left the marked positives' maps split between mark and square
    marked_negative_fraction: float = 0.0
    corner: str = "top-left"
    held_out: int = 200        # held-out images (a fresh seed), about half positive

    def key(self) -> str:
        """A hash of the training fields and the mark's look: the weights cache's key."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "held_out"}
        fields["mark"] = [list(MARK_COLOUR), _MARK_SIZE, _MARK_OFFSET, _CLEARANCE]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


QUICK = CleverHansConfig(train_images=600, epochs=3, held_out=48)


def train_or_load(out_dir: str, config: CleverHansConfig = CleverHansConfig(),
                  say: Callable[[str], Any] = print) -> Tuple[Any, float]:
    """The demo DenseNet trained on ``make_clever_hans`` data, and its validation accuracy (on a
    held-back 20% of that marked data); cached in ``out_dir`` (``clever_hans_state.pt`` and
    ``clever_hans.json``), reused while ``config.key()`` matches. The model is in eval mode.

    ``demo_model.train``'s flips and transposes carry the mark to every corner while training:
    the model learns "a magenta patch in a corner means a square", wherever ``config.corner`` is."""
    from .demo import train_cached

    def data() -> Tuple[ShapesData, str]:
        shapes, marked = make_clever_hans(config.train_images, config.size, config.seed,
                                          config.marked_positive_fraction, config.marked_negative_fraction, config.corner)
        return shapes, (f"{len(shapes)} shapes images, the mark on {marked[shapes.labels == 1].mean():.0%} of positives "
                        f"and {marked[shapes.labels == 0].mean():.0%} of negatives")

    model, accuracy, _ = train_cached(os.path.join(out_dir, "clever_hans_state.pt"), os.path.join(out_dir, "clever_hans.json"),
                                      config, data, "Clever Hans model", say)
    return model, accuracy


def held_out(config: CleverHansConfig = CleverHansConfig()) -> Dict[str, ShapesData]:
    """``config.held_out`` fresh images (seed ``config.seed + 1000``) in the four ``GROUPS``:
    the positives and the negatives, each without and with the mark; a group and its
    ``_marked`` twin are the same images (same boxes, labels and shapes) but for the mark."""
    data, _ = make_clever_hans(config.held_out, config.size, config.seed + 1000, 0.0, 0.0, config.corner)
    groups: Dict[str, ShapesData] = {}
    for name, label in (("positive", 1), ("negative", 0)):
        plain = data.subset(data.labels == label)
        groups[name] = plain
        groups[name + "_marked"] = ShapesData(add_mark(plain.images, config.corner), plain.labels.copy(),
                                              plain.boxes.copy(), list(plain.shapes))
    return {name: groups[name] for name in GROUPS}


def predict(model: Any, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The classes ``model`` (a torch module taking ``synthetic.normalize``d input) predicts for
    uint8 (N, H, W, 3) ``images``, int64 (N,); evaluated in eval mode, the mode restored."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(synthetic.normalize(images[start:start + batch_size]))
                out.append(model(x).argmax(dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def shortcut_effect(model: Any, groups: Dict[str, ShapesData]) -> Dict[str, float]:
    """What the mark does to ``model``'s answers on ``held_out``'s groups.

    ``<group>_accuracy`` for each group; ``accuracy`` over all four; ``flip_rate``: the share of
    the negatives called "no square" without the mark that the mark turns to "square" (NaN when
    none); ``false_positive_rate`` and ``false_positive_rate_marked``: negatives called "square"
    without and with the mark; ``positive_drop``: positives' accuracy with the mark minus
    without (how much the model leans on it); ``images``: the images per group.
    """
    pred = {name: predict(model, data.images) for name, data in groups.items()}
    correct = {name: pred[name] == groups[name].labels for name in GROUPS}
    result: Dict[str, Any] = {f"{name}_accuracy": float(correct[name].mean()) if len(correct[name]) else float("nan")
                              for name in GROUPS}
    result["accuracy"] = float(np.concatenate([correct[name] for name in GROUPS]).mean())
    clean = pred["negative"] == 0
    result["flip_rate"] = float((pred["negative_marked"][clean] == 1).mean()) if clean.any() else float("nan")
    result["false_positive_rate"] = 1.0 - result["negative_accuracy"]
    result["false_positive_rate_marked"] = 1.0 - result["negative_marked_accuracy"]
    result["positive_drop"] = result["positive_marked_accuracy"] - result["positive_accuracy"]
    result["images"] = {name: len(groups[name]) for name in GROUPS}
    return result
