"""Reverse-mode differentiation of ONNX graphs into ONNX graphs (no PyTorch, any execution provider)."""

from .builder import (RELU_RULE_NAMES, GradientModel, GradientRequest, UnsupportedOp, ancestors, argmax_rows,
                      backward_chain, build, class_rows, missing_rules, opset_of, predicted_classes,
                      relevance_scores, relevance_seed, rules_chain, taken_names)
from .emit import Emitter
from .relevance import DEEPLIFT, reference_input
from .rules import OP_RULES

__all__ = ["RELU_RULE_NAMES", "GradientModel", "GradientRequest", "UnsupportedOp", "build", "missing_rules", "OP_RULES",
           "ancestors", "argmax_rows", "backward_chain", "opset_of", "Emitter", "class_rows", "predicted_classes",
           "taken_names", "DEEPLIFT", "reference_input", "relevance_scores", "relevance_seed", "rules_chain"]
