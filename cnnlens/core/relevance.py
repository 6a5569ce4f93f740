"""The relevance rule sets, declared once: LRP's composites (which rule each linear layer gets) and
DeepLIFT's Rescale rule, as the values ``backward(rules=...)`` takes. Backends apply them (the torch
backend in a function mode, the ONNX builder per op); METHODS.md defines what each rule computes.

Pure NumPy: nothing here runs a model.

>>> COMPOSITES["epsilon_plus_flat"].rule("conv", first=False), COMPOSITES["epsilon_plus_flat"].rule("dense", first=True)
('zplus', 'flat')
>>> COMPOSITES["epsilon_gamma_box"].rule("dense", first=True)  # zB is for a first convolution only
'epsilon'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InvalidInputError
from .types import IMAGENET_MEAN, IMAGENET_STD

#: the stabiliser of every rule but epsilon's: ``z + 1e-6 sign(z)`` (sign(0) = +1), as zennit's
STABILIZER = 1e-6
#: where ``|s - s'|`` is below this, DeepLIFT's Rescale multiplier is the plain derivative (Captum's)
RESCALE_TOLERANCE = 1e-10

#: the rules of one linear layer (Conv, Linear / Gemm / MatMul), with what each computes (METHODS.md)
LINEAR_RULES: Dict[str, str] = {
    "epsilon": "R_i = a_i sum_j w_ij R_j / (z_j + eps sign z_j)",
    "zplus": "z+: the epsilon rule over w+ (and b+) on positive inputs and w- on negative ones",
    "gamma": "w + gamma w+ where the output is positive, w + gamma w- where it is negative",
    "alpha2beta1": "2 (positive contributions) - 1 (negative contributions)",
    "flat": "every input of an output gets an equal share (weights and inputs as ones)",
    "zbox": "zB: the epsilon rule minus the box bounds' contributions (l w+ and h w-)",
}


@dataclass(frozen=True)
class Composite:
    """Which rule each linear layer gets: ``conv`` for convolutions, ``dense`` for fully connected
    layers, ``first`` for the first Conv/Linear the forward pass calls when it is of a kind in
    ``first_kinds`` (None: no rule of its own)."""

    name: str
    conv: str
    dense: str
    first: Optional[str] = None
    first_kinds: Tuple[str, ...] = ("conv", "dense")
    #: the zennit 1.0 composite this one is defined as (the parity tests' reference)
    zennit: str = ""

    def rule(self, kind: str, first: bool) -> str:
        """The rule of a layer of ``kind`` ("conv" or "dense"); ``first``: whether it is the first."""
        if first and self.first is not None and kind in self.first_kinds:
            return self.first
        return self.conv if kind == "conv" else self.dense


#: LRP's composites (Montavon et al. 2019), as zennit 1.0 defines them
COMPOSITES: Dict[str, Composite] = {c.name: c for c in (
    Composite("epsilon_plus_flat", conv="zplus", dense="epsilon", first="flat", zennit="EpsilonPlusFlat"),
    Composite("epsilon_gamma_box", conv="gamma", dense="epsilon", first="zbox", first_kinds=("conv",),
              zennit="EpsilonGammaBox"),
    Composite("epsilon_alpha2_beta1", conv="alpha2beta1", dense="epsilon", zennit="EpsilonAlpha2Beta1"),
    Composite("epsilon_alpha2_beta1_flat", conv="alpha2beta1", dense="epsilon", first="flat",
              zennit="EpsilonAlpha2Beta1Flat"),
    Composite("epsilon", conv="epsilon", dense="epsilon", zennit="Epsilon on Convolution and Linear + layer_map_base"),
)}

def box_of(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(low, high) per channel: the bounds of pixels in [0, 1] after ``(p - mean) / std`` (the zB
    rule's default box: ImageNet's normalisation).

    >>> box_of((0.5,), (0.25,))
    ((-2.0,), (2.0,))
    """
    low = tuple(float((0.0 - m) / s) for m, s in zip(mean, std))
    high = tuple(float((1.0 - m) / s) for m, s in zip(mean, std))
    return low, high


