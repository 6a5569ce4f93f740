"""What is explained: a class per image, or weights over the model's output (``sum w * output``).

``target`` as the user gives it: ``None`` (each image's arg-max class), an int (that class for every
image), one int per image, or an array of float weights — the shape of one output (the same for
every image) or of the whole batch's outputs — for models that are not classifiers (a regression
head, a segmentation map). :func:`objective` turns it and the model's outputs into an
:class:`Objective`, which scores outputs and gives the gradient rows to back-propagate.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union, cast

import numpy as np
from numpy.typing import DTypeLike

from .errors import TargetError

Target = Union[None, int, Sequence[int], np.ndarray, "OutputWeights", "DerivedWeights"]


class OutputWeights:
    """Weights over the outputs, one row per image, shape (N, *output): the explained score of image
    ``i`` is ``sum(weights[i] * output[i])``."""

    def __init__(self, weights: np.ndarray):
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, index: Any) -> "OutputWeights":
        return OutputWeights(self.weights[index])


class DerivedWeights:
    """Output weights read off the model's own outputs for the images explained (a segmentation class
    over its predicted region): ``make(outputs)`` gives (N, *output) weights from the unperturbed
    outputs. They are computed once, before the method runs, and held fixed from then on (every
    perturbed pass is scored with them), and ``Explanation.target`` reports them."""

    def __init__(self, make: Callable[[np.ndarray], np.ndarray], description: str):
        self.make = make
        self.description = description

    def __repr__(self) -> str:
        return self.description

    def weights_for(self, outputs: np.ndarray) -> OutputWeights:
        """The weights for these outputs, checked against their shape."""
        outputs = np.asarray(outputs)
        return output_weights(self.make(outputs), len(outputs), outputs.shape[1:])


def is_weights(target: Target) -> bool:
    """Whether ``target`` is output weights (a float array) rather than class indices."""
    if isinstance(target, OutputWeights):
        return True
    if isinstance(target, np.ndarray):
        return target.dtype.kind == "f" and target.ndim > 0
    if isinstance(target, (list, tuple)) and target:
        array = np.asarray(target)
        return array.dtype.kind == "f" and (array.ndim > 1 or not all(float(v).is_integer() for v in array.ravel()))
    return False


def output_weights(target: Target, n: int, output_shape: Tuple[int, ...]) -> OutputWeights:
    """Float weights checked against the model's output shape (without the batch axis) and
    broadcast to one row per image."""
    if isinstance(target, OutputWeights):
        return target
    weights = np.asarray(target, dtype=np.float64)
    if not np.isfinite(weights).all():
        raise TargetError("target weights contain NaN or infinite values")
    output_shape = tuple(output_shape)
    if weights.shape == output_shape:
        weights = np.broadcast_to(weights, (n,) + output_shape)
    elif weights.shape != (n,) + output_shape:
        raise TargetError(
            f"target weights have shape {weights.shape}, and the model's output for {n} images is "
            f"{(n,) + output_shape}: give weights of one output's shape {output_shape} (the same for every "
            f"image) or of the batch's {(n,) + output_shape}"
        )
    return OutputWeights(weights)


def is_single(target: Target) -> bool:
    """Whether ``target`` means one thing for every image: None or one class index."""
    return target is None or np.isscalar(target) or (isinstance(target, np.ndarray) and target.ndim == 0)


def class_scores(outputs: np.ndarray) -> np.ndarray:
    """The outputs as (N, classes) scores (an (N, K, 1, 1) head squeezed), or a TargetError that says
    to give output weights instead."""
    outputs = np.asarray(outputs)
    if outputs.ndim > 2 and all(d == 1 for d in outputs.shape[2:]):
        outputs = outputs.reshape(outputs.shape[:2])
    if outputs.ndim != 2:
        raise TargetError(
            f"the model's output has shape {outputs.shape}, not (N, classes), so a class index does not say "
            f"what to explain: give target weights, an array of one output's shape {outputs.shape[1:]} (the "
            f"explained score is sum(weights * output); command line: --target-weights FILE.npy), or choose "
            f"the class-score output with cnnlens.load(model, output=...)"
        )
    return outputs


def resolve_targets(target: Target, logits: np.ndarray) -> np.ndarray:
    """Class index per image, shape (N,), int64.

    ``None`` takes each image's arg-max of ``logits`` (N, K); an int explains that class
    for every image; a sequence gives one class per image.

    Examples:
        >>> import numpy as np
        >>> logits = np.array([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
        >>> resolve_targets(None, logits).tolist()
        [1, 0]
        >>> resolve_targets(2, logits).tolist()
        [2, 2]
        >>> resolve_targets([0, 2], logits).tolist()
        [0, 2]
        >>> resolve_targets(3, logits)
        Traceback (most recent call last):
        ...
        cnnlens.core.errors.TargetError: target 3 is out of range: the model has 3 outputs, so targets must be in 0..2
    """
    logits = class_scores(logits)
    n, k = logits.shape
    if target is None:
        predicted: np.ndarray = np.argmax(logits, axis=1).astype(np.int64)
        return predicted
    if isinstance(target, (bool, np.bool_)):
        raise TargetError(f"target must be an int class index or a list of them, got {target!r}")
    if is_single(target):
        classes = np.full(n, _as_index(target), dtype=np.int64)
    else:
        values = (list(np.asarray(target).reshape(-1)) if isinstance(target, np.ndarray)
                  else list(cast(Sequence[int], target)))  # not single: one class per image
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


def one_hot(classes: np.ndarray, num_classes: int, dtype: DTypeLike = np.float32) -> np.ndarray:
    """One-hot rows (N, num_classes): the gradient of ``sum_i y_{c_i}`` w.r.t. the outputs.

    Examples:
        >>> import numpy as np
        >>> one_hot(np.array([1, 0]), 3).tolist()
        [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    """
    out = np.zeros((len(classes), num_classes), dtype=dtype)
    out[np.arange(len(classes)), classes] = 1
    return out


def pick(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each row's score for its class: ``scores[i, classes[i]]``, shape (N,)."""
    picked: np.ndarray = scores[np.arange(len(classes)), classes]
    return picked


class Objective:
    """The explained score of each image: its class's output, or ``sum(w * output)``.

    ``record`` is what ``Explanation.target`` reports: the classes (N,) or the weights (N, *output).
    """

    def __init__(self, classes: Optional[np.ndarray] = None, weights: Optional[OutputWeights] = None):
        self.classes = classes
        self.weights = weights

    @property
    def record(self) -> np.ndarray:
        if self.weights is None:
            assert self.classes is not None  # objective() sets either classes or weights
            return self.classes
        return self.weights.weights

    def target_for(self, owners: np.ndarray) -> Target:
        """The target of images ``owners`` as a Target (explicit classes, or their weights' rows)."""
        if self.weights is None:
            assert self.classes is not None  # objective() sets either classes or weights
            classes: np.ndarray = self.classes[owners]
            return classes
        return self.weights[owners]

    def score(self, outputs: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """The explained score (B,) of outputs (B, ...) of images ``owners`` (or perturbations of them)."""
        if self.weights is None:
            assert self.classes is not None  # objective() sets either classes or weights
            return pick(class_scores(outputs), self.classes[owners]).astype(np.float64)
        w = self.weights.weights[owners]
        scores: np.ndarray = np.einsum("bi,bi->b", w.reshape(len(w), -1).astype(np.float64),
                                       np.asarray(outputs, dtype=np.float64).reshape(len(w), -1))
        return scores

    def rows(self, owners: np.ndarray, output_shape: Tuple[int, ...]) -> np.ndarray:
        """The gradient of the explained score with respect to outputs of shape (B, *output)."""
        if self.weights is None:
            assert self.classes is not None  # objective() sets either classes or weights
            return one_hot(self.classes[owners], int(np.prod(output_shape[1:]))).reshape(output_shape)
        weight_rows: np.ndarray = self.weights.weights[owners].reshape(output_shape)
        return weight_rows


def objective(target: Target, outputs: np.ndarray) -> Objective:
    """The :class:`Objective` of ``target`` for these (unperturbed) outputs, checked."""
    if isinstance(target, DerivedWeights):
        return Objective(weights=target.weights_for(outputs))
    if is_weights(target):
        return Objective(weights=output_weights(target, len(outputs), np.asarray(outputs).shape[1:]))
    return Objective(classes=resolve_targets(target, outputs))


class ClassSeed:
    """The gradient to back-propagate from the outputs for ``target`` (classes or output weights).

    Calling it with a pass's outputs gives the rows; :meth:`rows` gives them from the outputs'
    shape alone. ``target`` is kept as the user gave it (None: each image's arg-max) so that a
    backend can build the rows next to the model instead (the ONNX backend does, to keep one
    forward and one backward pass).
    """

    def __init__(self, target: Target):
        self.target = target

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        outputs = np.asarray(outputs)
        return objective(self.target, outputs).rows(np.arange(len(outputs)), outputs.shape)

    @property
    def needs_outputs(self) -> bool:
        """Whether the rows depend on the outputs' values (each image's arg-max, weights derived
        from the outputs), not only on their shape."""
        return self.target is None or isinstance(self.target, DerivedWeights)

    def rows(self, output_shape: Tuple[int, ...]) -> np.ndarray:
        """The rows for outputs of this shape (only for a target whose rows do not depend on the
        outputs' values)."""
        if self.needs_outputs:
            raise ValueError("the arg-max target's rows depend on the outputs: call the seed with them")
        return self(np.zeros(output_shape, dtype=np.float32))


def probabilities(scores: np.ndarray) -> np.ndarray:
    """(N, K) scores as probabilities: kept when they already are (a Softmax output), else softmaxed."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1, atol=1e-3):
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    softmaxed: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return softmaxed
