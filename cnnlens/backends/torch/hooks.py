"""The one owner of the hooks the torch backend puts on a user's module.

Every feature that needs to see or change a module's output — layer capture, the layer trace,
the CAM head's recording, Ablation-CAM's replacement — registers its hooks on a :class:`Hooks`
opened by ``TorchBackend.call``: each hook fires only in the thread that registered it (another
thread running the same module at the same time sees none of them), and all are removed when
the call ends, also when it fails, so a user's module is never left with one.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ...core.errors import LayerError


class Hooks:
    """Forward and pre-forward hooks for one call, for the calling thread only."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self._handles: List[Any] = []

    def after(self, module: nn.Module, fn: Callable[[Any], Optional[Any]]) -> None:
        """Call ``fn(output)`` when ``module`` returns; a value it returns replaces the output."""
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            return fn(output) if threading.get_ident() == self.thread else None
        self._handles.append(module.register_forward_hook(hook))

    def before(self, module: nn.Module, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when ``module`` is called."""
        def hook(module: nn.Module, inputs: Any) -> None:
            if threading.get_ident() == self.thread:
                fn()
        self._handles.append(module.register_forward_pre_hook(hook))

    def remove(self) -> None:
        """Remove every hook registered here."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class Captured:
    """The outputs of the requested modules during one call.

    Each hook keeps the module's output (the last call's, for a module run several times) and
    hands the rest of the model a clone, so later in-place operations cannot change the captured
    value or reroute its gradient.
    """

    def __init__(self, hooks: Hooks, modules: Dict[str, nn.Module], grad: bool):
        self.outputs: Dict[str, torch.Tensor] = {}
        self.grad = grad
        for name, module in modules.items():
            hooks.after(module, self._keeper(name))

    def _keeper(self, name: str) -> Callable[[Any], Optional[torch.Tensor]]:
        def keep(output: Any) -> Optional[torch.Tensor]:
            if not isinstance(output, torch.Tensor):
                raise LayerError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor: pick one of its "
                    f"sub-layers (`cnnlens.layers(model)` lists them)"
                )
            if not self.grad:
                self.outputs[name] = output.detach().clone()
                return None
            if not output.requires_grad:  # nothing upstream needs gradients: start the graph here
                output = output.detach().requires_grad_(True)
            self.outputs[name] = output
            return output.clone()
        return keep

    def get(self, name: str) -> torch.Tensor:
        """The output ``name`` gave, or a LayerError when the forward pass never ran it."""
        if name not in self.outputs:
            raise LayerError(f"layer {name!r} exists but the model's forward pass never ran it: pick a layer that runs")
        return self.outputs[name]


class Call:
    """What ``TorchBackend.call`` yields: its ``hooks`` and the ``captured`` layer outputs."""

    def __init__(self, hooks: Hooks, captured: Captured):
        self.hooks = hooks
        self.captured = captured
