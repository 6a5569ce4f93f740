"""Throughput of ``cnnlens audit``: the local engine against ``cnnlens.explain`` on the same images
preloaded as arrays (the floor: no decoding, no writing), and the Ray engine against the local one.

    pip install -e ".[all,ray]"
    python benchmarks/audit.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/audit.py --update-readme

Images are JPEGs of synthetic shapes at 320 x 240 (fitted to the model's input as any photo
is). Writes ``benchmarks/results/audit-<machine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
TARGET = 0.9  # the local engine's images/s over the floor's
SHARD = 64    # images per shard


def _images(folder: str, count: int) -> None:
    from PIL import Image

    from cnnlens.adapters import synthetic

    data = synthetic.make_shapes(count, size=240, seed=0)
    for k, (image, label) in enumerate(zip(data.images, data.labels)):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        picture = Image.fromarray(image).resize((320, 240))
        picture.save(os.path.join(folder, str(label), f"{k:05d}.jpg"), quality=90)


def _workloads(quick: bool) -> List[Dict[str, Any]]:
    import torchvision

    from cnnlens.adapters import synthetic
    from cnnlens.adapters.demo_model import build_model

    resnet18 = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    resnet50 = torchvision.models.resnet50(weights=None, num_classes=10).eval()
    return [
        dict(name="ResNet-50 224", model=resnet50, size=(224, 224), mean=None, std=None, count=64 if quick else 256),
        dict(name="ResNet-18 224", model=resnet18, size=(224, 224), mean=None, std=None, count=128 if quick else 512),
        dict(name="demo DenseNet 64", model=build_model(num_classes=2, seed=0).eval(), size=(64, 64),
             mean=synthetic.MEAN, std=synthetic.STD, count=256 if quick else 1024),
    ]


def _preloaded(work: Dict[str, Any], folder: str) -> Any:
    """The images decoded and normalised as the audit does it, for the floor."""
    from cnnlens.adapters import images
    from cnnlens.audit.sources import read_source

    paths = [item.file for item in read_source(folder).items]
    x, _ = images.prepare(paths, work["size"], work["mean"] or images.IMAGENET_MEAN, work["std"] or images.IMAGENET_STD)
    return x


def _floor(work: Dict[str, Any], x: Any, method: str, batch: int) -> float:
    """Seconds of ``cnnlens.explain`` over the preloaded images ``x``, in the audit's batches."""
    import cnnlens

    cnnlens.explain(work["model"], x[:batch], method)  # warm-up
    started = time.perf_counter()
    for k in range(0, len(x), batch):
        cnnlens.explain(work["model"], x[k:k + batch], method)
    return time.perf_counter() - started


def _audit(work: Dict[str, Any], folder: str, out: str, method: str, batch: int, engine: str) -> Dict[str, Any]:
    import cnnlens

    started = time.perf_counter()
    result = cnnlens.audit(work["model"], folder, out, [method], size=work["size"], mean=work["mean"], std=work["std"],
                           batch_size=batch, shard_size=SHARD, overwrite=True, engine=engine, ray_cpus=os.cpu_count(),
                           report=False)
    return {"wall": time.perf_counter() - started, "explain": result.summary["seconds"]["explain"],
            "cluster": result.summary["seconds"]["cluster"]}


