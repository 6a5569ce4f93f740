"""The rows of the table: for one workload, backend and device, each method as cnnlens runs it,
the floor it is measured against and the peers that compute the same thing."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .workloads import Workload

#: How a floor is made: ("forward", None) forward passes only; ("input", None) forward and backward
#: to the input; ("layers", names) forward and backward to those layers' outputs.
FloorKind = Tuple[str, Optional[Tuple[str, ...]]]


@dataclass
class Case:
    """One row: ``ours()`` explains ``images`` images; the floor is ``passes`` images' worth of ``floor``."""

    method: str                    # the row's label, e.g. "gradcam" or "gradcam (10 layers)"
    explain: str                   # the cnnlens method name
    images: int
    ours: Callable[[Any], Any]     # called with the model or backend to explain
    floor: FloorKind
    passes: int                    # images through the model that the floor charges
    peer_method: Optional[str] = None
    peer_settings: Dict[str, Any] = field(default_factory=dict)
    peer_images: int = 0


def _explain(x: np.ndarray, targets: Any, method: str, layer: Any = None, **options: Any) -> Callable[[Any], Any]:
    import cnnlens

    def run(model: Any) -> Any:
        return cnnlens.explain(model, x, method, target=targets, layer=layer, **options)
    return run


def positions(size: int, window: int, stride: int) -> int:
    """Occlusion windows along one axis of ``size`` pixels (the last one flush with the edge)."""
    return len(range(0, size - window + 1, stride)) + (1 if (size - window) % stride else 0)


def cases(w: Workload, backend: str, capabilities: frozenset, channels: int, batch: Dict[str, int],
          layer: Optional[str] = None, ten_layers: Optional[Sequence[str]] = None) -> List[Case]:
    """Every row this backend can run on this workload. ``channels``: channels at ``w.layer``;
    ``batch``: the batch sizes cnnlens picks for forward and backward passes; ``layer`` and
    ``ten_layers``: the workload's layers as this backend names them (default: the module paths).

    ONNX Runtime has no backward pass of its own, so an ONNX row's floor is always the model's
    forward passes; its gradient rows are compared with the torch backend's instead of the peers."""
    x, t = w.images, w.targets
    n = len(x)
    size = x.shape[2]
    layer = layer or w.layer
    ten = list(ten_layers or w.ten_layers)
    rows: List[Case] = []
    gradients = "input_gradients" in capabilities
    if gradients:
        rows.append(Case("saliency", "saliency", n, _explain(x, t, "saliency"), ("input", None), n, "saliency"))
    if "relu_rules" in capabilities:
        rows.append(Case("guided_backprop", "guided_backprop", n, _explain(x, t, "guided_backprop"),
                         ("input", None), n, "guided_backprop"))
    if gradients:
        s = w.smoothgrad["samples"]
        rows.append(Case("smoothgrad", "smoothgrad", n, _explain(x, t, "smoothgrad", **w.smoothgrad),
                         ("input", None), n * s, "smoothgrad", dict(w.smoothgrad, batch=batch["backward"])))
    if "layer_gradients" in capabilities:
        rows.append(Case("gradcam", "gradcam", n, _explain(x, t, "gradcam", layer), ("layers", (layer,)), n, "gradcam"))
        shallow = ten[0]
        rows.append(Case(f"gradcam (1 layer: {shallow})", "gradcam", n, _explain(x, t, "gradcam", shallow),
                         ("layers", (shallow,)), n))
        rows.append(Case("gradcam (10 layers)", "gradcam", n, _explain(x, t, "gradcam", ten),
                         ("layers", tuple(ten)), n))
    m, steps = w.integrated["images"], w.integrated["steps"]
    if gradients:
        rows.append(Case("input_x_gradient", "input_x_gradient", n, _explain(x, t, "input_x_gradient"),
                         ("input", None), n, "input_x_gradient"))
    if gradients and m:
        rows.append(Case("integrated_gradients", "integrated_gradients", m,
                         _explain(x[:m], t[:m], "integrated_gradients", steps=steps), ("input", None), m * steps,
                         "integrated_gradients", dict(steps=steps, batch=batch["backward"]), m))
    if gradients and "relevance_rules" in capabilities:  # one backward pass under LRP's / DeepLIFT's rules
        lrp = dict(composite="epsilon_plus_flat")
        rows.append(Case("lrp", "lrp", n, _explain(x, t, "lrp", **lrp), ("input", None), n, "lrp", lrp))
        deeplift = dict(baseline=0.0)
        rows.append(Case("deeplift", "deeplift", n, _explain(x, t, "deeplift", **deeplift), ("input", None), n,
                         "deeplift", deeplift))
    if "layer_gradients" in capabilities:
        for variant in ("gradcampp", "xgradcam", "layercam", "hirescam"):
            rows.append(Case(variant, variant, n, _explain(x, t, variant, layer), ("layers", (layer,)), n, variant))
    if "relu_rules" in capabilities and "layer_gradients" in capabilities:
        rows.append(Case("guided_gradcam", "guided_gradcam", n, _explain(x, t, "guided_gradcam", layer),
                         ("input", None), n, "guided_gradcam"))
    if "linear_head" in capabilities:
        rows.append(Case("cam", "cam", n, _explain(x, t, "cam"), ("forward", None), n))
    if "activations" in capabilities:
        rows.append(Case("feature_maps", "feature_maps", n, _explain(x, t, "feature_maps", layer), ("forward", None), n))
    if "activations" in capabilities and w.scorecam_images:
        m = w.scorecam_images
        rows.append(Case("scorecam", "scorecam", m, _explain(x[:m], t[:m], "scorecam", layer), ("forward", None),
                         m * (channels + 1), "scorecam", dict(batch=batch["forward"]), m))
    if "activations" in capabilities:
        rows.append(Case("eigencam", "eigencam", n, _explain(x, t, "eigencam", layer), ("forward", None), n, "eigencam"))
    if "replace_layer" in capabilities and w.scorecam_images:
        m = w.scorecam_images
        rows.append(Case("ablationcam", "ablationcam", m, _explain(x[:m], t[:m], "ablationcam", layer),
                         ("forward", None), m * (channels + 1), "ablationcam", dict(batch=batch["forward"]), m))
    m, masks = w.rise["images"], w.rise["masks"]
    if m:
        rows.append(Case("rise", "rise", m, _explain(x[:m], t[:m], "rise", masks=masks), ("forward", None),
                         m * (masks + 1), None, {}, m))
    m = w.occlusion_images
    p = positions(size, w.occlusion["window"], w.occlusion["stride"]) ** 2
    rows.append(Case("occlusion", "occlusion", m, _explain(x[:m], t[:m], "occlusion", **w.occlusion), ("forward", None),
                     m * (p + 1), "occlusion", dict(w.occlusion), m))
    if w.methods is not None:
        rows = [row for row in rows if row.method in w.methods]
    if not w.peers:
        rows = [replace(row, peer_method=None) for row in rows]
    if backend == "onnx":  # one forward pass per image is all ONNX Runtime offers as a floor
        rows = [row if row.floor[0] == "forward" else replace(row, floor=("forward", None), peer_method=None)
                for row in rows]
    return rows
