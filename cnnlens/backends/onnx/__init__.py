"""The ONNX Runtime backend (see ``backend.py``): every method on an exported model, torch-free."""

from .backend import OnnxBackend
from .loading import read_model
from .runtime import session_options

__all__ = ["OnnxBackend", "read_model", "session_options"]
