"""Incremental occlusion against brute force (and Captum's Occlusion on ResNet-50): one image at
224, window 32, stride 16 (169 windows), and the demo's settings; the FLOPs saved (counted) and
the time saved (measured) per model.

    python benchmarks/occlusion.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/occlusion.py --update-readme

Writes ``benchmarks/results/occlusion-<machine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
TARGETS = {"ResNet-50": 1.5, "VGG-16": 3.0}  # times faster than brute force, on this CPU


def _timed(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    import torchvision
    from bench import results

    import cnnlens
    from cnnlens.adapters.demo_model import build_model
    from cnnlens.backends import _torch_incremental

    torch.manual_seed(0)
    cases = [("ResNet-50", torchvision.models.resnet50(weights=None).eval(), 224, 32, 16),
             ("VGG-16", torchvision.models.vgg16(weights=None).eval(), 224, 32, 16),
             ("DenseNet-121", torchvision.models.densenet121(weights=None).eval(), 224, 32, 16),
             ("MobileNet-V3-L", torchvision.models.mobilenet_v3_large(weights=None).eval(), 224, 32, 16),
             ("demo DenseNet", build_model(num_classes=2, seed=0).eval(), 64, 8, 4)]
    rows: List[Dict[str, Any]] = []
    for name, model, size, window, stride in cases:
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        backend = cnnlens.load(model)
        settings = dict(window=window, stride=stride)
        first = cnnlens.explain(backend, x, "occlusion", incremental=True, **settings)  # traces, probes, decides
        full, incremental = _torch_incremental._TRACED[model].flops[((3, size, size), (window, window))]
        saving = full / incremental
        brute, fast = [], []
        for _ in range(args.repeats):  # alternate, so a slow spell of a shared machine hits both
            brute.append(_timed(lambda: cnnlens.explain(backend, x, "occlusion", incremental=False, **settings)))
            fast.append(_timed(lambda: cnnlens.explain(backend, x, "occlusion", incremental=True, **settings)))
        again = cnnlens.explain(backend, x, "occlusion", incremental=True, **settings)
        reference = cnnlens.explain(backend, x, "occlusion", incremental=False, **settings).maps
        row = {"model": name, "size": size, "window": window, "stride": stride, "flop_saving": saving,
               "brute_s": min(brute), "incremental_s": min(fast), "speedup": min(brute) / min(fast),
               "engine_first_call": str(first.extras["occlusion_engine"][0]),
               "engine": str(again.extras["occlusion_engine"][0]),
               "relative_error": float(np.abs(again.maps - reference).max() / np.abs(reference).max())}
        if name == "ResNet-50":
            row["captum_s"] = _captum(model, x, window, stride)
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = results.describe_machine({"torch": torch.__version__})
    text = _markdown(info, rows, args)
    name = "occlusion-" + results.machine_name(info)
    results.publish(name, text, {"machine": info, "rows": rows}, "occlusion-bench", "occlusion.py", args.update_readme)
    return 0


def _captum(model: Any, x: Any, window: int, stride: int) -> Optional[float]:
    try:
        import torch
        from captum.attr import Occlusion
    except ImportError:
        return None
    xt = torch.from_numpy(x)
    target = int(model(xt).argmax())
    occlusion = Occlusion(model)
    with torch.no_grad():
        return _timed(lambda: occlusion.attribute(xt, sliding_window_shapes=(3, window, window),
                                                  strides=(3, stride, stride), target=target, baselines=0.0,
                                                  perturbations_per_eval=16))


def _markdown(info: Dict[str, Any], rows: List[Dict[str, Any]], args: Any) -> str:
    lines = [f"# Incremental occlusion on {info['cpu']} ({info['cores']} cores)", "",
             f"`python benchmarks/occlusion.py`: one image, best of {args.repeats} alternated runs, after one call "
             f"that traced the model and chose the way (`incremental=True` remembers it per model and size).", "",
             "| model | input, window, stride | FLOPs saved | brute force | incremental | time saved | "
             "time / FLOP saving | target | chosen | vs brute force |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = TARGETS.get(r["model"])
        verdict = "-" if target is None else (f">= {target}x: {'met' if r['speedup'] >= target else 'NOT met'}")
        lines.append(f"| {r['model']} | {r['size']}, {r['window']}, {r['stride']} | {r['flop_saving']:.2f}x | "
                     f"{r['brute_s']:.2f} s | {r['incremental_s']:.2f} s | {r['speedup']:.2f}x | "
                     f"{r['speedup'] / r['flop_saving']:.0%} | {verdict} | {r['engine']} | {r['relative_error']:.1e} |")
    captum = next((r for r in rows if r.get("captum_s")), None)
    if captum is not None:
        lines += ["", f"Captum's `Occlusion` on ResNet-50 (same windows, 16 per pass): {captum['captum_s']:.2f} s, "
                  f"{captum['captum_s'] / captum['incremental_s']:.2f}x cnnlens's incremental time (target >= 2x)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
