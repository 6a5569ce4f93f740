"""The demo's segmentation case: the demo DenseNet's features with a small head trained in the same
run on the same circles and squares to mark the square's pixels, exported to ONNX, and explained for the
"square" class over the region it predicts (``cnnlens.targets.segmentation``) with Grad-CAM on the
torch and the ONNX backend — the same map on both, and a section of the report.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, Tuple

import numpy as np

from ..core.metrics import pointing_game
from ..core.methods import run
from . import synthetic
from .export import to_onnx

#: the layer its Grad-CAM reads: the head's last ReLU before its 1 x 1 classifier, at 1/8 of the image
LAYER = "head.2"
#: the cross-entropy's class weights: the square's pixels are few, and a head that marks none would
#: otherwise look good
CLASS_WEIGHTS = (1.0, 3.0)


@dataclasses.dataclass(frozen=True)
class SegmentationConfig:
    """How the segmenter's head is trained and how many held-out positives it explains."""

    train_images: int = 1500
    epochs: int = 40
    batch_size: int = 100
    lr: float = 3e-3
    seed: int = 0
    explained: int = 16


#: ``cnnlens demo --quick``'s: ~2 s of training for a square IoU of ~0.66 (the full one: ~6 s, ~0.75,
#: on 2 CPU cores; the 8 x 8 head bounds it: a cell straddling the square's edge is half right)
QUICK = SegmentationConfig(train_images=400, epochs=60, lr=1e-2, explained=4)


