"""Shared pieces of the audit tests: a small seeded classifier and a folder of images."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class SmallNet(nn.Module):
    """conv-relu-conv-relu-GAP-linear over 3 classes, seeded."""

    def __init__(self, seed: int = 0, classes: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1, stride=2),
                                      nn.ReLU())
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def write_images(root: str, count: int = 12, seed: int = 0, classes=("ant", "bee")) -> list:
    """``count`` random PNGs of various sizes in class folders under ``root``; returns their
    paths relative to ``root`` in the order an audit reads them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = []
    for k in range(count):
        cls = classes[k % len(classes)]
        h, w = (40, 40) if k % 3 else (int(rng.integers(30, 70)), int(rng.integers(30, 70)))
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        name = f"{cls}/img{k:03d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(root, name))
        written.append(name)
    return sorted(written, key=lambda p: (p.split("/")[0], p))


def read_results(folder: str):
    """The results dataset sorted by (path, method), with its maps as numpy."""
    import pyarrow.parquet as pq

    from cnnlens.audit.arrow import maps_of

    table = pq.read_table(os.path.join(folder, "results")).sort_by([("path", "ascending"), ("method", "ascending")])
    return table, maps_of(table.column("map"))
