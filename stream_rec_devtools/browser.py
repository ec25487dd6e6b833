"""A headless Chromium driven by Selenium, for the tests of the worker's pages, the screenshots and the
live-update latency measurement: Debian's ``chromium`` and ``chromedriver`` (deploy/ensure-test-tools.sh
installs them), never a browser or a driver downloaded at run time (the driver's path is given, so
Selenium Manager stays idle).

Chromium runs as root in CI and the network may be closed: no sandbox, no GPU, and none of the features
that call home (component updates, sync, background networking, QUIC), in a fresh profile each time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check", "--hide-scrollbars",
         "--disable-dev-shm-usage", "--force-color-profile=srgb")


def executables() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) on PATH (``STREAM_REC_CHROMIUM`` / ``STREAM_REC_CHROMEDRIVER`` win)."""
    browser = os.environ.get("STREAM_REC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("STREAM_REC_CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


def unavailable() -> str | None:
    """Why no browser can be driven here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    browser, driver = executables()
    if browser is None or driver is None:
        return ("Debian's chromium and chromium-driver are not installed (deploy/ensure-test-tools.sh installs them "
                "as root: apt-get install chromium chromium-driver)")
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900, scale: float = 1.0) -> Iterator:
    """A Selenium WebDriver on a headless Chromium of ``width`` x ``height`` CSS pixels (``scale``: device
    pixels per CSS pixel, for sharper screenshots); quit and its profile removed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = executables()
    if browser is None or driver_path is None:
        raise RuntimeError(unavailable())
    profile = tempfile.mkdtemp(prefix="stream-rec-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                 f"--force-device-scale-factor={scale}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """The page's console errors since the last call (network 4xx of the page itself included)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
