"""One self-contained HTML report: per image the top-5 predictions, every method the backend
supports side by side, and a layer browser (pick a layer, see its Grad-CAM and feature maps).

Images are embedded as base64 PNGs; the page loads nothing from anywhere. Every string that
comes from a model or a file name is HTML-escaped, and the browser's script refers to layers
by index only, so no name ever reaches JavaScript.
"""

from __future__ import annotations

import base64
import datetime
import html
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.backend import Backend
from ..core.errors import CnnlensError
from ..core.methods import METHODS, run, supported_methods
from ..core.targets import probabilities
from ..core.types import Explanation, Layer
from . import render
from .files import atomic_path
from .page_style import PAGE_STYLE

#: Most layers the browser shows (evenly spaced beyond that), to keep the file small.
MAX_BROWSER_LAYERS = 48

_STYLE = PAGE_STYLE + """
.image-row{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.panels{display:flex;flex-wrap:wrap;gap:12px;margin-top:12px}
figure img{display:block;width:192px;height:auto;image-rendering:auto}
figcaption{max-width:192px}
.na{width:192px;height:120px;display:flex;align-items:center;justify-content:center;color:#8a949e;font-size:.8em;padding:4px}
select{font-size:1em;padding:4px;max-width:100%}
.layer-panel[hidden]{display:none}
.quality{font-size:.85em}
"""

_SCRIPT = """
(function(){
  var select = document.getElementById('layer-select');
  if (!select) return;
  var panels = document.querySelectorAll('.layer-panel');
  function show(){
    var chosen = select.value;
    for (var i = 0; i < panels.length; i++) {
      panels[i].hidden = panels[i].getAttribute('data-layer-index') !== chosen;
    }
    document.getElementById('layer-current').textContent = select.options[select.selectedIndex].text;
  }
  select.addEventListener('change', show);
  show();
})();
"""


def _img(data: Any, alt: str) -> str:
    encoded = base64.b64encode(render.png_bytes(data)).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _figure(data: Any, caption: str) -> str:
    return f"<figure>{_img(data, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _unavailable(caption: str, reason: str) -> str:
    return (f'<figure><div class="na">{html.escape(reason)}</div>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _top5(scores: np.ndarray, labels: Optional[Sequence[str]]) -> str:
    probs = probabilities(scores[None])[0]
    order = np.argsort(-scores)[:5]
    rows = []
    for rank, c in enumerate(order, 1):
        name = labels[c] if labels is not None and c < len(labels) else f"class {c}"
        rows.append(f"<tr><td>{rank}</td><td>{html.escape(str(name))}</td><td class=num>{scores[c]:.4g}</td>"
                    f"<td class=num>{100 * probs[c]:.1f}%</td></tr>")
    return ("<table><tr><th>#</th><th>class</th><th>score</th><th>probability</th></tr>"
            + "".join(rows) + "</table>")


def _browser_layers(layers: List[Layer]) -> List[Layer]:
    spatial = [layer for layer in layers if layer.spatial]
    if len(spatial) <= MAX_BROWSER_LAYERS:
        return spatial
    keep = np.unique(np.linspace(0, len(spatial) - 1, MAX_BROWSER_LAYERS).round().astype(int))
    return [spatial[i] for i in keep]


def explain_all(backend: Backend, x: np.ndarray, methods: Sequence[str],
                options: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Tuple[Optional[Explanation], str, float]]:
    """Run each method: name -> (explanation or None, error message, seconds)."""
    results = {}
    for method in methods:
        start = time.perf_counter()
        try:
            exp = run(backend, x, method, **(options or {}).get(method, {}))
            results[method] = (exp, "", time.perf_counter() - start)
        except CnnlensError as error:
            results[method] = (None, str(error), time.perf_counter() - start)
    return results


def write_report(path: str, backend: Backend, x: np.ndarray, display: np.ndarray, names: Sequence[str],
                 methods: Optional[Sequence[str]] = None, labels: Optional[Sequence[str]] = None,
                 title: str = "cnnlens report", options: Optional[Dict[str, Dict[str, Any]]] = None,
                 results: Optional[Dict[str, Tuple[Optional[Explanation], str, float]]] = None,
                 notes: Optional[Dict[str, Dict[str, str]]] = None, sections: Sequence[str] = ()) -> None:
    """Write the report for images ``x`` (preprocessed) shown as ``display`` (uint8 N, H, W, 3).

    ``methods`` defaults to every method the backend runs; ``options`` maps a method to its
    options; ``results`` may pass explanations already computed (as :func:`explain_all`
    returns them); ``notes`` adds per-method figures to the method captions (e.g. quality
    numbers: ``{"gradcam": {"pointing game": "0.95"}}``); ``sections`` are further sections
    (``figure_section``'s HTML) placed before the layer browser. The file is written atomically.
    """
    methods = list(methods) if methods is not None else [m for m in supported_methods(backend.capabilities)
                                                         if m in METHODS]
    if results is None:
        results = explain_all(backend, x, methods, options)
    logits = next((r[0].logits for r in results.values() if r[0] is not None), None)
    if logits is None:
        logits = backend.forward(x).logits
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class=meta>{html.escape(repr(backend))} &middot; "
             f"{len(x)} image(s) &middot; generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"]
    if notes:
        parts.append(_notes_table(notes))
    for i in range(len(x)):
        parts.append(f"<h2>{html.escape(str(names[i]))}</h2><div class=image-row>")
        parts.append(_figure(display[i], "input"))
        parts.append(_top5(logits[i], labels) + "</div><div class=panels>")
        for method in methods:
            exp, error, seconds = results[method]
            caption = method if exp is None or exp.layer is None else f"{method} @ {exp.layer}"
            if exp is None:
                parts.append(_unavailable(method, error))
            else:
                parts.append(_figure(render.method_panel(display[i], exp.maps[i], method),
                                     f"{caption} ({seconds / len(x):.2f} s/image)"))
        parts.append("</div>")
    parts.extend(sections)
    parts.append(_layer_browser(backend, x, display, names))
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("".join(parts))


