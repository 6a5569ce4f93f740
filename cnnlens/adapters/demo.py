"""``cnnlens demo``: the main job. No arguments, no network.

Generates circles-and-squares images (seeds 000/001), trains a small torchvision DenseNet on
the CPU (cached in the output folder for reruns), exports it to ONNX and TorchScript, explains
held-out images with every method on the torch backend and the forward-only methods on the
ONNX backend, explains a segmentation head over the same features for the square class (torch and
ONNX, ``demo_segmentation``), and writes the report, the figures, ``summary.json`` and a table of the
pointing game (the fraction of held-out positives whose map peaks inside the square) and the
seconds each method took.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.metrics import pointing_game
from ..core.methods import LAYER_MAP, METHODS, run
from ..core.methods.support import runs
from ..core.sanity import deletion_insertion_auc, randomisation_test
from . import render, synthetic
from .demo_segmentation import QUICK as SEGMENTATION_QUICK
from .demo_segmentation import SegmentationConfig, run_segmentation
from .export import to_onnx, to_torchscript
from .files import atomic_path
from .report import write_report

#: Methods whose maps can point: everything but the activations themselves.
POINTING = [m for m, spec in METHODS.items() if spec.kind != LAYER_MAP]


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How a demo model is trained (the demo's and the Clever Hans demo's)."""

    size: int = 64
    train_images: int = 4000
    epochs: int = 5
    batch_size: int = 64
    lr: float = 4e-3
    noise: float = 0.2          # training-time pixel noise (augmentation)
    weight_decay: float = 1e-2  # AdamW's default: steadier maps across seeds, and no denormal slowdown
    seed: int = 0


#: What a cached model depends on (the explaining settings can change without retraining).
TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingConfig))


@dataclasses.dataclass(frozen=True)
class DemoConfig(TrainingConfig):
    """What the demo trains and explains; changing the training retrains (the cache key is its hash)."""

    held_out: int = 64          # held-out images (a fresh seed), about half positive
    pointing_images: int = 24   # held-out positives the pointing game is measured on
    report_images: Tuple[int, int] = (4, 2)   # positives, negatives in the report and figures
    occlusion: Tuple[int, int] = (8, 4)       # window, stride
    smoothgrad_samples: int = 16
    rise_masks: int = 500
    deletion_steps: int = 16                  # points on the deletion / insertion curves
    randomisation_images: int = 8             # held-out positives for the randomisation test
    randomisation_steps: int = 8              # cascade points reported (evenly spread, top first)
    segmentation: SegmentationConfig = SegmentationConfig()  # the segmentation case (its head is trained each run)

    def key(self) -> str:
        text = json.dumps({k: v for k, v in dataclasses.asdict(self).items() if k in TRAINING_FIELDS}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


QUICK = DemoConfig(train_images=600, epochs=3, held_out=24, pointing_images=6, report_images=(2, 1),
                   smoothgrad_samples=4, rise_masks=50, deletion_steps=4, randomisation_images=2, randomisation_steps=2,
                   segmentation=SEGMENTATION_QUICK)


def _options(config: DemoConfig) -> Dict[str, Dict[str, Any]]:
    window, stride = config.occlusion
    return {"occlusion": {"window": window, "stride": stride},
            "smoothgrad": {"samples": config.smoothgrad_samples, "noise": 0.15},
            "rise": {"masks": config.rise_masks}}


def _say(text: str) -> None:
    print(text, flush=True)


def _train_or_load(out: str, config: DemoConfig):
    """The trained model and its validation accuracy, from the cache when the config matches."""

    def data():
        shapes = synthetic.make_shapes(config.train_images, size=config.size, seed=config.seed)
        return shapes, f"{len(shapes)} synthetic {config.size}x{config.size} images"

    return train_cached(os.path.join(out, "model_state.pt"), os.path.join(out, "model.json"), config, data, "model")


def train_cached(weights: str, meta: str, config: TrainingConfig, data: Callable[[], Tuple[Any, str]],
                 what: str, say: Callable[[str], Any] = _say) -> Tuple[Any, float, float]:
    """A demo DenseNet trained with ``config`` on ``data()`` (the data and a few words about it),
    or loaded from ``weights`` when ``meta`` holds the same ``config.key()``; returns the model
    (in eval mode), its validation accuracy and the seconds training took (0 when loaded)."""
    import torch

    from . import demo_model
    from .progress import terminal_bars

    model = demo_model.build_model(num_classes=2, seed=config.seed)
    if os.path.exists(weights) and os.path.exists(meta):
        with open(meta, encoding="utf-8") as handle:
            cached = json.load(handle)
        if cached.get("key") == config.key():
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            model.eval()
            say(f"{what}: loaded from {weights} (validation accuracy {cached['accuracy']:.3f})")
            return model, float(cached["accuracy"]), 0.0
    shapes, description = data()
    say(f"training a DenseNet on {description} ({config.epochs} epochs, {torch.get_num_threads()} threads)...")
    bar = _training_bar(terminal_bars())
    # Denormal floats make CPU training several times slower; flush them while training only.
    torch.set_flush_denormal(True)
    try:
        with bar as step:
            result = demo_model.train(model, shapes, epochs=config.epochs, batch_size=config.batch_size,
                                      lr=config.lr, seed=config.seed, progress=step, noise=config.noise,
                                      weight_decay=config.weight_decay)
    finally:
        torch.set_flush_denormal(False)
    model.eval()
    with atomic_path(weights) as temporary:
        torch.save(model.state_dict(), temporary)
    with atomic_path(meta) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"key": config.key(), "accuracy": result["accuracy"], "seconds": result["seconds"],
                   "config": dataclasses.asdict(config)}, handle, indent=2)
    say(f"{what}: validation accuracy {result['accuracy']:.3f} after {result['seconds']:.0f} s")
    return model, float(result["accuracy"]), float(result["seconds"])


