"""``torch.export`` programs (``ExportedProgram``, ``.pt2`` files) behind the torch backend.

A program's ``module()`` is one flat graph of ATen operators, whose containers are never
called, so forward hooks on them never fire. ``torch.export.unflatten`` restores the module
hierarchy: every original module path (``layer4``, ``features.denseblock3``,
``layer1.0.relu``) is a module again, called in the original order, so the torch backend's
hooks, ``autograd.grad`` to hooked activations, Ablation-CAM's replacing hooks and the eval
state all work unchanged. What differs is handled here or shared with the torch backend: the
graph's ReLUs are ``aten.relu`` / ``aten.relu_`` calls (the ReLU-rule mode swaps them too), its
pools and linear maps are ATen calls (the CAM head recorder knows them), the input size is the
program's own, channels-last is chosen from the graph's convolutions, layer kinds come from the
original classes, and a randomised copy is a fresh unflatten (programs do not deep-copy).
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import types
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...core.backend import BackendSpec, spec_layout
from ...core.errors import ModelError
from ...core.types import Layer
from .. import base
from .backend import TorchBackend
from .randomise import reinitialise, seeded

_ATEN = torch.ops.aten
_CONVOLUTIONS = {_ATEN.conv2d.default, _ATEN.convolution.default}
# operators with a training flag, and the position of that flag
_TRAINING_FLAGS = {_ATEN.batch_norm.default: 5, _ATEN._native_batch_norm_legit_functional.default: 5,
                   _ATEN._native_batch_norm_legit.default: 5, _ATEN.dropout.default: 2,
                   _ATEN.native_dropout.default: 2, _ATEN.feature_dropout.default: 2}


def _nodes(program: Any) -> List[Any]:
    return [n for n in program.graph.nodes if n.op == "call_function"]


def _check_inference(program: Any) -> None:
    """Refuse a program exported in training mode: its BatchNorm uses the batch's statistics and
    its dropout draws, so a map would depend on the batch and on chance."""
    for node in _nodes(program):
        position = _TRAINING_FLAGS.get(node.target)
        if position is not None and len(node.args) > position and node.args[position] is True:
            raise ModelError(f"the program was exported in training mode ({node.target} with training=True): "
                             f"export it again after model.eval()")


def _input_shape(program: Any) -> Optional[Tuple[Optional[int], ...]]:
    """The image input's shape from the program's first user input, symbolic sizes as None."""
    names = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and names and node.name == names[0]:
            value = node.meta.get("val")
            if value is None or not hasattr(value, "shape"):
                return None
            return tuple(int(d) if isinstance(d, int) else None for d in value.shape)
    return None


def _original_class(module: nn.Module) -> Optional[type]:
    """The torch.nn class an unflattened module was (from its ``_ty`` path); never imports
    anything outside ``torch.nn``, since the path comes from the file."""
    path = getattr(module, "_ty", None)
    if not isinstance(path, str) or not path.startswith("torch.nn."):
        return None
    owner, _, name = path.rpartition(".")
    found = getattr(importlib.import_module(owner), name, None)
    return found if isinstance(found, type) and issubclass(found, nn.Module) else None


def _kind(module: nn.Module) -> Optional[str]:
    path = getattr(module, "_ty", None)
    return path.rpartition(".")[2] if isinstance(path, str) and path else None


def _reset_like_original(module: nn.Module, seed: int) -> None:
    """Re-draw a module's own parameters as its original class's ``reset_parameters`` would (a
    stand-in object carries them through it), else as the torch backend does for modules without one."""
    cls = _original_class(module)
    reset = getattr(cls, "reset_parameters", None)
    if reset is None:
        reinitialise(module, seed, scripted=True)
        return
    params, buffers = dict(module.named_parameters(recurse=False)), dict(module.named_buffers(recurse=False))
    stand_in = types.SimpleNamespace(**{"weight": None, "bias": None, **params, **buffers},
                                     affine="weight" in params, track_running_stats="running_mean" in buffers)
    for method in ("reset_running_stats", "_reset_parameters"):
        if hasattr(cls, method):
            setattr(stand_in, method, types.MethodType(getattr(cls, method), stand_in))
    with seeded(module, seed):
        reset(stand_in)


class ExportedBackend(TorchBackend):
    """A ``torch.export`` program, explained through its unflattened module."""

    def __init__(self, program: Any, device: Optional[str] = None, output: Union[None, int, str] = None,
                 layout: str = "auto", module: Optional[nn.Module] = None):
        _check_inference(program)
        self.program = program
        try:
            unflattened = module if module is not None else torch.export.unflatten(program)
        except Exception as error:  # noqa: BLE001
            raise ModelError(f"cannot restore the program's modules (torch.export.unflatten: "
                             f"{type(error).__name__}: {error})") from None
        super().__init__(unflattened, device=device, output=output, layout=layout)
        self.name = "torch.export"
        self.channels_last = (self.device.type == "cpu" and self.layout != "NHWC"
                              and any(n.target in _CONVOLUTIONS for n in _nodes(program)))

    def __repr__(self) -> str:
        return f"ExportedBackend(input={_input_shape(self.program)}, device={self.device})"

    def _guess_input_shape(self) -> Tuple[int, ...]:
        shape = _input_shape(self.program)
        if shape is not None and len(shape) == 4:
            image = shape[1:] if self.layout != "NHWC" else (shape[3], shape[1], shape[2])
            if all(d is not None for d in image):
                return (1,) + tuple(int(d) for d in image)  # type: ignore[arg-type]
        return super()._guess_input_shape()

    def spec(self) -> BackendSpec:
        """The program's ``torch.export.save`` bytes, the output choice and layout."""
        buffer = io.BytesIO()
        torch.export.save(self.program, buffer)
        return BackendSpec("exported", buffer.getvalue(), self.output, spec_layout(self.layout))

    @property  # type: ignore[override]
    def image_shape(self) -> Optional[Tuple[Optional[int], ...]]:
        """(C, H, W) of the program's input (NCHW whatever its layout), for preprocessing."""
        shape = _input_shape(self.program)
        if shape is None or len(shape) != 4:
            return None
        return shape[1:] if self.layout != "NHWC" else (shape[3], shape[1], shape[2])

    def layers(self, input_shape: Optional[Tuple[int, ...]] = None) -> List[Layer]:
        """As the torch backend's, with each module's original class as its kind."""
        kinds = {name: _kind(m) for name, m in self.modules().items()}
        return [dataclasses.replace(layer, kind=kinds.get(layer.name) or layer.kind) for layer in super().layers(input_shape)]

    def randomised(self, layers: Sequence[str], seed: int = 0) -> "ExportedBackend":
        """As the torch backend's, over a fresh unflatten of the program (its own parameters)."""
        names = base.randomisation_layers(self, layers, seed)
        module = torch.export.unflatten(self.program).to(self.device)
        modules = dict(module.named_modules())
        with torch.no_grad():
            for i, name in enumerate(names):
                _reset_like_original(modules[name], int(seed) + i)
        backend = ExportedBackend(self.program, output=self.output, layout=self.layout, module=module)
        backend.channels_last = self.channels_last
        return backend
