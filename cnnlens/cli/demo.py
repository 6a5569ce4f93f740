"""``cnnlens demo``: train the demo's DenseNet on synthetic shapes and explain it (``--clever-hans``: the
shortcut audit instead)."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    if args.clever_hans:
        from ..audit.clever_hans_demo import run_clever_hans

        run_clever_hans(args.out, quick=args.quick)
        return 0
    from ..adapters.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def add(sub: Any) -> None:
    """Add ``demo`` to the ``cnnlens`` subcommands ``sub``."""
    p = sub.add_parser("demo", help="train a DenseNet on synthetic shapes and explain it with every method")
    p.add_argument("--out", "-o", default="cnnlens-demo", help="output folder (cnnlens-demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    p.add_argument("--clever-hans", action="store_true", help="instead: train on shapes where a corner mark comes "
                   "with most squares, and audit held-out images to find the shortcut (writes DIR/audit/)")
    p.set_defaults(run=run)
