"""``cnnlens sanity MODEL IMAGE...``: the randomisation test and deletion / insertion, as tables or JSON."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from .common import (add_method_flags, add_model_options, add_preprocessing, check_flags, chosen_methods,
                     load_model, method_options, prepare_images, target_arg)


def run(args: argparse.Namespace) -> int:
    import json

    from .. import metrics

    backend = load_model(args.model, args.device, args)
    x, _ = prepare_images(backend, args.images, args)
    methods = [m for m in chosen_methods(args.method, backend) if args.method or m != "feature_maps"]
    check_flags(args, methods)
    options = {m: method_options(m, args) for m in methods}
    layer = args.layer[0] if args.layer and len(args.layer) == 1 else args.layer  # for the methods that take one
    report = metrics.sanity(backend, x, methods, target=target_arg(args), steps=args.randomisation_steps,
                            seed=args.randomisation_seed, deletion_steps=args.deletion_steps, layer=layer,
                            options=options)
    if args.json:
        print(json.dumps(report))
        return 0
    print(sanity_table(report))
    return 0


def sanity_table(report: Dict[str, Any]) -> str:
    """The sanity report as text: deletion / insertion AUC per method, then the randomisation
    steps (top layer first) with each method's Spearman rank correlation and SSIM."""
    methods = list(report["methods"])
    lines = ["method            deletion AUC (lower is better)  insertion AUC (higher is better)"]
    for m in methods:
        r = report["methods"][m]
        lines.append(f"{m:17} {r['deletion_auc']:30.3f}  {r['insertion_auc']:32.3f}")
    steps = report["methods"][methods[0]]["randomisation"] if methods else []
    lines += ["", "randomisation (cascading from the top): Spearman |rank| correlation / SSIM with the original maps",
              "layers randomised  down to layer" + "".join(f"  {m[:15]:>15}" for m in methods)]
    for i, step in enumerate(steps):
        cells = "".join(f"  {report['methods'][m]['randomisation'][i]['spearman']:6.2f} /{report['methods'][m]['randomisation'][i]['ssim']:5.2f}"
                        for m in methods)
        lines.append(f"{step['randomised']:17}  {step['layer'][:13]:13}{cells}")
    return "\n".join(lines)


def add(sub: Any) -> None:
    """Add ``sanity`` to the ``cnnlens`` subcommands ``sub``."""
    p = sub.add_parser("sanity", help="how far to trust each method: the randomisation test and deletion / insertion")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--randomisation-steps", type=int, metavar="N",
                   help="randomisation steps to report, evenly spread (default: every layer)")
    p.add_argument("--randomisation-seed", type=int, default=0, metavar="S",
                   help="seed of the re-drawn weights (0); --seed is the methods' own")
    p.add_argument("--deletion-steps", type=int, default=20, help="points on the deletion / insertion curves (20)")
    add_method_flags(p)
    add_preprocessing(p)
    add_model_options(p)
    p.set_defaults(run=run)
