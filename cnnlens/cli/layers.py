"""``cnnlens layers MODEL``: the model's layers as a table, with how the CAM family reads each output
as maps (a map, a channels-last map, tokens on their grid)."""

from __future__ import annotations

import argparse
from typing import Any, List, Optional, Sequence, Tuple

from ..core.errors import LayerError
from ..core.tokens import map_grids, read_as_maps
from ..core.types import Layer
from .common import add_model_options, load_model

#: the image size assumed where neither --input-shape nor the model gives one (the torch backend's guess)
DEFAULT_IMAGE = (224, 224)


def as_maps(layers: Sequence[Layer], image: Tuple[int, int]) -> List[str]:
    """Per layer, how its output reads as (N, K, h, w) maps for images of ``image`` pixels ("" where
    it is no map): ``map 7x7``, ``map 7x7, channels-last``, ``grid 14x14, 1 token dropped``."""
    grids = map_grids(layer.shape for layer in layers)
    found = []
    for layer in layers:
        shape = layer.shape
        if shape is None or len(shape) not in (3, 4) or any(d is None for d in shape[1:]):
            found.append("")
            continue
        try:
            # as for a default layer: a 4-D output that is no map of the image (attention scores) is none
            reading = read_as_maps(layer.name, (1,) + tuple(int(d) for d in shape[1:]), image, None, "the CAM family",
                                   lambda: grids, defaulted=True)
        except LayerError:
            found.append("")
            continue
        h, w = reading.grid
        if reading.layout == "NCHW":
            found.append(f"map {h}x{w}" if h * w > 1 else "")
        elif reading.layout == "NHWC":
            found.append(f"map {h}x{w}, channels-last")
        else:
            dropped = f", {reading.drop} token{'s' if reading.drop > 1 else ''} dropped" if reading.drop else ""
            found.append(f"grid {h}x{w}{dropped}" + (", channels first" if reading.layout == "NCT" else ""))
    return found


def _image(args_shape: Optional[Sequence[int]], declared: Any) -> Tuple[int, int]:
    if args_shape:
        return int(args_shape[1]), int(args_shape[2])
    if declared is not None and len(declared) == 3 and all(isinstance(d, int) for d in declared[1:]):
        return int(declared[1]), int(declared[2])
    return DEFAULT_IMAGE


def run(args: argparse.Namespace) -> int:
    import cnnlens

    backend = load_model(args.model, args.device, args)
    shape = tuple(args.input_shape) if args.input_shape else None
    layers = cnnlens.layers(backend, shape)
    readings = as_maps(layers, _image(shape, backend.image_shape))
    rows = [(str(i), l.name, l.kind, "?" if l.shape is None else "x".join("N" if d is None else str(d) for d in l.shape),
             reading) for i, (l, reading) in enumerate(zip(layers, readings))]
    header = ("#", "name", "kind", "output shape", "as maps (CAMs)")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def add(sub: Any) -> None:
    """Add ``layers`` to the ``cnnlens`` subcommands ``sub``."""
    p = sub.add_parser("layers", help="print a model's layers as a table (and how the CAM family reads each as maps)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="for torch models (3 224 224)")
    p.add_argument("--device")
    add_model_options(p)
    p.set_defaults(run=run)
