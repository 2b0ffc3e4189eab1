"""A message ready for the wire: its envelope and a re-iterable source of its bytes.

Every send path (Email, stdlib EmailMessage, RawMessage, a spooled entry, a signed
message) ends as a :class:`Prepared` before it reaches the SMTP conversation. It is the
one hand-over point between ``message/`` and the transport: the conversation never looks
inside the MIME, it only streams ``chunks()``.

``chunks()`` may be called more than once (a retry, a DKIM body-hash pass) and yields
the same bytes each time: Date and Message-ID are fixed when the Prepared is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field


# Not frozen: a bulk send makes one per message and a frozen dataclass's __init__ costs
# five times as much; nothing assigns to the fields after construction. Compared by
# identity (eq=False), as the drivers and the batch track messages.
@dataclass(slots=True, eq=False, weakref_slot=True)
class Prepared:
    """Envelope plus message bytes. Internal: not part of the public API."""

    #: envelope sender as it goes into MAIL FROM (an RFC 5321 Mailbox, "" for the null path)
    mail_from: str
    #: envelope recipients, deduplicated, each an RFC 5321 Mailbox
    recipients: tuple[str, ...]
    #: the Message-ID header value, with angle brackets ("" when the message has none)
    message_id: str
    #: produces the message bytes (header and body, CRLF line endings), same bytes every call
    source: Callable[[], Iterable[bytes]] = field(repr=False)
    #: exact size in bytes when known without reading the source, else None
    size: int | None = None
    #: the envelope or headers hold UTF-8 (needs the SMTPUTF8 parameter, RFC 6531)
    needs_smtputf8: bool = False
    #: the body holds 8-bit octets (needs BODY=8BITMIME, RFC 6152)
    eight_bit: bool = False
    #: the source only reads memory (no file behind it): the asyncio driver may iterate
    #: it on the event loop instead of in a worker thread
    in_memory: bool = False
    #: the original object, for the transcript and the in-process outbox (not compared)
    original: object = field(default=None, repr=False, compare=False)

    def chunks(self) -> Iterator[bytes]:
        """Iterate the message bytes from the start."""
        return iter(self.source())

    def read(self) -> bytes:
        """The whole message in memory (for small messages, tests and the capture outbox)."""
        return b"".join(self.chunks())

    def with_recipients(self, recipients: Iterable[str]) -> Prepared:
        """A copy for a subset of the recipients (a retry to those still pending)."""
        return Prepared(
            self.mail_from,
            tuple(recipients),
            self.message_id,
            self.source,
            self.size,
            self.needs_smtputf8,
            self.eight_bit,
            self.in_memory,
            self.original,
        )