def _training_bar(reporter):
    """A context manager yielding progress(step, total) for training, drawn when on a terminal."""
    import contextlib

    @contextlib.contextmanager
    def bar():
        if reporter is None:
            yield None
            return
        state: Dict[str, Any] = {}

        def step(done: int, total: int) -> None:
            if "advance" not in state:
                state["context"] = reporter("training", total, "batch")
                state["advance"] = state["context"].__enter__()
            state["advance"](done - state.get("done", 0))
            state["done"] = done

        try:
            yield step
        finally:
            if "context" in state:
                state["context"].__exit__(None, None, None)
    return bar()


def _held_out(config: DemoConfig):
    data = synthetic.make_shapes(config.held_out, size=config.size, seed=config.seed + 1000)
    positives = np.flatnonzero(data.labels == 1)
    negatives = np.flatnonzero(data.labels == 0)
    return data, positives, negatives


def _save_inputs(out: str, data, positives: np.ndarray, negatives: np.ndarray) -> List[str]:
    folder = os.path.join(out, "inputs")
    os.makedirs(folder, exist_ok=True)
    names = []
    for kind, index in (("positive", positives), ("negative", negatives)):
        for k, i in enumerate(index):
            name = f"{kind}_{k:02d}.png"
            render.save_png(data.images[i], os.path.join(folder, name))
            names.append(name)
    return names


def _timed(backend, x, method, options) -> Tuple[Any, float]:
    start = time.perf_counter()
    exp = run(backend, x, method, **options.get(method, {}))
    return exp, time.perf_counter() - start


