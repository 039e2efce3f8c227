"""Open a page in headless Chromium (Debian's ``chromium``) as a user would, and read what it rendered."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return found


@dataclass
class Rendered:
    dom: str
    console: list[str]  # every console message (log, warning, error, uncaught exception)

    @property
    def charts(self) -> list[str]:
        return re.findall(r'<div id="(chart-\d+)" class="([^"]*)"', self.dom)


def render(path: Path, wait_ms: int = 20_000) -> Rendered:
    """The DOM after the page's scripts ran (virtual time lets plotly finish) and its console messages."""
    proc = subprocess.run([chromium(), *FLAGS, "--enable-logging=stderr", "--v=0",
                           f"--virtual-time-budget={wait_ms}", "--dump-dom", path.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(proc.stdout, console)
