"""The explainer in the deployed model: latency of one ONNX Runtime run of ResNet-50 at 224 (seeded random
weights, exported by torch.onnx's dynamo exporter) against the plain model's forward pass, per method, at
batch 1 and 8, in Python's onnxruntime and in onnxruntime-node; and against ``cnnlens.explain`` on the
same plain ONNX file and method (the way cnnlens explains without the explainer).

    python benchmarks/explainer.py                  # about 35 minutes on 2 CPU cores
    python benchmarks/explainer.py --update-readme

Each (runtime, method, batch) and each of the plain forward, the explainer and (in Python) cnnlens.explain is
timed in a fresh process with the runtime's default session options (one warm-up, then the median of
``--repeats`` runs), ``--rounds`` times in rotating order; the median of the rounds is kept (a process's state
moves a row by ~15 %). Writes ``benchmarks/results/explainer-<machine>.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
METHODS = ("gradcam", "layercam", "cam", "saliency", "guided_backprop", "input_x_gradient", "guided_gradcam",
           "integrated_gradients")
OPTIONS = {"integrated_gradients": {"steps": 8}}
BATCHES = (1, 8)
#: the issue's targets: (text, methods, measured value, bound)
TARGETS = [
    ("Grad-CAM explainer <= 1.10x the plain forward", ("gradcam",), "vs_forward", 1.10),
    ("saliency / guided backprop explainer <= 3x the plain forward", ("saliency", "guided_backprop"), "vs_forward",
     3.0),
    ("explainer at least as fast as cnnlens.explain on the same file", METHODS, "explain_over_explainer", None),
]


def _worker_python(which: str, plain: str, explained: str, method: str, batch: int, repeats: int) -> float:
    """Median seconds of one implementation: the plain model's forward, the explainer, or cnnlens.explain."""
    import numpy as np
    import onnxruntime as ort
    from bench.timing import measure, synchronizer

    import cnnlens

    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    if which == "explain":
        backend = cnnlens.load(plain)
        run = lambda: cnnlens.explain(backend, x, method, **OPTIONS.get(method, {}))  # noqa: E731
    else:
        options = ort.SessionOptions()  # what a user gets, as the Node worker
        options.log_severity_level = 3
        session = ort.InferenceSession(plain if which == "forward" else explained, options,
                                       providers=["CPUExecutionProvider"])
        run = lambda: session.run(None, {"input": x})  # noqa: E731
    return measure(run, synchronizer("cpu"), repeats, budget=120).median


def _worker_node(which: str, plain: str, explained: str, batch: int, repeats: int) -> Optional[float]:
    node_dir = os.path.join(ROOT, "examples", "node")
    if not os.path.isdir(os.path.join(node_dir, "node_modules", "onnxruntime-node")):
        return None
    script = os.path.join(HERE, "explainer_node.js")
    found = subprocess.run(["node", script, plain if which == "forward" else explained, str(batch), str(repeats)],
                           cwd=node_dir, capture_output=True, text=True, check=True)
    return float(json.loads(found.stdout.strip().splitlines()[-1]))


def _fresh(args: List[str]) -> Optional[float]:
    """One worker in a fresh process (run order and a process's state move a row by ~15 %)."""
    found = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"] + args, capture_output=True,
                           text=True, check=True)
    return json.loads(found.stdout.strip().splitlines()[-1])