def _ray_startup() -> float:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.shutdown()
    return time.perf_counter() - started


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--method", default="gradcam")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="floor / audit pairs per model (the median ratio is reported)")
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--render-only", action="store_true", help="rewrite the tables from the last JSON, measure nothing")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.render_only:
        return _render_last(args)
    import torch
    from bench import results

    info = results.describe_machine({"torch": torch.__version__})
    rows = []
    scratch = tempfile.mkdtemp(prefix="cnnlens-audit-bench-")
    try:
        for work in _workloads(args.quick):
            folder = os.path.join(scratch, work["name"].replace(" ", "_"))
            _images(folder, work["count"])
            x = _preloaded(work, folder)
            pairs = []  # floor and audit alternate, so a slow spell of a shared machine hits both
            for _ in range(args.repeats):
                floor = _floor(work, x, args.method, args.batch_size)
                local = _audit(work, folder, os.path.join(scratch, "out"), args.method, args.batch_size, "local")
                pairs.append((floor, local))
            ratios = sorted(f / a["explain"] for f, a in pairs)
            floor, local = min(p[0] for p in pairs), min((p[1] for p in pairs), key=lambda a: a["explain"])
            row = {"workload": work["name"], "images": work["count"], "method": args.method, "repeats": args.repeats,
                   "floor_images_per_s": work["count"] / floor, "local_images_per_s": work["count"] / local["explain"],
                   "local_wall_s": local["wall"], "cluster_s": local["cluster"],
                   "local_over_floor": ratios[len(ratios) // 2], "local_over_floor_all": ratios}
            if not args.no_ray:
                remote = _audit(work, folder, os.path.join(scratch, "out-ray"), args.method, args.batch_size, "ray")
                one = os.path.join(scratch, "one-batch")  # the fixed cost: instance, actors, the first batch
                _images(one, args.batch_size)
                fixed = _audit(work, one, os.path.join(scratch, "out-ray-one"), args.method, args.batch_size, "ray")
                shutil.rmtree(one)
                row.update(ray_fixed_s=fixed["explain"],
                           ray_marginal_images_per_s=(work["count"] - args.batch_size) / (remote["explain"] - fixed["explain"]))
                row.update(ray_images_per_s=work["count"] / remote["explain"], ray_wall_s=remote["wall"],
                           ray_over_local=local["explain"] / remote["explain"])
            rows.append(row)
            print(json.dumps(row), flush=True)
        startup = None if args.no_ray else _ray_startup()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _publish({"machine": info, "rows": rows, "ray_startup_s": startup}, args)


def _publish(data: Dict[str, Any], args: Any) -> int:
    """The tables from ``data``, published (the JSON too unless only re-rendering)."""
    from bench import results

    name = "audit-" + results.machine_name(data["machine"])
    text = _markdown(data["machine"], data["rows"], data["ray_startup_s"], args)
    results.publish(name, text, None if args.render_only else data, "audit-bench", "audit.py", args.update_readme)
    return 0


def _render_last(args: Any) -> int:
    from bench import results

    import torch

    name = "audit-" + results.machine_name(results.describe_machine({"torch": torch.__version__}))
    with open(os.path.join(HERE, "results", name + ".json")) as handle:
        return _publish(json.load(handle), args)


def _markdown(info: Dict[str, Any], rows: List[Dict[str, Any]], startup: Optional[float], args: Any) -> str:
    lines = [f"# cnnlens audit throughput on {info['cpu']} ({info['cores']} cores)", "",
             f"`python benchmarks/audit.py{' --quick' if args.quick else ''}`, method {args.method}, batch "
             f"{args.batch_size}; images/s of the explaining phase (decode, explain, statistics, write shards), the best of "
             f"{args.repeats} runs; local / floor is the median of the {args.repeats} runs' ratios (floor and audit "
             f"alternate). Target: local >= {TARGET}x the floor.", "",
             "| model | images | floor: explain on preloaded arrays | audit, local engine | local / floor | "
             "audit, Ray engine | Ray / local | Ray: fixed cost, then | clustering |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "met" if r["local_over_floor"] >= TARGET else "NOT met"
        ray = "- | - | -"
        if "ray_images_per_s" in r:
            marginal = r["ray_marginal_images_per_s"]
            # the marginal rate means something only when the fixed cost is a small part of the run
            trusted = r["ray_fixed_s"] < 0.75 * r["images"] / r["ray_images_per_s"]
            then = f"then {marginal:.1f} img/s" if trusted else "then - (the run is mostly fixed cost)"
            ray = f"{r['ray_images_per_s']:.1f} img/s | {r['ray_over_local']:.2f}x | {r['ray_fixed_s']:.1f} s, {then}"
        lines.append(f"| {r['workload']} | {r['images']} | {r['floor_images_per_s']:.1f} img/s | "
                     f"{r['local_images_per_s']:.1f} img/s | {r['local_over_floor']:.2f}x ({met}) | {ray} | "
                     f"{r['cluster_s']:.1f} s |")
    if startup is not None:
        lines += ["", f"Starting and stopping a local Ray instance costs {startup:.1f} s on its own. The Ray engine's fixed "
                  f"cost is an audit of one batch ({args.batch_size} images): the instance, the actor's start (a new "
                  f"process importing torch and loading the model) and the first batch; the rate after it is "
                  f"(images - {args.batch_size}) / (time - fixed cost)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
