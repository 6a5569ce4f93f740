"""cnnlens/adapters/web/preprocess.js (the browser's preprocessing) reproduces
cnnlens.adapters.images bit for bit: resizing (Pillow's BILINEAR), fitting, compositing over
white and normalising, run in Node against the Python functions.

All cases run in one Node process (a module-scoped fixture): the test writes the images and
parameters to files, the harness writes the results back.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None,
    reason="node (Node.js) is not on PATH: the browser preprocessing module is tested by running it in Node")

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from cnnlens.adapters import images  # noqa: E402

MODULE = pathlib.Path(images.__file__).parent / "web" / "preprocess.js"
BILINEAR = getattr(Image, "Resampling", Image).BILINEAR

HARNESS = r"""
const fs = require("fs");
const path = require("path");
const vm = require("vm");
const [modulePath, dir] = process.argv.slice(2);
const P = require(modulePath);
const cases = JSON.parse(fs.readFileSync(path.join(dir, "cases.json"), "utf8"));
const results = {};
const save = (name, a) => fs.writeFileSync(path.join(dir, name), Buffer.from(a.buffer, a.byteOffset, a.byteLength));
for (const c of cases) {
  const input = c.input ? new Uint8Array(fs.readFileSync(path.join(dir, c.input))) : null;
  let out;
  if (c.op === "fitGeometry") {
    results[c.id] = c.shapes.map(([h, w, oh, ow]) => {
      const g = P.fitGeometry(h, w, oh, ow);
      return [g.newH, g.newW, g.top, g.left];
    });
    continue;
  } else if (c.op === "resize") {
    out = P.resizeBilinear(input, c.h, c.w, c.newH, c.newW);
  } else if (c.op === "fit") {
    out = P.fit(input, c.h, c.w, c.outH, c.outW);
  } else if (c.op === "overWhite") {
    out = P.overWhite(input, c.h, c.w);
  } else if (c.op === "normalize") {
    out = P.normalize(input, c.h, c.w, c.mean, c.std, c.channels, c.layout);
  } else if (c.op === "prepare") {
    const r = P.prepare(new Uint8ClampedArray(input.buffer), c.h, c.w,
                        {size: c.size, mean: c.mean, std: c.std, channels: c.channels, layout: c.layout});
    save(c.id + ".display.bin", r.display);
    out = r.input;
  } else {
    throw new Error("unknown op " + c.op);
  }
  save(c.id + ".bin", out);
  results[c.id] = {type: out.constructor.name, length: out.length};
}
// as a browser loads it: a plain script, no module/require, defining globalThis.cnnlensPreprocess
const sandbox = {};
vm.runInNewContext(fs.readFileSync(modulePath, "utf8"), sandbox);
const g = sandbox.cnnlensPreprocess;
results.browserGlobal = g ? Object.keys(g).filter((k) => typeof g[k] === "function").sort() : null;
fs.writeFileSync(path.join(dir, "results.json"), JSON.stringify(results));
"""

# (h, w, new_h, new_w) for resizeBilinear against Pillow directly
RESIZES = [
    (50, 80, 50, 33),      # width only, shrinking
    (50, 80, 91, 80),      # height only, enlarging
    (64, 64, 128, 128),    # exact 2x enlarge
    (128, 128, 64, 64),    # exact 2x shrink
    (600, 800, 37, 29),    # large non-integer shrink
    (480, 640, 224, 299),
    (100, 100, 33, 67),    # both shrink, height by more than twice as many pixels: Pillow 13 goes vertical first
    (100, 100, 33, 66),    # ... exactly twice as many: horizontal first
    (112, 5, 82, 4),
    (30, 40, 12, 90),      # height shrinks, width grows: vertical first
    (5, 6, 64, 47),
    (40, 10, 13, 70),      # one axis shrinks, the other grows
    (257, 259, 256, 258),  # slight shrink
    (1, 7, 3, 5),
    (7, 1, 224, 224),
    (1, 1, 3, 4),
]

# ((h, w), (H, W)) for fit against images.fit
FITS = [
    ((480, 640), (224, 224)), ((640, 480), (224, 224)), ((3, 1000), (224, 224)), ((1000, 3), (224, 224)),
    ((1, 7), (224, 224)), ((7, 1), (5, 5)), ((37, 53), (224, 224)), ((224, 224), (224, 224)),
    ((300, 301), (224, 224)), ((500, 375), (160, 96)), ((375, 500), (160, 96)), ((96, 160), (160, 96)),
    ((1200, 1600), (299, 299)), ((233, 311), (96, 160)), ((256, 256), (224, 224)),
    ((225, 224), (224, 224)), ((227, 224), (224, 224)), ((229, 224), (224, 224)),  # crop offsets 0.5, 1.5, 2.5
    ((224, 231), (224, 224)), ((13, 1000), (7, 300)), ((2, 2), (1, 1)),
    ((1200, 500), (224, 224)), ((2000, 601), (320, 96)),  # tall: resized vertically first
]

STATS = [  # (mean, std); None: images.normalize's defaults (ImageNet)
    (None, None), ([0.5, 0.4, 0.3], [0.2, 0.3, 0.25]), (0.5, 0.25), ([0.0], [1.0]), (-1.0, -0.5),
    ([0.1, 0.9, 0.333], 2.0),
]


def _bits_equal(a, b) -> bool:
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _gray_reference(display, mean, std):
    """images.normalize(display, mean, std, channels=1)[0] with the luminance computed as
    float32 element-wise arithmetic, (0.299 r + 0.587 g) + 0.114 b, as preprocess.js does;
    the mean/std handling is images._stats' own."""
    x = display.astype(np.float32) / np.float32(255.0)
    luma = images.LUMA
    gray = (luma[0] * x[..., 0] + luma[1] * x[..., 1]) + luma[2] * x[..., 2]
    mean = images.IMAGENET_MEAN if mean is None else mean
    std = images.IMAGENET_STD if std is None else std
    return ((gray[None] - images._stats(mean, 1, "mean")[0]) / images._stats(std, 1, "std")[0]).astype(np.float32)


