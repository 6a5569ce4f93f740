"""What an audit reads: a folder of images (class sub-folders give labels) or a CSV / Parquet
manifest with a ``path`` column, optional ``label`` and an object box.

The order of :attr:`DataSource.items` is the job's order (it fixes which shard holds which
image): a folder's files sorted as torchvision's ``ImageFolder`` sorts them, a manifest's rows
as written.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..core.errors import InvalidInputError

#: File name endings read as images in a folder (torchvision's ImageFolder's list).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
BOX_COLUMNS = ("top", "left", "bottom", "right")

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class Item:
    """One image of the job: ``index`` its place in the job, ``path`` as the results show it (the
    manifest's string, or the path relative to the data folder), ``file`` where it is read,
    ``label`` the class index (None when unknown), ``box`` (top, left, bottom, right) in the
    stored image's pixels (None when none)."""

    index: int
    path: str
    file: str
    label: Optional[int] = None
    box: Optional[Box] = None


@dataclass
class DataSource:
    """The images of an audit and the class names, when known."""

    items: List[Item]
    class_names: Optional[List[str]]
    description: str

    def label_name(self, label: Optional[int]) -> Optional[str]:
        """The name of class ``label``, or None when unknown."""
        names = self.class_names
        return names[label] if names is not None and label is not None and 0 <= label < len(names) else None


def read_source(data: Union[str, "os.PathLike[str]"], labels: Union[None, str, Sequence[str]] = None) -> DataSource:
    """The images named by ``data`` (a folder, or a ``.csv`` / ``.parquet`` manifest).

    ``labels``: the class names in the model's order (a text file with one per line, or a
    list); folder names and name labels in a manifest are mapped through it. Without it, names
    are numbered in sorted order, as ``ImageFolder`` does.
    """
    name = os.fspath(data)
    names = _class_names(labels)
    if os.path.isdir(name):
        return _folder(name, names)
    if not os.path.exists(name):
        raise InvalidInputError(f"DATA {name!r} does not exist: give a folder of images or a .csv / .parquet manifest")
    ending = os.path.splitext(name)[1].lower()
    if ending == ".csv":
        return _manifest(name, _csv_rows(name), names)
    if ending in (".parquet", ".pq"):
        return _manifest(name, _parquet_rows(name), names)
    raise InvalidInputError(f"DATA {name!r} is neither a folder nor a .csv / .parquet manifest")


def _class_names(labels: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        try:
            with open(labels, encoding="utf-8") as handle:
                names = [line.rstrip("\r\n") for line in handle]
        except OSError as error:
            raise InvalidInputError(f"cannot read the labels file {os.fspath(labels)!r}: {error}") from None
        while names and not names[-1]:
            names.pop()
    else:
        names = [str(n) for n in labels]
    if not names:
        raise InvalidInputError("the labels list is empty: give one class name per line, in the model's order")
    return names


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _files_under(folder: str) -> List[str]:
    found = []
    walked = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        walked.append((root, files))
    for root, files in sorted(walked):  # ImageFolder's order: folders by path, then files by name
        found.extend(os.path.join(root, f) for f in sorted(files) if _is_image(f))
    return found


def _folder(folder: str, names: Optional[List[str]]) -> DataSource:
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if names is None:
        names = classes or None
    index = {n: i for i, n in enumerate(names or [])}
    missing = [c for c in classes if c not in index]
    if missing:
        raise InvalidInputError(f"class folder(s) {', '.join(map(repr, missing[:5]))} of {folder!r} are not in the labels "
                                f"list ({len(names or [])} names): every class folder must be named as a class")
    items: List[Item] = []
    loose = sorted(f for f in os.listdir(folder) if _is_image(f) and os.path.isfile(os.path.join(folder, f)))
    for cls in classes:
        for file in _files_under(os.path.join(folder, cls)):
            items.append(Item(len(items), os.path.relpath(file, folder).replace(os.sep, "/"), file, index[cls]))
    for f in loose:  # images beside the class folders have no label
        items.append(Item(len(items), f, os.path.join(folder, f)))
    if not items:
        raise InvalidInputError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}")
    return DataSource(items, names, f"folder {folder}")


def _csv_rows(path: str) -> Tuple[List[str], List[Dict[str, Any]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return [c.strip() for c in reader.fieldnames or []], [{k.strip(): v for k, v in r.items() if k} for r in rows]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InvalidInputError(f"cannot read the manifest {path!r} as CSV: {error}") from None


def _parquet_rows(path: str) -> Tuple[List[str], List[Dict[str, Any]]]:
    from .arrow import pyarrow

    pa = pyarrow()
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise InvalidInputError(f"cannot read the manifest {path!r} as Parquet: {error}") from None
    return list(table.column_names), table.to_pylist()


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and value != value)


def _manifest(path: str, read: Tuple[List[str], List[Dict[str, Any]]], names: Optional[List[str]]) -> DataSource:
    columns, rows = read
    if "path" not in columns:
        raise InvalidInputError(f"the manifest {path!r} has no 'path' column (it has: {', '.join(columns) or 'none'})")
    given = [c for c in BOX_COLUMNS if c in columns]
    if given and len(given) != 4:
        raise InvalidInputError(f"the manifest {path!r} has box column(s) {given} but not all of {list(BOX_COLUMNS)}")
    folder = os.path.dirname(os.path.abspath(path))
    raw_labels = [r.get("label") for r in rows] if "label" in columns else [None] * len(rows)
    labels, names = _labels(raw_labels, names, path)
    items, seen = [], {}  # type: List[Item], Dict[str, int]
    for number, (row, label) in enumerate(zip(rows, labels), start=2 if path.lower().endswith(".csv") else 1):
        where = f"row {number} of {path!r}"
        text = row.get("path")
        if _empty(text):
            raise InvalidInputError(f"{where} has an empty path")
        text = str(text)
        if text in seen:
            raise InvalidInputError(f"{where} repeats path {text!r} (first on row {seen[text]}): list each image once")
        seen[text] = number
        box = _box(row, where) if given else None
        file = text if os.path.isabs(text) else os.path.join(folder, text)
        items.append(Item(len(items), text, file, label, box))
    if not items:
        raise InvalidInputError(f"the manifest {path!r} lists no images")
    return DataSource(items, names, f"manifest {path}")


def _labels(raw: List[Any], names: Optional[List[str]], path: str) -> Tuple[List[Optional[int]], Optional[List[str]]]:
    """Labels as class indices: integers stay, names map through ``names`` (or sorted order)."""
    present = [v for v in raw if not _empty(v)]

    def integer(v: Any) -> bool:
        return isinstance(v, int) or (isinstance(v, float) and v.is_integer()) or \
            (isinstance(v, str) and v.strip().lstrip("-").isdigit())

    if all(integer(v) for v in present):
        out = [None if _empty(v) else int(float(v)) for v in raw]
        bad = [v for v in out if v is not None and (v < 0 or (names is not None and v >= len(names)))]
        if bad:
            raise InvalidInputError(f"label {bad[0]} in {path!r} is not a class index (0..{len(names) - 1 if names else 'K-1'})")
        return out, names
    if names is None:
        names = sorted({str(v).strip() for v in present})
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({str(v).strip() for v in present} - set(index))
    if unknown:
        raise InvalidInputError(f"label(s) {', '.join(map(repr, unknown[:5]))} in {path!r} are not in the labels list")
    return [None if _empty(v) else index[str(v).strip()] for v in raw], names


def _box(row: Dict[str, Any], where: str) -> Optional[Box]:
    values = [row.get(c) for c in BOX_COLUMNS]
    if all(_empty(v) for v in values):
        return None
    if any(_empty(v) for v in values):
        raise InvalidInputError(f"{where} gives only part of a box: give all of top, left, bottom, right, or none")
    try:
        top, left, bottom, right = (float(v) for v in values)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where} has a box value that is not a number: {values}") from None
    if not (bottom > top and right > left) or min(top, left) < 0:
        raise InvalidInputError(f"{where} has an empty or negative box {values}: need 0 <= top < bottom and 0 <= left < right")
    return top, left, bottom, right