def _row_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    checks = []
    for text, methods, key, bound in TARGETS:
        for r in rows:
            if r["method"] not in methods or r.get(key) is None:
                continue
            value = r[key]
            passed = value >= 1.0 if bound is None else value <= bound
            checks.append(dict(target=text, runtime=r["runtime"], method=r["method"], batch=r["batch"], value=value,
                               passed=passed))
    return checks


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per process (5)")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per workload; the median is kept (3)")
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--worker", nargs=6, metavar=("RUNTIME", "WHICH", "PLAIN", "EXPLAINED", "METHOD", "BATCH"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.worker:
        runtime, which, plain, explained, method, batch = args.worker
        timed = (_worker_python(which, plain, explained, method, int(batch), args.repeats) if runtime == "python"
                 else _worker_node(which, plain, explained, int(batch), args.repeats))
        print(json.dumps(timed))
        return 0
    import onnxruntime
    import torch
    import torchvision
    from bench import results

    import cnnlens
    from cnnlens.adapters.export import to_onnx

    torch.manual_seed(0)
    rows: List[Dict[str, Any]] = []
    sizes: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        plain = to_onnx(torchvision.models.resnet50(weights=None).eval(), os.path.join(folder, "plain.onnx"),
                        (3, 224, 224))
        for method in METHODS:
            explained = os.path.join(folder, f"{method}.onnx")
            made = cnnlens.export_explainer(plain, explained, method, **OPTIONS.get(method, {}))
            sizes[method] = made.size_ratio
            for batch in BATCHES:
                for runtime in ("python", "node"):
                    kinds = ["forward", "explainer"] + (["explain"] if runtime == "python" else [])
                    found: Dict[str, List[float]] = {k: [] for k in kinds}
                    for round_ in range(args.rounds):  # fresh processes, the order rotating round by round
                        for which in kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]:
                            seconds = _fresh([runtime, which, plain, explained, method, str(batch), "--repeats",
                                              str(args.repeats)])
                            if seconds is not None:
                                found[which].append(seconds)
                    timed = {k: statistics.median(v) for k, v in found.items() if v}
                    if "explainer" not in timed:
                        continue
                    row = {"runtime": runtime, "method": method, "batch": batch, "seconds": timed,
                           "vs_forward": timed["explainer"] / timed["forward"],
                           "explain_over_explainer": (timed["explain"] / timed["explainer"]) if "explain" in timed
                           else None}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    node = subprocess.run(["node", "-e", "console.log(require('onnxruntime-node/package.json').version)"],
                          cwd=os.path.join(ROOT, "examples", "node"), capture_output=True, text=True)
    info = results.describe_machine({"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                                     "onnxruntime-node": node.stdout.strip() or None})
    checks = _row_targets(rows)
    lines = [f"# The explainer in the deployed model, on {info['cpu']} ({info['cores']} cores)", "",
             f"`python benchmarks/explainer.py`: ResNet-50 at 224, seeded random weights. Milliseconds per run "
             f"(each workload in a fresh process with default session options, the median of {args.repeats} runs; "
             f"the median of {args.rounds} such processes); `x forward` is the "
             f"explainer's time over the plain model's forward pass; `explain / explainer` is cnnlens.explain's time "
             f"on the plain ONNX file over the explainer's (above 1: the explainer is faster). Integrated Gradients "
             f"with 8 steps. File size over the plain model's: "
             + ", ".join(f"{m} {r:.3f}x" for m, r in sizes.items()) + ".", "",
             "| runtime | method | batch | forward | explainer | x forward | cnnlens.explain | explain / explainer |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seconds"]
        explain = f"{1000 * s['explain']:.0f} ms" if "explain" in s else "-"
        ratio = f"{r['explain_over_explainer']:.2f}x" if r["explain_over_explainer"] is not None else "-"
        lines.append(f"| {r['runtime']} | {r['method']} | {r['batch']} | {1000 * s['forward']:.0f} ms | "
                     f"{1000 * s['explainer']:.0f} ms | {r['vs_forward']:.2f}x | {explain} | {ratio} |")
    lines += ["", "## Targets", "", "| target | runtime | method | batch | measured | met |",
              "|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['target']} | {c['runtime']} | {c['method']} | {c['batch']} | {c['value']:.2f} | "
                     f"{'yes' if c['passed'] else '**no**'} |")
    text = "\n".join(lines) + "\n"
    name = "explainer-" + results.machine_name(info)
    results.publish(name, text, {"machine": info, "rows": rows, "targets": checks, "size_ratio": sizes},
                    "explainer-bench", "explainer.py", args.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
