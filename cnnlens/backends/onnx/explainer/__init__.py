"""The explainer in the deployed model: one ONNX file that returns the model's outputs and a map
per method (``cnnlens.export_explainer``). ``build`` assembles it; ``recipes`` holds each method's
graph, ``heads`` the graph twins of the core's NumPy functions, ``loops`` the model copies that
Integrated Gradients and Score-CAM run in an ONNX Loop."""

from .build import MAP_PREFIX, ExplainerModel, build_explainer, check_names
from .context import TARGETS, MethodRequest
from .recipes import HEADS

__all__ = ["build_explainer", "check_names", "ExplainerModel", "MethodRequest", "MAP_PREFIX", "TARGETS", "HEADS"]
