"""``cnnlens explain MODEL IMAGE...``: one PNG per image and method (and the raw maps with --save-maps)."""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from .common import (add_method_flags, add_model_options, add_preprocessing, check_flags, chosen_methods,
                     layer_arg, load_model, method_options, prepare_images, target_arg)


def _explained(exp: Any) -> str:
    target = np.asarray(exp.target)
    if target.ndim == 1:
        return "class " + ", ".join(str(int(t)) for t in target)
    return f"output weights {tuple(target.shape[1:])}"


def run(args: argparse.Namespace) -> int:
    import cnnlens
    from ..adapters import render

    backend = load_model(args.model, args.device, args)
    x, display = prepare_images(backend, args.images, args)
    methods = chosen_methods(args.method, backend)
    check_flags(args, methods)
    target = target_arg(args)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for method in methods:
        exp = cnnlens.explain(backend, x, method, target=target, layer=layer_arg(args, method),
                              **method_options(method, args))
        for i, path in enumerate(args.images):
            stem = os.path.join(args.out, f"{os.path.splitext(os.path.basename(path))[0]}_{method}")
            figure = render.explanation_figure(display[i], exp, i)
            render.save_png(figure, stem + ".png")
            written.append(stem + ".png")
            if args.save_maps:
                render.save_npy(exp.maps[i], stem + ".npy")
                written.append(stem + ".npy")
        print(f"{method}: {_explained(exp)}"
              + (f" at {exp.layer}" if exp.layer is not None else ""))
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def add(sub: Any) -> None:
    """Add ``explain`` to the ``cnnlens`` subcommands ``sub``."""
    p = sub.add_parser("explain", help="explain images, one PNG per image and method")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", "-o", default="cnnlens-out", help="output folder (cnnlens-out)")
    p.add_argument("--save-maps", action="store_true", help="also write the raw maps as .npy")
    add_method_flags(p)
    add_preprocessing(p)
    add_model_options(p)
    p.set_defaults(run=run)
