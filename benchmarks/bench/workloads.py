"""What is measured: the models, their inputs and each method's settings, for --quick and full runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


@dataclass
class Workload:
    """One model at one input size, with the settings every implementation gets."""

    name: str
    model: Any                     # torch.nn.Module in eval mode, on its device
    images: np.ndarray             # (N, C, H, W) float32
    targets: Any                   # the class explained per image (the model's prediction), or output weights
    layer: str                     # the CAM layer (module path)
    ten_layers: List[str]          # ten spatial layers, shallow to deep, for multi-layer Grad-CAM
    occlusion: Dict[str, int]      # window, stride
    occlusion_images: int
    smoothgrad: Dict[str, Any]     # samples, noise
    scorecam_images: int           # 0 skips Score-CAM and Ablation-CAM on this workload
    repeats: int
    budget: float                  # seconds of repeats per implementation before stopping early
    onnx: Optional[bytes] = None   # the model exported to ONNX (None when export is unavailable)
    integrated: Dict[str, int] = field(default_factory=lambda: dict(images=0, steps=8))  # images (0: skip), steps
    rise: Dict[str, int] = field(default_factory=lambda: dict(images=0, masks=100))      # images (0: skip), masks
    notes: List[str] = field(default_factory=list)
    methods: Optional[Tuple[str, ...]] = None  # only these rows (None: every method)
    peers: bool = True             # whether the peers can be asked (they take class targets only)


def spread(names: List[str], count: int) -> List[str]:
    """``count`` names evenly spaced over ``names``, always ending with the last."""
    if len(names) <= count:
        return list(names)
    if count == 1:
        return [names[-1]]
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in picks]


def _images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, size, size), dtype=np.float32)


def _predictions(model: Any, x: np.ndarray, device: str) -> List[int]:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x).to(device)).argmax(1).tolist()


def _ten_layers(model: Any, size: int) -> List[str]:
    import cnnlens

    spatial = [layer.name for layer in cnnlens.layers(model, (3, size, size)) if layer.spatial]
    leaves = [n for n in spatial if not any(other.startswith(n + ".") for other in spatial)]
    return spread(leaves, 10)  # leaves, so the first is the shallowest (a container is called before its children)


def _export(model: Any, size: int, device: str) -> Optional[bytes]:
    import copy
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    cpu_model = copy.deepcopy(model).to("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cpu_model, torch.zeros(1, 3, size, size), buffer, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    return buffer.getvalue()


def resnet50(quick: bool, device: str) -> Workload:
    """torchvision's ResNet-50 with seeded random weights at 224 x 224."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(device)
    gpu = device.startswith("cuda")
    n = (16 if gpu else 2) if quick else (64 if gpu else 8)
    x = _images(n, 224, seed=1)
    return Workload(
        name="resnet50", model=model, images=x, targets=_predictions(model, x, device), layer="layer4",
        ten_layers=_ten_layers(model, 224),
        occlusion=dict(window=56, stride=28) if quick and not gpu else dict(window=32, stride=16),
        occlusion_images=(4 if gpu else 1) if quick else (16 if gpu else 2),
        smoothgrad=dict(samples=8 if quick else 16, noise=0.15),
        scorecam_images=(4 if gpu else 0) if quick else (16 if gpu else 1),
        integrated=dict(images=(4 if gpu else 1) if quick else (16 if gpu else 2), steps=16 if quick else 50),
        rise=dict(images=(4 if gpu else 1) if quick else (8 if gpu else 1), masks=250 if quick else 1000),
        repeats=3 if quick else 5, budget=8.0 if quick else 60.0, onnx=_export(model, 224, device),
    )