@dataclass(frozen=True)
class LrpRules:
    """LRP with a composite: the value ``backward(rules=...)`` takes. Relevance starts at the
    output as ``seed * outputs`` (the explained score itself); the input gradient a backend returns
    under these rules is the input's relevance. ``low`` / ``high``: the zB box, one value per input
    channel (empty where the composite has no zB layer)."""

    composite: str
    epsilon: float = 1e-6
    gamma: float = 0.25
    low: Tuple[float, ...] = ()
    high: Tuple[float, ...] = ()
    stabilizer: float = STABILIZER

    @property
    def layers(self) -> Composite:
        return COMPOSITES[self.composite]

    def box(self, channels: int) -> Tuple[np.ndarray, np.ndarray]:
        """The zB bounds as (C,) float arrays for an input of ``channels`` channels."""
        low, high = (np.asarray(v, dtype=np.float64) for v in (self.low, self.high))
        if low.size == 1:
            low, high = np.repeat(low, channels), np.repeat(high, channels)
        if low.size != channels or high.size != channels:
            raise InvalidInputError(f"the zB box gives {low.size} bounds, the model's first layer takes {channels} "
                                    f"channels: pass low= and high= with one value (or one per channel)")
        return low, high


@dataclass(frozen=True, eq=False)
class DeepLiftRules:
    """DeepLIFT's Rescale rule against ``baseline`` (C, H, W): every elementwise nonlinearity passes
    ``g (f(s) - f(s')) / (s - s')``; the input gradient a backend returns under these rules is the
    multipliers ``m`` (the attribution is ``(x - x') m``)."""

    baseline: np.ndarray = field(repr=False)

    @property
    def key(self) -> Tuple[str, Tuple[int, ...], bytes]:
        """A hashable identity of the rules (the baseline's bytes)."""
        b = np.ascontiguousarray(self.baseline, dtype=np.float32)
        return ("deeplift", b.shape, b.tobytes())


Rules = Union[str, LrpRules, DeepLiftRules]


def is_relevance(rules: Any) -> bool:
    """Whether ``rules`` are a relevance rule set (LRP or DeepLIFT) rather than a ReLU rule name."""
    return isinstance(rules, (LrpRules, DeepLiftRules))


def describe(counts: Dict[str, int], first: Optional[str], lrp: bool) -> Tuple[str, ...]:
    """What a backend applied, as sentences (``Pass.notes``): ``counts`` of "conv <rule>" / "dense
    <rule>" layers, "batchnorm merged", "batchnorm pass", "residual sum", "average pool", "rescale",
    "softmax skipped"; ``first``: the first layer's kind and rule.

    >>> describe({"conv zplus": 2, "conv flat": 1, "batchnorm merged": 3}, "conv (flat)", True)
    ('layers by rule: conv flat: 1, conv zplus: 2; first layer: conv (flat)', 'BatchNorm merged into the Conv/Linear before it: 3')
    """
    found = []
    if counts.get("softmax skipped"):
        found.append("the model's final Softmax was skipped: the explained scores are its input, the logits")
    if not lrp:
        return tuple(found) + (f"Rescale rule on {counts.get('rescale', 0)} activation(s)",)
    layers = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k.startswith(("conv ", "dense ")) and v)
    found.append(f"layers by rule: {layers or 'none'}" + (f"; first layer: {first}" if first else ""))
    for key, sentence in (("batchnorm merged", "BatchNorm merged into the Conv/Linear before it"),
                          ("batchnorm pass", "BatchNorm not after a Conv/Linear, relevance passed through"),
                          ("residual sum", "residual sums split in proportion (z-rule)"),
                          ("average pool", "average pools split in proportion (z-rule)")):
        if counts.get(key):
            found.append(f"{sentence}: {counts[key]}")
    return tuple(found)


def conservation(relevance: np.ndarray, scores: np.ndarray) -> Dict[str, np.ndarray]:
    """The conservation check: per image, the sum of the input's relevance, the explained score it
    started from, and their difference (zero to float rounding where the composite conserves)."""
    total = relevance.reshape(len(relevance), -1).sum(axis=1, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    return {"relevance_sum": total, "explained_score": scores, "conservation_error": total - scores}