def run_demo(out: str = "cnnlens-demo", quick: bool = False, config: Optional[DemoConfig] = None) -> Dict[str, Any]:
    """Run the demo into ``out``; returns the summary written to ``summary.json``."""
    import cnnlens

    config = config or (QUICK if quick else DemoConfig())
    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    model, accuracy, train_seconds = _train_or_load(out, config)

    onnx_path, script_path = os.path.join(out, "model.onnx"), os.path.join(out, "model.pt")
    shape = (3, config.size, config.size)
    to_onnx(model, onnx_path, shape, exporter="legacy")
    to_torchscript(model, script_path, shape)
    torch_backend, onnx_backend = cnnlens.load(model), cnnlens.load(onnx_path)

    data, positives, negatives = _held_out(config)
    x_all = synthetic.normalize(data.images)
    pointing = positives[:config.pointing_images]
    shown_pos, shown_neg = positives[:config.report_images[0]], negatives[:config.report_images[1]]
    input_names = _save_inputs(out, data, shown_pos, shown_neg)
    shown = np.concatenate([shown_pos, shown_neg])

    options = _options(config)
    table: List[Dict[str, Any]] = []
    torch_results: Dict[str, Any] = {}
    for backend, label in ((torch_backend, "torch"), (onnx_backend, "onnx")):
        methods = [m for m in METHODS if runs(backend, m)]
        for method in methods:
            exp, seconds = _timed(backend, x_all[pointing], method, options)
            row = {"method": method, "backend": label, "pointing_game": None, "seconds": seconds,
                   "images": len(pointing)}
            if method in POINTING:
                row["pointing_game"] = pointing_game(exp.maps, data.boxes[pointing])
                row.update(deletion_insertion_auc(backend, x_all[pointing], exp.maps, exp.target,
                                                  steps=config.deletion_steps))
            if label == "torch":
                torch_results[method] = exp
            elif method in torch_results:  # the export against its original: the same map, to float rounding
                reference = torch_results[method].maps
                row["difference"] = float(np.abs(exp.maps - reference).max() / max(np.abs(reference).max(), 1e-30))
            table.append(row)
            _say(f"  {label:5} {method:20} {_scores_text(row)} {seconds:6.2f} s")
        if label == "torch":  # what a map that knows nothing scores: the floor to judge the others by
            noise = np.random.default_rng(config.seed).random((len(pointing),) + x_all.shape[2:])
            reference = {"method": "random map", "backend": label, "seconds": 0.0, "images": len(pointing),
                         "pointing_game": pointing_game(noise, data.boxes[pointing])}
            classes = next(iter(torch_results.values())).target  # each image's predicted class
            reference.update(deletion_insertion_auc(backend, x_all[pointing], noise, classes, steps=config.deletion_steps))
            table.append(reference)
        checked = pointing[:config.randomisation_images]
        randomisation = randomisation_test(backend, x_all[checked], [m for m in methods if m in POINTING],
                                           steps=config.randomisation_steps, options=options)
        for row in table:
            if row["backend"] == label and row["method"] in randomisation:
                row["randomisation"] = randomisation[row["method"]]

    shown_exps = {m: run(torch_backend, x_all[shown], m, **options.get(m, {})) for m in torch_results}
    _figures(out, model, torch_backend, data, x_all, shown_pos, shown, shown_exps)
    per_image = {r["method"]: r["seconds"] / r["images"] for r in table if r["backend"] == "torch"}
    random_map = next(r for r in table if r["method"] == "random map")
    report_results = {m: (exp, "", per_image[m] * len(shown)) for m, exp in shown_exps.items()}
    notes = {row["method"]: _notes(row) for row in table if row["backend"] == "torch" and row is not random_map}
    notes["random map (reference)"] = _notes(random_map)
    segmentation, section = run_segmentation(out, model, data, positives, config.segmentation, _say)
    write_report(os.path.join(out, "report.html"), torch_backend, x_all[shown], data.images[shown],
                 names=input_names, labels=["no square", "square"], results=report_results, notes=notes,
                 title=f"cnnlens demo: a DenseNet on circles and squares (accuracy {accuracy:.3f})", sections=[section])

    explainer = _export_explainer(out, onnx_path, onnx_backend, x_all[shown])

    summary = {
        "accuracy": accuracy,
        "explainer": explainer,
        "segmentation": segmentation,
        "pointing_game": {r["method"]: r["pointing_game"] for r in table
                          if r["backend"] == "torch" and r["pointing_game"] is not None and r["method"] in METHODS},
        "random_map": {k: random_map[k] for k in ("pointing_game", "deletion_auc", "insertion_auc")},
        "sanity": {label: {r["method"]: {k: r[k] for k in ("deletion_auc", "insertion_auc", "randomisation") if k in r}
                           for r in table if r["backend"] == label and r["pointing_game"] is not None and r["method"] in METHODS}
                   for label in ("torch", "onnx")},
        "seconds": {r["method"]: round(r["seconds"], 3) for r in table if r["backend"] == "torch" and r["method"] in METHODS},
        "onnx": {"pointing_game": {r["method"]: r["pointing_game"] for r in table
                                   if r["backend"] == "onnx" and r["pointing_game"] is not None},
                 "seconds": {r["method"]: round(r["seconds"], 3) for r in table if r["backend"] == "onnx"},
                 "difference_to_torch": {r["method"]: r["difference"] for r in table
                                         if r["backend"] == "onnx" and "difference" in r},
                 "provider": onnx_backend.provider},
        "pointing_images": int(len(pointing)),
        "training_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "config": dataclasses.asdict(config),
    }
    with atomic_path(os.path.join(out, "summary.json")) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    _print_table(table, accuracy, out, summary["total_seconds"])
    return summary


