"""``cnnlens report MODEL IMAGE...``: one self-contained HTML report."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import add_model_options, add_preprocessing, chosen_methods, load_model, prepare_images, read_labels


def run(args: argparse.Namespace) -> int:
    from ..adapters.report import write_report

    backend = load_model(args.model, args.device, args)
    x, display = prepare_images(backend, args.images, args)
    labels = read_labels(args.labels)
    write_report(args.out, backend, x, display, names=[os.path.basename(p) for p in args.images],
                 methods=chosen_methods(args.method, backend) if args.method else None, labels=labels,
                 title=args.title or f"cnnlens report: {os.path.basename(args.model)}")
    print(f"wrote {args.out}")
    return 0


def add(sub: Any) -> None:
    """Add ``report`` to the ``cnnlens`` subcommands ``sub``."""
    p = sub.add_parser("report", help="one self-contained HTML report")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", "-o", default="report.html")
    p.add_argument("--labels", help="text file with one class name per line")
    p.add_argument("--title")
    p.add_argument("--method", "-m", action="append", metavar="M", help="methods to show (all it supports)")
    add_preprocessing(p)
    add_model_options(p)
    p.set_defaults(run=run)
