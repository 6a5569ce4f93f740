"""cnnlens: see what convolutional image classifiers look at.

Public API (see DESIGN.md): ``load``, ``layers``, ``explain``, ``filters``, ``compare``, ``audit``,
``export_explainer``,
``Explanation``, ``Layer``, ``METHODS``, ``Backend`` / ``BackendSpec`` (the backend contract), ``targets``
(targets for dense outputs) and the errors. ``import cnnlens`` needs only NumPy: a backend's
framework is imported when a model of its kind is first seen.
"""

from .api import explain, filters, layers, load
from . import audit  # the package, callable as audit.run.audit
from . import targets  # cnnlens.targets.segmentation(...): targets for dense outputs
from .audit import AuditResult
from .adapters.explainer import ExportedExplainer, export_explainer
from .compare import Comparison, ImageAgreement, compare
from .core.backend import Backend, BackendSpec
from .core.errors import (
    CnnlensError,
    InvalidInputError,
    LayerError,
    ModelError,
    TargetError,
    UnknownMethodError,
    UnsupportedError,
)
from .core.methods import METHODS
from .core.types import Explanation, Layer

__version__ = "0.1.0"

__all__ = [
    "load", "layers", "explain", "filters", "compare", "Comparison", "ImageAgreement", "audit", "AuditResult",
    "export_explainer", "ExportedExplainer", "Explanation", "Layer", "METHODS", "Backend", "BackendSpec", "targets",
    "CnnlensError", "InvalidInputError", "LayerError", "ModelError", "TargetError",
    "UnknownMethodError", "UnsupportedError", "__version__",
]
