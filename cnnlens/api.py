"""The public functions: load, layers, explain, filters."""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from .backends import backend_for
from .backends.base import Backend
from .core.backend import WEIGHTS
from .core.errors import ModelError
from .core.methods import LayerSpec, run
from .core.targets import Target
from .core.types import Explanation, Layer


def load(source: Any, device: Optional[str] = None, *, output: Union[None, int, str] = None,
         layout: str = "auto", trust_pickle: bool = False) -> Backend:
    """A model ready to explain.

    ``source``: an ``nn.Module`` or ScriptModule (``device`` moves it there; by default its own
    device is used), a ``torch.export`` ``ExportedProgram``, an ``onnx.ModelProto`` or its
    serialized bytes, a ``BackendSpec`` (``backend.spec()``: a loaded model as it travels to another
    process, e.g. a Ray worker, rebuilt there), a loaded backend (made again for another ``device``,
    ``output`` or ``layout``), or a path to an ``.onnx`` file, a ``.pt2`` file (``torch.export.save``; checked
    to hold no pickles unless ``trust_pickle``) or a TorchScript file (``torch.jit.save``). For ONNX, ``device`` is "cpu", "cuda" or
    "cuda:N"; by default CUDA when onnxruntime-gpu and a GPU are there.
    ``output``: for a model with several outputs (a tuple, a dict, several ONNX outputs), the one
    holding the class scores, as an index or a key / output name (default: the first tensor).
    ``layout``: how the model's image input is laid out: "auto" (ONNX: read off the graph, e.g.
    a tf2onnx export takes (N, H, W, C); torch: NCHW), "NCHW" or "NHWC". Images are passed NCHW
    and maps come back NCHW whatever the model's layout; the backend transposes at its boundary.
    ``trust_pickle``: a pickled ``torch.save`` model file is unpickled only when this is True,
    because unpickling runs whatever code the file holds. Returns the backend driving the
    model; every cnnlens function accepts it.
    """
    return backend_for(source, device=device, output=output, trust_pickle=trust_pickle, layout=layout)


def _as_numpy(x: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().to("cpu").float().numpy()
    return x


def layers(model: Any, input_shape: Optional[Sequence[int]] = None) -> List[Layer]:
    """The model's layers in execution order: ``[Layer(name, kind, shape), ...]``.

    For a torch module the layers are found by running one image of ``input_shape``
    ((C, H, W) or (1, C, H, W); by default 224 x 224 with the first convolution's channels).
    """
    shape: Optional[Tuple[int, ...]] = tuple(int(v) for v in input_shape) if input_shape is not None else None
    return backend_for(model).layers(shape)


def explain(model: Any, x: Any, method: str, target: Target = None, layer: LayerSpec = None,
            **options: Any) -> Explanation:
    """Explain ``model``'s outputs for the images ``x`` (float32 (N, C, H, W), preprocessed) with ``method``.

    ``target``: None (each image's predicted class), an int, or one int per image.
    ``layer``: for the CAM family and feature_maps, a layer name or a list of names (then one
    forward and one backward pass serve all of them); None takes the last spatial layer.
    ``options``: the method's own (see ``cnnlens.METHODS``, docs/methods/). Returns an Explanation.
    """
    return run(backend_for(model), _as_numpy(x), method, target=target, layer=layer, **options)


def filters(model: Any, layer: Optional[str] = None) -> np.ndarray:
    """A layer's weight tensor, e.g. (out, in, kh, kw) for a convolution (the first one when ``layer`` is None)."""
    backend = backend_for(model)
    if WEIGHTS not in backend.capabilities:
        raise ModelError(f"the {backend.name} backend cannot read weights")
    return backend.weights(layer)
