"""What the backends share beyond the contract: batch sizes, the randomisation layers check. The
contract itself (the ``Backend`` protocol and the capability names) is ``cnnlens.core.backend``,
re-exported here for the backends."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import numpy as np

from ..core.backend import (ACTIVATIONS, CAPABILITIES, FORWARD, GRADIENTS, INCREMENTAL_OCCLUSION,  # noqa: F401
                            INPUT_GRADIENTS, INPUT_RULES, LAYER_GRADIENTS, LINEAR_HEAD, RANDOMISE, RELEVANCE_RULES,
                            RELU_RULES, REPLACE_LAYER, WEIGHTS, Backend, GradLogits, check_capabilities)
from ..core.errors import InvalidInputError, LayerError


#: On a CPU, convolutions run fastest while one layer's output for the whole batch stays near
#: this many elements (measured on ResNet-50 at 224 and a small DenseNet at 64 on two cores:
#: batches of 4-8 and of 32-128 respectively; larger ones fall out of cache and run slower).
CPU_LAYER_ELEMENTS = 2 ** 22
CPU_MAX_BATCH = 128


def cache_sized_batch(largest_layer: int, budget: int = CPU_LAYER_ELEMENTS, cap: int = CPU_MAX_BATCH) -> int:
    """The batch whose largest layer output (``largest_layer`` elements per image) fits ``budget``."""
    return int(max(1, min(cap, budget // max(int(largest_layer), 1))))


def run_replacements(run: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, values: np.ndarray,
                     known: Dict[str, bool], layer: str, failures: Tuple[Type[BaseException], ...]) -> np.ndarray:
    """The outputs of ``run(images, values)`` for Ablation-CAM's replacements ``values`` (B, ...) of
    layer ``layer``'s output, ``x`` one image or B. One image meets every replacement when the model
    broadcasts it past the layer — checked once per layer (``known`` keeps the answer) on two
    replacements: the outputs must be those of two copies of the image (a ``failures`` error
    counts as no) — else it runs B copies."""
    if len(x) == len(values):
        return run(x, values)
    if len(x) != 1:
        raise InvalidInputError(f"replaced: give one image or one per replacement, got {len(x)} for {len(values)}")
    shared = known.get(layer)
    if shared is None and len(values) > 1:
        try:
            one = run(x, values[:2])
            shared = one.shape[0] == 2 and bool(np.allclose(one, run(np.repeat(x, 2, axis=0), values[:2]),
                                                            rtol=1e-5, atol=1e-6))
        except failures:
            shared = False
        known[layer] = bool(shared)
    return run(x if shared else np.repeat(x, len(values), axis=0), values)


def randomisation_layers(backend: Backend, layers: Union[str, Sequence[str]], seed: int) -> List[str]:
    """The canonical names of the layers ``randomised`` is asked for (one name or a sequence of
    them; repeats dropped), each checked to hold learned weights; and ``seed`` checked."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative int, got {seed!r}")
    names = [layers] if isinstance(layers, str) else list(layers)
    resolved = list(dict.fromkeys(backend.resolve_layer(n) for n in names))
    if resolved:
        # any layer with weights may be re-drawn, also one the cascade leaves out (never called)
        choices = backend.weighted_layers()
        for name in resolved:
            if name not in choices:
                raise LayerError(f"layer {name!r} has no learned parameters to randomise: {_some_choices(name, choices)}")
    return resolved


def path_by_suffix(name: str, paths: Sequence[str]) -> Optional[str]:
    """The one module path of ``paths`` that ``name`` names up to leading containers — a path that is
    ``name`` under more containers (a wrapper's module named without the wrapper) or ``name`` with
    containers of its own dropped (an exporter that recorded no scope for a container whose
    ``forward`` was never called). The containers are attributes, never sequence indices
    (``layer9.0.conv1`` is not ``conv1``); None when no path or several match (never a guess)."""
    parts = name.split(".")
    found = set()
    for path in paths:
        other = path.split(".")
        longer, shorter = (other, parts) if len(other) > len(parts) else (parts, other)
        extra = len(longer) - len(shorter)
        if extra and longer[extra:] == shorter and not any(c.isdigit() for c in longer[:extra]):
            found.add(path)
    return found.pop() if len(found) == 1 else None


def _some_choices(name: str, choices: List[str], shown: int = 12) -> str:
    """The layers with weights to name instead: the named layer's own sub-layers when it has
    some, else all of them (the first and last few of a long list)."""
    inside = [c for c in choices if c.startswith(name + ".")]
    if inside:
        listed, what = inside, "its sub-layers with weights are"
    else:
        listed, what = choices, "the layers with weights are"
    if not listed:
        return "the model has no layers with learned weights"
    if len(listed) > shown:
        half = shown // 2
        text = ", ".join(map(repr, listed[:half])) + ", ..., " + ", ".join(map(repr, listed[-half:]))
        return f"{what} {text} ({len(listed)} in all; backend.parameter_layers() lists them)"
    return f"{what} {', '.join(map(repr, listed))}"