def _normalize_py(display, mean, std, channels):
    kwargs = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    return images.normalize(display, channels=channels, **kwargs)[0]


class _Run:
    def __init__(self, directory: pathlib.Path):
        self.dir = directory
        self.cases: list = []
        self.inputs: dict = {}
        self.params: dict = {}
        self.results: dict = {}

    def add(self, op: str, image=None, **params):
        case_id = f"c{len(self.cases)}"
        case = {"id": case_id, "op": op}
        case.update({k: v for k, v in params.items() if v is not None})
        if image is not None:
            (self.dir / f"{case_id}.in").write_bytes(np.ascontiguousarray(image, np.uint8).tobytes())
            case["input"] = f"{case_id}.in"
            self.inputs[case_id] = image
        self.cases.append(case)
        self.params[case_id] = params
        return case_id

    def run(self):
        (self.dir / "cases.json").write_text(json.dumps(self.cases))
        harness = self.dir / "harness.js"
        harness.write_text(HARNESS)
        proc = subprocess.run([NODE, str(harness), str(MODULE), str(self.dir)], capture_output=True, text=True,
                              check=False, timeout=120)
        assert proc.returncode == 0, f"node harness failed:\n{proc.stdout}\n{proc.stderr}"
        self.results = json.loads((self.dir / "results.json").read_text())

    def output(self, case_id, dtype, shape, suffix=".bin"):
        data = np.frombuffer((self.dir / f"{case_id}{suffix}").read_bytes(), dtype=dtype)
        return data.reshape(shape)


