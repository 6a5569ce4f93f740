"""Headless Chromium (Debian's) driven by Selenium, for the tests that open pages in a browser."""

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def require_chromium() -> None:
    """Skip when Chromium or its driver is missing (fail on CI, which must install them)."""
    if CHROMIUM and DRIVER:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must install Debian's chromium and chromium-driver (see .ci/run)", pytrace=False)
    pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")


def headless_chromium():
    """A fixture body (``yield from``): a headless Chromium that records the console's messages."""
    webdriver = pytest.importorskip("selenium.webdriver")
    require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
