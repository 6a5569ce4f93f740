"""The ONNX backend's passes: forward (scores and activations), backward (one run of a gradient
model: scores, activations, input and layer gradients) and the CAM head's."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ...core.errors import InvalidInputError, LayerError, ModelError, UnsupportedError
from ...core.targets import ClassSeed
from ...core.types import Pass
from .. import base
from .autodiff import RELU_RULES, GradientRequest
from .graph import node_name
from .head import find_head


def scores(output: np.ndarray) -> np.ndarray:
    """The model's output as (N, classes) scores, or a ModelError saying how to get them."""
    output = np.asarray(output, dtype=np.float32)
    if output.ndim > 2 and all(d == 1 for d in output.shape[2:]):  # (N, K, 1, 1) from a 1x1-conv head
        output = output.reshape(output.shape[:2])
    if output.ndim != 2:
        raise ModelError(
            f"the model's output has shape {output.shape}, not (N, classes): cnnlens explains classifiers. Wrap "
            f"the model so that it returns one row of class scores per image and export it again, or choose "
            f"another output with cnnlens.load(path, output=NAME)"
        )
    return output


class Passes:
    """Forward, backward and CAM-head passes of :class:`OnnxBackend` (which provides the sessions)."""

    _head: Optional[Tuple[str, np.ndarray]] = None

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        self.check_input(x)
        model_x = self._to_model(x)
        self._settle_batch(model_x)
        return model_x

    def forward(self, x: np.ndarray, layers: Sequence[str] = ()) -> Pass:
        model_x = self._prepare(x)
        tensors = [self._tensor(n) for n in layers]
        session = self._forward_session(frozenset(tensors) - {self.output_name})
        outputs = self._run(session, {self.input_name: model_x}, [self.output_name] + tensors)
        activations = {n: self._to_nchw(t, a) for n, t, a in zip(layers, tensors, outputs[1:])}
        return Pass(scores(outputs[0]), activations=activations)

    def backward(self, x: np.ndarray, grad_logits: base.GradLogits, layers: Sequence[str] = (),
                 relu: str = "plain", input_grad: bool = True) -> Pass:
        """One run of the gradient model: the scores, the layers' activations and true gradients, and
        the input gradient under ``relu``. A ClassSeed asking for each image's arg-max class is made
        inside the model, so every request is one forward and one backward pass."""
        if relu not in RELU_RULES:
            raise InvalidInputError(f"relu must be one of {', '.join(RELU_RULES)}, got {relu!r}")
        model_x = self._prepare(x)
        names = list(dict.fromkeys(layers))
        tensors = tuple(self._tensor(n) for n in names)
        argmax = isinstance(grad_logits, ClassSeed) and grad_logits.target is None
        request = GradientRequest(tensors, bool(input_grad), relu, "argmax" if argmax else "input")
        try:
            session, built = self._gradient_session(request, tuple(model_x.shape[1:]))
        except UnsupportedError as error:
            if input_grad:  # what this model cannot do, later calls are told up front, and why
                self.capabilities = self.capabilities - {base.INPUT_GRADIENTS, base.RELU_RULES}
                why = str(error).split(": ", 1)[-1].split(". On this model", 1)[0]
                self.limits = {**self.limits, base.INPUT_GRADIENTS: why, base.RELU_RULES: why}
            raise
        feeds = {self.input_name: model_x}
        if not argmax:
            feeds[built.seed] = self._seed(grad_logits, x, model_x)
        outputs = self._run(session, feeds, built.outputs)
        result = Pass(scores(outputs[0]))
        rest = outputs[1 + len(tensors):]
        if input_grad:
            result.input_grad = self._to_nchw(self.input_name, rest.pop(0))
        for name, tensor, activation, gradient in zip(names, tensors, outputs[1:], rest):
            result.activations[name] = self._to_nchw(tensor, activation)
            result.gradients[name] = self._to_nchw(tensor, gradient)
        return result

    def _seed(self, grad_logits: base.GradLogits, x: np.ndarray, model_x: np.ndarray) -> np.ndarray:
        """The gradient of the explained score with respect to the scores, (N, K)."""
        if callable(grad_logits):
            if isinstance(grad_logits, ClassSeed):  # the classes are given: only K is needed
                classes = self._num_classes(model_x)
                seed = grad_logits(np.zeros((len(x), classes), dtype=np.float32))
            else:
                seed = grad_logits(self.forward(x).logits)
        else:
            seed = grad_logits
        return np.ascontiguousarray(seed, dtype=np.float32)

    def _num_classes(self, model_x: np.ndarray) -> int:
        shape = self._types_at(tuple(model_x.shape[1:])).shapes.get(self.output_name)
        if shape is not None and len(shape) >= 2 and isinstance(shape[1], int):
            return int(shape[1])
        return int(self.forward(self._from_model(model_x[:1])).logits.shape[1])

    def _find_head(self, image: Tuple[int, ...]) -> Tuple[str, np.ndarray]:
        if self._head is None:  # found once: the head does not change with the batch
            self._head = find_head(self.graph, self.output_name, self._nhwc,
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
                            [self.output_name, pooled])
        return scores(outputs[0]), self._to_nchw(pooled, outputs[1]), weight, used

    def _from_model(self, model_x: np.ndarray) -> np.ndarray:
        """Images in the model's layout, back to NCHW."""
        return self._to_nchw(self.input_name, model_x)
