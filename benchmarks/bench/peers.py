"""The peers, each called the way its documentation shows, with cnnlens's model, images, targets and
settings. A factory returns None when its package is not installed (pip install -r benchmarks/requirements.txt).

LRP (zennit) and DeepLIFT (Captum) get a copy of the model that computes the same function in the form
the peer's module hooks need (``relevance_twin``, ``deeplift_twin``): zennit's canonizers for the model
(ResNetCanonizer; on a torchvision DenseNet NamedMergeBatchNorm over its true conv -> BN pairs, with the
final ReLU and pool as modules), and for Captum one ReLU module per call site.

Hooked extractors (pytorch-grad-cam, torchcam) are built and released inside each call (microseconds
next to the passes), so that no peer's hooks stay on the model while another implementation is
timed; anything that rewrites the model's modules runs on its own deep copy.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

Runner = Callable[[], Any]


def available(package: str) -> Optional[str]:
    """The installed version of ``package`` (import name), or None."""
    try:
        module = importlib.import_module(package)
    except Exception:
        return None
    version = getattr(module, "__version__", None)
    if version is None:  # zennit has no __version__; its distribution has the import's name
        try:
            from importlib.metadata import version as distribution_version

            version = distribution_version(package)
        except Exception:
            version = "installed"
    return str(version)


def _module(model: Any, path: str) -> Any:
    return model.get_submodule(path)


def _upsample(maps: Any, size) -> Any:
    import torch.nn.functional as F

    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- the same model, as the hooks need it


def _module_pool_densenet(net: Any) -> Any:
    """A torchvision DenseNet whose final ``F.relu`` and ``F.adaptive_avg_pool2d`` are modules (the
    same function): module hooks (zennit's rules, Captum's DeepLIFT multipliers) see calls of modules
    only, and torchvision makes those two calls functionally."""
    import torch
    from torch import nn

    class ModulePoolDenseNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d((1, 1))

        def forward(self, x: Any) -> Any:
            return self.net.classifier(torch.flatten(self.pool(self.relu(self.net.features(x))), 1))
    return ModulePoolDenseNet().eval()


def densenet_bn_pairs(net: Any, prefix: str = "") -> List[Any]:
    """The conv -> BN pairs a torchvision DenseNet executes: conv0 -> norm0 and each dense layer's
    conv1 -> norm2 (SequentialMergeBatchNorm pairs by registration order, and would also merge each
    conv2 into the next layer's norm1, a BN of a concatenation)."""
    pairs = [((prefix + "features.conv0",), prefix + "features.norm0")]
    for name, module in net.named_modules():
        if type(module).__name__ == "_DenseLayer":
            pairs.append(((f"{prefix}{name}.conv1",), f"{prefix}{name}.norm2"))
    return pairs


def _is_densenet(model: Any) -> bool:
    import torchvision

    return isinstance(model, torchvision.models.DenseNet)


def relevance_twin(model: Any) -> Tuple[Any, Callable[[], List[Any]]]:
    """(zennit's copy of ``model``, a function making fresh canonizers for it): ResNetCanonizer on a
    torchvision ResNet; on a DenseNet, NamedMergeBatchNorm over its conv -> BN pairs with the final
    ReLU and pool as modules (see ``_module_pool_densenet``); else SequentialMergeBatchNorm."""
    import torchvision
    from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    own = copy.deepcopy(model)  # the canonizers rewrite modules and parameters while a context is open
    if isinstance(own, torchvision.models.ResNet):
        return own, lambda: [ResNetCanonizer()]
    if _is_densenet(own):
        pairs = densenet_bn_pairs(own, prefix="net.")
        return _module_pool_densenet(own), lambda: [NamedMergeBatchNorm(pairs)]
    return own, lambda: [SequentialMergeBatchNorm()]


def _bottleneck_forward(self: Any, x: Any) -> Any:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu_a(self.bn1(self.conv1(x)))
    out = self.relu_b(self.bn2(self.conv2(out)))
    return self.relu_c(self.bn3(self.conv3(out)) + identity)


def _basic_block_forward(self: Any, x: Any) -> Any:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu_a(self.bn1(self.conv1(x)))
    return self.relu_b(self.bn2(self.conv2(out)) + identity)


def deeplift_twin(model: Any) -> Any:
    """A copy of ``model`` with one ReLU module per call site (Captum's DeepLift refuses a module
    called twice, as each torchvision ResNet block calls its ``relu``): the same weights and function.
    On a DenseNet also the final functional ReLU and pool as modules (``_module_pool_densenet``), so
    that Captum applies the Rescale rule there too; any other model is copied as it is."""
    import types

    import torchvision
    from torch import nn

    own = copy.deepcopy(model)
    for block in own.modules():
        forward = {torchvision.models.resnet.Bottleneck: _bottleneck_forward,
                   torchvision.models.resnet.BasicBlock: _basic_block_forward}.get(type(block))
        if forward is not None:
            block.relu_a, block.relu_b = nn.ReLU(), nn.ReLU()
            if forward is _bottleneck_forward:
                block.relu_c = nn.ReLU()
            block.forward = types.MethodType(forward, block)
    return _module_pool_densenet(own) if _is_densenet(own) else own


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
    if method == "deeplift":
        dl = attr.DeepLift(deeplift_twin(model))
        return lambda: dl.attribute(x, baselines=settings.get("baseline", 0.0), target=targets)
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


# ---------------------------------------------------------------- zennit


def zennit(method: str, model: Any, x: Any, targets: Any, layer: str, settings: Dict[str, Any]) -> Optional[Runner]:
    """LRP with EpsilonPlusFlat, relevance starting as ``onehot * output`` (cnnlens's ``y_c``), on
    ``relevance_twin``'s copy; the composite (hooks and canonizers) is applied and removed in each call."""
    if method != "lrp" or settings.get("composite", "epsilon_plus_flat") != "epsilon_plus_flat" \
            or available("zennit") is None:
        return None
    import torch
    from zennit.composites import EpsilonPlusFlat

    own, canonizers = relevance_twin(model)
    rows = torch.arange(len(x), device=x.device)

    def run_lrp() -> Any:
        composite = EpsilonPlusFlat(canonizers=canonizers())
        xr = x.detach().clone().requires_grad_(True)
        with composite.context(own) as modified:
            out = modified(xr)
            onehot = torch.zeros_like(out)
            onehot[rows, targets] = 1.0
            (relevance,) = torch.autograd.grad(out, xr, grad_outputs=onehot * out)
        return relevance
    return run_lrp


PEERS: Dict[str, Callable[..., Optional[Runner]]] = {
    "captum": captum, "pytorch-grad-cam": grad_cam, "torchcam": torchcam, "zennit": zennit,
}
PACKAGES = {"captum": "captum", "pytorch-grad-cam": "pytorch_grad_cam", "torchcam": "torchcam", "zennit": "zennit"}
