"""The same methods on one model in each format: the module, its torch.export program (``.pt2``)
and its ONNX export, as seconds per image and as a ratio to the module.

    python benchmarks/formats.py                 # about 3 minutes on 2 CPU cores
    python benchmarks/formats.py --update-readme

Writes ``benchmarks/results/formats-<machine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
METHODS = ("saliency", "guided_backprop", "gradcam", "occlusion")
OPTIONS = {"occlusion": {"window": 32, "stride": 32}}


def _time(backend: Any, x: Any, method: str, repeats: int) -> float:
    import cnnlens

    cnnlens.explain(backend, x[:1], method, **OPTIONS.get(method, {}))  # warm-up (traces, sessions)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        cnnlens.explain(backend, x, method, **OPTIONS.get(method, {}))
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) / len(x)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    import torchvision
    from bench import results

    import cnnlens
    from cnnlens.adapters.demo_model import build_model
    from cnnlens.adapters.export import to_exported, to_onnx

    torch.manual_seed(0)
    models = [("ResNet-50", torchvision.models.resnet50(weights=None).eval(), 224, 8),
              ("demo DenseNet", build_model(num_classes=2, seed=0).eval(), 64, 32)]
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model, size, count in models:
            x = np.random.default_rng(0).standard_normal((count, 3, size, size)).astype(np.float32)
            formats = {"module": cnnlens.load(model),
                       ".pt2": cnnlens.load(to_exported(model, os.path.join(folder, "m.pt2"), (3, size, size))),
                       "ONNX": cnnlens.load(to_onnx(model, os.path.join(folder, "m.onnx"), (3, size, size)))}
            for method in METHODS:
                seconds = {fmt: _time(b, x, method, args.repeats) for fmt, b in formats.items()}
                row = {"model": name, "size": size, "images": count, "method": method, "seconds_per_image": seconds}
                rows.append(row)
                print(json.dumps(row), flush=True)
    info = results.describe_machine({"torch": torch.__version__})
    lines = [f"# One model in each format, on {info['cpu']} ({info['cores']} cores)", "",
             f"`python benchmarks/formats.py`: seconds per image (median of {args.repeats}), and each format's "
             f"time over the module's (below 1: faster). Occlusion with window 32, stride 32.", "",
             "| model | method | module | .pt2 | .pt2 / module | ONNX | ONNX / module |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seconds_per_image"]
        lines.append(f"| {r['model']} {r['size']} | {r['method']} | {s['module']:.4f} s | {s['.pt2']:.4f} s | "
                     f"{s['.pt2'] / s['module']:.2f}x | {s['ONNX']:.4f} s | {s['ONNX'] / s['module']:.2f}x |")
    text = "\n".join(lines) + "\n"
    name = "formats-" + results.machine_name(info)
    results.publish(name, text, {"machine": info, "rows": rows}, "formats-bench", "formats.py", args.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
