"""Test helpers for code that sends mail with postillon: an in-process outbox.

While an :class:`Outbox` is active, every message sent through any
:class:`~postillon.Transporter` or :class:`~postillon.AsyncTransporter` of the process
(including spool workers running in this process) is captured instead of sent: no
connection is opened, and ``send()`` returns a successful :class:`~postillon.SendStatus`
(250, every recipient accepted). Messages are prepared exactly as for a real send, so a
message a server would never see (no recipient, a CR in a header...) still raises
:class:`~postillon.InvalidMessage`.

Example::

    from postillon import Email, Transporter
    from postillon.testing import Outbox

    def test_welcome_mail():
        with Outbox() as box:
            signup("ann@example.com")            # calls Transporter(...).send(...)
        assert len(box) == 1
        assert box.messages[0].subject == "Welcome"
        assert box.messages[0].envelope.recipients == ("ann@example.com",)

Scope: an outbox is **process-wide**, not task- or thread-local. Spool workers and the
threads of a web test client do not inherit context variables from the test, and a
capture that missed them would let mail reach the network; so every thread and task
sees the same active outbox. Outboxes nest: the **innermost** active one captures, and
the outer ones see nothing until it is closed. Capturing is thread- and task-safe (one
lock per outbox). ``check_connection()`` is not captured: it still talks to the server.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .message.prepared import Prepared
from .status import RecipientStatus, SendStatus

if TYPE_CHECKING:
    from .message import Email
    from .transporter import Batch, TransporterBase

__all__ = ["CapturedMessage", "Envelope", "Outbox"]

_CAPTURED_TEXT = "2.0.0 Ok: captured by postillon.testing.Outbox"

# The active outboxes, innermost last. Read without the lock on the hot path (a list
# read is atomic in CPython); changed only under it.
_stack: list[Outbox] = []
_stack_lock = threading.Lock()


def active() -> Outbox | None:
    """The outbox that captures now (the innermost active one), else None. Internal."""
    if not _stack:
        return None
    with _stack_lock:
        return _stack[-1] if _stack else None


class Envelope(NamedTuple):
    """The SMTP envelope a message would have had: ``MAIL FROM`` and every ``RCPT TO``."""

    mail_from: str
    recipients: tuple[str, ...]


@dataclass(eq=False)
class CapturedMessage:
    """One captured message: its envelope, its exact bytes and the parsed :class:`Email`.

    The attributes of the parsed ``Email`` are readable directly (``subject``, ``to``,
    ``text_body``, ``attachments``...). Bcc recipients appear in ``envelope`` only, as
    on the wire.

    Example::

        msg = box.messages[0]
        msg.subject, msg.envelope.recipients, msg.raw.startswith(b"Date:")
    """

    envelope: Envelope
    raw: bytes = field(repr=False)
    message_id: str

    @functools.cached_property
    def email(self) -> Email:
        """The message parsed back with :func:`postillon.from_mime` (parsed on first use)."""
        from .message import from_mime

        return from_mime(self.raw)

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found on the instance: the Email's fields.
        if name.startswith("_") or name == "email":
            raise AttributeError(name)
        return getattr(self.email, name)


class Outbox:
    """Capture every message sent in this process while the context is active.

    ``messages`` lists the captured :class:`CapturedMessage` in the order they were
    sent; ``len(box)``, iteration and ``box.clear()`` work as on a list.
    :meth:`wait_for` waits for mail sent by background threads (spool workers).

    Example::

        with Outbox() as box:
            Transporter("smtp.invalid").send(mail)   # no network
        assert box.messages[0].subject == mail.subject
    """

    def __init__(self) -> None:
        self._messages: list[CapturedMessage] = []
        self._cond = threading.Condition()

    def __repr__(self) -> str:
        return f"<Outbox {len(self)} message(s){' active' if self in _stack else ''}>"

    def __enter__(self) -> Outbox:
        with _stack_lock:
            if self in _stack:
                raise RuntimeError("this Outbox is already active")
            _stack.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with _stack_lock:
            # Removed wherever it is: threads may close outboxes out of order.
            if self in _stack:
                _stack.remove(self)

    @property
    def messages(self) -> list[CapturedMessage]:
        """A snapshot of the captured messages, oldest first."""
        with self._cond:
            return list(self._messages)

    def __len__(self) -> int:
        with self._cond:
            return len(self._messages)

    def __iter__(self) -> Iterator[CapturedMessage]:
        return iter(self.messages)

    def clear(self) -> None:
        """Forget every captured message."""
        with self._cond:
            self._messages.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[CapturedMessage]:
        """Wait until at least ``count`` messages were captured; raise TimeoutError if not.

        Example: ``box.wait_for(1)`` after handing mail to a spool worker thread.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count: must be an integer >= 0, not {count!r}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"expected {count} message(s) within {timeout}s, got {len(self._messages)}"
                    )
                self._cond.wait(left)
            return list(self._messages)

    # -- the hook of the transporters

    def deliver(self, owner: TransporterBase, batch: Batch) -> None:
        """Capture a whole send()/send_many() call. Internal: called by the transporters.

        Messages are staged and finished exactly as for a server offering SMTPUTF8,
        signatures included; a message that cannot be sent still raises (send) or gets
        its failed status (send_many).
        """
        for item in batch.prepared(smtputf8=True):
            if isinstance(item, SendStatus):
                batch.results.append(item)
            else:
                batch.results.append(self._capture(item))

    def _capture(self, prepared: Prepared) -> SendStatus:
        captured = CapturedMessage(
            Envelope(prepared.mail_from, tuple(prepared.recipients)),
            prepared.read(),
            prepared.message_id,
        )
        with self._cond:
            self._messages.append(captured)
            self._cond.notify_all()
        ok = RecipientStatus(250, _CAPTURED_TEXT, True)
        return SendStatus(
            success=True,
            status=250,
            status_text=_CAPTURED_TEXT,
            enhanced_status="2.0.0",
            message_id=prepared.message_id,
            recipients=dict.fromkeys(prepared.recipients, ok),
        )
