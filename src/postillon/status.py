"""Status objects: what ``send()`` and ``check_connection()`` return (4D status objects).

``send()`` never raises for what happens on the wire; it returns a :class:`SendStatus`.
Callers who prefer exceptions call :meth:`SendStatus.raise_for_status`.

Example::

    status = transporter.send(mail)
    if not status.success:
        print(status.status, status.status_text, status.refused)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    AuthenticationError,
    ConnectError,
    DataRefused,
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

__all__ = ["ErrorInfo", "RecipientStatus", "SendStatus", "SpoolState", "Status"]

#: 4D's text for a failure that is not an SMTP reply (status 0).
FAILED_TO_SEND = "Failed to send email"


class SpoolState(enum.Enum):
    """WinDev ``emailPending`` / ``emailSent`` / ``emailError``."""

    PENDING = "pending"
    SENT = "sent"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """One entry of the 4D error stack: a failure that is not an SMTP reply."""

    code: int
    message: str
    component: str

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON, the 4D compatibility layer)."""
        return {"code": self.code, "message": self.message, "component": self.component}


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """The server's answer for one envelope recipient."""

    code: int
    text: str
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON, the spool)."""
        return {"code": self.code, "text": self.text, "accepted": self.accepted}


# Which exception class stands for which failing stage; kept in one table so that
# raise_for_status() and the spool's classification agree.
_STAGE_ERRORS: dict[str, type[ReplyError]] = {
    "auth": AuthenticationError,
    "mail": SenderRefused,
    "rcpt": RecipientsRefused,
    "data": DataRefused,
}
_COMPONENT_ERRORS: dict[str, type[SMTPError]] = {
    "connect": ConnectError,
    "timeout": TimeoutError,
    "disconnected": ServerDisconnected,
    "tls": TLSError,
    "protocol": ProtocolError,
    "transport": TransportError,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Status:
    """Result of ``check_connection()`` (4D ``{success, status, statusText, errors}``).

    ``status`` is the last SMTP reply code, 0 when the failure is not an SMTP reply.
    """

    success: bool
    status: int
    status_text: str
    errors: list[ErrorInfo] = field(default_factory=list)
    #: the stage that failed ("connect", "tls", "auth", "mail", "rcpt", "data", ...)
    stage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The 4D-shaped dict (snake_case keys)."""
        out: dict[str, Any] = {
            "success": self.success,
            "status": self.status,
            "status_text": self.status_text,
        }
        if self.errors:
            out["errors"] = [e.to_dict() for e in self.errors]
        if self.stage is not None:
            out["stage"] = self.stage
        return out

    def exception(self) -> SMTPError | None:
        """The exception that stands for this failure, or None on success."""
        if self.success:
            return None
        if self.status == 0:
            component = self.errors[0].component if self.errors else "transport"
            cls = _COMPONENT_ERRORS.get(component, TransportError)
            return cls(self.errors[0].message if self.errors else self.status_text)
        cls_reply = _STAGE_ERRORS.get(self.stage or "", ReplyError)
        return cls_reply(self.status, self.status_text, getattr(self, "enhanced_status", None))

    def raise_for_status(self) -> Status:
        """Raise the matching exception (API.md section 7) unless successful; else return self."""
        exc = self.exception()
        if exc is not None:
            raise exc
        return self


@dataclass(frozen=True, kw_only=True, slots=True)
class SendStatus(Status):
    """Result of ``send()``: a :class:`Status` plus the per-recipient outcome.

    ``success`` is True only when every envelope recipient was accepted and the message
    was taken; when some were refused, the message still went to the others.
    """

    enhanced_status: str | None = None
    message_id: str = ""
    recipients: dict[str, RecipientStatus] = field(default_factory=dict)
    #: spool id, for ``Transporter(asynchronous=True)``; None for direct sends
    mail_id: str | None = None
    #: spool state for asynchronous sends; None for direct sends
    state: SpoolState | None = None
    #: True when the connection broke after the final dot and before the server's answer:
    #: the server may have taken the message, so a retry may duplicate it.
    uncertain: bool = False

    @property
    def accepted(self) -> list[str]:
        """Recipients the server accepted."""
        return [a for a, r in self.recipients.items() if r.accepted]

    @property
    def refused(self) -> list[str]:
        """Recipients the server refused (or never got to answer for)."""
        return [a for a, r in self.recipients.items() if not r.accepted]

    def to_dict(self) -> dict[str, Any]:
        """The status as a plain dict; :meth:`from_dict` reads it back."""
        # Status.method(self), not super(): slots=True makes the dataclass a new class,
        # which zero-argument super() does not know before Python 3.14.
        out = Status.to_dict(self)
        out["enhanced_status"] = self.enhanced_status
        out["message_id"] = self.message_id
        out["recipients"] = {a: r.to_dict() for a, r in self.recipients.items()}
        if self.mail_id is not None:
            out["mail_id"] = self.mail_id
        if self.state is not None:
            out["state"] = self.state.value
        if self.uncertain:
            out["uncertain"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SendStatus:
        """Rebuild a status from :meth:`to_dict` output (the spool stores it as JSON)."""
        return cls(
            success=bool(data["success"]),
            status=int(data["status"]),
            status_text=str(data["status_text"]),
            errors=[ErrorInfo(**e) for e in data.get("errors", [])],
            stage=data.get("stage"),
            enhanced_status=data.get("enhanced_status"),
            message_id=str(data.get("message_id", "")),
            recipients={
                a: RecipientStatus(**r) for a, r in dict(data.get("recipients", {})).items()
            },
            mail_id=data.get("mail_id"),
            state=SpoolState(data["state"]) if data.get("state") else None,
            uncertain=bool(data.get("uncertain", False)),
        )

    def exception(self) -> SMTPError | None:
        """As :meth:`Status.exception`; refused recipients give RecipientsRefused."""
        if self.success:
            return None
        if self.status and (self.stage == "rcpt" or (self.refused and self.stage is None)):
            refused = {a: (r.code, r.text) for a, r in self.recipients.items() if not r.accepted}
            return RecipientsRefused(self.status, self.status_text, self.enhanced_status, refused)
        return Status.exception(self)


# Fast constructors for the bulk path, which makes one status and one recipient status
# per message: a frozen dataclass's generated __init__ (keyword arguments, a default
# factory, a guarded setattr per field) costs several times these direct stores. They
# set every field; tests/test_status.py checks that they equal the regular constructors.
_new = object.__new__
_set = object.__setattr__


def recipient_status(code: int, text: str, accepted: bool) -> RecipientStatus:
    """``RecipientStatus(code, text, accepted)``, built without the generated __init__."""
    r: RecipientStatus = _new(RecipientStatus)
    _set(r, "code", code)
    _set(r, "text", text)
    _set(r, "accepted", accepted)
    return r


def delivered_status(
    code: int,
    text: str,
    enhanced: str | None,
    message_id: str,
    recipients: dict[str, RecipientStatus],
) -> SendStatus:
    """The status of a message accepted for every recipient (the bulk path's common case)."""
    s: SendStatus = _new(SendStatus)
    _set(s, "success", True)
    _set(s, "status", code)
    _set(s, "status_text", text)
    _set(s, "errors", [])
    _set(s, "stage", None)
    _set(s, "enhanced_status", enhanced)
    _set(s, "message_id", message_id)
    _set(s, "recipients", recipients)
    _set(s, "mail_id", None)
    _set(s, "state", None)
    _set(s, "uncertain", False)
    return s
