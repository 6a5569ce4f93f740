"""``cnnlens.compare``: run one method on two models and report how far their maps agree.

The typical pair is a torch module and its ONNX or TorchScript export. A layer is named once:
torch module paths are mapped to ONNX nodes through what the exporter recorded (legacy node
names like ``/layer4/layer4.1/relu_1/Relu``, or the dynamo exporter's name-scope metadata),
and ONNX node names back to module paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

import numpy as np

from .api import _as_numpy
from .backends import backend_for
from .core.backend import Backend
from .core.errors import LayerError
from .core.methods import HEAD_LAYER, LayerSpec, check_images, lookup, run
from .core.metrics import agreement
from .core.targets import Target
from .core.types import Explanation


@dataclass
class ImageAgreement:
    """One image: how model B's map differs from model A's, and whether they predict alike."""

    index: int
    target: Optional[int]  # the class explained; None for output weights
    max_abs_diff: float
    relative_error: float
    rank_correlation: float
    predicted_a: int
    predicted_b: int

    @property
    def classes_agree(self) -> bool:
        return self.predicted_a == self.predicted_b


@dataclass
class Comparison:
    """The result of ``cnnlens.compare``; ``a`` and ``b`` are the two explanations."""

    method: str
    images: List[ImageAgreement]
    a: Explanation = field(repr=False)
    b: Explanation = field(repr=False)

    @property
    def worst_relative_error(self) -> float:
        return max(i.relative_error for i in self.images)

    @property
    def classes_agree(self) -> bool:
        return all(i.classes_agree for i in self.images)

    def table(self) -> str:
        """A plain-text table, one row per image."""
        head = f"{'image':>5}  {'target':>6}  {'max |a-b|':>10}  {'rel. error':>10}  {'spearman':>8}  classes"
        rows = [head]
        for i in self.images:
            agree = "agree" if i.classes_agree else f"DIFFER ({i.predicted_a} vs {i.predicted_b})"
            target = "w" if i.target is None else i.target
            rows.append(f"{i.index:>5}  {target:>6}  {i.max_abs_diff:>10.3g}  {i.relative_error:>10.3g}  "
                        f"{i.rank_correlation:>8.4f}  {agree}")
        return "\n".join(rows)

    def __str__(self) -> str:
        layer = f" at {self.a.layer!r} / {self.b.layer!r}" if self.a.layer is not None else ""
        return f"{self.method}{layer}\n{self.table()}"


def _map_layer(name: str, backend: Backend, other: Backend) -> str:
    """``name`` as ``backend`` knows it: its own name, or the module path ``other`` recorded for it."""
    try:
        return backend.resolve_layer(name)
    except LayerError:
        module = other.module_of(name)  # explains itself when the node is no module's output
        if module == name:
            raise
    return backend.resolve_layer(module)


def _layers_for(layer: LayerSpec, backend: Backend, other: Backend) -> LayerSpec:
    if layer is None:
        return None
    if isinstance(layer, str):
        return _map_layer(layer, backend, other)
    return [_map_layer(n, backend, other) for n in layer]


def compare(model_a: Any, model_b: Any, x: Any, method: str, target: Target = None,
            layer: LayerSpec = None, **options: Any) -> Comparison:
    """Explain ``x`` with ``method`` on both models and compare the maps image by image.

    Model A is the reference: with ``target=None`` both models explain A's predicted class, so
    the maps are comparable even where the predictions differ (which the result reports).
    ``layer`` may name a layer in either model's terms. Returns a :class:`Comparison`.
    """
    spec = lookup(method)
    a, b = backend_for(model_a), backend_for(model_b)
    images = check_images(_as_numpy(x))
    layer_a = _layers_for(layer, a, b)
    layered = spec.layered
    if layer is None and layered and spec.layer != HEAD_LAYER:
        layer_a = a.default_layer(tuple(images.shape))
    exp_a = run(a, images, method, target=target, layer=layer_a, **options)
    if spec.layer == HEAD_LAYER and layer is None:
        layer_b = None  # each backend finds the tensor its own head pools (DenseNet's F.relu has no module)
    elif layered:
        names = exp_a.layer if isinstance(exp_a.layer, list) else [exp_a.layer]
        mapped: Union[str, List[str]] = [_map_layer(n, b, a) for n in names]
        layer_b = mapped if isinstance(exp_a.layer, list) else mapped[0]
    else:
        layer_b = None
    exp_b = run(b, images, method, target=exp_a.target, layer=layer_b, **options)
    rows = []
    for i in range(len(images)):
        stats = agreement(exp_a.maps[i], exp_b.maps[i])
        target_i = np.asarray(exp_a.target[i])
        rows.append(ImageAgreement(i, int(target_i) if target_i.ndim == 0 else None, stats["max_abs_diff"], stats["relative_error"],
                                   stats["rank_correlation"], int(np.argmax(exp_a.logits[i])),
                                   int(np.argmax(exp_b.logits[i]))))
    return Comparison(method, rows, exp_a, exp_b)