#: what the demo's explainer file holds: one ONNX file returning the scores and these maps
EXPLAINER_METHODS = ("gradcam", "layercam", "guided_backprop", "integrated_gradients", "scorecam")
#: the options it is written with (every exported method that takes one)
EXPLAINER_OPTIONS = {"steps": 16}


def _export_explainer(out: str, onnx_path: str, onnx_backend: Any, x: np.ndarray) -> Dict[str, Any]:
    """The model's explainer (``cnnlens export-explainer``) and its web page, and how far its maps are from
    ``cnnlens.explain``'s on the same images (on ``onnx_backend``, the demo's backend on the same file)."""
    import onnxruntime as ort

    import cnnlens
    from .explainer_page import write_page

    folder = os.path.join(out, "explainer")
    made = cnnlens.export_explainer(onnx_path, os.path.join(folder, "explained.onnx"), EXPLAINER_METHODS,
                                    **EXPLAINER_OPTIONS)
    write_page(os.path.join(folder, "web"), made, mean=synthetic.MEAN, std=synthetic.STD,
               labels=["no square", "square"])
    session = ort.InferenceSession(made.path, providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {made.input_name: x})))
    difference = {}
    for method in EXPLAINER_METHODS:
        taken = {k: v for k, v in EXPLAINER_OPTIONS.items() if k in METHODS[method].defaults}
        want = cnnlens.explain(onnx_backend, x, method, **taken).maps
        difference[method] = float(np.abs(outputs[made.outputs[method]] - want).max() / max(np.abs(want).max(), 1e-30))
    _say(f"  explainer: {made.path} ({made.bytes / 1e6:.1f} MB, {made.size_ratio:.2f}x the model) returns the scores "
         f"and {', '.join(made.outputs.values())}; its largest difference to cnnlens.explain: "
         f"{max(difference.values()):.1e}. Web page: {folder}/web (python -m http.server -d {folder}/web)")
    return {"path": made.path, "page": os.path.join(folder, "web"), "methods": list(EXPLAINER_METHODS),
            "size_ratio": made.size_ratio, "difference_to_explain": difference}


def _scores_text(row: Dict[str, Any]) -> str:
    if row["pointing_game"] is None:
        return " " * 38
    return (f"pointing {row['pointing_game']:.2f}  deletion {row['deletion_auc']:.2f}  "
            f"insertion {row['insertion_auc']:.2f}")


def _notes(row: Dict[str, Any]) -> Dict[str, str]:
    """The report's numbers for one method."""
    notes = {"seconds / image": f"{row['seconds'] / row['images']:.3f}"} if row["seconds"] else {}
    if row["pointing_game"] is not None:
        notes["pointing game"] = f"{row['pointing_game']:.2f}"
        notes["deletion AUC (lower is better)"] = f"{row['deletion_auc']:.3f}"
        notes["insertion AUC (higher is better)"] = f"{row['insertion_auc']:.3f}"
    if row.get("randomisation"):
        first, last = row["randomisation"][0], row["randomisation"][-1]
        notes["top layer randomised: Spearman / SSIM"] = f"{first['spearman']:.2f} / {first['ssim']:.2f}"
        notes["all weights randomised: Spearman / SSIM"] = f"{last['spearman']:.2f} / {last['ssim']:.2f}"
    return notes


