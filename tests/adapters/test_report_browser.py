"""The HTML report in a real browser: headless Chromium (Debian's) driven by Selenium.

The page loads with no console errors, every image decodes, the layer browser switches
layers, and names that come from a model or a file are shown as text, never run.
"""


import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.adapters.report import write_report
from tests.browser import CHROMIUM, DRIVER, require_chromium

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

EVIL = "<script>alert(1)</script>"

if not (CHROMIUM and DRIVER):
    require_chromium()  # skips (or fails on CI) the whole module


class Net(nn.Module):
    """Conv blocks, a module whose name is markup, and a GAP -> linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.add_module(EVIL, nn.Conv2d(8, 12, 3, padding=1))
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        x = self.relu(getattr(self, EVIL)(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    torch.manual_seed(0)
    model = Net()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 24, 24)).astype(np.float32)
    display = rng.integers(0, 255, (2, 24, 24, 3), dtype=np.uint8)
    path = str(tmp_path_factory.mktemp("report") / "report.html")
    write_report(path, cnnlens.load(model), x, display, names=[EVIL + ".png", "plain.png"],
                 labels=["cat", EVIL, "dog", "bird"], title="test report")
    return path


def test_page_loads_without_console_errors_and_every_image_decodes(report, browser):
    browser.get("file://" + report)
    assert browser.title == "test report"
    count = browser.execute_script("return document.images.length")
    assert count >= 2 * 10  # input + methods per image, plus the layer browser
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_layer_browser_switches_layers(report, browser):
    browser.get("file://" + report)
    select = Select(browser.find_element(By.ID, "layer-select"))
    options = [o.text for o in select.options]
    assert options[0].startswith("conv1") and any(EVIL in o for o in options)

    def visible():
        panels = browser.find_elements(By.CSS_SELECTOR, ".layer-panel")
        return [p.get_attribute("data-layer-index") for p in panels if p.is_displayed()]

    assert visible() == ["0"]
    select.select_by_index(len(options) - 1)
    assert visible() == [str(len(options) - 1)]
    assert browser.find_element(By.ID, "layer-current").text == options[-1]
    panel = browser.find_element(By.CSS_SELECTOR, f'.layer-panel[data-layer-index="{len(options) - 1}"]')
    shown = panel.find_elements(By.TAG_NAME, "img")
    assert len(shown) == 4 and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in shown)


def test_names_from_models_and_files_are_text(report, browser):
    browser.get("file://" + report)
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert EVIL + ".png" in headings
    assert EVIL in browser.find_element(By.TAG_NAME, "body").text  # the label and the layer, shown literally
    assert browser.execute_script("return document.querySelectorAll('script').length") == 1
    with open(report, encoding="utf-8") as handle:
        assert EVIL not in handle.read()
