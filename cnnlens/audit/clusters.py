"""SpRAy over the results: cluster the maps of each (method, explained class), write
``clusters.parquet``, and summarise each group for the report and ``summary.json``.

Memory stays bounded whatever the dataset's size: only the light columns of every row are held
(path, method, class, a few numbers); maps are streamed. At most ``max_cluster_maps`` maps per
group are sampled into the spectral clustering (a seeded sample); the groups are processed in
waves whose samples fit :data:`SAMPLE_BUDGET_BYTES`, each wave one scan to gather its sample and
one scan to assign every other map to its nearest cluster and add it to the mean maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import spray
from .arrow import clusters_table, maps_of, pyarrow
from .job import AuditJob
from .summary import ClusterSummary, Example, GroupSummary

#: Most bytes of sampled maps held at once (the groups beyond it wait for the next wave).
SAMPLE_BUDGET_BYTES = 512 * 2 ** 20
#: Members shown per cluster, and maps listed as "outside the box" / "on the border".
EXAMPLES, LISTED = 4, 6
_LIGHT = ("path", "method", "target", "target_name", "label", "label_name", "predicted", "probability",
          "energy_in_box", "border_share")


@dataclass
class _Group:
    method: str
    target: int
    target_name: Optional[str]
    rows: np.ndarray                     # positions in the dataset, ascending
    sample: np.ndarray                   # positions (subset of rows) fitted
    model: Optional[spray.SprayModel] = None
    labels: Optional[np.ndarray] = None  # cluster of each of ``rows``
    sums: Optional[np.ndarray] = None    # (clusters, S, S) map sums
    picked: Dict[int, np.ndarray] = field(default_factory=dict)  # position -> map, for examples
    listed: List[int] = field(default_factory=list)  # positions the report lists (box, border)


def _dataset(folder: str) -> Any:
    pyarrow()
    import pyarrow.dataset as ds

    return ds.dataset(folder, format="parquet")  # files starting with "." or "_" are ignored


def _batches(dataset: Any, columns: Sequence[str]) -> Iterator[Tuple[int, Any]]:
    """(first row position, record batch) in the dataset's (file name) order."""
    start = 0
    for batch in dataset.to_batches(columns=list(columns), batch_size=4096):
        yield start, batch
        start += batch.num_rows


def _light(dataset: Any) -> Dict[str, np.ndarray]:
    table = dataset.to_table(columns=list(_LIGHT))
    return {name: np.asarray(table.column(name).to_numpy(zero_copy_only=False)) for name in _LIGHT}


def _groups(light: Dict[str, np.ndarray], job: AuditJob) -> List[_Group]:
    groups = []
    order = {m: k for k, m in enumerate(job.methods)}
    keys = sorted({(m, int(t)) for m, t in zip(light["method"], light["target"])}, key=lambda k: (order.get(k[0], 99), k[1]))
    for method, target in keys:
        rows = np.flatnonzero((light["method"] == method) & (light["target"] == target))
        sample = rows[spray.sample_indices(len(rows), job.max_cluster_maps, job.seed)]
        name = light["target_name"][rows[0]]
        groups.append(_Group(method, target, name if isinstance(name, str) else None, rows, sample))
    return groups


def _waves(groups: List[_Group], map_bytes: int) -> Iterator[List[_Group]]:
    wave: List[_Group] = []
    held = 0
    for group in groups:
        size = len(group.sample) * map_bytes
        if wave and held + size > SAMPLE_BUDGET_BYTES:
            yield wave
            wave, held = [], 0
        wave.append(group)
        held += size
    if wave:
        yield wave


def _maps_at(dataset: Any, wanted: np.ndarray) -> Dict[int, np.ndarray]:
    """Maps at the (sorted) dataset positions ``wanted``, in one scan."""
    out: Dict[int, np.ndarray] = {}
    for start, batch in _batches(dataset, ["map"]):
        lo, hi = np.searchsorted(wanted, [start, start + batch.num_rows])
        if hi > lo:
            local = wanted[lo:hi] - start
            maps = maps_of(batch.column(0).take(pyarrow().array(local)))
            out.update(zip(wanted[lo:hi].tolist(), maps))
    return out


def _fit(wave: List[_Group], dataset: Any, job: AuditJob) -> None:
    sampled = _maps_at(dataset, np.sort(np.concatenate([g.sample for g in wave])))
    for group in wave:
        maps = np.stack([sampled[p] for p in group.sample.tolist()])
        group.model = spray.fit(maps, max_clusters=job.max_clusters, seed=job.seed)
        group.picked = {p: sampled[p] for p in group.sample.tolist()}


