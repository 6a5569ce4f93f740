"""Plain data shared by the core and the backends: layers, the result of one pass, explanations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np


#: the normalisation ImageNet models expect, ``(pixel - mean) / std`` per channel on pixels in [0, 1]
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Layer:
    """One layer of a model: its name (the backend's own), kind (module class or op type) and
    output shape with the batch axis as ``None`` (``None`` when unknown)."""

    name: str
    kind: str
    shape: Optional[Tuple[Optional[int], ...]] = None

    @property
    def spatial(self) -> bool:
        """Whether the output is a (N, K, h, w) map with more than one position."""
        return self.shape is not None and len(self.shape) == 4 and (self.shape[2] or 0) * (self.shape[3] or 0) > 1


@dataclass
class Pass:
    """What one forward (and possibly backward) pass returns, as NumPy arrays, batch first."""

    logits: np.ndarray
    input_grad: Optional[np.ndarray] = None
    activations: Dict[str, np.ndarray] = field(default_factory=dict)
    gradients: Dict[str, np.ndarray] = field(default_factory=dict)
    #: what the backend did to the model's rules that the result depends on (relevance rules:
    #: the canonizations applied), as sentences
    notes: Tuple[str, ...] = ()
    #: DeepLIFT: the outputs at the baseline (one image), as the rules explain them
    baseline_logits: Optional[np.ndarray] = None


@dataclass
class Explanation:
    """The result of ``cnnlens.explain``.

    ``maps`` float32, batch first (shape per method in METHODS.md); ``target`` (N,) the class
    explained per image (or, for output weights, the weights per image (N, *output)); ``logits`` (N, K) the model's outputs for the unperturbed images;
    ``layer`` the layer name(s) used, or None; ``extras`` a method's per-image by-products
    (Integrated Gradients' ``completeness_error``).
    """

    method: str
    maps: np.ndarray
    target: np.ndarray
    logits: np.ndarray
    layer: Union[None, str, List[str]] = None
    options: Dict[str, Any] = field(default_factory=dict)
    extras: Dict[str, np.ndarray] = field(default_factory=dict)

    def __repr__(self) -> str:
        layer = f", layer={self.layer!r}" if self.layer is not None else ""
        return (f"Explanation(method={self.method!r}, maps={self.maps.shape} {self.maps.dtype}, "
                f"target={self._target_text()}{layer})")

    def _target_text(self) -> str:
        target = np.asarray(self.target)
        return str(target.tolist()) if target.ndim == 1 else f"<weights {target.shape}>"
