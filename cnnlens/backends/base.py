"""The Backend protocol: what the NumPy core asks of a model, NumPy in and out, batch first."""

from __future__ import annotations

from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple, Union

import numpy as np

try:  # Python >= 3.8
    from typing import Protocol, runtime_checkable
except ImportError:  # pragma: no cover
    from typing_extensions import Protocol, runtime_checkable  # type: ignore

from ..core import occlusion
from ..core.errors import InvalidInputError, LayerError
from ..core.types import Layer, Pass

GradLogits = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]

#: Capability names a backend may declare.
FORWARD = "forward"                    # logits for a batch
ACTIVATIONS = "activations"            # named layers' outputs
INPUT_GRADIENTS = "input_gradients"    # d(output)/d(input)
LAYER_GRADIENTS = "layer_gradients"    # d(output)/d(layer output)
RELU_RULES = "relu_rules"              # guided / deconvnet ReLU backward
WEIGHTS = "weights"                    # a layer's weight tensor
LINEAR_HEAD = "linear_head"            # GAP -> linear head found automatically (CAM)
RANDOMISE = "randomise"                # a copy with some layers' learned weights re-drawn
REPLACE_LAYER = "replace_layer"        # outputs with one layer's output replaced (Ablation-CAM)
INCREMENTAL_OCCLUSION = occlusion.INCREMENTAL  # occluded copies scored from cached activations


@runtime_checkable
class Backend(Protocol):
    """A model driven by one framework. See DESIGN.md, "backends"."""

    name: str
    capabilities: FrozenSet[str]
    #: how the model takes images ("NCHW" or "NHWC"); every backend takes and gives NCHW arrays
    layout: str

    def layers(self, input_shape: Optional[Tuple[int, ...]] = None) -> List[Layer]:
        """The model's layers in execution order."""

    def resolve_layer(self, name: str) -> str:
        """The canonical name of a layer, or a LayerError listing the closest names."""

    def default_layer(self, input_shape: Tuple[int, ...]) -> str:
        """The last layer whose output is still spatial (the CAM family's default)."""

    def forward(self, x: np.ndarray, layers: Sequence[str] = ()) -> Pass:
        """Logits and the named layers' activations."""

    def backward(self, x: np.ndarray, grad_logits: GradLogits, layers: Sequence[str] = (),
                 relu: str = "plain", input_grad: bool = True) -> Pass:
        """One forward pass and its backward: logits, the input gradient (if asked) and the
        named layers' activations and gradients. ``grad_logits`` is an (N, K) array or a
        function of the logits that returns one; a ``core.targets.ClassSeed`` (such a function)
        also says which classes it picks, so a backend may build the rows itself (ONNX does, to
        keep one pass). ``relu`` ("plain", "guided", "deconv") is the ReLU rule for the input
        gradient; layer gradients are always the true ones."""

    def linear_head(self, x: np.ndarray, layer: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """For a GAP -> linear head: (logits, the pooled activations (N, K, h, w), the linear
        weights (classes, K), the pooled tensor's layer name)."""

    def replaced(self, x: np.ndarray, layer: str, values: np.ndarray) -> np.ndarray:
        """The outputs (B, ...) of the model run on from layer ``layer``, its output replaced by
        ``values`` (B, K, h, w, NCHW); ``x`` holds one image (shared by every replacement) or B
        (what the model needs of the image besides that layer)."""

    def weights(self, layer: Optional[str] = None) -> np.ndarray:
        """A layer's weight tensor (the first convolution when ``layer`` is None)."""

    def batch_size(self, kind: str, image_shape: Tuple[int, ...]) -> int:
        """A batch size for ``kind`` ("forward" or "backward") passes of images of this shape."""

    def parameter_layers(self) -> List[str]:
        """The layers that hold learned weights, in the order the forward pass runs them (bottom
        to top): the layers ``randomised`` accepts."""

    def randomised(self, layers: Sequence[str], seed: int = 0) -> "Backend":
        """A new backend of the same kind over a copy of the model in which the named layers'
        learned parameters are re-drawn (the model-parameter randomisation test of Adebayo et al.
        2018); the user's model is never changed. The same ``seed`` gives the same draws; layer
        ``layers[i]`` draws from seed ``seed + i``, so a cascade that grows a prefix keeps its
        earlier draws."""


#: On a CPU, convolutions run fastest while one layer's output for the whole batch stays near
#: this many elements (measured on ResNet-50 at 224 and a small DenseNet at 64 on two cores:
#: batches of 4-8 and of 32-128 respectively; larger ones fall out of cache and run slower).
CPU_LAYER_ELEMENTS = 2 ** 22
CPU_MAX_BATCH = 128


def cache_sized_batch(largest_layer: int, budget: int = CPU_LAYER_ELEMENTS, cap: int = CPU_MAX_BATCH) -> int:
    """The batch whose largest layer output (``largest_layer`` elements per image) fits ``budget``."""
    return int(max(1, min(cap, budget // max(int(largest_layer), 1))))


def randomisation_layers(backend: Backend, layers: Union[str, Sequence[str]], seed: int) -> List[str]:
    """The canonical names of the layers ``randomised`` is asked for (one name or a sequence of
    them; repeats dropped), each checked to hold learned weights; and ``seed`` checked."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative int, got {seed!r}")
    names = [layers] if isinstance(layers, str) else list(layers)
    resolved = list(dict.fromkeys(backend.resolve_layer(n) for n in names))
    if resolved:
        # any layer with weights may be re-drawn, also one the cascade leaves out (never called)
        choices = getattr(backend, "weighted_layers", backend.parameter_layers)()
        for name in resolved:
            if name not in choices:
                raise LayerError(f"layer {name!r} has no learned parameters to randomise: {_some_choices(name, choices)}")
    return resolved


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