def _figures(out, model, backend, data, x_all, shown_pos, shown, shown_exps) -> None:
    """The seeds' pictures for the first held-out positive, and every method side by side."""
    import cnnlens

    first = shown_pos[:1]
    x, image = x_all[first], data.images[first[0]]
    for method in ("saliency", "guided_backprop"):
        exp = cnnlens.explain(backend, x, method)
        render.save_png(render.gradient_figure(image, exp.maps[0], title=f"{method}, class {exp.target[0]}"),
                        os.path.join(out, f"gradients_{method}.png"))
    blocks = [f"features.{name}" for name, _ in model.features.named_children()]
    layers = [l for l in cnnlens.layers(backend, x.shape[1:]) if l.name in blocks and l.spatial]
    grid = cnnlens.explain(backend, x, "gradcam", layer=[l.name for l in layers])
    render.save_png(render.layer_grid(image, grid.maps[0], layers, title="Grad-CAM, layer by layer (one pass)"),
                    os.path.join(out, "gradcam_layers.png"))
    guided = cnnlens.explain(backend, x, "guided_gradcam", layer=[l.name for l in layers])
    render.save_png(render.layer_grid(image, np.abs(guided.maps[0]).sum(axis=1), layers,
                                      title="Guided Grad-CAM, layer by layer"),
                    os.path.join(out, "guided_gradcam_layers.png"))
    cam = cnnlens.explain(backend, x, "gradcam")
    render.save_png(render.roi_figure(image, cam.maps[0]), os.path.join(out, "roi.png"))
    features = cnnlens.explain(backend, x, "feature_maps", layer=layers[len(layers) // 2].name)
    render.save_png(render.feature_map_grid(features.maps[0], title=f"feature maps of {features.layer}"),
                    os.path.join(out, "feature_maps.png"))
    render.save_png(render.filter_grid(cnnlens.filters(backend), title="first-layer filters"),
                    os.path.join(out, "filters.png"))
    maps = {m: exp.maps for m, exp in shown_exps.items() if METHODS[m].kind != LAYER_MAP}
    titles = ["square" if data.labels[i] else "no square" for i in shown]
    render.save_png(render.methods_grid(data.images[shown], maps, titles, title="every method, held-out images"),
                    os.path.join(out, "methods.png"))


def _print_table(table: List[Dict[str, Any]], accuracy: float, out: str, total: float) -> None:
    _say("")
    _say(f"validation accuracy {accuracy:.3f}; measured on {table[0]['images']} held-out positives "
         f"(randomisation: Spearman of |maps| with all weights re-drawn, top layer first; vs torch: the ONNX "
         f"export's largest difference to the module's map, relative to the map's largest value)")
    _say(f"{'method':20} {'backend':8} {'pointing':>8} {'deletion':>8} {'insertion':>9} {'random':>7} {'seconds':>8} "
         f"{'vs torch':>9}")
    for row in table:
        cells = [f"{row[k]:.2f}" if row.get(k) is not None else "-" for k in ("pointing_game", "deletion_auc", "insertion_auc")]
        last = f"{row['randomisation'][-1]['spearman']:.2f}" if row.get("randomisation") else "-"
        difference = f"{row['difference']:.1e}" if "difference" in row else "-"
        _say(f"{row['method']:20} {row['backend']:8} {cells[0]:>8} {cells[1]:>8} {cells[2]:>9} {last:>7} {row['seconds']:8.2f} "
             f"{difference:>9}")
    _say(f"\nwrote {out}/report.html, figures, summary.json, model.onnx, model.pt, explainer/ ({total:.0f} s)")
    sys.stdout.flush()
