"""Value types of the spool: the public :class:`SpoolEntry` and the internal records.

Times inside the stores are POSIX seconds (floats), so that a fake clock is a plain
function returning a number; the public :class:`SpoolEntry` shows them as aware UTC
datetimes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..message.prepared import Prepared
from ..status import SendStatus, SpoolState

__all__ = [
    "RECIPIENT_FAILED",
    "RECIPIENT_PENDING",
    "RECIPIENT_SENT",
    "Decision",
    "NewEntry",
    "SpoolEntry",
    "from_ts",
]

#: per-recipient states kept in :attr:`SpoolEntry.recipients`
RECIPIENT_PENDING = "pending"
RECIPIENT_SENT = "sent"
RECIPIENT_FAILED = "failed"


def from_ts(ts: float | None) -> datetime | None:
    """POSIX seconds to an aware UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class SpoolEntry:
    """One message in the spool, as a snapshot (WinDev ``EmailStatus`` with the detail).

    ``recipients`` maps each envelope recipient to ``"pending"``, ``"sent"`` or
    ``"failed"``; a retry goes only to the pending ones. ``uncertain`` is True when a
    connection broke after the final dot and before the server's answer: the server may
    hold the message, so the retry may deliver a duplicate.

    Example::

        entry = spool.status(mail_id)
        if entry.state is SpoolState.PENDING:
            print(entry.attempts, entry.next_attempt_at, entry.last_status)
    """

    mail_id: str
    state: SpoolState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_status: SendStatus | None
    recipients: dict[str, str]
    uncertain: bool
    message_id: str
    mail_from: str
    error: str | None = None
    #: size of the stored message in bytes
    size: int = 0
    #: the message needs a server offering SMTPUTF8 (RFC 6531)
    needs_smtputf8: bool = False
    #: the body holds 8-bit octets (RFC 6152)
    eight_bit: bool = False
    #: when the entry last changed
    updated_at: datetime | None = None

    @property
    def pending_recipients(self) -> list[str]:
        """Recipients still to be delivered."""
        return [a for a, s in self.recipients.items() if s == RECIPIENT_PENDING]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (used by ``postillon spool status --json``)."""
        return {
            "mail_id": self.mail_id,
            "state": self.state.value,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
            "last_status": self.last_status.to_dict() if self.last_status else None,
            "recipients": dict(self.recipients),
            "uncertain": self.uncertain,
            "message_id": self.message_id,
            "mail_from": self.mail_from,
            "error": self.error,
            "size": self.size,
        }


@dataclass(frozen=True)
class NewEntry:
    """Internal: what ``submit`` hands to a store (the bytes stream from ``prepared``)."""

    mail_id: str
    idempotency_key: str | None
    prepared: Prepared
    created_at: float


@dataclass(frozen=True)
class Decision:
    """Internal: what to write back after one attempt (a pure function's output)."""

    state: SpoolState
    attempts: int
    recipients: dict[str, str]
    next_attempt_at: float | None
    last_status: SendStatus | None
    uncertain: bool
    error: str | None
    #: a server-level failure (connect, TLS, greeting, EHLO): the worker should not try
    #: the rest of its batch on this server right now
    server_fault: bool = False
    #: 535 at AUTH: nothing is recorded, the worker pauses and logs in again later
    pause_auth: bool = False
    #: delivered to these recipients by this attempt (for the run statistics)
    delivered: tuple[str, ...] = field(default=())
    #: refused permanently by this attempt
    refused: tuple[str, ...] = field(default=())


def dump_recipients(recipients: Mapping[str, str]) -> str:
    """Recipient map to its stored JSON text (order kept)."""
    return json.dumps(dict(recipients), ensure_ascii=False, separators=(",", ":"))


def load_recipients(text: str) -> dict[str, str]:
    """Stored JSON text back to the recipient map."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("corrupt recipient map")
    return {str(k): str(v) for k, v in data.items()}


def dump_status(status: SendStatus | None) -> str | None:
    """SendStatus to stored JSON text."""
    if status is None:
        return None
    return json.dumps(status.to_dict(), ensure_ascii=False, separators=(",", ":"))


def load_status(text: str | None) -> SendStatus | None:
    """Stored JSON text back to a SendStatus."""
    if not text:
        return None
    return SendStatus.from_dict(json.loads(text))


def rechunk(chunks: Iterable[bytes], size: int) -> Iterable[bytes]:
    """Regroup a byte stream into blocks of ``size`` bytes (the last may be shorter).

    Keeps at most about ``2 * size`` bytes in memory whatever the message size.
    """
    buf = bytearray()
    for chunk in chunks:
        if not chunk:
            continue
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def stored_source(
    first: bytes | None, nchunks: int, fetch: Callable[[int], bytes]
) -> Callable[[], Iterable[bytes]]:
    """A re-iterable source over stored chunks, fetched one at a time.

    ``first`` is chunk 0 when the claim already loaded it (small messages cost no extra
    query); the others are read lazily, so a large message is never loaded whole.
    """

    def source() -> Iterable[bytes]:
        for seq in range(nchunks):
            if seq == 0 and first is not None:
                yield first
            else:
                yield fetch(seq)

    return source