def build_segmenter(features: Any, seed: int = 0) -> Any:
    """(N, 2, H, W) class scores (0: anything else, 1: the square): the demo DenseNet's ``features``
    (shared, not copied: what the classifier learned about squares), a small head (ReLU, 3 x 3
    convolution, ReLU, 1 x 1 classifier) at their 1/8 resolution, bilinear back to the image."""
    import torch
    from torch import nn

    class SquareSegmenter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features
            channels = [m for m in features.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
            self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 2, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.interpolate(self.head(self.features(x)), size=x.shape[2:], mode="bilinear",
                                             align_corners=False)

    torch.manual_seed(seed)
    return SquareSegmenter()


def square_masks(data: Any) -> np.ndarray:
    """(N, H, W) int64: 1 inside each image's square (its box), 0 elsewhere."""
    masks = np.zeros((len(data),) + data.images.shape[1:3], dtype=np.int64)
    for i, (top, left, bottom, right) in enumerate(data.boxes):
        if data.labels[i]:
            masks[i, top:bottom, left:right] = 1
    return masks


def train_segmenter(classifier: Any, config: SegmentationConfig, size: int) -> Tuple[Any, float, float]:
    """The segmenter over ``classifier``'s features with its head trained (the features stay as they
    are: computed once, cached), in eval mode; its square IoU on 200 held-out images; the seconds."""
    import torch

    started = time.perf_counter()
    model = build_segmenter(classifier.features, config.seed).eval()
    data = synthetic.make_shapes(config.train_images, size=size, seed=config.seed + 7)
    with torch.inference_mode():
        cached = model.features(torch.from_numpy(synthetic.normalize(data.images)))
    # trained at the features' resolution against each cell's share of square pixels (soft labels):
    # 64x less work than at the image's, and the same head
    cached = cached.clone()
    cells = cached.shape[2:]
    masks = torch.from_numpy(square_masks(data)).float()[:, None]
    share = torch.nn.functional.adaptive_avg_pool2d(masks, cells)[:, 0]
    y = torch.stack([1 - share, share], dim=1)
    optimiser = torch.optim.Adam(model.head.parameters(), lr=config.lr)
    weights, generator = torch.tensor(CLASS_WEIGHTS), torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        order = torch.randperm(len(cached), generator=generator)
        for start in range(0, len(cached), config.batch_size):
            rows = order[start:start + config.batch_size]
            loss = torch.nn.functional.cross_entropy(model.head(cached[rows]), y[rows], weight=weights)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    held = synthetic.make_shapes(200, size=size, seed=config.seed + 2000)
    with torch.inference_mode():
        predicted = model(torch.from_numpy(synthetic.normalize(held.images))).argmax(1).numpy()
    truth = square_masks(held)
    iou = float(((predicted == 1) & (truth == 1)).sum() / max(1, ((predicted == 1) | (truth == 1)).sum()))
    return model, iou, time.perf_counter() - started


def run_segmentation(out: str, classifier: Any, data: Any, positives: np.ndarray, config: SegmentationConfig,
                     say: Callable[[str], Any]) -> Tuple[Dict[str, Any], str]:
    """Train the segmenter's head over ``classifier``'s features, export it, and explain the held-out
    ``positives`` of ``data`` for the square class over its predicted region on torch and ONNX.
    Returns the summary entry and the report's section (HTML)."""
    import cnnlens
    from .report import figure_section

    size = int(data.images.shape[1])
    say(f"training a segmentation head over the DenseNet's features on {config.train_images} images...")
    model, iou, seconds = train_segmenter(classifier, config, size)
    say(f"segmenter: square IoU {iou:.3f} on 200 held-out images after {seconds:.1f} s")
    onnx_path = to_onnx(model, os.path.join(out, "segmenter.onnx"), (3, size, size), exporter="legacy")
    chosen, target, over = _explained_images(model, data, positives, config.explained)
    x = synthetic.normalize(data.images[chosen])
    backends = {"torch": cnnlens.load(model), "onnx": cnnlens.load(onnx_path)}
    explained, timing = {}, {}
    for label, backend in backends.items():
        started = time.perf_counter()
        explained[label] = run(backend, x, "gradcam", target=target, layer=LAYER)
        timing[label] = time.perf_counter() - started
    torch_maps, onnx_maps = explained["torch"].maps, explained["onnx"].maps
    difference = float(np.abs(onnx_maps - torch_maps).max() / max(np.abs(torch_maps).max(), 1e-30))
    pointing = pointing_game(torch_maps, data.boxes[chosen])
    regions = np.asarray(explained["torch"].target)[:, 1]  # the predicted square region per image
    say(f"  segmenter: Grad-CAM of the square class over its predicted region: pointing game {pointing:.2f} on "
        f"{len(chosen)} images; ONNX vs torch {difference:.1e}; {timing['torch']:.2f} s torch, {timing['onnx']:.2f} s ONNX")
    rows = []
    for k in range(min(len(chosen), 4)):
        image = data.images[chosen[k]]
        rows.append([(image, "input"), (_mask_overlay(image, regions[k]), f"the region: {over}"),
                     ((image, torch_maps[k]), "Grad-CAM, torch"), ((image, onnx_maps[k]), "Grad-CAM, ONNX")])
    section = figure_section(
        "Segmentation: the square class over its predicted region",
        f"The DenseNet's features with a small head trained in this run to mark the square's pixels (square IoU "
        f"{iou:.3f} on held-out images), explained with cnnlens.targets.segmentation(1): the sum of the square "
        f"class's scores over {over}, Grad-CAM at {LAYER}. The ONNX export gives the same "
        f"map (largest difference {difference:.1e} of the map's peak); its peak falls inside the square on "
        f"{pointing:.0%} of {len(chosen)} images.", rows)
    summary = {"iou": iou, "training_seconds": round(seconds, 1), "pointing_game": pointing, "region": over,
               "onnx_difference_to_torch": difference, "images": int(len(chosen)), "layer": LAYER,
               "seconds": {k: round(v, 3) for k, v in timing.items()}}
    return summary, section


def _explained_images(model: Any, data: Any, positives: np.ndarray, count: int) -> Tuple[np.ndarray, Any, str]:
    """(the held-out positives to explain, the target, what the region is): those where the segmenter
    marks some square pixels, over its predicted region; where it marks none anywhere (a model trained
    too briefly), the first ones over their true square instead, and said so."""
    import torch

    from ..targets import segmentation

    with torch.inference_mode():
        predicted = model(torch.from_numpy(synthetic.normalize(data.images[positives]))).argmax(1).numpy()
    marked = positives[(predicted == 1).any(axis=(1, 2))][:count]
    if len(marked):
        return marked, segmentation(1), "the pixels it predicts as square"
    chosen = positives[:count]
    return chosen, segmentation(1, square_masks(data.subset(chosen)).astype(np.float32)), \
        "the true square (the segmenter marks no square pixel on these images)"


def _mask_overlay(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The image with the predicted region tinted red."""
    shown = image.astype(np.float32).copy()
    shown[region > 0] = 0.5 * shown[region > 0] + 0.5 * np.array([255.0, 0.0, 0.0])
    return shown.astype(np.uint8)
