"""The methods, one module per family; each is described once in the registry (``METHODS``) and
run through ``run``. METHODS.md defines what each computes."""

# registration order is the order methods are listed in (inputs, relevance, CAM family, perturbation, activations)
from . import input_gradients, relevance, cam_family, perturbation, activations  # noqa: F401,I001
from .common import Backend, LayerSpec, check_images
from .dispatch import run
from .registry import (LAYER_MAP, CAM, HEAD_LAYER, INPUT, LAYERS, METHODS, NO_LAYER, ONE_LAYER, Method, Option, all_options,
                       check_options_apply, exportable_methods, lookup, method_list, supported_methods)
from .input_gradients import SMOOTHGRAD_VARIANTS

__all__ = ["METHODS", "Method", "Option", "run", "check_images", "supported_methods", "lookup", "all_options",
           "LayerSpec", "Backend", "INPUT", "CAM", "LAYER_MAP", "NO_LAYER", "ONE_LAYER", "LAYERS", "HEAD_LAYER",
           "SMOOTHGRAD_VARIANTS", "exportable_methods", "method_list", "check_options_apply"]
