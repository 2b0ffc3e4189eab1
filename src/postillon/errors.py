"""The one exception tree of postillon.

::

    SMTPError
    ├── TransportError            the connection failed; no SMTP reply explains it
    │   ├── ConnectError          DNS, refused, unreachable
    │   ├── TimeoutError          also a builtin TimeoutError
    │   ├── ServerDisconnected    the server closed the connection
    │   └── TLSError              handshake or certificate failure
    ├── ProtocolError             the server broke the protocol (garbage, oversized replies)
    ├── ReplyError                the server answered with an error reply
    │   ├── AuthenticationError
    │   ├── SenderRefused
    │   ├── RecipientsRefused
    │   └── DataRefused
    └── InvalidMessage            also a ValueError: input that cannot be sent as given

Every exception pickles (the spool stores them): ``__reduce__`` rebuilds it from its
public fields.

Example::

    try:
        transporter.send(mail).raise_for_status()
    except postillon.ReplyError as exc:
        if exc.is_transient:
            retry_later()
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "AuthenticationError",
    "ConnectError",
    "DataRefused",
    "InvalidMessage",
    "ProtocolError",
    "RecipientsRefused",
    "ReplyError",
    "SMTPError",
    "SenderRefused",
    "ServerDisconnected",
    "TLSError",
    "TimeoutError",
    "TransportError",
]


class SMTPError(Exception):
    """Root of every postillon exception."""


class TransportError(SMTPError):
    """The connection failed in a way no SMTP reply explains (status 0)."""


class ConnectError(TransportError):
    """The TCP connection could not be established (DNS, refused, unreachable)."""


class TimeoutError(TransportError, builtins.TimeoutError):  # noqa: A001 - API.md name
    """A deadline passed: connection, greeting, a reply, or the whole send()."""


class ServerDisconnected(TransportError):
    """The server closed the connection."""


class TLSError(TransportError):
    """The TLS handshake failed, or the certificate was refused."""


class ProtocolError(SMTPError):
    """The server broke the SMTP protocol: malformed, oversized or unsolicited replies."""


class ReplyError(SMTPError):
    """The server answered with an error reply.

    ``is_transient`` (4xx) and ``is_permanent`` (5xx) drive retries in the spool.
    """

    def __init__(self, code: int, text: str, enhanced_status: str | None = None) -> None:
        super().__init__(code, text, enhanced_status)
        self.code = code
        self.text = text
        self.enhanced_status = enhanced_status

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        enhanced = f" {self.enhanced_status}" if self.enhanced_status else ""
        return f"{self.code}{enhanced} {self.text}".rstrip()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.text, self.enhanced_status))


class AuthenticationError(ReplyError):
    """Authentication failed (typically 535), or no acceptable mechanism was possible."""


class SenderRefused(ReplyError):
    """The server refused MAIL FROM."""


class RecipientsRefused(ReplyError):
    """The server refused every recipient (``recipients`` maps each address to its reply)."""

    def __init__(
        self,
        code: int,
        text: str,
        enhanced_status: str | None = None,
        recipients: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        super().__init__(code, text, enhanced_status)
        self.recipients = dict(recipients or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.text, self.enhanced_status, self.recipients))


class DataRefused(ReplyError):
    """The server refused DATA or the message content."""


class InvalidMessage(SMTPError, ValueError):
    """The message cannot be sent as given; ``field`` names the offending input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.field))