@pytest.fixture(scope="module")
def js(tmp_path_factory):
    rng = np.random.default_rng(20240611)
    run = _Run(tmp_path_factory.mktemp("web_preprocess"))

    run.ids_resize = [run.add("resize", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), h=h, w=w, newH=nh, newW=nw)
                      for h, w, nh, nw in RESIZES]
    # a smooth image too: random noise hides little, but gradients catch off-by-one taps
    yy, xx = np.mgrid[0:97, 0:131]
    smooth = np.stack([(yy * 255 // 96), (xx * 255 // 130), ((yy + xx) * 255 // 226)], -1).astype(np.uint8)
    run.ids_resize.append(run.add("resize", smooth, h=97, w=131, newH=31, newW=217))
    for h, w, new_h, new_w in rng.integers(1, 150, (80, 4)).tolist():  # random sizes, either pass order
        run.ids_resize.append(run.add("resize", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), h=h, w=w,
                                      newH=new_h, newW=new_w))

    run.ids_fit = [run.add("fit", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), h=h, w=w, outH=oh, outW=ow)
                   for (h, w), (oh, ow) in FITS]

    shapes = [[int(v) for v in s] for s in zip(rng.integers(1, 2000, 3000), rng.integers(1, 2000, 3000),
                                               rng.integers(1, 513, 3000), rng.integers(1, 513, 3000))]
    shapes += [[h, w, oh, ow] for (h, w), (oh, ow) in FITS] + [[h, w, nh, nw] for h, w, nh, nw in RESIZES]
    run.id_geometry = run.add("fitGeometry", shapes=shapes)

    # every (colour, alpha) pair, and a random RGBA image
    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    every = np.stack([c, 255 - c, (c * 7) % 256, a], -1).astype(np.uint8)
    rgba = rng.integers(0, 256, (53, 71, 4), dtype=np.uint8)
    rgba[::3, :, 3] = 255
    rgba[1::5, :, 3] = 0
    run.ids_over = [run.add("overWhite", img, h=img.shape[0], w=img.shape[1]) for img in (every, rgba)]

    run.ids_norm = []
    for i, (mean, std) in enumerate(STATS):
        h, w = (16, 16) if i == 0 else (37, 29)
        img = np.arange(h * w * 3).reshape(h, w, 3).astype(np.uint8) if i == 0 else \
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # the first covers every value
        for channels in (3, 1):
            for layout in ("NCHW", "NHWC"):
                run.ids_norm.append(run.add("normalize", img, h=h, w=w, mean=mean, std=std, channels=channels,
                                            layout=layout))
    big = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    run.id_norm_gray_big = run.add("normalize", big, h=512, w=512, channels=1, layout="NCHW")

    run.ids_prepare = []
    for (h, w), size, channels, layout, mean, std in [
        ((300, 451), [224, 224], 3, "NCHW", None, None),
        ((123, 77), [160, 96], 3, "NHWC", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ((3, 1000), [224, 224], 3, "NCHW", None, None),
        ((640, 480), [28, 28], 1, "NCHW", 0.1307, 0.3081),
        ((200, 150), [64, 48], 1, "NHWC", None, None),
    ]:
        img = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        img[: h // 2, :, 3] = 255  # half opaque, half partly transparent
        run.ids_prepare.append(run.add("prepare", img, h=h, w=w, size=size, channels=channels, layout=layout,
                                       mean=mean, std=std))
    run.run()
    return run


def test_loads_in_the_browser_as_a_global(js):
    assert js.results["browserGlobal"] == sorted(
        ["fitGeometry", "resizeBilinear", "fit", "overWhite", "normalize", "prepare"])


def test_fit_geometry_matches_python(js):
    shapes = js.params[js.id_geometry]["shapes"]
    expected = [list(images.fit_geometry((h, w), (oh, ow))) for h, w, oh, ow in shapes]
    assert js.results[js.id_geometry] == expected


def test_resize_bilinear_is_pillows(js):
    for case_id in js.ids_resize:
        p = js.params[case_id]
        image = js.inputs[case_id]
        expected = np.asarray(Image.fromarray(image).resize((p["newW"], p["newH"]), BILINEAR))
        got = js.output(case_id, np.uint8, (p["newH"], p["newW"], 3))
        assert np.array_equal(got, expected), f"resize {image.shape[:2]} -> {(p['newH'], p['newW'])} differs " \
                                              f"at {np.argwhere(got != expected)[:5].tolist()}"


def test_fit_matches_python(js):
    for case_id in js.ids_fit:
        p = js.params[case_id]
        expected = images.fit(js.inputs[case_id], (p["outH"], p["outW"]))
        got = js.output(case_id, np.uint8, (p["outH"], p["outW"], 3))
        assert np.array_equal(got, expected), f"fit {(p['h'], p['w'])} -> {(p['outH'], p['outW'])} differs"


def test_over_white_matches_python(js):
    for case_id in js.ids_over:
        p = js.params[case_id]
        expected = images._over_white(js.inputs[case_id])
        got = js.output(case_id, np.uint8, (p["h"], p["w"], 3))
        assert np.array_equal(got, expected)
        opaque = js.inputs[case_id][..., 3] == 255
        assert np.array_equal(got[opaque], js.inputs[case_id][..., :3][opaque])


def _normalize_cases(js, channels):
    for case_id in js.ids_norm:
        p = js.params[case_id]
        if p["channels"] != channels:
            continue
        got = js.output(case_id, np.float32, (-1,))
        shape = (channels, p["h"], p["w"])
        got = got.reshape(shape) if p["layout"] == "NCHW" else got.reshape(p["h"], p["w"], channels).transpose(2, 0, 1)
        yield js.inputs[case_id], p, got


def test_normalize_rgb_matches_python(js):
    for image, p, got in _normalize_cases(js, 3):
        expected = _normalize_py(image, p["mean"], p["std"], 3)
        assert _bits_equal(got, expected), f"normalize {p}"


def test_normalize_gray_is_float32_luminance_with_pythons_stats(js):
    """channels=1: bit-exact against the float32 luminance (0.299 r + 0.587 g) + 0.114 b and
    images._stats' grey of a 3-value mean/std (computed by numpy itself)."""
    cases = list(_normalize_cases(js, 1))
    cases.append((js.inputs[js.id_norm_gray_big], js.params[js.id_norm_gray_big],
                  js.output(js.id_norm_gray_big, np.float32, (1, 512, 512))))
    for image, p, got in cases:
        assert _bits_equal(got, _gray_reference(image, p.get("mean"), p.get("std"))), f"normalize {p}"


def test_normalize_gray_matches_images_normalize(js):
    """Bit-exact against images.normalize(channels=1) itself: both compute the luminance element-wise in
    float32 ((0.299 r + 0.587 g) + 0.114 b; a BLAS product would round by the CPU's kernel and the image's size)."""
    for image, p, got in _normalize_cases(js, 1):
        assert _bits_equal(got, _normalize_py(image, p.get("mean"), p.get("std"), 1)), f"normalize {p}"


def test_prepare_matches_python(js):
    for case_id in js.ids_prepare:
        p = js.params[case_id]
        (out_h, out_w), channels = p["size"], p["channels"]
        display = images.fit(images._over_white(js.inputs[case_id]), (out_h, out_w))
        got_display = js.output(case_id, np.uint8, (out_h, out_w, 3), suffix=".display.bin")
        assert np.array_equal(got_display, display), f"prepare display {p}"
        got = js.output(case_id, np.float32, (-1,))
        got = got.reshape(channels, out_h, out_w) if p["layout"] == "NCHW" else \
            got.reshape(out_h, out_w, channels).transpose(2, 0, 1)
        expected = _normalize_py(display, p["mean"], p["std"], 3) if channels == 3 else \
            _gray_reference(display, p["mean"], p["std"])
        assert _bits_equal(got, expected.reshape(got.shape)), f"prepare input {p}"
        assert js.results[case_id]["type"] == "Float32Array"
