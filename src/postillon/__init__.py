"""postillon: send email over SMTP, fast and without ever losing a message."""

from __future__ import annotations

from .async_transporter import AsyncTransporter
from .errors import (
    AuthenticationError,
    ConnectError,
    DataRefused,
    InvalidMessage,
    ProtocolError,
    RecipientsRefused,
    ReplyError,
    SenderRefused,
    ServerDisconnected,
    SMTPError,
    TimeoutError,
    TLSError,
    TransportError,
)
from .message import (
    Address,
    Attachment,
    CharsetMode,
    Email,
    Priority,
    RawMessage,
    from_mime,
    iter_mime,
    to_mime,
)
from .settings import AuthMode, Dsn, IgnoreCert, Security
from .signing import DkimSigner
from .spool import RetryPolicy, Spool, SpoolEntry
from .status import ErrorInfo, RecipientStatus, SendStatus, SpoolState, Status
from .transporter import Transporter

__all__ = [
    "Address",
    "AsyncTransporter",
    "Attachment",
    "AuthMode",
    "AuthenticationError",
    "CharsetMode",
    "ConnectError",
    "DataRefused",
    "DkimSigner",
    "Dsn",
    "Email",
    "ErrorInfo",
    "IgnoreCert",
    "InvalidMessage",
    "Priority",
    "ProtocolError",
    "RawMessage",
    "RecipientStatus",
    "RecipientsRefused",
    "ReplyError",
    "RetryPolicy",
    "SMTPError",
    "Security",
    "SendStatus",
    "SenderRefused",
    "ServerDisconnected",
    "Spool",
    "SpoolEntry",
    "SpoolState",
    "Status",
    "TLSError",
    "TimeoutError",
    "TransportError",
    "Transporter",
    "from_mime",
    "iter_mime",
    "to_mime",
]
