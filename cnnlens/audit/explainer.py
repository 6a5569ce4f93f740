"""One batch of an audit: image files -> model inputs -> maps -> result rows.

Both engines use this, the local one in its main thread and the Ray one inside each actor, so
a row is the same whichever engine made it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.backend import Backend
from ..core.errors import CnnlensError, InvalidInputError, ModelError
from ..core.mapstats import summarise
from ..core.methods import run
from ..core.methods.support import require
from ..core.targets import probabilities
from .arrow import RESULT_COLUMNS
from .job import AuditJob
from .sources import Item


@dataclass
class Prepared:
    """An image ready for the model: ``x`` float32 (C, H, W); ``box`` the item's box mapped to
    the input's pixels (None without one)."""

    item: Item
    x: np.ndarray
    box: Optional[Tuple[int, int, int, int]]


def prepare(item: Item, job: AuditJob) -> Prepared:
    """Read, fit and normalise one image as ``cnnlens explain`` does; its box goes through the
    same resize and crop. Raises InvalidInputError for a file that cannot be read."""
    from ..adapters.images import fit, fit_box, load_image, normalize

    if job.target == "label" and item.label is None:
        raise InvalidInputError("the image has no label, and --target label explains the label: give it one "
                                "(a class folder, or the manifest's label column), or explain the prediction")
    if job.dense == "detection" and item.box is None:
        raise InvalidInputError("the image has no box, and a detection audit explains the detection at each "
                                "image's box: give the manifest's top, left, bottom, right columns")
    image = load_image(item.file)
    x = normalize(fit(image, job.size), job.mean, job.std, job.channels)[0]
    box = fit_box(item.box, image.shape[:2], job.size) if item.box is not None else None
    return Prepared(item, x, box)


@dataclass
class Piece:
    """What a batch produced: result rows as column lists and (n, S, S) maps, ``indices`` the
    job index of each row's image, and ``errors`` as dicts (index, path, method, error)."""

    columns: Dict[str, List[Any]] = field(default_factory=lambda: {name: [] for name in RESULT_COLUMNS})
    maps: List[np.ndarray] = field(default_factory=list)
    indices: List[int] = field(default_factory=list)
    errors: List[Dict[str, Any]] = field(default_factory=list)

    def extend(self, other: "Piece") -> None:
        for name, values in other.columns.items():
            self.columns[name].extend(values)
        self.maps.extend(other.maps)
        self.indices.extend(other.indices)
        self.errors.extend(other.errors)

    def stacked_maps(self, size: int) -> np.ndarray:
        return np.concatenate(self.maps) if self.maps else np.zeros((0, size, size), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.indices)


def error_record(item: Item, error: BaseException, method: str = "") -> Dict[str, Any]:
    """An ``errors.csv`` row for ``item``."""
    return {"index": item.index, "path": item.path, "method": method, "error": str(error) or type(error).__name__}


