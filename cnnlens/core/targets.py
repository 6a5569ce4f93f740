"""Which class each image is explained for, and the one-hot weights to back-propagate."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .errors import TargetError

Target = Union[None, int, Sequence[int], np.ndarray]


def is_single(target: Target) -> bool:
    """Whether ``target`` means one thing for every image: None or one class index."""
    return target is None or np.isscalar(target) or (isinstance(target, np.ndarray) and target.ndim == 0)


def resolve_targets(target: Target, logits: np.ndarray) -> np.ndarray:
    """Class index per image, shape (N,), int64.

    ``None`` takes each image's arg-max of ``logits`` (N, K); an int explains that class
    for every image; a sequence gives one class per image.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise TargetError(f"model outputs must have shape (N, classes), got {logits.shape}")
    n, k = logits.shape
    if target is None:
        return np.argmax(logits, axis=1).astype(np.int64)
    if isinstance(target, (bool, np.bool_)):
        raise TargetError(f"target must be an int class index or a list of them, got {target!r}")
    if is_single(target):
        classes = np.full(n, _as_index(target), dtype=np.int64)
    else:
        values = list(np.asarray(target).reshape(-1)) if isinstance(target, np.ndarray) else list(target)
        if len(values) != n:
            raise TargetError(
                f"got {len(values)} targets for a batch of {n} images: give one int for all "
                f"images or exactly one per image"
            )
        classes = np.array([_as_index(v) for v in values], dtype=np.int64)
    bad = classes[(classes < 0) | (classes >= k)]
    if bad.size:
        raise TargetError(
            f"target {int(bad[0])} is out of range: the model has {k} outputs, so targets must "
            f"be in 0..{k - 1}"
        )
    return classes


def _as_index(value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise TargetError(f"target must be an int class index, got {value!r}")
    return int(value)


def one_hot(classes: np.ndarray, num_classes: int, dtype: Optional[np.dtype] = np.float32) -> np.ndarray:
    """One-hot rows (N, num_classes): the gradient of ``sum_i y_{c_i}`` w.r.t. the outputs."""
    out = np.zeros((len(classes), num_classes), dtype=dtype)
    out[np.arange(len(classes)), classes] = 1
    return out


def pick(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each row's score for its class: ``scores[i, classes[i]]``, shape (N,)."""
    return scores[np.arange(len(classes)), classes]


class ClassSeed:
    """The gradient to back-propagate from the scores: one-hot rows of the classes ``target`` names.

    Calling it with a pass's logits (N, K) gives the rows. ``target`` is kept as the user gave it
    (None: each image's arg-max) so that a backend can build the rows next to the model instead
    (the ONNX backend does, to keep one forward and one backward pass).
    """

    def __init__(self, target: Target):
        self.target = target

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return one_hot(resolve_targets(self.target, logits), np.asarray(logits).shape[1])
