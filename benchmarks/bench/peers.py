"""The peers, each called the way its documentation shows, with cnnlens's model, images, targets and
settings. A factory returns None when its package is not installed (pip install -r benchmarks/requirements.txt).

Hooked extractors (pytorch-grad-cam, torchcam) are built and released inside each call (microseconds
next to the passes), so that no peer's hooks stay on the model while another implementation is
timed; anything that rewrites the model's modules runs on its own deep copy.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any, Callable, Dict, List, Optional

import numpy as np

Runner = Callable[[], Any]


def available(package: str) -> Optional[str]:
    """The installed version of ``package`` (import name), or None."""
    try:
        module = importlib.import_module(package)
    except Exception:
        return None
    return str(getattr(module, "__version__", "installed"))


def _module(model: Any, path: str) -> Any:
    return model.get_submodule(path)


def _upsample(maps: Any, size) -> Any:
    import torch.nn.functional as F

    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- Captum


def captum(method: str, model: Any, x: Any, targets: Any, layer: str, settings: Dict[str, Any]) -> Optional[Runner]:
    if available("captum") is None:
        return None
    from captum import attr

    size = tuple(x.shape[2:])
    if method == "saliency":
        s = attr.Saliency(model)
        return lambda: s.attribute(x, target=targets, abs=False)
    if method == "guided_backprop":
        g = attr.GuidedBackprop(model)
        return lambda: g.attribute(x, target=targets)
    if method == "gradcam":
        lg = attr.LayerGradCam(model, _module(model, layer))
        return lambda: attr.LayerAttribution.interpolate(
            lg.attribute(x, target=targets, relu_attributions=True), size, "bilinear")
    if method == "guided_gradcam":
        gg = attr.GuidedGradCam(model, _module(model, layer))
        return lambda: gg.attribute(x, target=targets, interpolate_mode="bilinear")
    if method == "smoothgrad":
        nt = attr.NoiseTunnel(attr.Saliency(model))
        spread = float(settings["noise"] * (x.max() - x.min()))
        # Captum passes all images with nt_samples_batch_size samples each at once: as close to
        # cnnlens's batch as that allows
        per_pass = max(1, settings["batch"] // len(x))
        return lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=settings["samples"],
                                    nt_samples_batch_size=per_pass, stdevs=spread, target=targets, abs=False)
    if method == "input_x_gradient":
        ixg = attr.InputXGradient(model)
        return lambda: ixg.attribute(x, target=targets)
    if method == "integrated_gradients":
        ig = attr.IntegratedGradients(model)
        return lambda: ig.attribute(x, baselines=0.0, target=targets, n_steps=settings["steps"],
                                    method="gausslegendre", internal_batch_size=settings["batch"])
    if method == "occlusion":
        occ = attr.Occlusion(model)
        c, w, s = x.shape[1], settings["window"], settings["stride"]
        return lambda: occ.attribute(x, sliding_window_shapes=(c, w, w), strides=(c, s, s), target=targets,
                                     baselines=0.0, perturbations_per_eval=settings["perturbations_per_eval"])
    return None


# ---------------------------------------------------------------- pytorch-grad-cam


def grad_cam(method: str, model: Any, x: Any, targets: Any, layer: str, settings: Dict[str, Any]) -> Optional[Runner]:
    if available("pytorch_grad_cam") is None:
        return None
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wanted = [ClassifierOutputTarget(int(t)) for t in targets.tolist()]
    if method in ("gradcam", "scorecam"):
        kind = pgc.GradCAM if method == "gradcam" else pgc.ScoreCAM

        def run_cam() -> Any:
            with kind(model=model, target_layers=[_module(model, layer)]) as extractor:
                if method == "scorecam":
                    extractor.batch_size = settings["batch"]
                return extractor(input_tensor=x, targets=wanted)
        return run_cam
    variants = {"gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
                "hirescam": "HiResCAM", "eigencam": "EigenCAM", "ablationcam": "AblationCAM"}
    if method in variants:
        kind = getattr(pgc, variants[method])

        def run_variant() -> Any:
            if method == "ablationcam":  # it swaps the layer for its own module and back: on a copy
                own = copy.deepcopy(model)
                with kind(model=own, target_layers=[_module(own, layer)], batch_size=settings["batch"]) as extractor:
                    return extractor(input_tensor=x, targets=wanted)
            with kind(model=model, target_layers=[_module(model, layer)]) as extractor:
                return extractor(input_tensor=x, targets=wanted)
        return run_variant
    if method == "guided_backprop":
        own = copy.deepcopy(model)  # it swaps the model's ReLU modules for its own and back
        gb = pgc.GuidedBackpropReLUModel(own, device=x.device)
        classes = targets.tolist()
        return lambda: np.stack([gb(x[i:i + 1], target_category=classes[i]) for i in range(len(x))])
    return None


# ---------------------------------------------------------------- torchcam


def torchcam(method: str, model: Any, x: Any, targets: Any, layer: str, settings: Dict[str, Any]) -> Optional[Runner]:
    if available("torchcam") is None:
        return None
    import torch
    from torchcam import methods

    classes: List[int] = targets.tolist()
    size = tuple(x.shape[2:])
    if method == "gradcam":
        def run_gradcam() -> Any:
            with methods.GradCAM(model, target_layer=layer) as extractor:
                cams = extractor(class_idx=classes, scores=model(x))
            return _upsample(cams[0][:, None], size)
        return run_gradcam
    if method == "scorecam":
        def run_scorecam() -> Any:
            with methods.ScoreCAM(model, target_layer=layer, batch_size=settings["batch"],
                                  input_shape=tuple(x.shape[1:])) as extractor:
                with torch.no_grad():
                    scores = model(x)
                cams = extractor(class_idx=classes, scores=scores)
            return _upsample(cams[0][:, None], size)
        return run_scorecam
    return None


PEERS: Dict[str, Callable[..., Optional[Runner]]] = {
    "captum": captum, "pytorch-grad-cam": grad_cam, "torchcam": torchcam,
}
PACKAGES = {"captum": "captum", "pytorch-grad-cam": "pytorch_grad_cam", "torchcam": "torchcam"}
