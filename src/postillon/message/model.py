"""The Email model (4D ``Email`` object, WinDev ``Email`` type) and RawMessage.

Fields are normalised when they are set (at construction and on every later
assignment), so an :class:`Email` never holds an unchecked value: addresses are
parsed once into :class:`~postillon.message.address.Address` tuples, header texts are
checked for line breaks and controls, attachments become
:class:`~postillon.message.attachment.Attachment` objects.

Example::

    mail = Email(from_="Ann <ann@example.com>", to="bob@example.org; cy@example.net",
                 subject="Report", text_body="See attached.",
                 attachments=[Attachment("report.pdf")])
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import InvalidMessage
from ._text import check_header_text, check_token_text
from .address import Address, AddressInput, parse_address, parse_addresses
from .attachment import Attachment

__all__ = ["Email", "Priority", "RawMessage"]

_HEADER_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 2.2: ftext
_MSG_ID = re.compile(r"<[!-;=?-~]+>\Z")  # printable ASCII, no spaces, no '<' or '>' inside
_MAX_ATTACHMENTS = 1000


class Priority(enum.Enum):
    """Message priority, written as ``X-Priority`` and ``Importance``."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @classmethod
    def parse(cls, value: Priority | str | int, field: str = "priority") -> Priority:
        """Accept a Priority, "high"/"normal"/"low" or an X-Priority number 1-5."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if 1 <= value <= 5:
                return cls.HIGH if value < 3 else cls.NORMAL if value == 3 else cls.LOW
        elif isinstance(value, str):
            key = value.strip().lower()
            for p in cls:
                if key in (p.value, p.name.lower()):
                    return p
            if key[:1].isdigit():
                return cls.parse(int(key[:1]), field)
        raise InvalidMessage(f"unknown priority {value!r} (high, normal, low)", field)

    @property
    def x_priority(self) -> str:
        """The ``X-Priority`` value."""
        return {"high": "1 (Highest)", "normal": "3 (Normal)", "low": "5 (Lowest)"}[self.value]


def normalize_msg_id(value: object, field: str) -> str:
    """``"<id@host>"`` from ``"id@host"`` or ``"<id@host>"``; anything else is refused."""
    text = check_token_text(value, field, limit=900).strip()
    if not text.startswith("<"):
        text = f"<{text}>"
    if not _MSG_ID.match(text) or len(text) < 3:
        raise InvalidMessage(f"not a message id: {value!r}", field)
    return text


def _normalize_headers(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        pairs: Iterable[Any] = list(value.items())
    elif isinstance(value, str | bytes):
        raise InvalidMessage("expected a mapping or a list of (name, value)", "headers")
    else:
        pairs = value
    out: list[tuple[str, str]] = []
    for k, item in enumerate(pairs):
        here = f"headers[{k}]"
        if isinstance(item, Mapping):
            name, text = item.get("name"), item.get("value")
        elif isinstance(item, list | tuple) and len(item) == 2:
            name, text = item
        else:
            raise InvalidMessage("expected (name, value) or {'name', 'value'}", here)
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidMessage(f"invalid header name {name!r}", here)
        if len(name) > 76:
            raise InvalidMessage("header name longer than 76 characters", here)
        if not isinstance(text, str):
            text = str(text)
        out.append((name, check_header_text(text, here)))
    return tuple(out)


def _normalize_attachments(value: Any) -> tuple[Attachment, ...]:
    if value is None:
        return ()
    if isinstance(value, Attachment | str | bytes | os.PathLike | Mapping):
        value = [value]
    out: list[Attachment] = []
    for k, item in enumerate(value):
        if k >= _MAX_ATTACHMENTS:
            raise InvalidMessage(f"more than {_MAX_ATTACHMENTS} attachments", "attachments")
        here = f"attachments[{k}]"
        try:
            if isinstance(item, Attachment):
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(_attachment_from_dict(item))
            else:
                out.append(Attachment(item))
        except InvalidMessage as exc:
            raise InvalidMessage(
                exc.message, f"{here}.{exc.field}" if exc.field else here
            ) from None
    return tuple(out)


def _attachment_from_dict(data: Mapping[str, Any]) -> Attachment:
    source: Any
    if data.get("content") is not None:
        content = data["content"]
        if isinstance(content, str):
            try:
                # strict: a bad alphabet or padding is an error, never sent as is (row 27)
                source = base64.b64decode(content.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError):
                raise InvalidMessage("'content' is not valid base64", "content") from None
        else:
            source = content
    elif data.get("path") is not None:
        source = data["path"]
    elif data.get("source") is not None:
        source = data["source"]
    else:
        raise InvalidMessage("an attachment dict needs 'path' or 'content'", "source")
    return Attachment(
        source,
        name=data.get("name"),
        cid=data.get("cid") or None,
        type=data.get("type"),
        disposition=data.get("disposition"),
    )


def _normalize_keywords(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    elif isinstance(value, Mapping):
        # JMAP / 4D: {"$seen": true, "urgent": true}
        value = [k for k, v in value.items() if v]
    out = []
    for k, kw in enumerate(value):
        text = check_header_text(kw, f"keywords[{k}]", limit=998).strip()
        if "," in text:
            raise InvalidMessage("a keyword may not hold ','", f"keywords[{k}]")
        if text:
            out.append(text)
    return tuple(out)


def _normalize_ids(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = re.findall(r"<[^<>]*>|[^\s<>,]+", value)
    return tuple(normalize_msg_id(v, f"{field}[{k}]") for k, v in enumerate(value))


def _normalize_send_at(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InvalidMessage(f"not an ISO 8601 date-time: {value!r}", "send_at") from None
    raise InvalidMessage(f"expected a datetime, not {type(value).__name__}", "send_at")


def _normalize_text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"must be a str, not {type(value).__name__}", field)
    return value


def _normalize_structure(value: Any, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidMessage("must be a dict", field)
    return dict(value)


_NORMALIZERS: dict[str, Any] = {
    "from_": lambda v: parse_addresses(v, "from"),
    "sender": lambda v: None if v in (None, "", [], ()) else parse_address(v, "sender"),
    "reply_to": lambda v: parse_addresses(v, "reply_to"),
    "to": lambda v: parse_addresses(v, "to"),
    "cc": lambda v: parse_addresses(v, "cc"),
    "bcc": lambda v: parse_addresses(v, "bcc"),
    "subject": lambda v: check_header_text("" if v is None else v, "subject"),
    "text_body": lambda v: _normalize_text(v, "text_body"),
    "html_body": lambda v: _normalize_text(v, "html_body"),
    "attachments": _normalize_attachments,
    "headers": _normalize_headers,
    "message_id": lambda v: None if v in (None, "") else normalize_msg_id(v, "message_id"),
    "in_reply_to": lambda v: _normalize_ids(v, "in_reply_to"),
    "references": lambda v: _normalize_ids(v, "references"),
    "comments": lambda v: None if v is None else check_header_text(v, "comments"),
    "keywords": _normalize_keywords,
    "send_at": _normalize_send_at,
    "priority": lambda v: None if v in (None, "") else Priority.parse(v),
    "disposition_notification": bool,
    "body_structure": lambda v: _normalize_structure(v, "body_structure"),
    "body_values": lambda v: _normalize_structure(v, "body_values"),
}

#: setting one of these after construction drops a body_structure read by from_mime,
#: which would otherwise win over the new content
_BODY_FIELDS = frozenset({"text_body", "html_body", "attachments"})

#: 4D / JMAP keys -> field names
_DICT_KEYS = {
    "from": "from_",
    "sender": "sender",
    "replyTo": "reply_to",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "subject": "subject",
    "textBody": "text_body",
    "htmlBody": "html_body",
    "attachments": "attachments",
    "headers": "headers",
    "messageId": "message_id",
    "inReplyTo": "in_reply_to",
    "references": "references",
    "comments": "comments",
    "keywords": "keywords",
    "sendAt": "send_at",
    "priority": "priority",
    "dispositionNotification": "disposition_notification",
    "bodyStructure": "body_structure",
    "bodyValues": "body_values",
}
#: read-only JMAP / 4D keys of a received mail: accepted by from_dict and ignored
_IGNORED_KEYS = frozenset(
    {
        "id",
        "blobId",
        "threadId",
        "mailboxIds",
        "size",
        "receivedAt",
        "preview",
        "hasAttachment",
        "date",
        "uid",
    }
)


@dataclass(eq=True, init=False)
class Email:
    """An email (4D ``Email`` object). Every address field accepts every address form.

    ``text_body`` and ``html_body`` both given give ``multipart/alternative``; inline
    attachments (with a ``cid``) go into ``multipart/related`` with the HTML, others
    into ``multipart/mixed``. Without ``message_id`` one is generated; without
    ``send_at`` the Date is the time of sending. Bcc is never written.

    Fields are normalised when set: addresses become tuples of :class:`Address`,
    attachments :class:`Attachment` objects, message ids get their angle brackets.

    Example::

        >>> mail = Email(from_="ann@example.com", to=["Bob <bob@example.org>"], subject="Hi")
        >>> mail.to[0].name
        'Bob'
    """

    from_: tuple[Address, ...]
    sender: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    subject: str
    text_body: str | None
    html_body: str | None
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    comments: str | None
    keywords: tuple[str, ...]
    send_at: datetime | None
    priority: Priority | None
    disposition_notification: bool
    body_structure: dict[str, Any] | None
    body_values: dict[str, Any] | None

    def __init__(
        self,
        from_: AddressInput = None,
        *,
        sender: AddressInput = None,
        reply_to: AddressInput = None,
        to: AddressInput = None,
        cc: AddressInput = None,
        bcc: AddressInput = None,
        subject: str | None = "",
        text_body: str | None = None,
        html_body: str | None = None,
        attachments: Iterable[Any] | Attachment | None = (),
        headers: Mapping[str, str] | Iterable[Any] | None = (),
        message_id: str | None = None,
        in_reply_to: str | Iterable[str] | None = None,
        references: str | Iterable[str] | None = (),
        comments: str | None = None,
        keywords: str | Iterable[str] | Mapping[str, bool] | None = (),
        send_at: datetime | str | None = None,
        priority: Priority | str | int | None = None,
        disposition_notification: bool = False,
        body_structure: Mapping[str, Any] | None = None,
        body_values: Mapping[str, Any] | None = None,
    ) -> None:
        object.__setattr__(self, "_ready", False)
        self.from_ = from_  # type: ignore[assignment]
        self.sender = sender  # type: ignore[assignment]
        self.reply_to = reply_to  # type: ignore[assignment]
        self.to = to  # type: ignore[assignment]
        self.cc = cc  # type: ignore[assignment]
        self.bcc = bcc  # type: ignore[assignment]
        self.subject = subject  # type: ignore[assignment]
        self.text_body = text_body
        self.html_body = html_body
        self.attachments = attachments  # type: ignore[assignment]
        self.headers = headers  # type: ignore[assignment]
        self.message_id = message_id
        self.in_reply_to = in_reply_to  # type: ignore[assignment]
        self.references = references  # type: ignore[assignment]
        self.comments = comments
        self.keywords = keywords  # type: ignore[assignment]
        self.send_at = send_at  # type: ignore[assignment]
        self.priority = priority  # type: ignore[assignment]
        self.disposition_notification = disposition_notification
        self.body_structure = body_structure  # type: ignore[assignment]
        self.body_values = body_values  # type: ignore[assignment]
        object.__setattr__(self, "_ready", True)

    def __setattr__(self, name: str, value: Any) -> None:
        normalize = _NORMALIZERS.get(name)
        if normalize is not None:
            value = normalize(value)
            if name in _BODY_FIELDS and getattr(self, "_ready", False):
                object.__setattr__(self, "body_structure", None)
                object.__setattr__(self, "body_values", None)
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ dicts

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Email:
        """Build from a 4D / JMAP object (``"from"``, ``"replyTo"``, ``"textBody"``...).

        snake_case keys are accepted too. Example::

            >>> Email.from_dict({"from": "a@x.org", "to": "b@x.org", "textBody": "hi"}).text_body
            'hi'
        """
        if not isinstance(data, Mapping):
            raise InvalidMessage("expected a dict", "mail")
        names = set(_NORMALIZERS)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = _DICT_KEYS.get(key) or (key if key in names else None)
            if name is None and key == "from_":
                name = "from_"
            if name is None:
                if key in _IGNORED_KEYS:
                    continue
                raise InvalidMessage(f"unknown key {key!r}", "mail")
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The 4D / JMAP object; only fields that are set appear.

        Attachments are described (name, type, cid, disposition, size, path); bytes
        content is included as base64 ``"content"``, a file object's is not.
        """
        out: dict[str, Any] = {}
        for key, name in _DICT_KEYS.items():
            value = getattr(self, name)
            if value in (None, (), "", False):
                continue
            if name in ("from_", "reply_to", "to", "cc", "bcc"):
                out[key] = [a.to_dict() for a in value]
            elif name == "sender":
                out[key] = [value.to_dict()]
            elif name == "attachments":
                out[key] = [_attachment_to_dict(a) for a in value]
            elif name == "headers":
                out[key] = [{"name": n, "value": v} for n, v in value]
            elif name == "keywords":
                out[key] = {k: True for k in value}
            elif name in ("in_reply_to", "references"):
                out[key] = list(value) if name == "references" else " ".join(value)
            elif name == "send_at":
                out[key] = value.isoformat()
            elif name == "priority":
                out[key] = value.value
            else:
                out[key] = value
        return out


