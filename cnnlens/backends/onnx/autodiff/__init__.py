"""Reverse-mode differentiation of ONNX graphs into ONNX graphs (no PyTorch, any execution provider)."""

from .builder import RELU_RULES, GradientModel, GradientRequest, UnsupportedOp, build, missing_rules
from .rules import RULES

__all__ = ["RELU_RULES", "GradientModel", "GradientRequest", "UnsupportedOp", "build", "missing_rules", "RULES"]
