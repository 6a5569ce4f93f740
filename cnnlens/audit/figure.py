"""A picture of one group's SpRAy clusters for documents (docs/guides/audit.md): per cluster its mean map
and a few members' maps over their images."""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np

from ..adapters import images as image_io
from ..adapters import render
from ..core.errors import CnnlensError
from ..core.resize import resize_bilinear
from .summary import GroupSummary


def _picture(file: str, size: Tuple[int, int], heat: np.ndarray) -> np.ndarray:
    try:
        image = image_io.fit(image_io.load_image(file), size)
    except (CnnlensError, OSError):
        image = np.full(tuple(size) + (3,), 128, np.uint8)
    return render.overlay(image, resize_bilinear(heat[None], size)[0])


def clusters_figure(group: GroupSummary, input_size: Tuple[int, int], notes: Sequence[str] = (),
                    examples: int = 4) -> Any:
    """A matplotlib Figure: one row per cluster (its mean map, then up to ``examples`` members);
    ``notes[k]`` is added to cluster k's title."""
    plt_figure = render.new_figure((1.6 * (examples + 1), 1.7 * len(group.clusters) + 0.4))
    axes = plt_figure.subplots(len(group.clusters), examples + 1, squeeze=False)
    for k, cluster in enumerate(group.clusters):
        mean = resize_bilinear(cluster.mean_map[None], input_size)[0]
        axes[k, 0].imshow(render.colorize(mean / max(float(mean.max()), 1e-12)))
        note = f"\n{notes[k]}" if k < len(notes) and notes[k] else ""
        axes[k, 0].set_title(f"cluster {cluster.cluster}: {cluster.size} maps{note}", fontsize=7)
        for j in range(examples):
            ax = axes[k, j + 1]
            if j < len(cluster.examples):
                example = cluster.examples[j]
                ax.imshow(_picture(example.file, input_size, example.map))
                ax.set_title(example.path.split("/")[0].replace("_", " "), fontsize=6)
        for ax in axes[k]:
            ax.axis("off")
    plt_figure.suptitle(f"SpRAy clusters of {group.title}", fontsize=9)
    return plt_figure
