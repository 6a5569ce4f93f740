"""The backward rules, one module per op family; importing this package fills the rule table."""

from . import activations, conv, elementwise, linear, normalization, pooling, reduce, resize, shape  # noqa: F401
from .base import CHECKS, OP_RULES

__all__ = ["OP_RULES", "CHECKS"]
