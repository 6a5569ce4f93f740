"""The results' Arrow schema, declared once: the columns of a results shard and of
``clusters.parquet``, and the conversions between them and NumPy.

``map`` is Arrow's canonical ``fixed_shape_tensor(float32, (S, S))`` extension type, which
plain pyarrow reads (``column.combine_chunks().to_numpy_ndarray()``) with nothing else
installed. Integers and floats that have no value (a row without a label or a box, the
statistics of an all-zero map) are nulls, never sentinels.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np


def pyarrow() -> Any:
    """The pyarrow module, or an ImportError saying which extra brings it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError("auditing a dataset needs pyarrow: pip install 'cnnlens[audit]'") from None
    return pa


#: Column -> (Arrow type name, meaning), in the order the results hold them. ``map`` is added
#: by :func:`results_schema` with its size.
RESULT_COLUMNS: Dict[str, tuple] = {
    "path": ("string", "the image as the manifest wrote it, or its path relative to the data folder"),
    "method": ("string", "the method that made the map"),
    "layer": ("string", "the layer of a CAM-family map (null for the others)"),
    "label": ("int32", "the image's class index (null when unknown)"),
    "label_name": ("string", "the label's class name (null when names are unknown)"),
    "predicted": ("int32", "the model's predicted class"),
    "probability": ("float32", "the softmax probability of the predicted class"),
    "target": ("int32", "the class explained: the predicted one, or the label with --target label"),
    "target_name": ("string", "the explained class's name (null when names are unknown)"),
    "peak_y": ("int32", "row of the map's maximum, in the model input's pixels (null for an all-zero map)"),
    "peak_x": ("int32", "column of the map's maximum"),
    "border_share": ("float32", "share of the map's heat in the outer 10 % band of the image"),
    "entropy": ("float32", "entropy of the heat over pixels / log(pixels): 0 one pixel, 1 spread evenly"),
    "energy_in_box": ("float32", "share of the heat inside the object box (null without a box)"),
    "box_top": ("int32", "the object box mapped to the model input's pixels (null without a box)"),
    "box_left": ("int32", ""),
    "box_bottom": ("int32", "exclusive"),
    "box_right": ("int32", "exclusive"),
}

CLUSTER_COLUMNS = {"path": "string", "method": "string", "target": "int32", "cluster": "int32"}


def _type(pa: Any, name: str) -> Any:
    return getattr(pa, name)()


def map_type(size: int) -> Any:
    """``fixed_shape_tensor(float32, (size, size))``."""
    pa = pyarrow()
    return pa.fixed_shape_tensor(pa.float32(), (int(size), int(size)))


def results_schema(map_size: int) -> Any:
    """The schema of every results shard."""
    pa = pyarrow()
    fields = [pa.field(name, _type(pa, kind)) for name, (kind, _) in RESULT_COLUMNS.items()]
    fields.insert(list(RESULT_COLUMNS).index("target_name") + 1, pa.field("map", map_type(map_size)))
    return pa.schema(fields)


def _column(pa: Any, values: Any, kind: str) -> Any:
    if kind == "string":
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    array = np.asarray(values, dtype=np.float64)
    missing = np.isnan(array)
    dtype = np.int32 if kind == "int32" else np.float32
    return pa.array(np.where(missing, 0, array).astype(dtype), type=_type(pa, kind), mask=missing)


def maps_array(maps: np.ndarray) -> Any:
    """(N, S, S) float32 -> a fixed-shape tensor array."""
    pa = pyarrow()
    maps = np.ascontiguousarray(maps, dtype=np.float32)
    size = maps.shape[1]
    storage = pa.FixedSizeListArray.from_arrays(pa.array(maps.reshape(-1)), size * maps.shape[2])
    return pa.ExtensionArray.from_storage(map_type(size), storage)


def results_table(columns: Dict[str, Sequence[Any]], maps: np.ndarray, map_size: int) -> Any:
    """A results table from column lists (None / NaN for nulls) and the (N, S, S) maps."""
    pa = pyarrow()
    schema = results_schema(map_size)
    arrays = []
    for field in schema:
        if field.name == "map":
            arrays.append(maps_array(maps.reshape(-1, map_size, map_size)))
        else:
            arrays.append(_column(pa, columns[field.name], RESULT_COLUMNS[field.name][0]))
    return pa.Table.from_arrays(arrays, schema=schema)


def maps_of(column: Any) -> np.ndarray:
    """A ``map`` column (chunked or not) -> float32 (N, S, S)."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if len(array) == 0:
        size = array.type.shape[0]
        return np.zeros((0, size, size), dtype=np.float32)
    return np.asarray(array.to_numpy_ndarray(), dtype=np.float32)


def clusters_table(columns: Dict[str, Sequence[Any]]) -> Any:
    """``clusters.parquet``'s table from column lists."""
    pa = pyarrow()
    schema = pa.schema([pa.field(n, _type(pa, k)) for n, k in CLUSTER_COLUMNS.items()])
    return pa.Table.from_arrays([_column(pa, columns[n], k) for n, k in CLUSTER_COLUMNS.items()], schema=schema)
