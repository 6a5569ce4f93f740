"""The ``cnnlens`` command: layers, explain, compare, report, sanity checks, audit, export-explainer and the demo.

MODEL is an ``.onnx`` file, a ``.pt2`` (torch.export) file, a TorchScript file, or ``module:attr`` naming a Python callable
that returns an ``nn.Module`` (or the module itself). Errors print one line starting with
``error:`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .core.errors import CnnlensError, InvalidInputError, ModelError
from .core.methods import METHODS, all_options, lookup, supported_methods
from .core.methods.support import runs
from .core import progress

# ---------------------------------------------------------------- models and images


def load_model(spec: str, device: Optional[str] = None, args: Optional[argparse.Namespace] = None) -> Any:
    """MODEL from the command line: a file path, or ``module:attr``; ``args`` may carry
    ``--output`` and ``--trust-pickle``."""
    import cnnlens

    output = _output_choice(getattr(args, "output", None))
    trust = bool(getattr(args, "trust_pickle", False))
    layout = getattr(args, "layout", None) or "auto"
    if os.path.exists(spec) or spec.lower().endswith((".onnx", ".pt2", ".pt", ".pth", ".ts", ".jit")):
        return cnnlens.load(spec, device=device, output=output, trust_pickle=trust, layout=layout)
    if ":" not in spec:
        raise ModelError(
            f"MODEL {spec!r} is neither a file nor module:attr: give an .onnx, .pt2 or TorchScript file, "
            f"or module:attr naming a function that returns an nn.Module (e.g. torchvision.models:resnet18)"
        )
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"cannot import {module_name!r} for MODEL {spec!r}: {error}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module_name!r} has no attribute {attr!r} (MODEL {spec!r})")
        obj = getattr(obj, part)
    torch = sys.modules.get("torch")
    is_module = torch is not None and isinstance(obj, torch.nn.Module)
    if callable(obj) and not is_module:
        try:
            obj = obj()
        except Exception as error:
            raise ModelError(f"calling {spec} failed: {type(error).__name__}: {error}") from None
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{spec} gave a {type(obj).__name__}, not a torch.nn.Module")
    return cnnlens.load(obj, device=device, output=output, layout=layout)


def _output_choice(value: Optional[str]) -> Any:
    """``--output``: an index when it is a number, else a key or output name."""
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _input_geometry(backend: Any, args: argparse.Namespace):
    from .adapters.images import input_geometry

    return input_geometry(backend, tuple(args.size) if args.size else None)


def _prepare(backend: Any, paths: Sequence[str], args: argparse.Namespace):
    from .adapters import images

    channels, size = _input_geometry(backend, args)
    mean = tuple(args.mean) if args.mean else images.IMAGENET_MEAN
    std = tuple(args.std) if args.std else images.IMAGENET_STD
    return images.prepare(list(paths), size, mean=mean, std=std, channels=channels)


def _methods(names: Optional[List[str]], backend: Any) -> List[str]:
    """The methods asked for (checked, close names suggested), or every one the backend runs."""
    wanted: List[str] = []
    for item in names or []:
        wanted.extend(n.strip() for n in item.split(",") if n.strip())
    if not wanted or "all" in wanted:
        return supported_methods(backend.capabilities)
    return [lookup(name).name for name in wanted]


def _cli_options() -> Dict[str, Any]:
    """Every method option the command line takes: name -> (option, the methods that take it)."""
    return {name: found for name, found in all_options().items() if found[0].cli_type is not None}


def _options(method: str, args: argparse.Namespace) -> Dict[str, Any]:
    allowed = lookup(method).defaults
    return {k: getattr(args, k) for k in _cli_options() if getattr(args, k, None) is not None and k in allowed}


def _layer_arg(args: argparse.Namespace, method: str):
    """--layer for methods that take one (CAM family, feature maps); others ignore it."""
    if not args.layer or not lookup(method).layered:
        return None
    return args.layer[0] if len(args.layer) == 1 else list(args.layer)


def _target(args: argparse.Namespace) -> Any:
    """--target (a class) or --target-weights (an .npy file of output weights)."""
    path = getattr(args, "target_weights", None)
    if path is None:
        return args.target
    if args.target is not None:
        raise InvalidInputError("give --target or --target-weights, not both")
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"cannot read --target-weights {path!r} as a .npy array: {error}") from None
    if weights.dtype.kind not in "fiu":
        raise InvalidInputError(f"--target-weights {path!r} holds {weights.dtype} values, not numbers")
    return weights.astype(np.float32)


# ---------------------------------------------------------------- subcommands


def cmd_layers(args: argparse.Namespace) -> int:
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


def cmd_explain(args: argparse.Namespace) -> int:
    import cnnlens
    from .adapters import render

    backend = load_model(args.model, args.device, args)
    x, display = _prepare(backend, args.images, args)
    methods = _methods(args.method, backend)
    target = _target(args)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for method in methods:
        exp = cnnlens.explain(backend, x, method, target=target, layer=_layer_arg(args, method), **_options(method, args))
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


def cmd_compare(args: argparse.Namespace) -> int:
    import cnnlens

    a = load_model(args.model_a, args.device, args)
    b = load_model(args.model_b, args.device, args)
    from .adapters.images import input_size

    x, _ = _prepare(a if input_size(a) or not input_size(b) else b, args.images, args)  # the one that knows its size
    worst = 0.0
    target = _target(args)
    for method in _methods(args.method, a):
        if not runs(b, method):
            print(f"{method}: skipped ({b.name} backend cannot run it)\n")
            continue
        result = cnnlens.compare(a, b, x, method, target=target, layer=_layer_arg(args, method), **_options(method, args))
        print(result)
        print()
        worst = max(worst, result.worst_relative_error)
    print(f"worst relative error: {worst:.3g}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .adapters.report import write_report

    backend = load_model(args.model, args.device, args)
    x, display = _prepare(backend, args.images, args)
    labels = None
    if args.labels:
        with open(args.labels, encoding="utf-8") as handle:
            labels = [line.rstrip("\n") for line in handle]
    write_report(args.out, backend, x, display, names=[os.path.basename(p) for p in args.images],
                 methods=_methods(args.method, backend) if args.method else None, labels=labels,
                 title=args.title or f"cnnlens report: {os.path.basename(args.model)}")
    print(f"wrote {args.out}")
    return 0


def cmd_sanity(args: argparse.Namespace) -> int:
    import json

    from . import metrics

    backend = load_model(args.model, args.device, args)
    x, _ = _prepare(backend, args.images, args)
    methods = [m for m in _methods(args.method, backend) if args.method or m != "feature_maps"]
    options = {m: _options(m, args) for m in methods}
    for m in methods:
        layer = _layer_arg(args, m)
        if layer is not None:
            options[m]["layer"] = layer
    report = metrics.sanity(backend, x, methods, target=_target(args), steps=args.randomisation_steps,
                            seed=args.randomisation_seed,
                            deletion_steps=args.deletion_steps, options=options)
    if args.json:
        print(json.dumps(report))
        return 0
    print(sanity_table(report))
    return 0


def _explained(exp: Any) -> str:
    target = np.asarray(exp.target)
    if target.ndim == 1:
        return "class " + ", ".join(str(int(t)) for t in target)
    return f"output weights {tuple(target.shape[1:])}"


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


def cmd_demo(args: argparse.Namespace) -> int:
    if args.clever_hans:
        from .adapters.demo_clever_hans import run_clever_hans

        run_clever_hans(args.out, quick=args.quick)
        return 0
    from .adapters.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


# ---------------------------------------------------------------- parser


def _add_preprocessing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size (default: the ONNX model's, else 224 224)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean per channel (ImageNet's)")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std per channel (ImageNet's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the model's, or the best available)")


def _add_method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", "-m", action="append", metavar="M",
                   help=f"method(s), repeat or comma-separate; 'all' for every one the backend runs: {', '.join(METHODS)}")
    p.add_argument("--layer", "-l", action="append", metavar="L", help="layer name (repeat for several)")
    p.add_argument("--target", "-t", type=int, help="class to explain (default: each image's prediction)")
    p.add_argument("--target-weights", metavar="FILE.npy", help="explain sum(w * output) for output weights w, an "
                   ".npy array of one output's shape or the batch's (regression heads, segmentation maps)")
    _add_option_flags(p)


def _add_option_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per method option the registry declares (``skip``: names the command uses itself)."""
    group = p.add_argument_group("method options")
    for name, (option, methods) in _cli_options().items():
        if name in skip:
            continue
        users = ", ".join(methods) if len(methods) < 6 else "every method"
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=option.cli_type,
                           help=f"{users}: {option.help}")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", metavar="KEY", help="for a model with several outputs: the one holding the class "
                   "scores (an index, a dict key or an ONNX output name; default: the first)")
    p.add_argument("--trust-pickle", action="store_true", help="unpickle a torch.save model file (unpickling runs "
                   "the file's code: only for files you trust)")
    p.add_argument("--layout", choices=("auto", "NCHW", "NHWC"), default="auto",
                   help="the model's image layout: auto (ONNX: read off the graph, e.g. NHWC for tf2onnx "
                   "exports; torch: NCHW), NCHW or NHWC (a torch module that takes (N, H, W, C))")


