"""The CAM family, (N, H, W) heatmaps resized to the image: Grad-CAM and its variants from one
forward and one backward pass (each variant is one weighting of the layer's activations and
gradients), Guided Grad-CAM, CAM, and Eigen-CAM (no gradients)."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from ..backend import ACTIVATIONS, INPUT_GRADIENTS, LAYER_GRADIENTS, LINEAR_HEAD, RELU_RULES
from .. import cam as cam_ops
from ..errors import LayerError
from ..resize import resize_bilinear
from ..targets import Target, objective
from ..types import Explanation
from ..tokens import ReshapeSpec
from .common import (Backend, LayerMaps, LayerSpec, backward_batch, batches, forward_batch, layer_names, layer_value,
                     seed, target_slice)
from .registry import CAM, HEAD_LAYER, INPUT, LAYERS, RESHAPE, register

_SUMMARIES = {
    "gradcam": "Grad-CAM (Selvaraju et al. 2017): ``ReLU(sum_k mean(dy/dA_k) A_k)``.",
    "gradcampp": "Grad-CAM++ (Chattopadhay et al. 2018): channel weights ``sum_ij alpha_kij ReLU(g_kij)``.",
    "xgradcam": "XGrad-CAM (Fu et al. 2020): channel weights ``sum_ij g A / sum_ij A``.",
    "layercam": "LayerCAM (Jiang et al. 2021): ``ReLU(sum_k ReLU(g_k) * A_k)``, per position.",
    "hirescam": "HiResCAM (Draelos & Carin 2020): ``ReLU(sum_k g_k * A_k)``, per position.",
}


def gradient_cams(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, batch: Optional[int],
                  method: str, reshape: ReshapeSpec = None, guided: bool = False, weighting: str = "",
                  ) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray, Union[str, List[str]], LayerMaps]:
    """``method``'s maps (N, L, H, W) or (N, H, W) from one forward and one backward pass per batch;
    with ``guided`` also the guided-backprop input gradient of the same pass. Returns
    (maps, guided gradients or None, outputs, target record, layer value, how the layers were read).
    ``weighting`` names the CAM (default: ``method``'s own); ``reshape`` see ``core.tokens``."""
    weigh = cam_ops.GRADIENT_CAMS[weighting or method]
    names, as_list = layer_names(backend, layer, x)
    size = backward_batch(backend, batch, x)
    maps = np.empty((len(x), len(names)) + x.shape[2:], dtype=np.float32)
    guided_grads = np.empty(x.shape, dtype=np.float32) if guided else None
    batch_outputs: List[np.ndarray] = []
    read = LayerMaps(backend, x, reshape, method, layer)
    for sl in batches(len(x), size):
        p = backend.backward(x[sl], seed(target, sl), layers=names, rules="guided" if guided else "plain",
                             input_grad=guided)
        for i, name in enumerate(names):
            activation = read.activation(name, p.activations[name])
            maps[sl, i] = resize_bilinear(weigh(activation, read.gradient(name, p.gradients[name])), x.shape[2:])
        if guided:
            assert guided_grads is not None  # allocated when guided
            guided_grads[sl] = p.input_grad
        batch_outputs.append(p.logits)
    outputs = np.concatenate(batch_outputs)
    cams = maps if as_list else maps[:, 0]
    return cams, guided_grads, outputs, objective(target, outputs).record, layer_value(names, as_list), read


def _gradient_cam(name: str) -> Callable[..., Explanation]:
    def method(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *, reshape: ReshapeSpec = None,
               batch_size: Optional[int] = None) -> Explanation:
        maps, _, outputs, record, names, read = gradient_cams(backend, x, target, layer, batch_size, name, reshape)
        return Explanation(name, maps, record, outputs, layer=names, extras=read.extras())
    method.__name__ = name
    method.__doc__ = _SUMMARIES[name] + "\n\nA list of layers is served by one forward and one backward pass: (N, L, H, W)."
    return method


for _name in cam_ops.GRADIENT_CAMS:
    globals()[_name] = register(_name, needs={LAYER_GRADIENTS}, kind=CAM, layer=LAYERS,
                                 options=[RESHAPE])(_gradient_cam(_name))


@register("guided_gradcam", needs={LAYER_GRADIENTS, INPUT_GRADIENTS, RELU_RULES}, kind=INPUT, layer=LAYERS,
          options=[RESHAPE])
def guided_gradcam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *, reshape: ReshapeSpec = None,
                   batch_size: Optional[int] = None) -> Explanation:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM, one pass.

    (N, C, H, W); (N, L, C, H, W) for a list of layers.
    """
    cams, guided, outputs, record, names, read = gradient_cams(backend, x, target, layer, batch_size, "guided_gradcam",
                                                                 reshape, guided=True, weighting="gradcam")
    assert guided is not None  # asked for with guided=True
    return Explanation("guided_gradcam", cam_ops.guided_gradcam(guided, cams), record, outputs, layer=names,
                       extras=read.extras())


@register("cam", needs={LINEAR_HEAD}, kind=CAM, layer=HEAD_LAYER)
def cam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *,
        batch_size: Optional[int] = None) -> Explanation:
    """CAM (Zhou et al. 2016) for a model ending in GAP -> linear: ``ReLU(sum_k W[c, k] A_k)``."""
    if layer is not None and not isinstance(layer, str):
        raise LayerError("cam takes one layer (the tensor the head pools), not a list")
    size = forward_batch(backend, batch_size, x)
    maps = np.empty((len(x),) + x.shape[2:], dtype=np.float32)
    batch_outputs: List[np.ndarray] = []
    used: Optional[str] = None
    for sl in batches(len(x), size):
        out, features, weights, used = backend.linear_head(x[sl], layer)
        goal = objective(target_slice(target, sl), out)
        if goal.classes is None:
            assert goal.weights is not None  # objective() sets either classes or weights
            head = np.einsum("nc,ck->nk", goal.weights.weights.reshape(len(out), -1), weights)
            maps[sl] = resize_bilinear(cam_ops.weighted_sum(features, head), x.shape[2:])
        else:
            maps[sl] = resize_bilinear(cam_ops.cam(features, weights, goal.classes), x.shape[2:])
        batch_outputs.append(out)
    outputs = np.concatenate(batch_outputs)
    return Explanation("cam", maps, objective(target, outputs).record, outputs, layer=used)


@register("eigencam", needs={ACTIVATIONS}, kind=CAM, layer=LAYERS, options=[RESHAPE],
          not_exportable="it takes an eigendecomposition per image, which no standard ONNX op computes")
def eigencam(backend: Backend, x: np.ndarray, target: Target, layer: LayerSpec, *, reshape: ReshapeSpec = None,
             batch_size: Optional[int] = None) -> Explanation:
    """Eigen-CAM (Muhammad & Yeasin 2020): the activations' first principal component per image (class-agnostic)."""
    names, as_list = layer_names(backend, layer, x)
    size = forward_batch(backend, batch_size, x)
    maps = np.empty((len(x), len(names)) + x.shape[2:], dtype=np.float32)
    batch_outputs: List[np.ndarray] = []
    read = LayerMaps(backend, x, reshape, "eigencam", layer)
    for sl in batches(len(x), size):
        p = backend.forward(x[sl], layers=names)
        for i, name in enumerate(names):
            maps[sl, i] = resize_bilinear(cam_ops.eigencam(read.activation(name, p.activations[name])), x.shape[2:])
        batch_outputs.append(p.logits)
    outputs = np.concatenate(batch_outputs)
    return Explanation("eigencam", maps if as_list else maps[:, 0], objective(target, outputs).record, outputs,
                       layer=layer_value(names, as_list), extras=read.extras())
