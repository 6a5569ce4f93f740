"""The explainer's web page: a static folder (index.html, two small scripts, the explainer file)
on which a person drops an image and sees the class, its probability and one overlay per method,
computed in the browser by onnxruntime-web. The page prepares the image exactly as ``cnnlens
explain`` does for the model (size, mean, std, channels, layout: written into the page).

onnxruntime-web comes from its public distribution by default, or from a local copy (the ``dist``
folder of the npm package, copied beside the page: the page then needs no network at all).
"""

from __future__ import annotations

import html
import json
import os
import shutil
from typing import Any, List, Optional, Sequence, Tuple

from ..core.errors import InvalidInputError
from ..core.methods import lookup
from .files import atomic_path

#: the onnxruntime-web release the page is tested with (examples/web/package.json pins the same)
ORT_WEB_VERSION = "1.31.1"
ORT_WEB_URL = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_WEB_VERSION}/dist/ort.wasm.min.js"
#: what a page needs of onnxruntime-web's dist folder: the wasm-only script and what it fetches
ORT_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
_ASSETS = os.path.join(os.path.dirname(__file__), "web")
MODEL_FILE = "explainer.onnx"


def colormap(name: str = "jet") -> list:
    """The 256 colours (uint8 RGB) matplotlib's ``name`` colormap gives ``pictures.colorize``."""
    import numpy as np

    from . import pictures

    return pictures.colormap(name)(np.arange(256), bytes=True)[:, :3].tolist()


def _ort_source(folder: str, ort: Optional[str]) -> str:
    """The script URL the page loads onnxruntime-web from; a local dist folder is copied to ``ort/``."""
    if ort is None:
        return ORT_WEB_URL
    if os.path.isdir(ort):
        missing = [f for f in ORT_WEB_FILES if not os.path.isfile(os.path.join(ort, f))]
        if missing:
            raise InvalidInputError(f"--ort {ort!r} is a folder without {', '.join(missing)}: give onnxruntime-web's "
                                    f"dist folder (node_modules/onnxruntime-web/dist) or a URL of ort.wasm.min.js")
        target = os.path.join(folder, "ort")
        os.makedirs(target, exist_ok=True)
        for name in ORT_WEB_FILES:
            shutil.copyfile(os.path.join(ort, name), os.path.join(target, name))
        return "ort/" + ORT_WEB_FILES[0]
    return ort


def _geometry(explainer: Any) -> Tuple[int, List[int]]:
    """(channels, [height, width]) of the explainer's input, read in its layout."""
    shape = [int(d) for d in explainer.input_shape[1:]]
    return (shape[0], shape[1:]) if explainer.layout == "NCHW" else (shape[2], shape[:2])


def page_config(explainer: Any, mean: Sequence[float], std: Sequence[float], channels: int,
                labels: Optional[Sequence[str]] = None, alpha: float = 0.5) -> dict:
    """What the page is told: the file, its input and outputs, the preprocessing, the methods."""
    size = _geometry(explainer)[1]
    layers = {m: explainer.layers.get(m) for m in explainer.methods}
    return {
        "model": MODEL_FILE, "input": explainer.input_name, "scores": explainer.output_names[0],
        "layout": explainer.layout, "size": size, "channels": int(channels),
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "target": explainer.target, "methods": list(explainer.methods),
        "kinds": {m: lookup(m).kind for m in explainer.methods},
        "layered": {m: isinstance(layers[m], list) for m in explainer.methods},
        "layerNames": {m: layers[m] for m in explainer.methods if isinstance(layers[m], list)},
        "labels": list(labels) if labels is not None else None, "alpha": float(alpha),
        "colormap": colormap(), "normalized": bool(explainer.normalize),
        "about": f"{os.path.basename(explainer.path)}: {', '.join(explainer.methods)}; images are resized to "
                 f"cover {size[0]}x{size[1]}, centre-cropped and normalised as cnnlens explain does",
    }


def write_page(folder: str, explainer: Any, mean: Sequence[float], std: Sequence[float],
               labels: Optional[Sequence[str]] = None, ort: Optional[str] = None) -> str:
    """Write the page for ``explainer`` (what ``export_explainer`` returned) into ``folder``:
    index.html, preprocess.js, explainer-page.js and a copy of the explainer file. Returns the folder."""
    if explainer.target == "weights":
        raise InvalidInputError("the web page explains classes: export with target 'predicted' or 'input' for it "
                                "(output weights have no place to come from on a page)")
    channels = _geometry(explainer)[0]
    if channels not in (1, 3):
        raise InvalidInputError(f"the web page feeds image files (1 or 3 channels); this model takes {channels}")
    os.makedirs(folder, exist_ok=True)
    config = page_config(explainer, mean, std, channels, labels)
    script = _ort_source(folder, ort)
    text = json.dumps(config).replace("</", "<\\/")  # never ends the <script> block it sits in
    with open(os.path.join(_ASSETS, "explainer.html"), encoding="utf-8") as handle:
        page = handle.read().replace("__CONFIG__", text).replace("__ORT__", html.escape(script, quote=True))
    for name in ("preprocess.js", "explainer-page.js"):
        shutil.copyfile(os.path.join(_ASSETS, name), os.path.join(folder, name))
    with atomic_path(os.path.join(folder, MODEL_FILE)) as temporary:
        shutil.copyfile(explainer.path, temporary)
    with atomic_path(os.path.join(folder, "index.html")) as temporary, open(temporary, "w", encoding="utf-8") as out:
        out.write(page)
    return folder
