"""The contract between the NumPy core and a backend, declared once: the capabilities a backend may
have (each name defined here, with what it means), the ``Backend`` protocol (NumPy in and out, batch
first, NCHW), the seed/target contract and ``BackendSpec``. The core never imports a backend;
every backend (``cnnlens.backends``) implements this protocol. Whether a *method* can run on a
backend is decided in one place, ``core.methods.support.require``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Protocol, Sequence, Tuple, Union, \
    runtime_checkable

import numpy as np

from .relevance import Rules
from .targets import ClassSeed
from .types import Layer, Pass

#: Capability names, each with what a backend that declares it provides. A method's ``needs`` and a
#: backend's ``capabilities`` are sets of these names.
FORWARD = "forward"
ACTIVATIONS = "activations"
INPUT_GRADIENTS = "input_gradients"
LAYER_GRADIENTS = "layer_gradients"
RELU_RULES = "relu_rules"
RELEVANCE_RULES = "relevance_rules"
WEIGHTS = "weights"
LINEAR_HEAD = "linear_head"
RANDOMISE = "randomise"
REPLACE_LAYER = "replace_layer"
INCREMENTAL_OCCLUSION = "incremental_occlusion"

CAPABILITIES: Dict[str, str] = {
    FORWARD: "the outputs for a batch of images (`forward`)",
    ACTIVATIONS: "named layers' outputs (`forward(x, layers)`)",
    INPUT_GRADIENTS: "the gradient of the explained score with respect to the input (`backward`)",
    LAYER_GRADIENTS: "the gradient of the explained score with respect to a layer's output (`backward`)",
    RELU_RULES: "the guided and deconvnet ReLU rules for the input gradient (`backward(rules=...)`)",
    RELEVANCE_RULES: "LRP's composites and DeepLIFT's Rescale rule for the input gradient (`backward(rules=...)`, "
                     "core.relevance)",
    WEIGHTS: "a layer's weight tensor (`weights`)",
    LINEAR_HEAD: "a global-average-pool -> linear head, found automatically (`linear_head`, for CAM)",
    RANDOMISE: "a copy with some layers' learned weights re-drawn (`randomised`, the sanity test)",
    REPLACE_LAYER: "the outputs with one layer's output replaced (`replaced`, for Ablation-CAM)",
    INCREMENTAL_OCCLUSION: "occluded copies of an image scored from its cached activations (`occluder`)",
}

#: the ReLU rules ``backward(rules=...)`` takes for the input gradient (METHODS.md): the true
#: gradient, guided backpropagation's, the deconvnet's
RELU_RULE_NAMES = ("plain", "guided", "deconv")

#: the gradients of a ``backward`` pass (a backend that runs no backward has none of them)
GRADIENTS = frozenset({INPUT_GRADIENTS, LAYER_GRADIENTS, RELU_RULES, RELEVANCE_RULES})
#: the capabilities that modify the input gradient's backward pass (what a model lacks with input gradients)
INPUT_RULES = frozenset({INPUT_GRADIENTS, RELU_RULES, RELEVANCE_RULES})

#: What ``backward`` back-propagates from the outputs (the seed/target contract):
#:
#: - an (N, K...) array: the gradient of the explained score with respect to the outputs, as is;
#: - a ``ClassSeed``: the rows for a target (classes, output weights, or None for each image's
#:   arg-max); a backend may build them next to the model instead of from the outputs (ONNX does,
#:   to keep one forward and one backward pass) — ``seed_rows`` and ``picks_argmax`` read it;
#: - any other function of the outputs that returns the rows.
GradLogits = Union[np.ndarray, ClassSeed, Callable[[np.ndarray], np.ndarray]]

#: which of several model outputs holds the scores: an index, a dict key / ONNX output name, or None
OutputChoice = Union[None, int, str]


def picks_argmax(seed: GradLogits) -> bool:
    """Whether ``seed`` asks for each image's arg-max class (rows a backend may build itself)."""
    return isinstance(seed, ClassSeed) and seed.target is None


