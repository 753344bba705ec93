"""Debian's headless chromium under Selenium, for the end-to-end UI test.

Only the system browser and driver are used (``/usr/bin/chromium``, ``/usr/bin/chromedriver``
from the Debian packages ``chromium`` and ``chromium-driver``, which ``.ci/run`` installs):
naming the driver in ``Service`` keeps Selenium Manager from ever downloading one.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "install Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1600,1000",
)


def require_browser() -> None:
    """Skip (fail under CI, which must never skip) without chromium, its driver or selenium."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not (path.is_file() and os.access(path, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package selenium (pip install -e '.[dev]')")
    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test, but {', '.join(missing)} is missing; .ci/run installs "
                    "chromium and chromium-driver with apt-get, and `make test` installs selenium (the dev extra)")
    pytest.skip(INSTALL_HINT)


@contextlib.contextmanager
def chromium(profile: Path, log: Path) -> Iterator[Any]:
    """A headless chromium WebDriver with a throwaway profile; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(log))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_addresses(port: int) -> list[str] | None:
    """The local addresses with a TCP socket listening on ``port``; None when the system will
    not tell (psutil missing, or not allowed to list sockets on this platform)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return None
    return sorted({c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port})


def other_local_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback ones (a server bound to 127.0.0.1
    must refuse connections to them)."""
    try:
        import psutil
    except ImportError:
        return []
    return sorted({address.address for addresses in psutil.net_if_addrs().values() for address in addresses
                   if address.family == socket.AF_INET and not address.address.startswith("127.")})


def accepts(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
