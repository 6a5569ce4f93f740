"""The ONNX backend's passes: forward (scores and activations), backward (one run of a gradient
model: scores, activations, input and layer gradients) and the CAM head's."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ...core.errors import InvalidInputError, LayerError, ModelError
from ...core.backend import picks_argmax, seed_rows
from ...core.relevance import DeepLiftRules, Rules, is_relevance
from ...core.types import Pass
from .. import base
from . import runtime
from .gradients import NotDifferentiable
from .autodiff import DEEPLIFT, RELU_RULE_NAMES, GradientRequest, reference_input
from .cut import CUT_INPUT, cut_at
from .graph import node_name
from .head import find_head


def scores(output: np.ndarray) -> np.ndarray:
    """The model's output as float32 (batch first, any shape: the core reads it as class scores or
    weighs it with output weights)."""
    return np.asarray(output, dtype=np.float32)


class Passes:
    """Forward, backward and CAM-head passes of :class:`OnnxBackend` (which provides the sessions)."""

    _head: Optional[Tuple[str, np.ndarray]] = None
    #: per cut tensor: whether one image may meet many replacements there (see ``replaced``)
    _shared_prefix: Optional[dict] = None

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        self.check_input(x)
        model_x = self._to_model(x)
        self._settle_batch(model_x)
        return model_x

    def forward(self, x: np.ndarray, layers: Sequence[str] = ()) -> Pass:
        model_x = self._prepare(x)
        tensors = [self._tensor(n) for n in layers]
        session = self._forward_session(frozenset(tensors) - {self.output})
        outputs = self._run(session, {self.input_name: model_x}, [self.output] + tensors)
        activations = {n: self._to_nchw(t, a) for n, t, a in zip(layers, tensors, outputs[1:])}
        return Pass(scores(outputs[0]), activations=activations)

    def backward(self, x: np.ndarray, grad_logits: base.GradLogits, layers: Sequence[str] = (),
                 rules: Rules = "plain", input_grad: bool = True) -> Pass:
        """One run of the gradient model: the scores, the layers' activations and true gradients, and
        the input gradient under ``rules``. A ClassSeed asking for each image's arg-max class is made
        inside the model, so every request is one forward and one backward pass (DeepLIFT adds one
        forward pass of its baseline, kept for later calls)."""
        if not is_relevance(rules) and rules not in RELU_RULE_NAMES:
            raise InvalidInputError(f"rules must be one of {', '.join(RELU_RULE_NAMES)} or relevance rules, got {rules!r}")
        if is_relevance(rules) and layers:
            raise InvalidInputError("relevance rules give the input's relevance only: ask for no layers")
        model_x = self._prepare(x)
        names = list(dict.fromkeys(layers))
        tensors = tuple(self._tensor(n) for n in names)
        argmax = picks_argmax(grad_logits)
        key = DEEPLIFT if isinstance(rules, DeepLiftRules) else rules
        request = GradientRequest(tensors, bool(input_grad), key, "argmax" if argmax else "input")
        try:
            session, built = self._gradient_session(request, tuple(model_x.shape[1:]))
        except NotDifferentiable as error:
            if input_grad:  # what this model cannot do, later calls are told up front, and why
                self.capabilities = self.capabilities - base.INPUT_RULES
                self.limits = {**self.limits, **{c: error.reason for c in base.INPUT_RULES}}
            raise
        feeds = {self.input_name: model_x}
        if not argmax:
            feeds[built.seed] = self._seed(grad_logits, x, model_x)
        baseline_logits = None
        if isinstance(rules, DeepLiftRules):
            references = self._references(rules, built.references + [built.outputs[0]])
            baseline_logits = scores(references.pop(reference_input(built.outputs[0])))
            feeds.update(references)
        outputs = self._run(session, feeds, built.outputs)
        result = Pass(scores(outputs[0]), notes=built.notes, baseline_logits=baseline_logits)
        rest = outputs[1 + len(tensors):]
        if input_grad:
            result.input_grad = self._to_nchw(self.input_name, rest.pop(0))
        for name, tensor, activation, gradient in zip(names, tensors, outputs[1:], rest):
            result.activations[name] = self._to_nchw(tensor, activation)
            result.gradients[name] = self._to_nchw(tensor, gradient)
        return result

    def _references(self, rules: DeepLiftRules, tensors: Sequence[str]) -> Dict[str, np.ndarray]:
        """The baseline's values of ``tensors`` (one forward pass per baseline, kept), as fed to the
        DeepLIFT gradient model."""
        def make() -> Dict[str, np.ndarray]:
            model_x = self._prepare(np.asarray(rules.baseline, dtype=np.float32)[None])
            values = self._run(self._forward_session(frozenset(tensors) - {self.output}), {self.input_name: model_x},
                               list(tensors))
            return {reference_input(t): v for t, v in zip(tensors, values)}
        return dict(self._sessions.get(("deeplift baseline", rules.key, tuple(tensors)), make))

    def _seed(self, grad_logits: base.GradLogits, x: np.ndarray, model_x: np.ndarray) -> np.ndarray:
        """The gradient of the explained score with respect to the outputs (a target given as classes or
        weights needs only the outputs' shape, not a forward pass)."""
        seed = seed_rows(grad_logits, lambda: self.forward(x).logits, lambda: (len(x),) + self._output_shape(model_x))
        return np.ascontiguousarray(seed, dtype=np.float32)

    def output_shape(self, x: np.ndarray) -> Tuple[int, ...]:
        """The output's shape (no batch axis) for NCHW images like ``x``: from shape inference,
        without a run where the graph declares it."""
        self.check_input(x[:1])  # images the model cannot take: the same error a pass gives
        return self._output_shape(self._to_model(x[:1]))

    def _output_shape(self, model_x: np.ndarray) -> Tuple[int, ...]:
        """The output's shape without the batch axis, from shape inference or a run of one image."""
        shape = self._types_at(tuple(model_x.shape[1:])).shapes.get(self.output)
        if shape is not None and len(shape) >= 1 and all(isinstance(d, int) for d in shape[1:]):
            return tuple(int(d) for d in shape[1:])
        return tuple(self.forward(self._from_model(model_x[:1])).logits.shape[1:])

    def replaced(self, x: np.ndarray, layer: str, values: np.ndarray) -> np.ndarray:
        """The outputs with layer ``layer``'s tensor replaced by ``values`` (B, K, h, w, NCHW): one run
        of the model cut at that tensor. ``x`` holds one image (shared by every replacement) or B; a
        model whose branches after the cut cannot broadcast one image runs B copies (checked once)."""
        tensor = self._tensor(self.resolve_layer(layer))
        model_x = self._prepare(x)
        image = tuple(model_x.shape[1:])
        types = self._types_at(image)

        def make():
            return self._new_session(cut_at(self._base_model(), self._base_graph(), self.output, tensor,
                                            types.dtypes.get(tensor, np.dtype(np.float32))).model,
                                     quiet=True)  # a failed broadcast trial (see below) is expected
        session = self._sessions.get(("cut", tensor), make)
        needs_image = any(i.name == self.input_name for i in session.get_inputs())
        fed = np.asarray(values, dtype=np.float32)
        if tensor in self._nhwc and fed.ndim == 4:
            fed = fed.transpose(0, 2, 3, 1)
        fed = np.ascontiguousarray(fed, dtype=types.dtypes.get(tensor, np.dtype(np.float32)))

        def run(rows: np.ndarray, images: np.ndarray) -> np.ndarray:
            feeds = {CUT_INPUT: rows}
            if needs_image:
                feeds[self.input_name] = images
            if self._per_image and len(rows) > 1:
                shared = len(images) == 1  # one image for every row, or one per row
                return np.concatenate([run(rows[i:i + 1], images if shared else images[i:i + 1])
                                       for i in range(len(rows))])
            return scores(self._run_cut(session, feeds))

        if not needs_image:
            return run(fed, model_x)
        if self._shared_prefix is None:
            self._shared_prefix = {}
        return base.run_replacements(lambda images, rows: run(rows, images), model_x, fed, self._shared_prefix, tensor,
                                     (ModelError,))

    def _run_cut(self, session, feeds) -> np.ndarray:
        try:
            return runtime.run(session, feeds, [self.output], "cuda" if self.device == "cuda" else "cpu",
                               self._binding())[0]
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime failed on the model cut at a layer: {str(error).strip().splitlines()[0]}") from None

    def _find_head(self, image: Tuple[int, ...]) -> Tuple[str, np.ndarray]:
        if self._head is None:  # found once: the head does not change with the batch
            self._head = find_head(self.graph, self.output, self._nhwc,
                                   probe=lambda tensor: self._shape_values(image, batch=1).get(tensor))
        return self._head

    def linear_head(self, x: np.ndarray, layer: Optional[str] = None):
        """(scores, the pooled activations (N, K, h, w), the head's weights (classes, K), the layer)."""
        pooled, weight = self._find_head(tuple(self._to_model(x[:1]).shape[1:]))
        producer = self.graph.producer.get(pooled)
        used = node_name(producer) if producer is not None else pooled
        if layer is not None and self.resolve_layer(layer) != used:
            raise LayerError(
                f"cam can only use the tensor the head pools (node {used!r}), not {layer!r}: leave layer unset"
            )
        model_x = self._prepare(x)
        outputs = self._run(self._forward_session(frozenset({pooled})), {self.input_name: model_x},
                            [self.output, pooled])
        return scores(outputs[0]), self._to_nchw(pooled, outputs[1]), weight, used

    def _from_model(self, model_x: np.ndarray) -> np.ndarray:
        """Images in the model's layout, back to NCHW."""
        return self._to_nchw(self.input_name, model_x)