def _one_blas_thread() -> Any:
    """BLAS on one thread while the maps are summarised: BLAS threads left spinning between the
    model's batches slow its next pass (threadpoolctl comes with scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


class BatchExplainer:
    """Explains batches of prepared images with every method of ``job`` on ``backend``."""

    def __init__(self, backend: Backend, job: AuditJob, class_names: Optional[Sequence[str]] = None):
        for method in job.methods:
            require(backend, method, context="audit: ")
        self.backend, self.job = backend, job
        self.names = list(class_names) if class_names is not None else None
        self._dense: Optional[Tuple[Tuple[int, ...], np.ndarray]] = None  # the last batch's dense weights

    def check_classifier(self) -> None:
        """Raise ModelError unless the model's output is (N, classes): one forward pass on a blank image
        (a dense audit's output is checked by its targets, image by image)."""
        x = np.zeros((1, self.job.channels) + tuple(self.job.size), dtype=np.float32)
        shape = tuple(np.asarray(self.backend.forward(x).logits).shape)
        if len(shape) != 2 and self.job.dense is None:
            raise ModelError(f"the model's output has shape {shape}; an audit explains classifiers, whose output "
                             f"is (N, classes): for a model with several outputs, choose the class scores with "
                             f"--output (cnnlens.audit(..., output=...)); for a segmenter or a raw detection head, "
                             f"audit one class with --target-class C (cnnlens.audit(..., target=C, "
                             f"dense='segmentation' or 'detection'))")

    def explain(self, batch: Sequence[Prepared]) -> Piece:
        """Rows for every image and method of ``batch``; a batch that fails is retried image by
        image, so one bad image costs only its own rows."""
        piece = Piece()
        if not batch:
            return piece
        for method in self.job.methods:
            try:
                piece.extend(self._rows(batch, method))
            except CnnlensError as error:
                if len(batch) == 1:
                    piece.errors.append(error_record(batch[0].item, error, method))
                    continue
                for one in batch:
                    try:
                        piece.extend(self._rows([one], method))
                    except CnnlensError as single:
                        piece.errors.append(error_record(one.item, single, method))
        return piece

    def _name(self, index: Optional[int]) -> Optional[str]:
        names = self.names
        return names[index] if names is not None and index is not None and 0 <= index < len(names) else None

    def _dense_weights(self, batch: Sequence[Prepared], x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Each image's output weights from its own segmentation or detection target (one class
        and, for a detection, one box per image), made from one forward pass over the batch (kept
        for the batch's next method)."""
        key = tuple(p.item.index for p in batch)
        if self._dense is not None and self._dense[0] == key:
            return self._dense[1]
        outputs = np.asarray(self.backend.forward(x).logits)
        rows = [_dense_target(self.job, p, int(c)).weights_for(outputs[i:i + 1]).weights
                for i, (p, c) in enumerate(zip(batch, classes))]
        self._dense = (key, np.concatenate(rows))
        return self._dense[1]

    def _rows(self, batch: Sequence[Prepared], method: str) -> Piece:
        x = np.stack([p.x for p in batch])
        labels = [p.item.label for p in batch]
        classes = (None if self.job.target == "predicted" else np.asarray(labels, dtype=np.int64)
                   if self.job.target == "label" else np.full(len(x), self.job.target, dtype=np.int64))
        target = classes if self.job.dense is None else self._dense_weights(batch, x, classes)
        exp = run(self.backend, x, method, target=target, layer=self.job.layer_for(method),
                  **self.job.method_options(method))
        logits = np.asarray(exp.logits)
        if logits.ndim != 2 and self.job.dense is None:
            raise ModelError(f"the model's output has shape {logits.shape}; an audit explains classifiers, whose "
                             f"output is (N, classes): choose the class scores with --output")
        if self.job.dense is None:
            predicted = logits.argmax(axis=1)
            probability = probabilities(logits)[np.arange(len(x)), predicted]
        boxes = np.array([p.box if p.box is not None else (np.nan,) * 4 for p in batch], dtype=np.float64)
        with _one_blas_thread():
            small, stats = summarise(exp.maps, self.job.map_size, boxes)
        piece = Piece()
        piece.maps.append(small)
        layer = exp.layer if isinstance(exp.layer, str) else None
        for i, prepared in enumerate(batch):
            item = prepared.item
            explained = int(np.asarray(exp.target)[i] if classes is None else classes[i])
            peak = stats["peak_y"][i] >= 0
            dense = self.job.dense is not None  # no one predicted class for a whole dense output
            values = {
                "path": item.path, "method": method, "layer": layer, "label": item.label,
                "label_name": self._name(item.label), "predicted": None if dense else int(predicted[i]),
                "probability": None if dense else float(probability[i]), "target": explained,
                "target_name": self._name(explained),
                "peak_y": int(stats["peak_y"][i]) if peak else None, "peak_x": int(stats["peak_x"][i]) if peak else None,
                "border_share": float(stats["border_share"][i]), "entropy": float(stats["entropy"][i]),
                "energy_in_box": float(stats["energy_in_box"][i]),
            }
            for k, name in enumerate(("box_top", "box_left", "box_bottom", "box_right")):
                values[name] = None if prepared.box is None else prepared.box[k]
            for name, value in values.items():
                piece.columns[name].append(value)
            piece.indices.append(item.index)
        return piece


def _dense_target(job: AuditJob, prepared: Prepared, category: int) -> Any:
    """The ``cnnlens.targets`` target of one image of a dense audit."""
    from ..targets import detection, segmentation

    if job.dense == "segmentation":
        return segmentation(category)
    top, left, bottom, right = prepared.box  # type: ignore[misc]  # prepare() refused images without one
    return detection((left, top, right, bottom), category, iou=job.iou)


def shard_table(piece: Piece, job: AuditJob) -> Any:
    """The shard's Arrow table: rows ordered by image, then by the job's method order."""
    from .arrow import results_table

    position = {m: k for k, m in enumerate(job.methods)}
    order = sorted(range(len(piece)), key=lambda r: (piece.indices[r], position[piece.columns["method"][r]]))
    columns = {name: [values[r] for r in order] for name, values in piece.columns.items()}
    maps = piece.stacked_maps(job.map_size)[order] if order else piece.stacked_maps(job.map_size)
    return results_table(columns, maps, job.map_size)
