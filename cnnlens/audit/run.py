"""``cnnlens.audit``: explain every image of a dataset, cluster the maps, write the report.

The steps: read the data source; check DIR (a rerun continues the same job); explain the shards
not finished yet on the chosen engine; then, from the results on disk, ``errors.csv``, SpRAy's
``clusters.parquet``, ``report.html`` and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..adapters.files import atomic_path
from ..backends import backend_for
from ..core import progress
from ..core.backend import Backend
from ..core.errors import CnnlensError, InvalidInputError
from .explainer import BatchExplainer, Piece, shard_table
from .job import AuditJob, describe_target, freeze_options
from .shards import ShardStore, pending
from .sources import DataSource, read_source
from .summary import GroupSummary

ENGINES = ("local", "ray")


class NothingExplained(CnnlensError):
    """No image of the data could be explained."""


@dataclass
class AuditResult:
    """What :func:`audit` wrote in ``out``: the counts and timings of ``summary.json``
    (``summary``) and the per-(method, class) clusters (``groups``)."""

    out: str
    summary: Dict[str, Any]
    groups: List[GroupSummary] = field(default_factory=list, repr=False)

    @property
    def results(self) -> str:
        """The results' Parquet dataset folder."""
        return os.path.join(self.out, "results")


def audit(model: Any, data: Union[str, "os.PathLike[str]"], out: Union[str, "os.PathLike[str]"],
          methods: Sequence[str] = ("gradcam",), *, engine: str = "local", labels: Union[None, str, Sequence[str]] = None,
          size: Optional[Tuple[int, int]] = None, mean: Optional[Sequence[float]] = None,
          std: Optional[Sequence[float]] = None, target: Union[str, int] = "predicted",
          dense: Optional[str] = None, iou: float = 0.5, layer: Optional[str] = None,
          options: Optional[Dict[str, Dict[str, Any]]] = None, batch_size: int = 32, map_size: int = 56,
          shard_size: int = 256, max_cluster_maps: int = 5000, max_clusters: int = 8, seed: int = 0,
          overwrite: bool = False, report: bool = True, ray_address: Optional[str] = None,
          ray_cpus: Optional[int] = None, ray_actors: Optional[int] = None, device: Optional[str] = None,
          output: Union[None, int, str] = None, layout: str = "auto", trust_pickle: bool = False,
          model_name: Optional[str] = None) -> AuditResult:
    """Explain every image of ``data`` with ``methods`` and find the model's strategies.

    ``model``: anything :func:`cnnlens.load` takes. ``data``: a folder of images (class
    sub-folders give labels) or a ``.csv`` / ``.parquet`` manifest with ``path`` and optional
    ``label`` and ``top, left, bottom, right`` box columns. ``out``: the folder written (see the
    documentation's docs/guides/audit.md). ``labels``: class names in the model's order (a file with one
    per line, or a list). ``size``/``mean``/``std``: preprocessing (default: the ONNX input's size,
    else 224 x 224; ImageNet statistics). ``target``: "predicted", "label" or a class index; ``dense``:
    for a segmenter "segmentation" (the class over its predicted region), for a raw detection head
    "detection" (the class at each image's manifest box, IoU >= ``iou``), the class from ``target``
    (an index or "label"). ``layer`` and
    ``options`` (per method): as for :func:`cnnlens.explain`. ``engine``: "local" or "ray"
    (``ray_address``: a cluster to join, "auto" for the running one; by default a local instance
    with ``ray_cpus`` CPUs, shut down at the end; ``ray_actors``: model replicas). A rerun into
    the same ``out`` continues where the last one stopped; ``overwrite`` starts again.
    Raises NothingExplained when no image could be explained.
    """
    from ..adapters.images import IMAGENET_MEAN, IMAGENET_STD, input_geometry

    started = time.perf_counter()
    if engine not in ENGINES:
        raise InvalidInputError(f"engine must be one of {ENGINES}, got {engine!r}")
    _check_dependencies(engine, report)
    backend = backend_for(model, device=device, output=output, trust_pickle=trust_pickle, layout=layout)
    source = read_source(data, labels)
    channels, fitted = input_geometry(backend, size)
    job = AuditJob(methods=tuple(methods), layer=layer, options=freeze_options(options), size=tuple(fitted),
                   mean=tuple(mean or IMAGENET_MEAN), std=tuple(std or IMAGENET_STD), channels=channels,
                   map_size=map_size, target=target, dense=dense, iou=iou, batch_size=batch_size, shard_size=shard_size,
                   max_cluster_maps=max_cluster_maps, max_clusters=max_clusters, seed=seed)
    explainer = BatchExplainer(backend, job, source.class_names)
    explainer.check_classifier()
    name = model_name or _describe(model, backend)
    store = ShardStore(os.fspath(out), job.fingerprint(source.items, name), overwrite=overwrite)
    resumed = len(store.finished())
    work = pending(source.items, job.shard_size, store.finished())

    def write(shard: int, piece: Piece, record: Dict[str, Any]) -> None:
        record = {**record, "rows": len(piece), "explained": len(set(piece.indices))}
        store.write(shard, shard_table(piece, job), piece.errors, record)

    explain_started = time.perf_counter()
    todo = sum(len(items) for items in work.values())
    with progress.task("audit", todo, unit="image") as advance:
        if engine == "local":
            from .local import run_local

            run_local(explainer, job, work, write, advance)
        else:
            from .ray_engine import run_ray

            run_ray(backend, job, source.class_names, work, write, advance, address=ray_address, cpus=ray_cpus,
                    actors=ray_actors)
    explain_seconds = time.perf_counter() - explain_started
    return _finish(store, source, job, name, engine, report, resumed, todo, explain_seconds, started)


