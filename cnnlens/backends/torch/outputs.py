"""Which tensor of a torch model's output holds the explained scores: the output itself, the
entry the user chose (an index or a key of a tuple, list, dict or output object), or by default
the first tensor (with a warning, once per model, that there were several)."""

from __future__ import annotations

import warnings
import weakref
from typing import Any, List, Tuple, Union

import torch
from torch import nn

from ...core.errors import ModelError

#: Models whose several outputs were explained by their first tensor, already warned about.
_WARNED_OUTPUTS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def remember(models: "weakref.WeakSet[nn.Module]", model: nn.Module) -> bool:
    """Add ``model`` to a weak set of models; True when it was not there yet (an unhashable
    module class is never remembered, so always counts as new)."""
    try:
        if model in models:
            return False
        models.add(model)
    except TypeError:
        pass
    return True


def _entries(output: Any) -> List[Tuple[str, Any]]:
    """(label, value) for each entry of a tuple, list, dict or output object."""
    if isinstance(output, dict):
        return [(repr(k), v) for k, v in output.items()]
    if isinstance(output, (tuple, list)):
        return [(str(i), v) for i, v in enumerate(output)]
    return [("logits", getattr(output, "logits", None))]


def scores_in(output: Any, choice: Union[None, int, str], model: nn.Module) -> torch.Tensor:
    """The class scores in the model's output: the output itself, the entry ``choice`` names (an
    index or a key) of a tuple, list or dict, or by default its first tensor."""
    if isinstance(output, torch.Tensor):
        scores = output
    elif choice is not None:
        try:
            scores = output[choice] if isinstance(output, (dict, tuple, list)) else getattr(output, str(choice))
        except (KeyError, IndexError, TypeError, AttributeError):
            entries = ", ".join(label for label, _ in _entries(output))
            raise ModelError(f"the model's output has no entry {choice!r} (it has: {entries}): choose one of those "
                             f"with output=...") from None
        if not isinstance(scores, torch.Tensor):
            raise ModelError(f"the model's output entry {choice!r} is a {type(scores).__name__}, not a tensor")
    else:
        tensors = [(label, v) for label, v in _entries(output) if isinstance(v, torch.Tensor)]
        if not tensors:
            raise ModelError(
                f"the model returned {type(output).__name__} with no tensor in it: cnnlens explains a "
                f"model that returns class scores (N, classes); wrap it in a module that returns them"
            )
        label, scores = tensors[0]
        if len(tensors) > 1 and remember(_WARNED_OUTPUTS, model):
            warnings.warn(
                f"the model returns a {type(output).__name__} of {len(tensors)} tensors; cnnlens explains the "
                f"first, {label} (shape {tuple(scores.shape)}). To explain another, load the model with "
                f"cnnlens.load(model, output=KEY_OR_INDEX) (command line: --output)", UserWarning, stacklevel=2)
    if scores.ndim < 1 or not scores.is_floating_point():
        raise ModelError(f"the model's output is a {scores.dtype} tensor of shape {tuple(scores.shape)}, not float "
                         f"scores with a batch axis: wrap the model so that it returns them")
    return scores
