"""What the methods share: batching, the target of a slice of images, layer names, checks."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union, cast

import numpy as np

from ..backend import Backend as Backend  # the contract (re-exported): the core never imports a backend
from ..errors import InvalidInputError, LayerError
from ..targets import ClassSeed, Objective, OutputWeights, Target, is_single, objective
from ..tokens import MapReading, ReshapeSpec, map_grids, read_as_maps

LayerSpec = Union[None, str, Sequence[str]]


def batches(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` items covering ``total``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def batch_size(backend: Backend, value: Optional[int], kind: str, x: np.ndarray) -> int:
    """``value``, or the backend's choice for ``kind`` ("forward" or "backward") passes."""
    if value is None:
        return max(1, int(backend.batch_size(kind, x.shape[1:])))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"batch_size must be a positive int, got {value!r}")
    return int(value)


def forward_batch(backend: Backend, value: Optional[int], x: np.ndarray) -> int:
    """``batch_size`` for forward passes: ``value``, or the backend's choice."""
    return batch_size(backend, value, "forward", x)


def backward_batch(backend: Backend, value: Optional[int], x: np.ndarray) -> int:
    """``batch_size`` for forward-and-backward passes: ``value``, or the backend's choice."""
    return batch_size(backend, value, "backward", x)


def target_slice(target: Target, sl: slice) -> Target:
    """The part of ``target`` that belongs to images ``sl``."""
    if is_single(target):
        return target
    if isinstance(target, OutputWeights):
        return target[sl]
    # not single, not weights: one class per image (is_single does not narrow the type)
    return list(cast(Sequence[int], target))[sl] if not isinstance(target, np.ndarray) else target.reshape(-1)[sl]


def seed(target: Target, sl: slice) -> ClassSeed:
    """The gradient rows to back-propagate for images ``sl``."""
    return ClassSeed(target_slice(target, sl))


def layer_names(backend: Backend, layer: LayerSpec, x: np.ndarray) -> Tuple[List[str], bool]:
    """(canonical names, whether a list was given)."""
    if layer is None:
        return [backend.default_layer(tuple(x.shape))], False
    if isinstance(layer, str):
        return [backend.resolve_layer(layer)], False
    names = list(layer)
    if not names or not all(isinstance(n, str) for n in names):
        raise LayerError(f"layer must be a layer name or a non-empty list of names, got {layer!r}")
    return [backend.resolve_layer(n) for n in names], True


def one_layer(backend: Backend, layer: LayerSpec, x: np.ndarray, method: str) -> str:
    names, as_list = layer_names(backend, layer, x)
    if as_list and len(names) != 1:
        raise LayerError(f"{method} takes one layer at a time")
    return names[0]


def layer_value(names: List[str], as_list: bool) -> Union[str, List[str]]:
    return list(names) if as_list else names[0]


class LayerMaps:
    """Layers' outputs as (N, K, h, w) maps: how each layer reads (a map as it is, a channels-last
    map, tokens on their grid; see ``core.tokens``) is decided from its first activation and kept
    for every batch and for its gradients."""

    def __init__(self, backend: Backend, x: np.ndarray, reshape: ReshapeSpec, method: str, layer: LayerSpec):
        self.backend = backend
        self.defaulted = layer is None  # the backend's default layer: it must read as a map
        self.shape = tuple(x.shape)
        self.image = (int(x.shape[2]), int(x.shape[3]))
        self.reshape = reshape
        self.method = method
        self.readings: Dict[str, Tuple[MapReading, Tuple[int, ...]]] = {}

    def reading(self, name: str, activation: np.ndarray) -> MapReading:
        if name not in self.readings:
            shape = tuple(activation.shape)
            reading = read_as_maps(name, shape, self.image, self.reshape, self.method, self._model_grids,
                                   self.defaulted)
            self.readings[name] = (reading, shape)
        return self.readings[name][0]

    def _model_grids(self) -> Set[Tuple[int, int]]:
        """The (h, w) of every (N, K, h, w) map the model makes at this image size."""
        return map_grids(layer.shape for layer in self.backend.layers((1,) + self.shape[1:]))

    def activation(self, name: str, value: np.ndarray) -> np.ndarray:
        """Layer ``name``'s activation as maps (a LayerError saying what to pick or state when it cannot)."""
        return self.reading(name, value).read(value)

    def gradient(self, name: str, value: np.ndarray) -> np.ndarray:
        """The gradient at layer ``name`` laid out as its activation is (read that first)."""
        return self.readings[name][0].read(value)

    def extras(self) -> Dict[str, np.ndarray]:
        """``{"layer_reading": one sentence per layer}`` when any layer was not read as the plain
        (N, K, h, w) map it is (tokens laid on a grid, a channels-last map), else nothing."""
        if all(reading.plain for reading, _ in self.readings.values()):
            return {}
        return {"layer_reading": np.array([reading.describe(name, shape)
                                           for name, (reading, shape) in self.readings.items()])}


def clean_outputs(backend: Backend, x: np.ndarray, batch: int) -> np.ndarray:
    """The model's outputs for the unperturbed images."""
    return np.concatenate([backend.forward(x[sl]).logits for sl in batches(len(x), batch)])


def forward_layers(backend: Backend, x: np.ndarray, names: Sequence[str], batch: int,
                   ) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """({layer: its activations for every image}, outputs) from one forward pass per batch."""
    parts: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    outputs = []
    for sl in batches(len(x), batch):
        p = backend.forward(x[sl], layers=names)
        for n in names:
            parts[n].append(p.activations[n])
        outputs.append(p.logits)
    return {n: np.concatenate(parts[n]) for n in names}, np.concatenate(outputs)


def clean_pass(backend: Backend, x: np.ndarray, target: Target, batch: int) -> Tuple[np.ndarray, Objective]:
    """(outputs, the objective) of the unperturbed images: what forward-only methods start from."""
    outputs = clean_outputs(backend, x, batch)
    return outputs, objective(target, outputs)


def check_images(x: Any) -> np.ndarray:
    """Validated float32 (N, C, H, W) images."""
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"images must be a float array of shape (N, C, H, W): {error}") from None
    if x.ndim == 3:
        channels_last = x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4)
        hint = (" It looks like one image (H, W, C): use x.transpose(2, 0, 1)[None]." if channels_last else
                " It looks like one image (C, H, W): add a batch axis with x[None].")
        raise InvalidInputError(f"images must have 4 axes (N, C, H, W), got shape {x.shape}.{hint}")
    if x.ndim != 4:
        raise InvalidInputError(f"images must have 4 axes (N, C, H, W), got shape {x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] > 4:
        raise InvalidInputError(
            f"images of shape {x.shape} look channels-last (N, H, W, C): cnnlens wants (N, C, H, W); "
            f"use x.transpose(0, 3, 1, 2)"
        )
    if 0 in x.shape:
        raise InvalidInputError(f"images must not be empty, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("images contain NaN or infinite values: clean or re-normalise them first")
    return np.ascontiguousarray(x)
