"""A model in eval mode for the duration of calls (every module's own ``training`` flag restored when
the last concurrent call on the model leaves), shared by the torch backend and its satellites."""

from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterator, List, Tuple

from torch import nn


class _EvalState:
    """Puts a model in eval mode for the duration of calls, restoring every module's own flag
    when the last concurrent call on that model leaves (so threads sharing a model agree)."""

    _lock = threading.Lock()
    _active: Dict[int, Tuple[int, List[Tuple[nn.Module, bool]]]] = {}

    @classmethod
    @contextlib.contextmanager
    def evaluating(cls, model: nn.Module) -> Iterator[None]:
        key = id(model)
        with cls._lock:
            count, saved = cls._active.get(key, (0, []))
            if count == 0:  # only the modules in training mode need switching (and restoring)
                saved = [(m, True) for m in model.modules() if m.training]
                for module, _ in saved:
                    module.training = False
            cls._active[key] = (count + 1, saved)
        try:
            yield
        finally:
            with cls._lock:
                count, saved = cls._active[key]
                if count == 1:
                    del cls._active[key]
                    for module, flag in saved:
                        module.training = flag
                else:
                    cls._active[key] = (count - 1, saved)


def evaluating(model: nn.Module):
    """Context manager: ``model`` in eval mode inside, every module's own flag restored after."""
    return _EvalState.evaluating(model)