def seed_rows(seed: GradLogits, outputs: Union[np.ndarray, Callable[[], np.ndarray]],
              output_shape: Union[None, Tuple[int, ...], Callable[[], Tuple[int, ...]]] = None) -> np.ndarray:
    """The rows ``backward`` back-propagates for ``seed``. ``outputs`` are the pass's outputs, or a
    function computing them, called only when the rows depend on their values: a target given as
    classes or weights needs only ``output_shape`` (the outputs' full shape, or a function giving
    it), when the backend can tell it without a forward pass."""
    if isinstance(seed, ClassSeed) and not seed.needs_outputs and output_shape is not None:
        return seed.rows(output_shape() if callable(output_shape) else output_shape)
    if callable(seed):
        return np.asarray(seed(outputs() if callable(outputs) else outputs))
    return np.asarray(seed)


@dataclass(frozen=True)
class BackendSpec:
    """A loaded model in a form that pickles and travels to other processes (Ray workers), from
    which ``cnnlens.load(spec)`` builds the same backend again: ``kind`` "module" (``payload`` the
    ``nn.Module`` itself), "torchscript" (the bytes of ``torch.jit.save``), "exported" (of
    ``torch.export.save``) or "onnx" (the serialized model); ``output`` and ``layout`` as loaded,
    so every replica explains the same scores."""

    kind: str
    payload: Any
    output: OutputChoice
    layout: str


def spec_layout(layout: str) -> str:
    """A loaded backend's ``layout`` as ``cnnlens.load(layout=...)`` takes it back: an NHWC model stays
    NHWC; NCHW is "auto", what each backend finds by itself."""
    return "NHWC" if layout == "NHWC" else "auto"


def check_capabilities(names: FrozenSet[str], owner: str) -> FrozenSet[str]:
    """``names`` if every one is a declared capability, else a TypeError naming the stray ones
    (a typo in a method's ``needs`` or a backend's list fails at import, not at run time)."""
    stray = sorted(set(names) - set(CAPABILITIES))
    if stray:
        raise TypeError(f"{owner}: unknown capabilities {stray}; the capabilities are {sorted(CAPABILITIES)}")
    return frozenset(names)


