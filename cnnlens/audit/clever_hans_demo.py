"""``cnnlens demo --clever-hans``: a model that learned a shortcut, and the audit that finds it.

The demo's DenseNet is trained on shapes data where a small magenta mark in a corner comes with
most squares (:mod:`cnnlens.adapters.clever_hans`). Held-out images, the positives and the
negatives each without and with the mark, are written as PNGs with a manifest (the square's box
for positives) and audited with Grad-CAM into ``DIR/audit/``. The demo then reads the audit as
a reviewer would: which cluster of the "square" maps sits on the mark, how many predicted
squares fall in it, and what the mark does to the model's accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import time
from typing import Any, Dict, List

import numpy as np

from ..adapters import clever_hans, render, synthetic
from ..adapters.files import atomic_path

NAMES = ["no square", "square"]
#: Around the mark: the corner region whose share of a cluster's mean map marks the mark's
#: cluster (the mark's box grown by a Grad-CAM cell, 8 px at 64 px).
_GROW = 8 / 64


def _say(text: str) -> None:
    print(text, flush=True)


def _write_data(folder: str, groups: Dict[str, synthetic.ShapesData]) -> str:
    """The held-out groups as PNGs under ``folder/<group>/`` and ``folder/manifest.csv``."""
    rows: List[List[Any]] = []
    for name, data in groups.items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for k, (image, label, box) in enumerate(zip(data.images, data.labels, data.boxes)):
            path = f"{name}/{k:03d}.png"
            render.save_png(image, os.path.join(folder, path))
            rows.append([path, NAMES[int(label)]] + ([int(v) for v in box] if label else ["", "", "", ""]))
    manifest = os.path.join(folder, "manifest.csv")
    with atomic_path(manifest) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "top", "left", "bottom", "right"])
        writer.writerows(rows)
    return manifest


def _mark_region(s: int, size: int, corner: str):
    """Rows and columns of a (s, s) map within the mark's box grown by one Grad-CAM cell."""
    top, left, bottom, right = clever_hans.mark_box(size, corner)
    grow = _GROW * size
    rows = slice(int(max(top - grow, 0) * s / size), int(np.ceil(min(bottom + grow, size) * s / size)))
    cols = slice(int(max(left - grow, 0) * s / size), int(np.ceil(min(right + grow, size) * s / size)))
    return rows, cols


def mark_share(mean_map: np.ndarray, size: int, corner: str) -> float:
    """The share of a (S, S) mean map within the mark's region."""
    rows, cols = _mark_region(mean_map.shape[0], size, corner)
    total = float(mean_map.sum())
    return float(mean_map[rows, cols].sum()) / total if total > 0 else 0.0


def on_mark(mean_map: np.ndarray, size: int, corner: str) -> bool:
    """Whether a cluster's mean map peaks on the mark (its region)."""
    rows, cols = _mark_region(mean_map.shape[0], size, corner)
    y, x = np.unravel_index(int(np.argmax(mean_map)), mean_map.shape)
    return rows.start <= y < rows.stop and cols.start <= x < cols.stop


def run_clever_hans(out: str = "cnnlens-demo", quick: bool = False) -> Dict[str, Any]:
    """Train (or load), audit, and read the audit; returns what ``DIR/clever_hans_summary.json`` holds."""
    import pyarrow.parquet as pq

    from .figure import clusters_figure
    from .run import audit

    config = clever_hans.QUICK if quick else clever_hans.CleverHansConfig()
    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    model, accuracy = clever_hans.train_or_load(out, config, say=_say)
    groups = clever_hans.held_out(config)
    manifest = _write_data(os.path.join(out, "clever-hans-data"), groups)
    _say(f"auditing {sum(len(g) for g in groups.values())} held-out images (positives and negatives, each without "
         f"and with the mark) with Grad-CAM...")
    result = audit(model, manifest, os.path.join(out, "audit"), ["gradcam"], labels=NAMES, size=(config.size,) * 2,
                   mean=synthetic.MEAN, std=synthetic.STD, overwrite=True, model_name="Clever Hans DenseNet")
    square = next(g for g in result.groups if g.target == 1)
    shares = [mark_share(c.mean_map, config.size, config.corner) for c in square.clusters]
    marked = [c.cluster for c in square.clusters if on_mark(c.mean_map, config.size, config.corner)]
    clusters = pq.read_table(os.path.join(result.out, "clusters.parquet")).to_pylist()
    members = [c["path"].split("/")[0] for c in clusters if c["target"] == 1 and c["cluster"] in marked]
    effect = clever_hans.shortcut_effect(model, groups)
    summary = {
        "validation_accuracy": accuracy, "predicted_squares": square.count, "clusters": [c.size for c in square.clusters],
        "mark_clusters": marked, "mark_share_of_mean_map": [round(s, 3) for s in shares],
        "in_mark_clusters": {name: members.count(name) for name in clever_hans.GROUPS},
        "effect": effect, "seconds": round(time.perf_counter() - started, 1),
    }
    notes = [f"{'peak on the mark, ' if c.cluster in marked else ''}{100 * s:.0f}% of heat on it"
             for c, s in zip(square.clusters, shares)]
    render.save_png(clusters_figure(square, (config.size,) * 2, notes), os.path.join(result.out, "clusters.png"))
    with atomic_path(os.path.join(out, "clever_hans_summary.json")) as temporary, \
            open(temporary, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    _print(summary, result.out)
    return summary


def _print(summary: Dict[str, Any], folder: str) -> None:
    inside = summary["in_mark_clusters"]
    total = sum(inside.values())
    effect = summary["effect"]
    marked = summary["mark_clusters"]
    _say("")
    _say(f"SpRAy split the {summary['predicted_squares']} Grad-CAM maps of predicted squares into clusters of "
         f"{summary['clusters']}; the mean maps of cluster(s) {', '.join(map(str, marked)) or 'none'} peak on the mark.")
    _say(f"{total} of the {summary['predicted_squares']} predicted squares fall in those clusters: "
         f"{inside['negative_marked']} negatives with the mark, {inside['positive_marked']} positives with the mark, "
         f"{inside['positive'] + inside['negative']} images without it.")
    _say(f"adding the mark to negatives: accuracy {effect['negative_accuracy']:.3f} -> {effect['negative_marked_accuracy']:.3f} "
         f"({100 * effect['flip_rate']:.0f}% of them flip to 'square'); removing it from positives: accuracy "
         f"{effect['positive_marked_accuracy']:.3f} -> {effect['positive_accuracy']:.3f}")
    _say(f"wrote {folder}/ (report.html, clusters.png, results/, clusters.parquet) ({summary['seconds']:.0f} s)")