def _check_dependencies(engine: str, report: bool) -> None:
    """Import what the audit will need now, so a missing extra fails before any work is done."""
    from .arrow import pyarrow
    from .spray import _deps

    pyarrow()
    _deps()
    if report:
        from ..adapters.images import _pil

        _pil()
    if engine == "ray":
        from .ray_engine import _ray

        _ray()


def _describe(model: Any, backend: Backend) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    inner = backend.model
    return f"{backend.name}:{type(inner).__module__}.{type(inner).__qualname__}"


def _write_errors(path: str, errors: List[Dict[str, Any]]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "method", "error"])
        for error in errors:
            writer.writerow([error["path"], error["method"], error["error"]])


def _finish(store: ShardStore, source: DataSource, job: AuditJob, name: str, engine: str, report: bool,
            resumed: int, todo: int, explain_seconds: float, started: float) -> AuditResult:
    records = store.records()
    errors = [e for r in records for e in r["errors"]]
    _write_errors(store.output("errors.csv"), errors)
    rows = sum(r["rows"] for r in records)
    explained = sum(r["explained"] for r in records)
    if rows == 0:
        first = errors[0]["error"] if errors else "no images"
        raise NothingExplained(f"none of the {len(source.items)} images could be explained (first error: {first}); "
                               f"every failure is listed in {store.output('errors.csv')}")
    from .clusters import cluster_results

    cluster_started = time.perf_counter()
    files = {item.path: item.file for item in source.items}
    groups = cluster_results(os.path.join(store.out, "results"), store.output("clusters.parquet"), job, files)
    cluster_seconds = time.perf_counter() - cluster_started
    summary = {
        "model": name, "data": source.description, "engine": engine, "methods": list(job.methods),
        "target": job.target, "dense": job.dense, "map_size": job.map_size, "input_size": list(job.size),
        "images": len(source.items), "explained": explained, "failed_images": len({e["path"] for e in errors}),
        "errors": len(errors), "rows": rows, "shards": len(records), "shards_resumed": resumed,
        "seconds": {"explain": round(explain_seconds, 3), "cluster": round(cluster_seconds, 3)},
        "images_per_second": round(todo / explain_seconds, 2) if todo and explain_seconds > 0 else None,
        "clusters": {g.method: {} for g in groups},
    }
    for g in groups:
        summary["clusters"][g.method][str(g.target)] = {"name": g.target_name, "maps": g.count, "clustered": g.clustered,
                                                        "sizes": [c.size for c in g.clusters]}
    if report:
        from .report import write_audit_report

        report_started = time.perf_counter()
        meta = {"model": name, "data": source.description, "methods": ", ".join(job.methods),
                "explained": f"{explained} of {len(source.items)} images ({len(errors)} errors in errors.csv)",
                "target": describe_target(job.target, job.dense)}
        write_audit_report(store.output("report.html"), groups, input_size=job.size, title=f"cnnlens audit: {name}",
                           meta=meta)
        summary["seconds"]["report"] = round(time.perf_counter() - report_started, 3)
    summary["seconds"]["total"] = round(time.perf_counter() - started, 3)
    with atomic_path(store.output("summary.json")) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return AuditResult(store.out, summary, groups)
