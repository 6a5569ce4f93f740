"""``cnnlens export-explainer``: write one ONNX file that returns the model's outputs and a map per
method, and optionally a static web page that runs it in the browser (``--web DIR``)."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from ..core.errors import InvalidInputError
from ..core.methods import exportable_methods
from .common import add_model_options, add_option_flags, cli_options, load_model, read_labels


def _shared_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The method option flags given (one that no exported method takes is refused by export_explainer)."""
    return {k: getattr(args, k) for k in cli_options() if getattr(args, k, None) is not None}


def run(args: argparse.Namespace) -> int:
    from ..adapters.explainer import export_explainer
    from ..adapters.explainer_request import method_names

    methods = method_names(",".join(args.method or ["gradcam"]))
    if args.web is None and (args.labels or args.ort):
        raise InvalidInputError("--labels and --ort are for the web page: give --web DIR too")
    backend = load_model(args.model, "cpu", args)
    size = tuple(args.size) if args.size else None
    input_shape = None
    if size is not None:
        from ..adapters.images import input_geometry

        channels, _ = input_geometry(backend, size)
        input_shape = (channels,) + size
    layer = None if not args.layer else (args.layer[0] if len(args.layer) == 1 else list(args.layer))
    result = export_explainer(backend, args.out, methods, target=args.target, layer=layer,
                              normalize=args.normalize, input_shape=input_shape, opset=args.opset,
                              **_shared_options(args))
    if args.web is not None:
        from ..adapters.explainer_page import write_page
        from ..adapters.images import IMAGENET_MEAN, IMAGENET_STD

        labels = read_labels(args.labels)
        result.page = write_page(args.web, result, mean=tuple(args.mean) if args.mean else IMAGENET_MEAN,
                                 std=tuple(args.std) if args.std else IMAGENET_STD, labels=labels, ort=args.ort)
    print(result)
    return 0


def add(sub: Any) -> None:
    """The ``export-explainer`` subcommand's parser."""
    p = sub.add_parser("export-explainer", help="write one ONNX file that returns the model's outputs and a map "
                       "per method (runs in any ONNX Runtime: C++, C#, Java, Node.js, the browser)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--method", "-m", action="append", metavar="M",
                   help=f"method(s), repeat or comma-separate; 'all' for every one that exports "
                        f"({', '.join(exportable_methods())}); default gradcam")
    p.add_argument("--out", "-o", default="explained.onnx", help="the file to write (explained.onnx)")
    p.add_argument("--layer", "-l", action="append", metavar="L",
                   help="layer for the methods that take one (repeat for several: maps get a layer axis)")
    p.add_argument("--target", choices=("predicted", "input", "weights"), default="predicted",
                   help="what is explained: each image's predicted class (default); 'input': a class per image "
                        "fed as the int64 input 'target'; 'weights': output weights fed as 'target_weights'")
    p.add_argument("--normalize", action="store_true", help="maps an app overlays directly: CAMs min-max "
                   "scaled to [0, 1], input attributions as sum |g| over channels, min-max (N, H, W)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (default: the ONNX "
                   "model's; torch models are exported at it, 224 224 by default)")
    p.add_argument("--opset", type=int, help="ONNX opset for exporting a torch model (the exporter's default)")
    p.add_argument("--web", metavar="DIR", help="also write a static web page to DIR that explains a dropped "
                   "image in the browser (onnxruntime-web)")
    p.add_argument("--mean", type=float, nargs="+", help="the page's normalisation mean per channel (ImageNet's)")
    p.add_argument("--std", type=float, nargs="+", help="the page's normalisation std per channel (ImageNet's)")
    p.add_argument("--labels", help="text file with one class name per line, for the page")
    p.add_argument("--ort", metavar="URL_OR_DIR", help="where the page loads onnxruntime-web from: a URL of "
                   "ort.wasm.min.js, or the dist folder of an installed onnxruntime-web to copy beside the page "
                   "(default: the public CDN)")
    add_model_options(p)
    add_option_flags(p, skip=("target",))
    p.set_defaults(run=run)
