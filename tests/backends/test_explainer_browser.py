"""The explainer in the browser: onnxruntime-web (wasm, installed from npm into examples/web) in headless
Chromium. examples/web's page runs every model of ``explainer_cases`` and gives the maps cnnlens.explain gives in
Python (1e-5 relative); the page ``cnnlens export-explainer --web`` writes takes an image file, prepares it with
the same bits as ``cnnlens explain``, and draws the overlays render.overlay draws. Its screenshot is kept in
``test-artifacts/`` (or $CNNLENS_ARTIFACTS)."""

from __future__ import annotations

import base64
import http.server
import os
import threading
import time

import numpy as np
import pytest

from tests import explainer_cases as cases
from tests.browser import CHROMIUM, DRIVER, require_chromium
from tests.node_tools import ensure_npm_packages, require_node

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

if not (CHROMIUM and DRIVER):
    require_chromium()  # skips (or fails on CI) the whole module
require_node()

ROOT = cases.ROOT
ARTIFACTS = os.environ.get("CNNLENS_ARTIFACTS", os.path.join(ROOT, "test-artifacts"))


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves /web/ from examples/web, /models/ from the cases' folder, /page/ from a page folder."""

    roots: dict = {}

    def translate_path(self, path):
        path = path.split("?", 1)[0]
        for prefix, folder in self.roots.items():
            if path.startswith(prefix):
                return os.path.join(folder, path[len(prefix):].lstrip("/"))
        return os.path.join(ROOT, "nonexistent")

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    web = ensure_npm_packages("web")
    page = tmp_path_factory.mktemp("page")
    handler = type("Files", (_Files,), {"roots": {"/web/": str(web), "/models/": cases.folder(), "/page/": str(page)}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", page
    httpd.shutdown()


def _errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _encode(array: np.ndarray, kind: str = "float32") -> dict:
    array = np.ascontiguousarray(array, dtype=kind)
    return {"type": kind, "dims": list(array.shape), "base64": base64.b64encode(array.tobytes()).decode()}


def run_in_browser(driver, base: str, model: str, feeds: dict) -> dict:
    """Run ``/models/<model>`` in examples/web's page on ``feeds`` ({name: (array, type)})."""
    if not driver.current_url.startswith(base + "/web/"):
        driver.get(base + "/web/index.html")
    driver.set_script_timeout(300)
    encoded = {name: _encode(array, kind) for name, (array, kind) in feeds.items()}
    found = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "cnnlensExample.runEncoded(arguments[0], arguments[1]).then(done, e => done({error: String(e)}));",
        f"{base}/models/{model}", encoded)
    assert "error" not in found, found
    types = {"float32": np.float32, "int64": np.int64, "float64": np.float64}
    return {name: np.frombuffer(base64.b64decode(o["base64"]), dtype=types[o["type"]]).reshape(o["dims"])
            for name, o in found.items()}


@pytest.mark.parametrize("name", cases.case_names())
def test_the_browser_gives_the_maps_of_cnnlens_explain(server, browser, name):
    base, _ = server
    built = cases.built(name)
    ((input_name, fed),) = built.feeds(built.x).items()
    outputs = run_in_browser(browser, base, os.path.basename(built.path), {input_name: (fed, "float32")})
    cases.compare(built, outputs, looser=cases.OTHER_RUNTIME)
    assert _errors(browser) == []


def _wait(driver, status: str, timeout: float = 120) -> None:
    start = time.time()
    while time.time() - start < timeout:
        now = driver.execute_script("return window.cnnlensResult && window.cnnlensResult.status")
        if now == status:
            return
        if isinstance(now, str) and now.startswith("error"):
            raise AssertionError(now)
        time.sleep(0.1)
    raise AssertionError(f"the page did not reach {status!r} in {timeout} s")


def test_the_web_page_explains_a_dropped_image(server, browser, tmp_path):
    from PIL import Image

    import cnnlens
    from cnnlens.adapters import images, render
    from cnnlens.cli import main
    from tests.node_tools import EXAMPLES

    base, page = server
    built = cases.built("demo_densenet")
    methods = ["gradcam", "guided_backprop", "integrated_gradients", "layercam"]
    labels = tmp_path / "labels.txt"
    labels.write_text("no square\nsquare <b>&amp;</b>\n", encoding="utf-8")
    status = main(["export-explainer", built.plain, "-m", ",".join(methods), "--steps", "8", "-o",
                   str(tmp_path / "explained.onnx"), "--web", str(page), "--labels", str(labels),
                   "--ort", str(EXAMPLES / "web" / "node_modules" / "onnxruntime-web" / "dist")])
    assert status == 0
    picture = (np.random.default_rng(8).random((90, 130, 3)) * 255).astype(np.uint8)  # resized and cropped to 64
    picture[20:60, 40:80] = (250, 30, 200)
    Image.fromarray(picture).save(tmp_path / "picture.png")

    browser.get(base + "/page/index.html")
    _wait(browser, "ready")
    browser.find_element(By.ID, "image").send_keys(str(tmp_path / "picture.png"))
    _wait(browser, "done")

    def read(what, name=None, dtype=np.float32):
        text = browser.execute_script("return window.cnnlensResult.base64(arguments[0], arguments[1])", what, name)
        return np.frombuffer(base64.b64decode(text), dtype=dtype)

    x, display = images.prepare([str(tmp_path / "picture.png")], (64, 64))
    assert np.array_equal(read("input").reshape(x.shape), x), "the page prepares images as cnnlens explain does"
    assert np.array_equal(read("display", dtype=np.uint8).reshape(display.shape), display)
    predicted = int(np.argmax(cnnlens.explain(built.plain, x, "gradcam").logits[0]))
    assert browser.execute_script("return window.cnnlensResult.best") == predicted
    summary = browser.find_element(By.ID, "summary").text
    assert ("square <b>&amp;</b>" if predicted else "no square") in summary  # a label is text, never markup
    for method in methods:
        want = cnnlens.explain(built.plain, x, method, **({"steps": 8} if method == "integrated_gradients" else {}))
        got = read("output", f"map_{method}").reshape(want.maps.shape)
        assert np.abs(got - want.maps).max() <= cases.TOLERANCE * np.abs(want.maps).max(), method
        heat = want.maps[0] if want.maps.ndim == 3 else np.abs(want.maps[0]).sum(axis=0)
        drawn = read("overlay", method, dtype=np.uint8).reshape(64, 64, 4)[..., :3]
        expected = render.overlay(display[0], heat)
        close = np.abs(drawn.astype(int) - expected).max(axis=2) <= 1
        assert close.mean() >= 0.99, f"{method}: {1 - close.mean():.2%} of pixels differ from render.overlay"
    assert _errors(browser) == []
    os.makedirs(ARTIFACTS, exist_ok=True)
    browser.save_screenshot(os.path.join(ARTIFACTS, "explainer-page.png"))