def small(quick: bool, device: str) -> Workload:
    """The demo's DenseNet (cnnlens.adapters.demo_model) with seeded random weights at 64 x 64."""
    from cnnlens.adapters.demo_model import build_model

    model = build_model(seed=0).eval().to(device)
    gpu = device.startswith("cuda")
    n = 64 if quick else 256
    x = _images(n, 64, seed=2)
    return Workload(
        name="densenet-small", model=model, images=x, targets=_predictions(model, x, device),
        # not "features": DenseNet applies an in-place F.relu to that output, which the peers' hooks see
        # (they keep the tensor without copying), so they would explain a different tensor than cnnlens
        layer="features.denseblock2",
        ten_layers=_ten_layers(model, 64), occlusion=dict(window=8, stride=4),
        occlusion_images=(64 if gpu else 8) if quick else (256 if gpu else 32),
        smoothgrad=dict(samples=8 if quick else 16, noise=0.15),
        scorecam_images=(64 if gpu else 16) if quick else (256 if gpu else 64),
        integrated=dict(images=(64 if gpu else 16) if quick else (256 if gpu else 32), steps=16 if quick else 50),
        rise=dict(images=(16 if gpu else 4) if quick else (64 if gpu else 8), masks=500 if quick else 2000),
        repeats=3 if quick else 5, budget=8.0 if quick else 30.0, onnx=_export(model, 64, device),
    )


class _Out:
    """Wraps a torchvision segmentation model into one returning its ``out`` tensor."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class Out(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = model

            def forward(self, x: Any) -> Any:
                return self.net(x)["out"]
        return Out().eval()


def deeplabv3(quick: bool, device: str) -> Workload:
    """torchvision's DeepLabV3 (MobileNetV3-Large) with seeded random weights at 520 x 520 (its
    size), explained for one class over its predicted region (``cnnlens.targets.segmentation``)."""
    import torch
    import torchvision

    import cnnlens
    from cnnlens.targets import segmentation

    torch.manual_seed(0)
    net = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                        num_classes=21, aux_loss=False)
    model = _Out.wrap(net).to(device)
    gpu = device.startswith("cuda")
    n = (8 if gpu else 2) if quick else (32 if gpu else 4)
    x = _images(n, 520, seed=3)
    with torch.inference_mode():
        out = model(torch.from_numpy(x).to(device)).cpu().numpy()
    category = int(np.bincount(out.argmax(axis=1).ravel()).argmax())  # predicted in every image here
    weights = segmentation(category).weights_for(out).weights
    layer = "net.backbone.16"
    assert cnnlens.layers(model, (3, 520, 520))  # traceable
    return Workload(
        name="deeplabv3-mobilenet", model=model, images=x, targets=weights, layer=layer, ten_layers=[layer],
        occlusion=dict(window=104, stride=104), occlusion_images=0, smoothgrad=dict(samples=2, noise=0.1),
        scorecam_images=0, repeats=3 if quick else 5, budget=8.0 if quick else 30.0, onnx=_export(model, 520, device),
        methods=("gradcam", "saliency"), peers=False,
        notes=[f"class {category} over its predicted region (cnnlens.targets.segmentation)"],
    )


def vit(quick: bool, device: str) -> Workload:
    """timm's ViT-S/16 with seeded random weights at 224 x 224, Grad-CAM at the last block's first
    norm: tokens (N, 197, 384) laid out as a 14 x 14 grid."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval().to(device)
    gpu = device.startswith("cuda")
    n = (16 if gpu else 4) if quick else (64 if gpu else 8)
    x = _images(n, 224, seed=4)
    layer = "blocks.11.norm1"
    return Workload(
        name="vit-small", model=model, images=x, targets=_predictions(model, x, device), layer=layer,
        ten_layers=[layer], occlusion=dict(window=56, stride=56), occlusion_images=0,
        smoothgrad=dict(samples=2, noise=0.1), scorecam_images=0, repeats=3 if quick else 5,
        budget=8.0 if quick else 30.0, onnx=_export(model, 224, device), methods=("gradcam", "saliency"),
    )


WORKLOADS = {"resnet50": resnet50, "small": small, "deeplabv3": deeplabv3, "vit": vit}
