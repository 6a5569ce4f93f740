"""``cnnlens compare MODEL_A MODEL_B IMAGE...``: one method on two models, agreement per image."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.methods.support import runs
from .common import (add_method_flags, add_model_options, add_preprocessing, check_flags, chosen_methods,
                     layer_arg, load_model, method_options, prepare_images, target_arg)


def run(args: argparse.Namespace) -> int:
    import cnnlens

    a = load_model(args.model_a, args.device, args)
    b = load_model(args.model_b, args.device, args)
    from ..adapters.images import input_size

    knows = a if input_size(a) or not input_size(b) else b  # the model that knows its input size
    x, _ = prepare_images(knows, args.images, args)
    worst = 0.0
    target = target_arg(args)
    methods = chosen_methods(args.method, a)
    check_flags(args, methods)
    for method in methods:
        if not runs(b, method):
            print(f"{method}: skipped ({b.name} backend cannot run it)\n")
            continue
        result = cnnlens.compare(a, b, x, method, target=target, layer=layer_arg(args, method),
                                 **method_options(method, args))
        print(result)
        print()
        worst = max(worst, result.worst_relative_error)
    print(f"worst relative error: {worst:.3g}")
    return 0


def add(sub: Any) -> None:
    """Add ``compare`` to the ``cnnlens`` subcommands ``sub``."""
    p = sub.add_parser("compare", help="compare two models' explanations (e.g. a module and its ONNX export)")
    p.add_argument("model_a", metavar="MODEL_A")
    p.add_argument("model_b", metavar="MODEL_B")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    add_method_flags(p)
    add_preprocessing(p)
    add_model_options(p)
    p.set_defaults(run=run)
