"""The ``cnnlens`` command: layers, explain, compare, report, sanity, audit, export-explainer and the demo,
one module per subcommand (each with ``add(sub)``, its parser, and ``run(args)``); ``common`` holds what
they share (MODEL, images, the method flags made from the registry).

MODEL is an ``.onnx`` file, a ``.pt2`` (torch.export) file, a TorchScript file, or ``module:attr`` naming a
Python callable that returns an ``nn.Module`` (or the module itself). Errors print one line starting with
``error:`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..core import progress
from ..core.errors import CnnlensError
from . import audit, compare, demo, explain, export, layers, report, sanity
from .common import Parser, load_model

__all__ = ["main", "build_parser", "load_model"]

#: the subcommands in the order ``cnnlens --help`` lists them
SUBCOMMANDS = (layers, explain, compare, report, sanity, audit, export, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``cnnlens`` parser with every subcommand."""
    parser = Parser(prog="cnnlens", description="See what convolutional image classifiers look at.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in SUBCOMMANDS:
        command.add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed as one line)
        return int(stop.code or 0)
    from ..adapters.progress import terminal_bars

    try:
        with progress.reporting(terminal_bars()):
            return int(args.run(args) or 0)
    except CnnlensError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
