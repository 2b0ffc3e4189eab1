"""Helpers of the command-line tests (imported by the test modules and conftest)."""

from __future__ import annotations

import shutil
import socket
import sys
import time


def postillon_command() -> list[str]:
    """The installed console script, else ``python -m postillon``."""
    exe = shutil.which("postillon")
    return [exe] if exe else [sys.executable, "-m", "postillon"]


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout}s")


def one_clear_line(stderr: str) -> str:
    """Assert that stderr is exactly one line and no traceback; return it."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]
