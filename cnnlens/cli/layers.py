"""``cnnlens layers MODEL``: the model's layers as a table."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_model_options, load_model


def run(args: argparse.Namespace) -> int:
    import cnnlens

    backend = load_model(args.model, args.device, args)
    shape = tuple(args.input_shape) if args.input_shape else None
    rows = [(str(i), l.name, l.kind, "?" if l.shape is None else "x".join("N" if d is None else str(d) for d in l.shape))
            for i, l in enumerate(cnnlens.layers(backend, shape))]
    header = ("#", "name", "kind", "output shape")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def add(sub: Any) -> None:
    """Add ``layers`` to the ``cnnlens`` subcommands ``sub``."""
    p = sub.add_parser("layers", help="print a model's layers as a table")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="for torch models (3 224 224)")
    p.add_argument("--device")
    add_model_options(p)
    p.set_defaults(run=run)
