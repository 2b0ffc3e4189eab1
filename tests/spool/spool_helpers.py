"""Helpers shared by the spool tests (a module of its own: conftest modules are not
importable by name when several test folders each have one)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from postillon.message.prepared import Prepared
from postillon.status import RecipientStatus, SendStatus


def make_prepared(
    body: bytes = b"hello\r\n",
    *,
    to: tuple[str, ...] = ("bob@example.org",),
    mail_from: str = "ann@example.com",
    message_id: str | None = None,
    chunk: int = 64 * 1024,
) -> Prepared:
    """A ready message (headers + body) handed out in ``chunk``-sized pieces."""
    mid = message_id or f"<{uuid.uuid4().hex}@example.com>"
    data = (
        f"From: {mail_from}\r\nTo: {', '.join(to)}\r\nMessage-ID: {mid}\r\n"
        "Subject: spool test\r\n\r\n"
    ).encode() + body

    def source() -> Iterator[bytes]:
        return (data[i : i + chunk] for i in range(0, len(data), chunk))

    return Prepared(mail_from, tuple(to), mid, source, len(data))


def ok_status(prepared: Prepared) -> SendStatus:
    return SendStatus(
        success=True,
        status=250,
        status_text="2.0.0 ok",
        message_id=prepared.message_id,
        recipients={r: RecipientStatus(250, "ok", True) for r in prepared.recipients},
    )


class FakeSender:
    """Stands in for a Transporter in the pure worker tests (``_clone``/``_send_prepared``).

    ``script(prepared, n)`` returns the SendStatus of the n-th send overall (or raises).
    Every clone shares the log of what was sent.
    """

    def __init__(self, script: Callable[[Prepared, int], SendStatus] | None = None) -> None:
        self.script = script or (lambda p, n: ok_status(p))
        self.sent: list[tuple[str, tuple[str, ...], bytes]] = []
        self.closed = 0
        self.clones = 0
        self.lock = threading.Lock()
        self.send_timeout = 100

    def _clone(self) -> FakeSender:
        with self.lock:
            self.clones += 1
        return self

    def _send_prepared(self, prepared: Prepared) -> SendStatus:
        data = prepared.read()
        with self.lock:
            n = len(self.sent)
            self.sent.append((prepared.message_id, prepared.recipients, data))
        return self.script(prepared, n)

    def close(self) -> None:
        with self.lock:
            self.closed += 1


def transporter_for(host: str, port: int, **kwargs: Any) -> Any:
    """A real Transporter in clear text to a loopback test server."""
    from postillon.settings import Security
    from postillon.transporter import Transporter

    kwargs.setdefault("security", Security.NONE)
    kwargs.setdefault("accept_unsecure_connection", True)
    kwargs.setdefault("connection_timeout", 5)
    kwargs.setdefault("send_timeout", 10)
    return Transporter(host, port, **kwargs)
