"""What every ``cnnlens`` subcommand shares: MODEL read from the command line, images prepared as
``cnnlens explain`` does, the chosen methods and their flags (made from the registry, checked against
the chosen methods), the target, and the flag groups each subcommand adds to its parser."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..core.backend import Backend
from ..core.errors import InvalidInputError, ModelError
from ..core.relevance import box_of
from ..core.methods import METHODS, all_options, check_options_apply, lookup, method_list, supported_methods

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


def _input_geometry(backend: Backend, args: argparse.Namespace):
    from ..adapters.images import input_geometry

    return input_geometry(backend, tuple(args.size) if args.size else None)


def prepare_images(backend: Backend, paths: Sequence[str], args: argparse.Namespace):
    from ..adapters import images

    channels, size = _input_geometry(backend, args)
    mean = tuple(args.mean) if args.mean else images.IMAGENET_MEAN
    std = tuple(args.std) if args.std else images.IMAGENET_STD
    return images.prepare(list(paths), size, mean=mean, std=std, channels=channels)


def read_labels(path: Optional[str]) -> Optional[List[str]]:
    """``--labels``: class names in the model's order, one per line (None without the flag)."""
    if not path:
        return None
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def chosen_methods(names: Optional[List[str]], backend: Backend) -> List[str]:
    """The methods asked for (checked, close names suggested; "all": every one the backend runs), or
    every one the backend runs."""
    every = supported_methods(backend.capabilities)
    return method_list(names or [], every) or every


def cli_options() -> Dict[str, Any]:
    """Every method option the command line takes: name -> (option, the methods that take it)."""
    return {name: found for name, found in all_options().items() if found[0].cli_type is not None}


