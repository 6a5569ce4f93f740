"""The audit's HTML page: per (method, explained class) the mean map, the SpRAy clusters with a
few members each, and the maps that lie outside the object box or on the image border.

The page is self-contained (nothing is loaded from anywhere, no script) and small whatever the
size of the dataset: it holds only the pictures of :mod:`cnnlens.audit.summary` (group and
cluster means, the examples picked), each a small JPEG thumbnail in a base64 data URI. Every
string that comes from a file name, a label or a method is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..adapters import images, render
from ..adapters.files import atomic_path
from ..adapters.page_style import PAGE_STYLE
from ..core.errors import CnnlensError
from ..core.resize import resize_bilinear
from .summary import ClusterSummary, Example, GroupSummary

#: JPEG quality of the thumbnails: small files, artefacts barely visible at thumbnail size.
JPEG_QUALITY = 80
#: The grey a missing image is drawn in (its map is still overlaid).
PLACEHOLDER_GREY = 128

_STYLE = PAGE_STYLE + """
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:6px 0}
.cluster{display:flex;gap:16px;align-items:flex-start;margin:10px 0;padding:8px;border:1px solid #e0e5ea;border-radius:6px;background:#fff}
.cluster-head{min-width:120px;font-size:.9em}
figure{border-radius:4px;padding:4px}
figure img{display:block;margin:auto}
figcaption{font-size:.72em;margin-top:3px}
figcaption .missing{color:#a33}
.eig{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8em;color:#5b6670}
"""


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("writing the audit report needs Pillow: pip install 'cnnlens[viz]'") from None
    return Image


def thumbnail_shape(input_size: Tuple[int, int], thumbnail: int) -> Tuple[int, int]:
    """(h, w) of every picture on the page: the input's aspect, the longer side ``thumbnail``."""
    height, width = int(input_size[0]), int(input_size[1])
    scale = thumbnail / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def jpeg_uri(picture: np.ndarray) -> str:
    """uint8 (H, W, 3) -> ``data:image/jpeg;base64,...``."""
    buffer = io.BytesIO()
    _pil().fromarray(np.ascontiguousarray(picture, dtype=np.uint8)).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(picture: np.ndarray, alt: str) -> str:
    h, w = picture.shape[:2]
    return f'<img src="{jpeg_uri(picture)}" width={w} height={h} alt="{html.escape(alt)}">'


def _figure(picture: np.ndarray, alt: str, caption: str) -> str:
    """``caption`` is HTML already (its parts escaped by the caller)."""
    return (f"<figure style=\"width:{picture.shape[1]}px\">{_img(picture, alt)}"
            f"<figcaption>{caption}</figcaption></figure>")


def heat_picture(values: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """A map in [0, 1] (h, w) -> uint8 (H, W, 3): upsampled bilinearly, ``render.colorize``d.

    The map is not rescaled: the colours of all mean maps on the page mean the same values."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return render.colorize(resize_bilinear(values, shape))


class _Pictures:
    """The examples' images, fitted to the model's input and shrunk to thumbnails, each file
    read at most once (an example may appear in a cluster and in the lists)."""

    def __init__(self, input_size: Tuple[int, int], shape: Tuple[int, int]) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.shape = shape
        self._cache: Dict[str, Optional[np.ndarray]] = {}

    def image(self, file: str) -> Optional[np.ndarray]:
        """The thumbnail of ``file`` (uint8 (h, w, 3)), or None when it cannot be read."""
        if file not in self._cache:
            try:
                fitted = images.fit(images.load_image(file), self.input_size)
                Image = _pil()
                bilinear = getattr(Image, "Resampling", Image).BILINEAR  # antialiased when shrinking
                small = Image.fromarray(fitted).resize((self.shape[1], self.shape[0]), bilinear)
                self._cache[file] = np.asarray(small, dtype=np.uint8)
            except (CnnlensError, OSError, ValueError):
                self._cache[file] = None
        return self._cache[file]

    def example(self, example: Example, value: str = "") -> str:
        """One example: its image with its map overlaid, captioned with path, label, prediction."""
        picture = self.image(example.file)
        missing = picture is None
        if missing:
            picture = np.full(self.shape + (3,), PLACEHOLDER_GREY, dtype=np.uint8)
        picture = render.overlay(picture, np.nan_to_num(np.asarray(example.map, dtype=np.float32)))
        lines = [html.escape(example.path)]
        if missing:
            lines.append("<span class=missing>image cannot be read any more (map on grey)</span>")
        if example.label is not None or example.label_name:
            name = html.escape(example.label_name) if example.label_name else str(example.label)
            lines.append(f"label {name}")
        if example.predicted is not None:
            probability = f" ({100 * example.probability:.1f}%)" if example.probability is not None else ""
            name = f" {html.escape(example.predicted_name)}" if example.predicted_name else ""
            lines.append(f"predicted {example.predicted}{name}{probability}")
        if value:
            lines.append(value)
        return _figure(picture, example.path, "<br>".join(lines))


def _share(size: int, count: int) -> str:
    return f"{100 * size / count:.0f}%" if count else "-"


def _meta_table(meta: Dict[str, str]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in meta.items())
    return f"<table class=meta-table>{rows}</table>"


def _contents(groups: Sequence[GroupSummary]) -> str:
    """Per method, per class: maps, clusters, cluster sizes; each row links to its group."""
    rows = []
    methods: Dict[str, List[int]] = {}
    for k, group in enumerate(groups):
        methods.setdefault(group.method, []).append(k)
    for method, indices in methods.items():
        for n, k in enumerate(indices):
            group = groups[k]
            head = f"<td rowspan={len(indices)}>{html.escape(method)}</td>" if n == 0 else ""
            name = f" {html.escape(group.target_name)}" if group.target_name else ""
            sizes = ", ".join(f"{c.size} ({_share(c.size, group.count)})" for c in group.clusters)
            rows.append(f"<tr>{head}<td><a href=\"#g{k}\">{group.target}{name}</a></td>"
                        f"<td class=num>{group.count}</td><td class=num>{len(group.clusters)}</td><td>{sizes}</td></tr>")
    return ("<h2>Contents</h2><table><tr><th>method</th><th>class</th><th>maps</th><th>clusters</th>"
            "<th>cluster sizes (share)</th></tr>" + "".join(rows) + "</table>")


def _eigen_note(group: GroupSummary) -> str:
    """The eigenvalues and a sentence on what the number of clusters was read from."""
    k = len(group.clusters)
    if not group.eigenvalues:
        return f"<p class=note>{k} cluster(s); no spectral clustering was run for this group (too few maps).</p>"
    values = [f"{v:.2f}" for v in group.eigenvalues]
    if 0 < k < len(values):
        values.insert(k, "|")
    rest = group.count - group.clustered
    joined = f"; the other {rest} joined their nearest cluster" if rest > 0 else ""
    return (f"<p class=note>The number of clusters ({k}) was read from the eigengap: the largest gap "
            f"between consecutive smallest eigenvalues of the normalised graph Laplacian of the "
            f"{group.clustered} maps clustered{joined}. <span class=eig>eigenvalues {' '.join(values)}</span></p>")


def _cluster(cluster: ClusterSummary, group: GroupSummary, pictures: _Pictures) -> str:
    mean = heat_picture(cluster.mean_map, pictures.shape)
    head = (f"<div class=cluster-head><b>cluster {cluster.cluster}</b><br>{cluster.size} maps "
            f"({_share(cluster.size, group.count)} of the group)</div>")
    figures = [_figure(mean, f"cluster {cluster.cluster} mean map", "mean map")]
    figures += [pictures.example(e) for e in cluster.examples]
    return f"<div class=cluster>{head}<div class=row>{''.join(figures)}</div></div>"


def _listed(title: str, note: str, examples: Sequence[Example], what: str, pictures: _Pictures) -> str:
    if not examples:
        return ""
    figures = "".join(pictures.example(e, "" if e.value is None else f"{what} {e.value:.2f}") for e in examples)
    return f"<h3>{title}</h3><p class=note>{note}</p><div class=row>{figures}</div>"


def _group(k: int, group: GroupSummary, pictures: _Pictures) -> str:
    mean = heat_picture(group.mean_map, pictures.shape)
    parts = [f"<h2 id=g{k}>{html.escape(group.title)}</h2>",
             f"<p>{group.count} maps, {len(group.clusters)} cluster(s).</p>",
             _eigen_note(group),
             f"<div class=row>{_figure(mean, 'mean map', 'mean map of the group')}</div>"]
    parts += [_cluster(c, group, pictures) for c in group.clusters]
    parts.append(_listed("Maps outside the object box", "Lowest share of the map's energy inside the "
                         "object's box first.", group.outside_box, "energy in box", pictures))
    parts.append(_listed("Maps on the border", "Highest share of the map on the image border first.",
                         group.on_border, "border share", pictures))
    return "".join(parts)


def audit_html(groups: Sequence[GroupSummary], *, input_size: Tuple[int, int], title: str = "cnnlens audit",
               meta: Optional[Dict[str, str]] = None, thumbnail: int = 96) -> str:
    """The page :func:`write_audit_report` writes, as a string."""
    pictures = _Pictures(input_size, thumbnail_shape(input_size, thumbnail))
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append(_meta_table(meta))
    parts.append("<p class=note>Maps are coloured on one scale from 0 (blue) to 1 (red); each example's "
                 "map is overlaid on the crop of the image the model saw, scaled to its own range.</p>")
    if not groups:
        parts.append("<p>No maps to show.</p>")
    else:
        parts.append(_contents(groups))
        parts += [_group(k, group, pictures) for k, group in enumerate(groups)]
    parts.append("</body></html>")
    return "".join(parts)


def write_audit_report(path: str, groups: Sequence[GroupSummary], *, input_size: Tuple[int, int],
                       title: str = "cnnlens audit", meta: Optional[Dict[str, str]] = None,
                       thumbnail: int = 96) -> None:
    """Write the audit's self-contained HTML page to ``path``, atomically.

    ``groups``: one :class:`GroupSummary` per (method, explained class), shown in that order;
    ``input_size``: the model's (H, W), to crop each example's image as the model saw it
    (``images.fit``); ``meta``: key/value lines for the header (model, data, images explained,
    errors, seconds, ...); ``thumbnail``: the longer side of every picture, in pixels. An
    example whose file cannot be read any more is drawn as its map on grey, captioned so.
    """
    if int(thumbnail) <= 0:
        raise ValueError(f"thumbnail must be a positive number of pixels, got {thumbnail!r}")
    page = audit_html(groups, input_size=input_size, title=title, meta=meta, thumbnail=int(thumbnail))
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(page)