@runtime_checkable
class Backend(Protocol):
    """A model driven by one framework (DESIGN.md, "backends"). Every backend has the members
    without a capability; the others are called only when ``capabilities`` holds theirs."""

    name: str
    capabilities: FrozenSet[str]
    #: how the model takes images ("NCHW" or "NHWC"); every backend takes and gives NCHW arrays
    layout: str
    #: the model as loaded (an ``nn.Module``, the unflattened program's module, an ``onnx.ModelProto``)
    model: Any
    #: which output holds the explained scores, as the backend was made with (ONNX: the output's name)
    output: OutputChoice
    #: why the backend lacks a capability it would have on another model ({capability: why}; the
    #: ONNX backend's, where an op has no gradient rule; empty for the others)
    limits: Mapping[str, str]
    #: (C, H, W) of one image as the model declares it (NCHW; None for a dimension left open), or
    #: None where the model declares no input shape (a torch module)
    image_shape: Optional[Tuple[Optional[int], ...]]

    def spec(self) -> BackendSpec:
        """What rebuilds this backend in another process (``cnnlens.load(spec)``)."""

    # ------------------------------------------------------------ every backend

    def layers(self, input_shape: Optional[Tuple[int, ...]] = None) -> List[Layer]:
        """The model's layers in execution order."""

    def resolve_layer(self, name: str) -> str:
        """The canonical name of a layer, or a LayerError listing the closest names."""

    def module_of(self, layer: str) -> str:
        """The torch module path whose output ``layer`` is: a torch backend's layer is its module;
        an ONNX node's module is the one its exporter recorded (a LayerError where none was), so a
        layer named in one format's terms is found in the other's (``cnnlens.compare``)."""

    def default_layer(self, input_shape: Tuple[int, ...]) -> str:
        """The last layer whose output is still spatial (the CAM family's default)."""

    def batch_size(self, kind: str, image_shape: Tuple[int, ...]) -> int:
        """A batch size for ``kind`` ("forward" or "backward") passes of images of this shape."""

    def output_shape(self, x: np.ndarray) -> Tuple[int, ...]:
        """The output's shape without the batch axis for images like ``x`` (N, C, H, W): what output
        weights are checked against. Read off the model where it declares it (ONNX shape
        inference), else from the forward pass of ``x``'s first image."""

    # ------------------------------------------------------------ FORWARD, ACTIVATIONS

    def forward(self, x: np.ndarray, layers: Sequence[str] = ()) -> Pass:
        """Logits and the named layers' activations."""

    # ------------------------------------------------------------ INPUT_GRADIENTS, LAYER_GRADIENTS, *_RULES

    def backward(self, x: np.ndarray, grad_logits: GradLogits, layers: Sequence[str] = (),
                 rules: Rules = "plain", input_grad: bool = True) -> Pass:
        """One forward pass and its backward: logits, the input gradient (if asked) and the
        named layers' activations and gradients. ``grad_logits`` is an (N, K) array or a
        function of the logits that returns one; a ``core.targets.ClassSeed`` (such a function)
        also says which classes it picks, so a backend may build the rows itself (ONNX does, to
        keep one pass). ``rules`` is the backward rule set for the input gradient: a ReLU rule
        ("plain", "guided", "deconv"; RELU_RULES) or a relevance rule set (``core.relevance``
        ``LrpRules`` / ``DeepLiftRules``; RELEVANCE_RULES: no layers then, and ``Pass.notes`` says
        what the backend canonized); layer gradients are always the true ones."""

    # ------------------------------------------------------------ LINEAR_HEAD

    def linear_head(self, x: np.ndarray, layer: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """For a GAP -> linear head: (logits, the pooled activations (N, K, h, w), the linear
        weights (classes, K), the pooled tensor's layer name)."""

    # ------------------------------------------------------------ REPLACE_LAYER

    def replaced(self, x: np.ndarray, layer: str, values: np.ndarray) -> np.ndarray:
        """The outputs (B, ...) of the model run on from layer ``layer``, its output replaced by
        ``values`` (B, K, h, w, NCHW); ``x`` holds one image (shared by every replacement) or B
        (what the model needs of the image besides that layer)."""

    # ------------------------------------------------------------ WEIGHTS

    def weights(self, layer: Optional[str] = None) -> np.ndarray:
        """A layer's weight tensor (the first convolution when ``layer`` is None)."""

    # ------------------------------------------------------------ RANDOMISE

    def parameter_layers(self) -> List[str]:
        """The layers that hold learned weights, in the order the forward pass runs them (bottom
        to top): the cascade the sanity test randomises."""

    def weighted_layers(self) -> List[str]:
        """Every layer that holds learned weights, also one the forward pass never calls: the
        layers ``randomised`` accepts."""

    def randomised(self, layers: Sequence[str], seed: int = 0) -> "Backend":
        """A new backend of the same kind over a copy of the model in which the named layers'
        learned parameters are re-drawn (the model-parameter randomisation test of Adebayo et al.
        2018); the user's model is never changed. The same ``seed`` gives the same draws; layer
        ``layers[i]`` draws from seed ``seed + i``, so a cascade that grows a prefix keeps its
        earlier draws."""


class OcclusionScorer(Protocol):
    """The outputs of occluded copies of one image, computed from its cached activations."""

    #: how many windows per call it runs best (more than brute force's batches: an incremental pass
    #: holds little but the layers past its regions)
    batch: int

    def __call__(self, top: np.ndarray, left: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The outputs (B, ...) with ``values[b]`` (C, wh, ww) pasted at (``top[b]``, ``left[b]``)."""


@runtime_checkable
class Occluding(Backend, Protocol):
    """A backend with INCREMENTAL_OCCLUSION: the one capability whose member the other backends
    lack altogether (read it after checking the capability: ``cast(Occluding, backend)``)."""

    def occluder(self, image: np.ndarray, window: Tuple[int, int]) -> Tuple[Optional[OcclusionScorer], str]:
        """``(score, what runs)``: the scorer of occluded copies of ``image`` (C, H, W), or
        ``(None, "brute force...: why")`` when brute force must or should run instead."""


def is_backend(obj: Any) -> bool:
    """Whether ``obj`` is a loaded backend (rather than a model or a path to load)."""
    return all(hasattr(obj, member) for member in ("capabilities", "forward", "resolve_layer", "spec"))
