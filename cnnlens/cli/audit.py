"""``cnnlens audit MODEL DATA``: explain a whole dataset, cluster the maps per class (SpRAy), write a report."""

from __future__ import annotations

import argparse
from typing import Any, Optional, Tuple, Union

from ..audit.job import TARGETS
from ..audit.run import audit
from ..core.errors import InvalidInputError
from ..core.methods import METHODS, method_list, supported_methods
from .common import add_model_options, add_option_flags, add_preprocessing, check_flags, load_model, method_options


def audit_target(text: str) -> Union[str, int]:
    """--target: "predicted", "label", or a class index (as ``cnnlens explain --target``)."""
    if text in TARGETS:
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give predicted, label or a class index") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a class index is 0 or more")
    return value


def audit_class(text: str) -> Union[str, int]:
    """--target-class: a class index or "label"."""
    value = audit_target(text)
    if value == "predicted":
        raise argparse.ArgumentTypeError("give a class index or label: a dense output has no one predicted class")
    return value


def dense_target(args: argparse.Namespace) -> Tuple[Union[str, int], Optional[str]]:
    """(target, dense) from --target, or --target-class with --target-boxes."""
    if args.target_class is None:
        if args.target_boxes:
            raise InvalidInputError("--target-boxes goes with --target-class C (or label), the class to explain")
        return args.target or "predicted", None
    if args.target is not None:
        raise InvalidInputError("give --target (a classifier's class) or --target-class (a segmenter's or "
                                "detector's), not both")
    return args.target_class, "detection" if args.target_boxes else "segmentation"


def run(args: argparse.Namespace) -> int:
    """Run ``cnnlens audit``; print the counts and each group's clusters."""
    backend = load_model(args.model, args.device, args)
    methods = method_list(args.method or ["gradcam"], supported_methods(backend.capabilities))
    check_flags(args, methods)
    if args.layer and len(args.layer) > 1:
        raise InvalidInputError(f"--layer is given {len(args.layer)} times: an audit maps one layer per method "
                                f"(run one audit per layer)")
    options = {m: {k: v for k, v in method_options(m, args).items() if k != "batch_size"} for m in methods}
    target, dense = dense_target(args)
    result = audit(backend, args.data, args.out, methods, engine=args.engine, labels=args.labels,
                   size=tuple(args.size) if args.size else None, mean=args.mean, std=args.std, target=target,
                   dense=dense, iou=args.target_iou,
                   layer=args.layer[0] if args.layer else None, options={m: o for m, o in options.items() if o}, batch_size=args.batch_size,
                   map_size=args.map_size, shard_size=args.shard_size, max_cluster_maps=args.max_cluster_maps,
                   seed=args.cluster_seed, overwrite=args.overwrite, report=not args.no_report,
                   ray_address=args.ray_address, ray_cpus=args.ray_cpus, ray_actors=args.ray_actors,
                   model_name=args.model)
    s = result.summary
    rate = f", {s['images_per_second']:.1f} images/s" if s["images_per_second"] else ""
    print(f"explained {s['explained']} of {s['images']} images with {', '.join(s['methods'])} "
          f"({s['errors']} errors{rate}; {s['shards_resumed']} shards kept from an earlier run)")
    for group in result.groups:
        sizes = ", ".join(str(c.size) for c in group.clusters)
        print(f"  {group.title}: {group.count} maps, {len(group.clusters)} cluster(s) of {sizes}")
    print(f"wrote {args.out}: results/, clusters.parquet, errors.csv, "
          + ("report.html, " if not args.no_report else "") + "summary.json")
    return 0


def add(sub: Any) -> None:
    """Add ``audit`` to the ``cnnlens`` subcommands ``sub``."""
    p = sub.add_parser("audit", help="explain a whole dataset, cluster the maps per class (SpRAy), write a report")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("data", metavar="DATA", help="a folder of images (class sub-folders give labels) or a .csv / "
                   ".parquet manifest with a path column and optional label, top, left, bottom, right")
    p.add_argument("--out", "-o", required=True, help="the audit's folder (a rerun continues it)")
    p.add_argument("--method", "-m", action="append", metavar="M", help=f"method(s), repeat or comma-separate "
                   f"(gradcam): {', '.join(m for m in METHODS if m != 'feature_maps')}")
    p.add_argument("--layer", "-l", action="append", metavar="L",
                   help="the CAM family's layer (default: the last spatial layer); one layer per audit")
    p.add_argument("--labels", help="class names in the model's order, one per line")
    p.add_argument("--target", "-t", type=audit_target, default=None, metavar="predicted|label|CLASS",
                   help="explain each image's predicted class (default), its label, or one class for every image")
    p.add_argument("--target-class", type=audit_class, metavar="CLASS|label",
                   help="a segmenter: explain this class (or each image's label) over the region the model "
                   "predicts for it; with --target-boxes, a raw detection head (N, 4 + classes, anchors): the "
                   "class at each image's box")
    p.add_argument("--target-boxes", action="store_true",
                   help="with --target-class: explain the detection at each image's box (the manifest's top, "
                   "left, bottom, right)")
    p.add_argument("--target-iou", type=float, default=0.5, metavar="IOU",
                   help="with --target-boxes: the anchors whose box overlaps the image's with IoU >= this (0.5)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per model batch (32)")
    p.add_argument("--map-size", type=int, default=56, metavar="S", help="side of the stored maps (56)")
    p.add_argument("--shard-size", type=int, default=256, metavar="N", help="images per results file (256)")
    p.add_argument("--max-cluster-maps", type=int, default=5000, metavar="N",
                   help="most maps per class and method in the spectral clustering; the rest join the nearest (5000)")
    p.add_argument("--cluster-seed", type=int, default=0, metavar="S", help="the clustering's seed (0)")
    p.add_argument("--overwrite", action="store_true", help="start again instead of continuing the audit in --out")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local (threads) or ray (Ray Data)")
    p.add_argument("--ray-address", metavar="ADDR", help="a Ray cluster to join ('auto': the running one); "
                   "by default a local instance is started and shut down")
    p.add_argument("--ray-cpus", type=int, metavar="N", help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--ray-actors", type=int, metavar="N", help="model replicas on Ray (default: one per GPU, "
                   "else one per 4 CPUs)")
    add_option_flags(p, skip=("batch_size",))
    add_preprocessing(p)
    add_model_options(p)
    p.set_defaults(run=run)
