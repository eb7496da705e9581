"""Headless Chromium for the tests of charrnn's pages (the explain page, the exported page):
the `browser` fixture (import `chromium` into the test module to use it), and `requests`, the network
requests the page made. Where the browser is missing a test skips, but fails under CI=1."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest


def need(reason: str) -> None:
    """Skip here; in CI (where the browser is installed on purpose) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI must run the browser test (.ci/run installs chromium and chromium-driver)")
    pytest.skip(reason)


@pytest.fixture(name="browser")
def chromium() -> Iterator[Any]:
    """Headless Chromium driven by chromedriver, logging every network request the page makes."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need("selenium is not installed (it is in the dev extra)")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        need("no Chromium here (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="charrnn-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requests(driver: Any) -> list[str]:
    """URLs of the requests since the last call, leaving out the browser's own chrome:// pages."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url, document = message["params"]["request"]["url"], message["params"].get("documentURL", "")
            if not url.startswith("chrome://") and not document.startswith("chrome://"):
                urls.append(url)
    return urls
