"""The audit's HTML page: self-contained, small JPEG thumbnails of the thumbnail size, names
from files and labels shown as text, a page whose size depends on the examples shown and not
on the dataset's size; and, in headless Chromium, a page that loads cleanly.
"""

import base64
import html
import io
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from cnnlens.audit.report import write_audit_report
from cnnlens.audit.summary import ClusterSummary, Example, GroupSummary

EVIL = "<script>alert(1)</script>"
EVIL_FILE = "a<script>b&c.png"  # a file name may hold markup, though never a slash
S = 7  # map side
INPUT = (32, 32)


class Page(HTMLParser):
    """The page's tags, image sources and visible text."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.sources, self.text = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.sources.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small images: RGB, grayscale, wide, the markup-named one, and one removed since."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    made = {}
    for name, shape in (("plain.png", (40, 40, 3)), ("gray.png", (36, 50)), ("wide.png", (20, 60, 3)),
                        (EVIL_FILE, (48, 32, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / name)
        made[name] = str(folder / name)
    made["gone.png"] = str(folder / "gone.png")  # never written: "cannot be read any more"
    return made


def _example(files, name, k, value=None):
    rng = np.random.default_rng(k)
    return Example(path=f"cats/{name}", file=files[name], map=rng.random((S, S)), label=3,
                   label_name=EVIL if name == EVIL_FILE else "cat", predicted=5,
                   probability=0.875, value=value)


def make_groups(files, scale=1, clusters=2, examples=2, methods=("gradcam", "occ&lusion"), targets=(3, 5)):
    """methods x targets groups of ``clusters`` clusters of ``examples`` examples; the first
    group has both lists, the others none. ``scale`` multiplies every count."""
    names = list(files)
    groups = []
    for m, method in enumerate(methods):
        for t, target in enumerate(targets):
            k = (m * len(targets) + t) * 100
            members = [ClusterSummary(cluster=c, size=scale * (10 - c), mean_map=np.full((S, S), 0.1 * c),
                                      examples=[_example(files, names[(c + e) % len(names)], k + 10 * c + e)
                                                for e in range(examples)])
                       for c in range(clusters)]
            first = not groups
            groups.append(GroupSummary(
                method=method, target=target, target_name=EVIL if t else "cat", count=scale * 20,
                mean_map=np.linspace(0, 1, S * S).reshape(S, S), clusters=members,
                eigenvalues=[0.0, 0.01, 0.62, 0.7, 0.75], clustered=scale * 15,
                outside_box=[_example(files, n, k + 90 + i, 0.05 * i) for i, n in enumerate(names)] if first else [],
                on_border=[_example(files, "plain.png", k + 99, 0.4)] if first else []))
    return groups


@pytest.fixture(scope="module")
def report(files, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("report") / "audit.html")
    write_audit_report(path, make_groups(files), input_size=INPUT, title="audit & test",
                       meta={"model": "net<1>.onnx", "images explained": "20"}, thumbnail=40)
    with open(path, encoding="utf-8") as handle:
        return path, handle.read()


def test_every_image_is_a_small_jpeg_of_the_thumbnail_size(report, files):
    path, text = report
    page = Page(text)
    # per group: its mean, per cluster its mean and 2 examples; the first group: 5 + 1 listed
    assert len(page.sources) == 4 * (1 + 2 * 3) + 6
    for source in page.sources:
        assert source.startswith("data:image/jpeg;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert picture.format == "JPEG" and picture.size == (40, 40)
    assert "src=\"http" not in text and "<link" not in text and "script" not in page.tags
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".cnnlens-")]  # atomic


def test_names_are_escaped_text(report):
    _, text = report
    page = Page(text)
    shown = "".join(page.text)
    assert EVIL not in text and "<script>b&c" not in text  # no markup from a name reaches the page raw
    assert html.escape(EVIL) in text
    for name in (EVIL, "cats/" + EVIL_FILE, "occ&lusion, class 5 (" + EVIL + ")", "net<1>.onnx", "audit & test"):
        assert name in shown


def test_sections_captions_and_eigengap(report):
    _, text = report
    shown = "".join(Page(text).text)
    assert shown.count("Maps outside the object box") == 1 and shown.count("Maps on the border") == 1
    assert "image cannot be read any more" in shown  # gone.png: a grey placeholder, no exception
    assert "energy in box 0.15" in shown and "border share 0.40" in shown
    assert "predicted 5 (87.5%)" in shown and "label cat" in shown
    assert "eigenvalues 0.00 0.01 | 0.62 0.70 0.75" in shown and "read from the eigengap" in shown
    assert "the other 5 joined their nearest cluster" in shown
    assert "10 maps (50% of the group)" in shown and "10 (50%), 9 (45%)" in shown


def test_page_size_depends_on_the_examples_not_the_dataset(files, tmp_path):
    sizes = []
    for scale in (1, 10, 1000):
        path = str(tmp_path / f"audit{scale}.html")
        write_audit_report(path, make_groups(files, scale=scale), input_size=INPUT, thumbnail=40)
        sizes.append(os.path.getsize(path))
    assert max(sizes) - min(sizes) < 1000  # only the digits of the counts change
    path = str(tmp_path / "more.html")
    write_audit_report(path, make_groups(files, examples=4), input_size=INPUT, thumbnail=40)
    assert os.path.getsize(path) > 1.3 * sizes[0]  # more examples shown: a larger page


def test_wide_input_keeps_its_aspect_and_empty_audit(files, tmp_path):
    path = str(tmp_path / "wide.html")
    write_audit_report(path, make_groups(files, methods=("gradcam",), targets=(3,)), input_size=(24, 48),
                       thumbnail=64)
    with open(path, encoding="utf-8") as handle:
        sources = Page(handle.read()).sources
    sizes = {Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).size for s in sources}
    assert sizes == {(64, 32)}
    write_audit_report(path, [], input_size=INPUT)
    with open(path, encoding="utf-8") as handle:
        assert "No maps to show" in handle.read()


# --- in a real browser (skipped like tests/adapters/test_report_browser.py) ----------------


def test_page_in_chromium(report, browser):
    path, _ = report
    browser.get("file://" + path)
    assert browser.title == "audit & test"
    assert browser.execute_script("return document.images.length") == 4 * 7 + 6
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert browser.execute_script("return document.querySelectorAll('script').length") == 0
    body = browser.execute_script("return document.body.innerText")
    assert EVIL in body and "cats/" + EVIL_FILE in body and "occ&lusion" in body
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    assert "occ&lusion, class 5 (" + EVIL + ")" in headings


def test_a_real_audits_report_in_chromium(tmp_path, browser):
    """The page ``cnnlens.audit`` writes (not hand-built summaries): every picture decodes, every
    group and cluster of summary.json is on it."""
    import json

    pytest.importorskip("sklearn")
    from cnnlens.audit import audit
    from tests.audit_helpers import MEAN, STD, SmallNet, write_images

    write_images(str(tmp_path / "data"), count=10, classes=("a<b>", "c&d"))
    out = tmp_path / "out"
    audit(SmallNet().eval(), str(tmp_path / "data"), str(out), ["gradcam", "saliency"], size=(32, 32), mean=MEAN,
          std=STD, map_size=8, target="label")
    summary = json.load(open(out / "summary.json"))
    browser.get("file://" + str(out / "report.html"))
    assert browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length") == 0
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    for method, classes in summary["clusters"].items():
        for target, info in classes.items():
            assert f"{method}, class {target} ({info['name']})" in headings
    assert "a<b>/" in browser.execute_script("return document.body.innerText")