def method_options(method: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The method's options from the flags; LRP's zB box (--low / --high), when not given, is the
    [0, 1] pixel box after the --mean / --std the images were normalised with."""
    allowed = lookup(method).defaults
    found = {k: getattr(args, k) for k in cli_options() if getattr(args, k, None) is not None and k in allowed}
    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    if "low" in allowed and "low" not in found and "high" not in found and (mean or std):
        from ..adapters.images import IMAGENET_MEAN, IMAGENET_STD

        found["low"], found["high"] = box_of(tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD))
    return found


def check_flags(args: argparse.Namespace, methods: Sequence[str]) -> None:
    """A method flag that applies to none of the chosen methods is an error that says which methods
    take it: a flag is never dropped silently. (With several methods, each takes the flags it declares.)"""
    chosen = ", ".join(methods)
    if getattr(args, "layer", None) and not any(lookup(m).layered for m in methods):
        takers = ", ".join(m for m in METHODS if METHODS[m].layered)
        they = "it explains" if len(methods) == 1 else "they explain"
        raise InvalidInputError(f"--layer does not apply to {chosen}: {they} the input. Layers are for {takers}")
    given = [name for name in cli_options() if getattr(args, name, None) is not None]
    check_options_apply(methods, given, lambda name: f"--{name.replace('_', '-')}")


def layer_arg(args: argparse.Namespace, method: str):
    """--layer for the chosen methods that take one (CAM family, feature maps); ``check_flags`` has
    refused a --layer that none of them takes."""
    if not args.layer or not lookup(method).layered:
        return None
    return args.layer[0] if len(args.layer) == 1 else list(args.layer)


def target_arg(args: argparse.Namespace) -> Any:
    """--target (a class), --target-weights (an .npy file of output weights), or --target-class C with
    --target-mask FILE (a segmentation class over a mask, by default over its predicted region) or
    --target-box x1,y1,x2,y2 (a detection of a raw YOLO-style head): ``cnnlens.targets``."""
    given = [f"--{n.replace('_', '-')}" for n in ("target", "target_weights", "target_class")
             if getattr(args, n, None) is not None]
    if len(given) > 1:
        raise InvalidInputError(f"give one of --target, --target-weights and --target-class, not {' and '.join(given)}")
    box, mask = getattr(args, "target_box", None), getattr(args, "target_mask", None)
    if getattr(args, "target_class", None) is None:
        if box is not None or mask is not None:
            raise InvalidInputError("--target-box and --target-mask go with --target-class C, the class to explain")
        return _target_weights(args.target_weights) if getattr(args, "target_weights", None) else args.target
    from .. import targets

    if box is not None and mask is not None:
        raise InvalidInputError("give --target-box (a detection) or --target-mask (a segmentation region), not both")
    if box is not None:
        return targets.detection(_box(box), args.target_class, iou=args.target_iou)
    return targets.segmentation(args.target_class, _mask(mask) if mask is not None else None)


def _target_weights(path: str) -> np.ndarray:
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"cannot read --target-weights {path!r} as a .npy array: {error}") from None
    if weights.dtype.kind not in "fiu":
        raise InvalidInputError(f"--target-weights {path!r} holds {weights.dtype} values, not numbers")
    return weights.astype(np.float32)


def _box(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InvalidInputError(f"--target-box takes x1,y1,x2,y2 in the model input's pixels, got {text!r}")
    return values


def _mask(path: str) -> np.ndarray:
    """A mask from an .npy array, or from an image (its pixels brighter than mid-grey)."""
    if path.lower().endswith(".npy"):
        try:
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"cannot read --target-mask {path!r}: {error}") from None
    from ..adapters.images import load_image

    return (load_image(path).mean(axis=-1) > 127).astype(np.float32)


# ---------------------------------------------------------------- flag groups


def add_preprocessing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size (default: the ONNX model's, else 224 224)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean per channel (ImageNet's)")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std per channel (ImageNet's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the model's, or the best available)")


def add_method_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", "-m", action="append", metavar="M",
                   help=f"method(s), repeat or comma-separate; 'all' for every one the backend runs: {', '.join(METHODS)}")
    p.add_argument("--layer", "-l", action="append", metavar="L", help="layer name (repeat for several)")
    p.add_argument("--target", "-t", type=int, help="class to explain (default: each image's prediction)")
    p.add_argument("--target-weights", metavar="FILE.npy", help="explain sum(w * output) for output weights w, an "
                   ".npy array of one output's shape or the batch's (regression heads, segmentation maps)")
    p.add_argument("--target-class", type=int, metavar="C", help="a segmentation class (over its predicted region, "
                   "or --target-mask) or, with --target-box, a detection's class (cnnlens.targets)")
    p.add_argument("--target-mask", metavar="FILE", help="with --target-class: the region, an .npy array or an image "
                   "of the model output's size")
    p.add_argument("--target-box", metavar="X1,Y1,X2,Y2", help="with --target-class: a box in the model input's "
                   "pixels; explains that class over a raw YOLO-style head's anchors near it")
    p.add_argument("--target-iou", type=float, default=0.5, metavar="T", help="with --target-box: the anchors' "
                   "least IoU with the box (0.5)")
    add_option_flags(p)


def add_option_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per method option the registry declares (``skip``: names the command uses itself)."""
    group = p.add_argument_group("method options")
    for name, (option, methods) in cli_options().items():
        if name in skip:
            continue
        users = "every method" if len(methods) == len(METHODS) else ", ".join(methods)
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=option.cli_type,
                           help=f"{users}: {option.help}")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", metavar="KEY", help="for a model with several outputs: the one holding the class "
                   "scores (an index, a dict key or an ONNX output name; default: the first)")
    p.add_argument("--trust-pickle", action="store_true", help="unpickle a torch.save model file (unpickling runs "
                   "the file's code: only for files you trust)")
    p.add_argument("--layout", choices=("auto", "NCHW", "NHWC"), default="auto",
                   help="the model's image layout: auto (ONNX: read off the graph, e.g. NHWC for tf2onnx "
                   "exports; torch: NCHW), NCHW or NHWC (a torch module that takes (N, H, W, C))")


class Parser(argparse.ArgumentParser):
    """argparse with cnnlens's error format: one ``error:`` line (and ``--help`` for usage), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
