"""The census of exported model families (issue 22): every torchvision family, segmentation-models-
pytorch and timm members, each built with seeded random weights at a small input size, as a module
whose single output is what a user explains — detectors at their raw head outputs, before box
decoding and NMS; segmenters at their per-pixel class scores."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import nn


class Scores(nn.Module):
    """``model``'s output as one tensor: a dict entry, or what ``pick`` makes of the output."""

    def __init__(self, model: nn.Module, pick: Callable):
        super().__init__()
        self.model = model
        self.pick = pick

    def forward(self, x):
        return self.pick(self.model(x))


class DetectionHead(nn.Module):
    """A torchvision detector up to its raw class scores: backbone (+ FPN) and head, no anchors,
    decoding or NMS (what cannot be differentiated). ``rpn``: a two-stage detector's region
    proposal network's objectness, every level flattened and joined."""

    def __init__(self, detector: nn.Module, rpn: bool = False):
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.rpn.head if rpn else detector.head
        self.rpn = rpn

    def forward(self, x):
        features = list(self.backbone(x).values())
        if self.rpn:
            objectness, _ = self.head(features)
            return torch.cat([o.flatten(1) for o in objectness], dim=1)
        return self.head(features)["cls_logits"]


def _randomise_zeros(model: nn.Module) -> nn.Module:
    """Weights initialised to zero (ViT's and Swin's heads) drawn at random instead: a constant
    output would make every gradient zero and every comparison empty."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model


def _tv(name: str, **kwargs):
    import torchvision.models as tv

    return getattr(tv, name)(weights=None, **kwargs)


def _segmentation(name: str):
    import torchvision.models.segmentation as seg

    kwargs = dict(weights=None, weights_backbone=None, num_classes=4)
    if name != "lraspp_mobilenet_v3_large":
        kwargs["aux_loss"] = False
    return Scores(getattr(seg, name)(**kwargs), lambda out: out["out"])


def _detection(name: str, rpn: bool = False):
    import torchvision.models.detection as det

    return DetectionHead(getattr(det, name)(weights=None, weights_backbone=None, num_classes=5), rpn=rpn)


def _smp(arch: str, encoder: str):
    import segmentation_models_pytorch as smp

    return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)


def _timm(name: str, **kwargs):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


#: name -> (builder, input side, family); the input is (3, side, side)
CENSUS: Dict[str, Tuple[Callable[[], nn.Module], int, str]] = {
    "resnet18": (lambda: _tv("resnet18"), 64, "classification"),
    "vit_b_16": (lambda: _tv("vit_b_16", image_size=64), 64, "transformer"),
    "swin_t": (lambda: _tv("swin_t"), 64, "transformer"),
    "maxvit_t": (lambda: _tv("maxvit_t"), 224, "transformer"),
    "fcn_resnet50": (lambda: _segmentation("fcn_resnet50"), 64, "segmentation"),
    "deeplabv3_mobilenet_v3_large": (lambda: _segmentation("deeplabv3_mobilenet_v3_large"), 64, "segmentation"),
    "lraspp_mobilenet_v3_large": (lambda: _segmentation("lraspp_mobilenet_v3_large"), 64, "segmentation"),
    "retinanet_resnet50_fpn_v2": (lambda: _detection("retinanet_resnet50_fpn_v2"), 64, "detection"),
    "ssdlite320_mobilenet_v3_large": (lambda: _detection("ssdlite320_mobilenet_v3_large"), 64, "detection"),
    "fasterrcnn_mobilenet_v3_large_fpn": (lambda: _detection("fasterrcnn_mobilenet_v3_large_fpn", rpn=True), 64,
                                          "detection"),
    "smp.Unet(resnet18)": (lambda: _smp("Unet", "resnet18"), 64, "segmentation"),
    "smp.Unet(mobilenet_v2)": (lambda: _smp("Unet", "mobilenet_v2"), 64, "segmentation"),
    "smp.FPN(resnet18)": (lambda: _smp("FPN", "resnet18"), 64, "segmentation"),
    "smp.FPN(mobilenet_v2)": (lambda: _smp("FPN", "mobilenet_v2"), 64, "segmentation"),
    "smp.DeepLabV3Plus(resnet18)": (lambda: _smp("DeepLabV3Plus", "resnet18"), 64, "segmentation"),
    "smp.DeepLabV3Plus(mobilenet_v2)": (lambda: _smp("DeepLabV3Plus", "mobilenet_v2"), 64, "segmentation"),
    "timm.convnext_atto": (lambda: _timm("convnext_atto"), 64, "classification"),
    "timm.efficientvit_b0": (lambda: _timm("efficientvit_b0"), 64, "hybrid"),
    "timm.fastvit_t8": (lambda: _timm("fastvit_t8"), 64, "hybrid"),
    "timm.mobilevit_xxs": (lambda: _timm("mobilevit_xxs"), 64, "hybrid"),
    "timm.deit_tiny_patch16_224": (lambda: _timm("deit_tiny_patch16_224", img_size=64), 64, "transformer"),
}

#: (exporter, opset): both exporters at a current opset, and an older one
EXPORTS = (("legacy", 17), ("legacy", 14), ("dynamo", 18))

#: the members CI runs on every commit (one per family and exporter quirk); the whole census runs with
#: CNNLENS_CENSUS=all and writes docs/census.md with benchmarks/census.py
QUICK = ("lraspp_mobilenet_v3_large", "smp.Unet(resnet18)", "vit_b_16", "timm.efficientvit_b0",
         "ssdlite320_mobilenet_v3_large")


def build(name: str) -> Tuple[nn.Module, int]:
    """The census member ``name`` in eval mode with seeded random weights, and its input side. The
    BatchNorms get random statistics and affine parameters: at their initial ones (the identity) a
    bias-free convolution over a region of zeros gives exact zeros, and a ReLU6 / ReLU there decides
    its gradient on float rounding — a reference that is not stable in float32 (MobileNet-V2 under
    the legacy exporter showed it: one tie in 73,728 flipped a layer's gradient by 19 %)."""
    from tests.helpers import randomise_batchnorm

    make, side, _ = CENSUS[name]
    torch.manual_seed(0)
    return randomise_batchnorm(_randomise_zeros(make())).eval(), side


def _torch_gradients(model: nn.Module, x, seed, layer: str, dtype=torch.float64):
    """PyTorch autograd on the original module, in ``dtype`` (float64: the true gradient, whatever
    float32's rounding decides at a ReLU tie): (outputs, input gradient, ``layer``'s output gradient) of
    ``sum(seed * outputs)``; the layer's output is kept and the rest of the model given a copy (an
    in-place op after it cannot change it)."""
    import copy

    import numpy as np

    model = copy.deepcopy(model).to(dtype)
    kept = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(
        lambda module, inputs, output: kept.__setitem__("a", output) or output.clone())
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    y = model(xt)
    hook.remove()
    gx, ga = torch.autograd.grad(y, [xt, kept["a"]], torch.from_numpy(seed).to(dtype))
    return y.detach().numpy(), gx.numpy(), np.asarray(ga.numpy())


def examine(name: str, exporter: str, opset: int, folder: str) -> Dict[str, object]:
    """Export census member ``name`` and compare cnnlens's ONNX gradients with autograd's on the
    original module in float64: the ops on the explained path, those without a rule, and the
    relative errors of the outputs, the input gradient and a mid-network layer's gradient (the layer
    nearest the middle that both name); and PyTorch's own float32 error against the same reference
    (deep ResNets in float32 differ from float64 by up to 1e-2 where a ReLU tie flips)."""
    import os

    import numpy as np

    import cnnlens
    from cnnlens.adapters.export import to_onnx
    from cnnlens.backends.onnx.autodiff import missing_rules
    from tests.helpers import rel_err

    model, side = build(name)
    path = to_onnx(model, os.path.join(folder, f"{name}-{exporter}-{opset}.onnx"), (3, side, side),
                   exporter=exporter, opset=opset)
    backend = cnnlens.load(path)
    graph = backend.graph
    ops = sorted({n.op_type for n in graph.data_nodes()})
    missing = sorted({f"{n.op_type}: {why}" for n, why in missing_rules(graph, backend.output)})
    row: Dict[str, object] = dict(name=name, family=CENSUS[name][2], exporter=exporter, opset=opset, ops=ops,
                                  missing=missing)
    if missing:
        return row
    spatial = [layer.name for layer in cnnlens.load(model).layers((3, side, side))
               if layer.shape is not None and len(layer.shape) >= 3]
    middle = len(spatial) // 2
    layer = None
    for candidate in sorted(spatial, key=lambda n: abs(spatial.index(n) - middle)):
        try:
            backend.resolve_layer(candidate)
        except cnnlens.LayerError:
            continue
        layer = candidate
        break
    x = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32)
    outputs = backend.forward(x).logits
    seed = np.random.default_rng(1).standard_normal(outputs.shape).astype(np.float32)
    reference, input_grad, layer_grad = _torch_gradients(model, x, seed, layer)
    found = backend.backward(x, seed, layers=[layer], input_grad=True)
    _, torch_input, torch_layer = _torch_gradients(model, x, seed, layer, torch.float32)
    row.update(layer=layer, output_error=rel_err(outputs, reference), input_error=rel_err(found.input_grad, input_grad),
               layer_error=rel_err(found.gradients[layer], layer_grad),
               torch_float32_error=max(rel_err(torch_input, input_grad), rel_err(torch_layer, layer_grad)))
    return row
