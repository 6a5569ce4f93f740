"""An audit's settings, declared once: what to explain, how images become inputs, how maps are
stored and clustered. The CLI's flags, ``cnnlens.audit``'s keywords, the resume check and the
engines all read this one declaration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..adapters.images import IMAGENET_MEAN, IMAGENET_STD
from ..core.errors import InvalidInputError
from ..core.methods import LAYER_MAP, lookup
from .sources import Item

#: ``--target``: what each image's map explains (or a class index: that class for every image).
TARGETS = ("predicted", "label")
#: ``dense``: the explained class is a segmentation class over its predicted region, or a detection
#: at the image's box (the manifest's), as ``cnnlens.targets.segmentation`` / ``detection`` make them
DENSE = ("segmentation", "detection")


def describe_target(target: Union[str, int], dense: Optional[str] = None) -> str:
    """What an audit's maps explain, in words."""
    what = {"predicted": "the predicted class", "label": "the label"}.get(str(target), f"class {target}")
    return {"segmentation": f"{what} over its predicted region", "detection": f"{what} at each image's box"}.get(
        str(dense), what)


@dataclasses.dataclass(frozen=True)
class AuditJob:
    """What an audit does.

    ``methods``: the methods to run (not ``feature_maps``: activations are not a heat map);
    ``layer``: the CAM family's layer (None: each method's default); ``options``: per method,
    its options; ``size`` (H, W), ``mean``, ``std``, ``channels``: preprocessing, as
    ``cnnlens explain`` does it; ``map_size``: the stored maps' side; ``target``: "predicted"
    (explain the predicted class), "label", or a class index (that class on every image, as
    ``cnnlens explain --target``); ``dense``: None for a classifier, "segmentation" (the class's
    score over the region the model predicts for it) or "detection" (the class at the anchors of a
    raw detection head near the image's box, IoU >= ``iou``) — the class then comes from
    ``target``, a class index or "label"; ``batch_size``: images per model batch;
    ``shard_size``: images per results file; ``max_cluster_maps``: most maps per (method,
    class) that go into the spectral clustering (the rest join their nearest cluster);
    ``max_clusters``: the eigengap looks at most this many clusters; ``seed``: the clustering's.
    """

    methods: Tuple[str, ...] = ("gradcam",)
    layer: Optional[str] = None
    options: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = ()
    size: Tuple[int, int] = (224, 224)
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    map_size: int = 56
    target: Union[str, int] = "predicted"
    dense: Optional[str] = None
    iou: float = 0.5
    batch_size: int = 32
    shard_size: int = 256
    max_cluster_maps: int = 5000
    max_clusters: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        methods = tuple(lookup(m).name for m in self.methods)
        if not methods:
            raise InvalidInputError("no methods given: name at least one, e.g. gradcam")
        flat = [m for m in methods if lookup(m).kind == LAYER_MAP]
        if flat:
            raise InvalidInputError(f"{flat[0]} gives activations, not a heat map, and cannot be audited: "
                                    f"choose an attribution method (gradcam, saliency, occlusion, ...)")
        if len(set(methods)) != len(methods):
            raise InvalidInputError(f"a method is named twice in {list(self.methods)}")
        object.__setattr__(self, "methods", methods)
        if isinstance(self.target, (int, np.integer)) and not isinstance(self.target, bool) and self.target >= 0:
            object.__setattr__(self, "target", int(self.target))
        elif self.target not in TARGETS:
            raise InvalidInputError(f"target must be one of {TARGETS} or a class index, got {self.target!r}")
        if self.dense is not None and self.dense not in DENSE:
            raise InvalidInputError(f"dense must be None or one of {DENSE}, got {self.dense!r}")
        if self.dense is not None and self.target == "predicted":
            raise InvalidInputError(f"a {self.dense} audit explains one class per image: give the class "
                                    f"(--target-class C) or the label (--target-class label)")
        if isinstance(self.iou, bool) or not isinstance(self.iou, (int, float)) or not 0 < self.iou <= 1:
            raise InvalidInputError(f"iou must be in (0, 1], got {self.iou!r}")
        for name in ("map_size", "batch_size", "shard_size", "max_cluster_maps", "max_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if self.map_size < 4:
            raise InvalidInputError(f"map_size must be at least 4, got {self.map_size}")
        for method, given in self.options:
            lookup(method).check_options(dict(given))

    def method_options(self, method: str) -> Dict[str, Any]:
        """The options given for ``method``."""
        return dict(dict(self.options).get(method, ()))

    def layer_for(self, method: str) -> Optional[str]:
        """The layer ``method`` maps: the job's, for a method that takes a layer (None: its default)."""
        return self.layer if lookup(method).layered else None

    def fingerprint(self, items: Sequence[Item], model: str) -> Dict[str, Any]:
        """What a rerun must share with the run that wrote the shards it keeps: these settings
        (but the clustering's, which reruns redo), the model's description and every image
        with its label and box, in order."""
        digest = hashlib.sha256()
        for item in items:
            digest.update(json.dumps([item.path, item.label, item.box]).encode())
            digest.update(b"\n")
        settings = {k: v for k, v in dataclasses.asdict(self).items()
                    if k not in ("batch_size", "max_cluster_maps", "max_clusters", "seed")}
        return {"settings": json.loads(json.dumps(settings, default=str)), "model": model,
                "images": len(items), "images_sha256": digest.hexdigest()}


def freeze_options(options: Optional[Dict[str, Dict[str, Any]]]) -> Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...]:
    """``{"occlusion": {"window": 16}}`` -> the hashable form ``AuditJob.options`` holds."""
    out: List[Tuple[str, Tuple[Tuple[str, Any], ...]]] = []
    for method, given in sorted((options or {}).items()):
        if not isinstance(given, dict):
            raise InvalidInputError(f"options for {method!r} must be a dict of option -> value, got {given!r}")
        out.append((lookup(method).name, tuple(sorted(given.items()))))
    return tuple(out)
