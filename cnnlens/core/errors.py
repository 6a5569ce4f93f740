"""The errors a user can cause. Each message says what was wrong and what to do."""

from __future__ import annotations

import difflib
from typing import Iterable


class CnnlensError(Exception):
    """Base class of every error cnnlens raises for a mistake in its input."""


class InvalidInputError(CnnlensError, ValueError):
    """The images, or an option's value, cannot be used as given."""


class UnknownMethodError(CnnlensError, ValueError):
    """The method name is not one cnnlens knows."""


class LayerError(CnnlensError, ValueError):
    """The layer does not exist, or cannot serve the method asked for."""


class TargetError(CnnlensError, ValueError):
    """The target classes do not fit the model's outputs or the batch."""


class UnsupportedError(CnnlensError, TypeError):
    """The backend cannot run this method (e.g. a gradient method on ONNX)."""


class ModelError(CnnlensError, ValueError):
    """The model cannot be loaded, or does not have the structure a method needs."""


def unknown_layer(name: str, known: Iterable[str]) -> LayerError:
    """A LayerError for a mistyped layer name, listing the closest real names."""
    known = [k for k in known if k]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return LayerError(
        f"unknown layer {name!r}.{hint} `cnnlens.layers(model)` lists all {len(known)} layer names."
    )
