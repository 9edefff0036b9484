"""A headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium.

The packages are installed here when missing, so a fresh machine needs nothing by hand; the
browser reaches only loopback (every other request goes to a proxy that does not exist).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PACKAGES = ["chromium", "chromium-driver"]
INSTALL_TIMEOUT_SECONDS = 600


def browser_installed() -> bool:
    """Both the browser and its driver are on this machine."""
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def install_browser() -> None:
    """apt-get install Debian's chromium and its driver (root only), or fail saying how."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(
            f"The browser tests need {CHROMIUM} and {CHROMEDRIVER}: run "
            f"`sudo apt-get install -y {' '.join(PACKAGES)}` (or `make browser`)."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["update", "-q"], ["install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        subprocess.run([apt, *args], env=env, check=True, timeout=INSTALL_TIMEOUT_SECONDS)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The path of a usable chromium, installed first if missing."""
    if not browser_installed():
        install_browser()
    assert browser_installed(), f"{CHROMIUM} or {CHROMEDRIVER} still missing after apt-get"
    return CHROMIUM


@pytest.fixture
def browser(chromium: Path, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile, closed after the test."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in a container
        "--disable-dev-shm-usage",
        "--window-size=1440,1400",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        # Loopback only: anything else is sent to a proxy nobody listens on, and fails.
        "--proxy-server=http://127.0.0.1:9",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without the browser yet, the first browser test also waits for apt-get: allow for it."""
    if browser_installed():
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.timeout(2 * INSTALL_TIMEOUT_SECONDS + 120))
