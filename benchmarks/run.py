"""Throughput of every cnnlens method on every backend and device present, side by side with the
model's own floor and with the peers (Captum, pytorch-grad-cam, torchcam, zennit).

    pip install -e ".[all]" -r benchmarks/requirements.txt
    python benchmarks/run.py --quick          # under 5 minutes on 2 CPU cores
    python benchmarks/run.py                  # the full run (larger batches, Score-CAM on ResNet-50)
    python benchmarks/run.py --workloads deeplabv3 vit --no-peers --section dense   # segmenter and ViT
    python benchmarks/run.py --methods lrp deeplift guided_backprop --section relevance  # against zennit, Captum

Writes ``benchmarks/results/<machine>.md`` and ``.json``; ``--update-readme`` also puts the
tables into the documentation's speed page, ``docs/speed.md``. Runs unchanged on a CPU-only
machine; CUDA is measured when present.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer images and repeats (under 5 minutes on 2 CPU cores)")
    p.add_argument("--workloads", nargs="+", default=["resnet50", "small"],
                   choices=["resnet50", "small", "deeplabv3", "vit"],
                   help="resnet50 and small (every method, with the peers); deeplabv3 and vit (a segmenter "
                   "with a segmentation target, a ViT at its tokens: Grad-CAM and saliency, torch against ONNX)")
    p.add_argument("--section", default="bench", help="the results' name and docs/speed.md section: 'bench' "
                   "(results/<machine>.md), or e.g. 'dense' or 'relevance' (results/<machine>-dense.md, ...)")
    p.add_argument("--methods", nargs="+", default=None, help="only these cnnlens methods")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when there is one")
    p.add_argument("--no-peers", action="store_true", help="measure cnnlens and the floors only")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for <machine>.md and .json")
    p.add_argument("--update-readme", action="store_true", help="write the tables into docs/speed.md")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the peers' progress bars
    warnings.filterwarnings("ignore")
    import torch

    from bench import peers, results
    from bench.measure import WorkloadRun
    from bench.workloads import WORKLOADS

    import cnnlens

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    versions = {"cnnlens": getattr(cnnlens, "__version__", "dev"), "torch": torch.__version__,
                "onnxruntime": peers.available("onnxruntime"), "numpy": peers.available("numpy"),
                **{name: peers.available(pkg) for name, pkg in peers.PACKAGES.items()}}
    present = [name for name, pkg in peers.PACKAGES.items() if peers.available(pkg) and not args.no_peers]
    missing = [name for name in peers.PACKAGES if name not in present]
    if missing and not args.no_peers:
        print(f"not installed, so not measured: {', '.join(missing)} (pip install -r benchmarks/requirements.txt)")
    started = time.perf_counter()
    rows = []
    for device in devices:
        for name in args.workloads:
            print(f"{name} on {device}", flush=True)
            workload = WORKLOADS[name](args.quick, device)
            run = WorkloadRun(workload, device, lambda m: print(m, flush=True), args.no_peers)
            rows += run.rows(args.methods)
    info = results.describe_machine(versions)
    settings = dict(mode="quick" if args.quick else "full", repeats=3 if args.quick else 5,
                    seconds=round(time.perf_counter() - started, 1))
    command = "python benchmarks/run.py" + "".join(" " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    checks = results.check_targets(rows)
    suffix = "" if args.section == "bench" else f"-{args.section}"
    text = results.write(args.out, info, settings, rows, checks, present, command, suffix)
    print()
    print(text)
    name = results.machine_name(info) + suffix
    print(f"total {settings['seconds']} s; written to {os.path.join(args.out, name)}.md/.json")
    if args.update_readme:
        results.update_readme(os.path.join(os.path.dirname(HERE), "docs", "speed.md"), text, name,
                              section=args.section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
