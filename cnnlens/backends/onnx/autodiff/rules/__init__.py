"""The backward rules, one module per op family; importing this package fills the rule table."""

from . import activations, conv, elementwise, linear, normalization, pooling, reduce, shape  # noqa: F401
from .base import CHECKS, RULES

__all__ = ["RULES", "CHECKS"]
