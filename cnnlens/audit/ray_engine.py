"""The Ray engine: the same job on Ray Data, for when one machine is not enough.

The images of the unfinished shards become a Ray dataset; ``map_batches`` runs them through a
pool of actors, each loading the model once (GPUs requested when the cluster has them), each
decoding its batch in threads and explaining it with the same :class:`BatchExplainer` as the
local engine. Rows come back to the driver, which writes each shard as soon as all its images
are back, in the same format as the local engine: Ray's tensor column is converted to Arrow's
canonical fixed-shape tensor before writing, so plain pyarrow reads the results. DIR need only
be on the driver's machine.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..backends import from_spec
from ..core.backend import Backend, BackendSpec
from .arrow import RESULT_COLUMNS
from .explainer import BatchExplainer, Piece, Prepared, error_record
from .job import AuditJob
from .local import DECODE_THREADS, _prepared, batches
from .shards import shard_of
from .sources import Item

#: CPUs each actor gets when the cluster has no GPUs (its torch / ONNX Runtime threads).
CPUS_PER_ACTOR = 4
_STRINGS = tuple(name for name, (kind, _) in RESULT_COLUMNS.items() if kind == "string")


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("the Ray engine needs Ray Data: pip install 'cnnlens[ray]'") from None
    return ray


def _encode(piece: Piece, map_size: int) -> Dict[str, np.ndarray]:
    """A piece as equal-length numpy columns (Ray's batch format): result rows, then one row per
    error (``error`` non-empty, its map zeros). Nullable numbers travel as float64 with NaN."""
    n, errors = len(piece), piece.errors
    out: Dict[str, np.ndarray] = {
        "index": np.array(piece.indices + [e["index"] for e in errors], dtype=np.int64),
        "error": np.array([""] * n + [e["error"] for e in errors], dtype=object),
        "error_method": np.array([""] * n + [e["method"] for e in errors], dtype=object),
        "map": np.concatenate([piece.stacked_maps(map_size), np.zeros((len(errors), map_size, map_size), np.float32)]),
    }
    for name, values in piece.columns.items():
        if name in _STRINGS:
            out[name] = np.array([("" if v is None else v) for v in values] + [""] * len(errors), dtype=object)
            out[name + "_null"] = np.array([v is None for v in values] + [True] * len(errors))
        else:
            out[name] = np.array([np.nan if v is None else v for v in values] + [np.nan] * len(errors), dtype=np.float64)
    return out


def _decode(batch: Dict[str, np.ndarray], paths: Dict[int, str]) -> Dict[int, Piece]:
    """Ray's output batch back into one piece per image index."""
    pieces: Dict[int, Piece] = {}
    for r, index in enumerate(batch["index"].tolist()):
        piece = pieces.setdefault(index, Piece())
        if batch["error"][r]:
            piece.errors.append({"index": index, "path": paths[index], "method": str(batch["error_method"][r]),
                                 "error": str(batch["error"][r])})
            continue
        for name, (kind, _) in RESULT_COLUMNS.items():
            value = batch[name][r]
            if kind == "string":
                value = None if batch[name + "_null"][r] else str(value)
            elif np.isnan(value):
                value = None
            elif kind == "int32":
                value = int(value)
            else:
                value = float(value)
            piece.columns[name].append(value)
        piece.maps.append(np.asarray(batch["map"][r], dtype=np.float32)[None])
        piece.indices.append(index)
    return pieces


class _Explain:
    """A Ray actor: loads the model once, then explains model batches (one per dataset row, the
    same batches the local engine makes)."""

    def __init__(self, spec: BackendSpec, job: AuditJob, names: Optional[Sequence[str]]):
        self.backend = from_spec(spec)
        self.job = job
        self.explainer = BatchExplainer(self.backend, job, names)
        self.pool = futures.ThreadPoolExecutor(DECODE_THREADS)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        piece = Piece()
        for text in batch["items"]:  # one model batch per row
            items = [Item(index, path, file, label, None if box is None else tuple(box))
                     for index, path, file, label, box in json.loads(str(text))]
            ready = []
            for item, result in _prepared(items, self.job, self.pool, ahead=len(items)):
                if isinstance(result, Prepared):
                    ready.append(result)
                else:
                    piece.errors.append(error_record(item, result))
            piece.extend(self.explainer.explain(ready))
        return _encode(piece, self.job.map_size)


def _start(ray: Any, address: Optional[str], cpus: Optional[int]) -> bool:
    """Connect to Ray; True when this call started the instance (and must shut it down)."""
    if ray.is_initialized():
        return False
    settings = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **settings)
    else:
        ray.init(num_cpus=cpus or os.cpu_count(), **settings)
    return True


def run_ray(backend: Backend, job: AuditJob, names: Optional[Sequence[str]], work: Dict[int, List[Item]],
            write: Callable[[int, Piece, Dict[str, Any]], None], advance: Callable[[int], None],
            address: Optional[str] = None, cpus: Optional[int] = None, actors: Optional[int] = None) -> None:
    """Explain the items of every shard in ``work`` on Ray; ``write`` each shard as it completes."""
    if not work:
        return
    ray = _ray()
    spec = backend.spec()  # the model as it travels to the actors: every replica explains the same scores
    started = _start(ray, address, cpus)
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.verbose_progress = False
        resources = ray.cluster_resources()
        gpus, total_cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        count = actors or (gpus if gpus else max(1, total_cpus // CPUS_PER_ACTOR))
        per_actor = {"num_gpus": 1} if gpus else {"num_cpus": max(1, total_cpus // count)}
        items = [item for shard in sorted(work) for item in work[shard]]
        rows = [{"items": json.dumps([[i.index, i.path, i.file, i.label, i.box] for i in chunk])}
                for shard in sorted(work) for chunk in batches(work[shard], job.batch_size)]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 200)))
        explained = dataset.map_batches(_Explain, fn_constructor_kwargs={"spec": spec, "job": job, "names": names},
                                        batch_size=1, batch_format="numpy",
                                        compute=ray.data.ActorPoolStrategy(size=count), **per_actor)
        paths = {i.index: i.path for i in items}
        left = {shard: len(members) for shard, members in work.items()}
        collected = {shard: Piece() for shard in work}
        last = time.perf_counter()
        for batch in explained.iter_batches(batch_size=None, batch_format="numpy"):
            for index, piece in sorted(_decode(batch, paths).items()):
                shard = shard_of(index, job.shard_size)
                collected[shard].extend(piece)
                left[shard] -= 1
                advance(1)
                if left[shard] == 0:
                    now = time.perf_counter()  # shards finish in parallel: the time since the previous one
                    write(shard, collected.pop(shard), {"shard": shard, "images": len(work[shard]), "seconds": now - last})
                    last = now
    finally:
        if started:
            ray.shutdown()
