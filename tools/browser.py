"""Drive the real app in Chromium: shared by the browser tests, the benchmark and the screenshot.

Uses Debian's Chromium (``/usr/bin/chromium`` or ``$CHROMIUM``) through the Python ``playwright``
package; ``playwright install`` is never needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """Chromium's executable: ``$CHROMIUM``, Debian's ``/usr/bin/chromium``, or one on the PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_app(env: dict[str, str] | None = None, log_path: Path | None = None, timeout: float = 90) -> Iterator[str]:
    """``streamlit run app/main.py`` on a free local port; yields its URL, stops it afterwards."""
    port = free_port()
    log = open(log_path or Path(tempfile.mkdtemp()) / "streamlit.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise RuntimeError(f"streamlit did not start:\n{log.read()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def new_page(playwright: Any, width: int = 1500, height: int = 1000) -> tuple[Any, Any]:
    """(context, page) in a fresh Chromium profile: each context is its own Streamlit session."""
    executable = chromium_path()
    if executable is None:
        raise RuntimeError("Chromium not found: apt-get install chromium (or set $CHROMIUM)")
    context = playwright.chromium.launch_persistent_context(
        tempfile.mkdtemp(prefix="mp-chromium-"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height})
    page = context.pages[0] if context.pages else context.new_page()
    page.set_default_timeout(60_000)
    return context, page


def wait_idle(page: Any) -> None:
    """Until Streamlit has finished the current script run (the app root's ``data-test-script-state``)."""
    page.wait_for_timeout(250)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state')"
        " === 'notRunning'")


def load(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".st-key-row-class-0 canvas.ink")
    wait_idle(page)
