"""Render a page in Debian's headless ``chromium`` and watch for any network request (shared by the report tests).

Every http(s) request of the page goes to a proxy on a local socket that this module listens on; the page
counts as self-contained when nothing connects to it. ``file://`` loads do not go through a proxy.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

# Chromium's own background calls (network time, component updates) even with them disabled where a flag allows.
BROWSER_HOSTS = re.compile(rb"^[A-Z]+ (?:https?://)?[^/\s]*(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)[/:\s]")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)"


class ProxyTrap:
    """A TCP listener standing in for an HTTP proxy: records every connection, answers none."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            connection.settimeout(1.0)
            try:
                self.requests.append(connection.recv(4096))
            except OSError:
                self.requests.append(b"")
            connection.close()

    def page_requests(self) -> list[bytes]:
        """The requests made by the page (the browser's own calls to Google's hosts left out)."""
        return [request for request in self.requests if not BROWSER_HOSTS.match(request)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


def chromium(page: Path, *mode: str, proxy_port: int, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run headless chromium on ``page`` with ``mode`` (``--dump-dom``, ``--screenshot=...``), all traffic sent to
    the proxy at ``proxy_port`` (loopback included)."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter",
        f"--proxy-server=http://127.0.0.1:{proxy_port}",
        "--proxy-bypass-list=<-loopback>",
        "--window-size=1400,1800",
        "--virtual-time-budget=3000",
        *mode,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