class _Parser(argparse.ArgumentParser):
    """argparse with cnnlens's error format: one ``error:`` line (and ``--help`` for usage), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .audit.command import add_audit_command
    from .export_command import add_export_command

    parser = _Parser(prog="cnnlens", description="See what convolutional image classifiers look at.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("layers", help="print a model's layers as a table")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="for torch models (3 224 224)")
    p.add_argument("--device")
    _add_model_options(p)
    p.set_defaults(run=cmd_layers)

    p = sub.add_parser("explain", help="explain images, one PNG per image and method")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", "-o", default="cnnlens-out", help="output folder (cnnlens-out)")
    p.add_argument("--save-maps", action="store_true", help="also write the raw maps as .npy")
    _add_method_options(p)
    _add_preprocessing(p)
    _add_model_options(p)
    p.set_defaults(run=cmd_explain)

    p = sub.add_parser("compare", help="compare two models' explanations (e.g. a module and its ONNX export)")
    p.add_argument("model_a", metavar="MODEL_A")
    p.add_argument("model_b", metavar="MODEL_B")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    _add_method_options(p)
    _add_preprocessing(p)
    _add_model_options(p)
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("report", help="one self-contained HTML report")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", "-o", default="report.html")
    p.add_argument("--labels", help="text file with one class name per line")
    p.add_argument("--title")
    p.add_argument("--method", "-m", action="append", metavar="M", help="methods to show (all it supports)")
    _add_preprocessing(p)
    _add_model_options(p)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("sanity", help="how far to trust each method: the randomisation test and deletion / insertion")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--randomisation-steps", type=int, metavar="N",
                   help="randomisation steps to report, evenly spread (default: every layer)")
    p.add_argument("--randomisation-seed", type=int, default=0, metavar="S",
                   help="seed of the re-drawn weights (0); --seed is the methods' own")
    p.add_argument("--deletion-steps", type=int, default=20, help="points on the deletion / insertion curves (20)")
    _add_method_options(p)
    _add_preprocessing(p)
    _add_model_options(p)
    p.set_defaults(run=cmd_sanity)

    add_audit_command(sub)
    add_export_command(sub)

    p = sub.add_parser("demo", help="train a DenseNet on synthetic shapes and explain it with every method")
    p.add_argument("--out", "-o", default="cnnlens-demo", help="output folder (cnnlens-demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    p.add_argument("--clever-hans", action="store_true", help="instead: train on shapes where a corner mark comes "
                   "with most squares, and audit held-out images to find the shortcut (writes DIR/audit/)")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed as one line)
        return int(stop.code or 0)
    from .adapters.progress import terminal_bars

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
