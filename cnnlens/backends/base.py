"""The Backend protocol: what the NumPy core asks of a model, NumPy in and out, batch first."""

from __future__ import annotations

from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple, Union

import numpy as np

try:  # Python >= 3.8
    from typing import Protocol, runtime_checkable
except ImportError:  # pragma: no cover
    from typing_extensions import Protocol, runtime_checkable  # type: ignore

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


@runtime_checkable
class Backend(Protocol):
    """A model driven by one framework. See DESIGN.md, "backends"."""

    name: str
    capabilities: FrozenSet[str]

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
        function of the logits that returns one. ``relu`` ("plain", "guided", "deconv") is
        the ReLU rule for the input gradient; layer gradients are always the true ones."""

    def linear_head(self, x: np.ndarray, layer: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """For a GAP -> linear head: (logits, the pooled activations (N, K, h, w), the linear
        weights (classes, K), the pooled tensor's layer name)."""

    def weights(self, layer: Optional[str] = None) -> np.ndarray:
        """A layer's weight tensor (the first convolution when ``layer`` is None)."""

    def batch_size(self, kind: str, image_shape: Tuple[int, ...]) -> int:
        """A batch size for ``kind`` ("forward" or "backward") passes of images of this shape."""


#: On a CPU, convolutions run fastest while one layer's output for the whole batch stays near
#: this many elements (measured on ResNet-50 at 224 and a small DenseNet at 64 on two cores:
#: batches of 4-8 and of 32-128 respectively; larger ones fall out of cache and run slower).
CPU_LAYER_ELEMENTS = 2 ** 22
CPU_MAX_BATCH = 128


def cache_sized_batch(largest_layer: int, budget: int = CPU_LAYER_ELEMENTS, cap: int = CPU_MAX_BATCH) -> int:
    """The batch whose largest layer output (``largest_layer`` elements per image) fits ``budget``."""
    return int(max(1, min(cap, budget // max(int(largest_layer), 1))))