def _assign(wave: List[_Group], dataset: Any, light: Dict[str, np.ndarray], map_size: int) -> None:
    """Every row's cluster (the sample keeps its fitted one), the clusters' map sums, and the
    maps of the rows the report lists."""
    for group in wave:
        group.labels = np.full(len(group.rows), -1, dtype=np.int64)
        group.sums = np.zeros((max(group.model.n_clusters, 1), map_size, map_size))
        fitted = np.searchsorted(group.rows, group.sample)
        group.labels[fitted] = group.model.labels
    for group in wave:
        group.listed = _listed_rows(group, light)
    listed = {int(p) for g in wave for p in g.listed}
    for start, batch in _batches(dataset, ["map"]):
        stop = start + batch.num_rows
        maps = None
        for group in wave:
            lo, hi = np.searchsorted(group.rows, [start, stop])
            if hi == lo:
                continue
            maps = maps_of(batch.column(0)) if maps is None else maps
            mine = maps[group.rows[lo:hi] - start]
            todo = group.labels[lo:hi] < 0
            if todo.any():
                group.labels[lo:hi][todo] = group.model.assign(mine[todo])
            np.add.at(group.sums, group.labels[lo:hi], mine.astype(np.float64))
            for position in listed.intersection(group.rows[lo:hi].tolist()):
                group.picked[position] = maps[position - start]


def _listed_rows(group: _Group, light: Dict[str, np.ndarray]) -> List[int]:
    energy = light["energy_in_box"][group.rows].astype(np.float64)
    border = light["border_share"][group.rows].astype(np.float64)
    boxed = np.flatnonzero(~np.isnan(energy))
    outside = boxed[np.argsort(energy[boxed], kind="stable")[:LISTED]]
    live = np.flatnonzero(~np.isnan(border))
    edge = live[np.argsort(-border[live], kind="stable")[:LISTED]]
    return group.rows[np.concatenate([outside, edge])].tolist()


def _example(position: int, group: _Group, light: Dict[str, np.ndarray], files: Dict[str, str],
             names: Dict[int, str], value: Optional[float] = None) -> Example:
    def get(name: str) -> Any:
        v = light[name][position]
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else v.item() if hasattr(v, "item") else v

    path = str(light["path"][position])
    predicted = get("predicted")
    return Example(path, files.get(path, path), group.picked[position], label=get("label"), label_name=get("label_name"),
                   predicted=predicted, probability=get("probability"), value=value,
                   predicted_name=names.get(predicted))


def _names(light: Dict[str, np.ndarray]) -> Dict[int, str]:
    """Class index -> name, from the names the rows carry (explained classes and labels)."""
    names: Dict[int, str] = {}
    for index, name in ((light["target"], light["target_name"]), (light["label"], light["label_name"])):
        for i, n in zip(index.tolist(), name.tolist()):
            if isinstance(n, str) and i is not None and i == i:
                names.setdefault(int(i), n)
    return names


def _summary(group: _Group, light: Dict[str, np.ndarray], files: Dict[str, str], names: Dict[int, str]) -> GroupSummary:
    sizes = np.bincount(group.labels, minlength=len(group.sums))
    clusters = []
    members = {k: [p for p, c in zip(group.sample.tolist(), group.model.labels) if c == k] for k in range(len(sizes))}
    for k, size in enumerate(sizes.tolist()):
        mean = (group.sums[k] / max(size, 1)).astype(np.float32)
        typical = sorted(members[k], key=lambda p: float(np.square(group.picked[p] - mean).sum()))[:EXAMPLES]
        clusters.append(ClusterSummary(k, size, mean, [_example(p, group, light, files, names) for p in typical]))
    listed = group.listed
    boxed = int((~np.isnan(light["energy_in_box"][group.rows].astype(np.float64))).sum())
    split = min(boxed, LISTED)
    return GroupSummary(
        group.method, group.target, group.target_name, len(group.rows),
        (group.sums.sum(axis=0) / len(group.rows)).astype(np.float32), clusters,
        [float(v) for v in group.model.eigenvalues], len(group.sample),
        outside_box=[_example(p, group, light, files, names, float(light["energy_in_box"][p])) for p in listed[:split]],
        on_border=[_example(p, group, light, files, names, float(light["border_share"][p])) for p in listed[split:]])


def cluster_results(results: str, clusters_path: str, job: AuditJob, files: Dict[str, str]) -> List[GroupSummary]:
    """Cluster the results in folder ``results``; write ``clusters_path`` atomically; return one
    summary per (method, class). ``files`` maps a row's path to the file to show."""
    import pyarrow.parquet as pq

    from ..adapters.files import atomic_path

    dataset = _dataset(results)
    light = _light(dataset)
    groups = _groups(light, job)
    names = _names(light)
    summaries = []
    with atomic_path(clusters_path) as temporary:
        writer = pq.ParquetWriter(temporary, clusters_table({n: [] for n in ("path", "method", "target", "cluster")}).schema)
        try:
            for wave in _waves(groups, 4 * job.map_size ** 2):
                _fit(wave, dataset, job)
                _assign(wave, dataset, light, job.map_size)
                for group in wave:
                    writer.write_table(clusters_table({"path": light["path"][group.rows].tolist(), "method": [group.method] * len(group.rows),
                                                       "target": [group.target] * len(group.rows), "cluster": group.labels.tolist()}))
                    summaries.append(_summary(group, light, files, names))
                    group.picked, group.sums = {}, None
        finally:
            writer.close()
    return summaries
