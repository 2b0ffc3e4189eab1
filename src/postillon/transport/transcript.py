"""The session transcript: 4D's extended log file, and the ``postillon`` logger.

Each line of the log file carries an RFC 3339 timestamp and a direction: ``C >`` for
what the client sent, ``S <`` for what the server answered, ``--`` for session events
(start with host, port, TLS version and cipher; AUTH offered and chosen). The full MIME
of each message sent follows its DATA/BDAT command (4D's extended log). Secrets never
reach it: the conversation hands over redacted forms of AUTH lines, and server
challenges during AUTH are redacted here. Reply text is escaped (no control characters,
so a server cannot forge log lines) and bounded.

The same events go to ``logging.getLogger("postillon.transport")`` at DEBUG, without
message bodies.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
from typing import IO

from ..protocol.reply import Reply, printable

log = logging.getLogger("postillon.transport")

# One lock per log file path: several connections (threads) may share one file.
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Transcript:
    """Writes one session's events; cheap when neither the file nor DEBUG is on."""

    __slots__ = ("_debug", "_file", "_lock", "_path", "active", "body_active", "tag")

    def __init__(self, path: str | os.PathLike[str] | None, tag: str) -> None:
        self._path = os.fspath(path) if path is not None else None
        self._file: IO[str] | None = None
        self._lock = _lock_for(self._path) if self._path else None
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.tag = tag
        #: anything to record at all (checked by the drivers before formatting)
        self.active = self._path is not None or self._debug
        #: message bodies are recorded (log file only)
        self.body_active = self._path is not None

    def _emit(self, line: str, *, debug: bool = True) -> None:
        if debug and self._debug:
            log.debug("%s %s", self.tag, line)
        if self._path is None:
            return
        assert self._lock is not None
        with self._lock:
            if self._file is None:
                self._file = open(self._path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            self._file.write(f"{_now()} {line}\n")

    def event(self, text: str) -> None:
        self._emit(f"-- {printable(text, 2000)}")

    def sent(self, text: str) -> None:
        self._emit(f"C > {printable(text.rstrip(chr(13) + chr(10)), 2000)}")

    def received(self, reply: Reply, *, redact: bool = False) -> None:
        if redact and reply.code == 334:
            self._emit("S < 334 [redacted]")
            return
        lines = reply.lines or ("",)
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            self._emit(f"S < {reply.code}{sep}{printable(line)}")

    def body(self, chunk: bytes) -> None:
        """Record message bytes as sent (log file only: bodies never go to the logger)."""
        if self._path is None:
            return
        text = chunk.decode("utf-8", "replace")
        assert self._lock is not None
        with self._lock:
            if self._file is None:
                self._file = open(self._path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            self._file.write(text)

    def flush(self) -> None:
        if self._file is not None:
            assert self._lock is not None
            with self._lock:
                self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            assert self._lock is not None
            with self._lock:
                self._file.close()
                self._file = None
