"""What the commands share: status lines, JSON output, progress lines on stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from ..status import SendStatus, Status

__all__ = ["Progress", "print_json", "status_line"]

#: exit statuses of every command
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def status_line(status: Status, label: str | None = None) -> str:
    """One line for a status: ``ok 250 2.0.0 queued`` or ``FAILED 550 ...``."""
    head = "ok" if status.success else "FAILED"
    text = " ".join(status.status_text.split())
    if not status.success and status.errors:
        text = "; ".join(" ".join(e.message.split()) for e in status.errors) or text
    parts = [head, str(status.status)]
    if isinstance(status, SendStatus):
        if status.enhanced_status:
            parts.append(status.enhanced_status)
        refused = status.refused
        if refused and status.recipients and len(refused) < len(status.recipients):
            text += f" (refused: {', '.join(refused)})"
    parts.append(text)
    line = " ".join(p for p in parts if p)
    return f"{label}: {line}" if label else line


def print_json(value: Any, out: TextIO | None = None) -> None:
    """JSON on stdout, non-ASCII kept readable."""
    print(json.dumps(value, ensure_ascii=False), file=out or sys.stdout, flush=True)


class Progress:
    """A progress line on stderr at most every ``interval`` seconds.

    Shown when stderr is a terminal, or when forced (``--progress``); never on stdout, so
    ``--json`` output stays clean.
    """

    def __init__(self, total: int | None, *, force: bool = False, interval: float = 1.0) -> None:
        stream = sys.stderr
        self.enabled = force or (stream is not None and stream.isatty())
        self.total = total
        self.interval = interval
        self.started = time.monotonic()
        self._last = self.started

    def update(self, done: int, failed: int = 0, *, final: bool = False) -> None:
        """Report ``done`` items (``failed`` of them failed); rate-limited unless ``final``."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        total = f"/{self.total}" if self.total is not None else ""
        print(
            f"progress: {done}{total} done, {failed} failed, {done / elapsed:.1f}/s, "
            f"{elapsed:.1f}s",
            file=sys.stderr,
            flush=True,
        )