def figure_section(title: str, text: str, rows: Sequence[Sequence[Tuple[Any, str]]]) -> str:
    """A further section of the report: a heading, a paragraph, then rows of (picture, caption); a
    picture is an image (H, W, 3) or an (image, CAM) pair, drawn as the report draws CAMs."""
    parts = [f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>"]
    for row in rows:
        parts.append("<div class=panels>")
        for picture, caption in row:
            if isinstance(picture, tuple):
                picture = render.method_panel(picture[0], picture[1], "gradcam")
            parts.append(_figure(picture, caption))
        parts.append("</div>")
    return "".join(parts)


def _notes_table(notes: Dict[str, Dict[str, str]]) -> str:
    columns = sorted({k for row in notes.values() for k in row})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td>" + "".join(f"<td class=num>{html.escape(str(row.get(c, '')))}</td>" for c in columns)
        + "</tr>" for m, row in notes.items())
    return f"<h2>Methods</h2><table class=quality><tr><th>method</th>{head}</tr>{rows}</table>"


def _layer_browser(backend: Backend, x: np.ndarray, display: np.ndarray, names: Sequence[str]) -> str:
    try:
        layers = _browser_layers(backend.layers(tuple(x.shape)))
    except CnnlensError:
        layers = []
    if not layers:
        return ""
    layer_names = [layer.name for layer in layers]
    gradcams = None
    if "gradcam" in supported_methods(backend.capabilities):
        try:
            gradcams = run(backend, x, "gradcam", layer=layer_names).maps  # one forward, one backward
        except CnnlensError:
            gradcams = None
    options = "".join(f'<option value="{k}">{html.escape(layer.name)} ({html.escape(layer.kind)})</option>'
                      for k, layer in enumerate(layers))
    parts = ["<h2>Layer browser</h2><p>Layer: <select id=layer-select>", options,
             "</select> <span id=layer-current class=meta></span></p>"]
    if gradcams is None:
        parts.append("<p class=meta>Grad-CAM needs gradients, which this backend does not provide: "
                     "feature maps only.</p>")
    # one forward pass per image serves every layer's feature maps
    features = [backend.forward(x[i:i + 1], layers=layer_names).activations for i in range(len(x))]
    for k, layer in enumerate(layers):
        parts.append(f'<div class="layer-panel panels" data-layer-index="{k}">')
        for i in range(len(x)):
            if gradcams is not None:
                parts.append(_figure(render.method_panel(display[i], gradcams[i, k], "gradcam"),
                                     f"{names[i]}: Grad-CAM"))
            maps = features[i][layer.name][0]
            shape = "x".join(str(d) for d in maps.shape)
            parts.append(_figure(render.method_panel(display[i], maps, "feature_maps"),
                                 f"{names[i]}: feature maps {shape}"))
        parts.append("</div>")
    return "".join(parts)