def _attachment_to_dict(att: Attachment) -> dict[str, Any]:
    out = att.to_dict()
    if att.path is None and not att.is_file_source:
        out["content"] = base64.b64encode(att.get_content()).decode("ascii")
    return out


@dataclass(frozen=True)
class RawMessage:
    """A ready message with its envelope; the bytes are sent as given.

    The envelope goes through the same address parser as :class:`Email` fields.
    ``from_=""`` (or ``"<>"``) is the null reverse-path of bounces and DSNs.

    Example::

        RawMessage(b"From: a@x.org\\r\\nTo: b@x.org\\r\\n\\r\\nhi\\r\\n", "a@x.org", ["b@x.org"])
    """

    data: bytes
    from_: str
    to: tuple[str, ...] | list[str] = ()
    sender_address: Address | None = field(init=False, repr=False, compare=False)
    recipient_addresses: tuple[Address, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.data, bytearray | memoryview):
            object.__setattr__(self, "data", bytes(self.data))
        if not isinstance(self.data, bytes):
            raise InvalidMessage(f"must be bytes, not {type(self.data).__name__}", "data")
        if not isinstance(self.from_, str):
            raise InvalidMessage("must be a str", "from")
        origin = self.from_.strip()
        sender = None if origin in ("", "<>") else parse_address(origin, "from")
        to = [self.to] if isinstance(self.to, str) else list(self.to)
        recipients = parse_addresses(to, "to")
        object.__setattr__(self, "to", tuple(to))
        object.__setattr__(self, "sender_address", sender)
        object.__setattr__(self, "recipient_addresses", recipients)
