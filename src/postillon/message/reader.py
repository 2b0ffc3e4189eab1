"""Reading MIME into an :class:`~postillon.message.model.Email` (4D ``MAIL Convert from MIME``).

Parsing is the stdlib's (``email.parser.BytesParser`` with ``policy.default``); this
module maps the result onto the 4D / JMAP shape: ``body_structure`` (partId, type,
charset, disposition, name, cid, subParts), ``body_values`` (``{partId: {"value"}}``),
``text_body`` / ``html_body``, attachments with their bytes, and the headers that no
field represents, in order.

Example::

    mail = from_mime(open("message.eml", "rb").read())
    print(mail.subject, [a.email for a in mail.to], mail.body_structure["type"])
"""

from __future__ import annotations

import email.policy
import logging
import re
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

from ..errors import InvalidMessage
from .address import Address, decode_received
from .attachment import Attachment
from .model import Email, Priority

__all__ = ["from_mime", "email_from_message"]

log = logging.getLogger("postillon.message")

#: deepest multipart nesting read (security.md 3.6 row 30)
MAX_DEPTH = 64

# Headers represented by Email fields (or by the MIME structure): not repeated in headers.
_FIELD_HEADERS = frozenset(
    {
        "date",
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "subject",
        "message-id",
        "in-reply-to",
        "references",
        "comments",
        "keywords",
        "x-priority",
        "importance",
        "disposition-notification-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
    }
)
_MSG_IDS = re.compile(r"<[^<>\s]+>")


def _addresses(msg: Message, name: str) -> list[Address]:
    raw = [v for k, v in msg.raw_items() if k.lower() == name.lower()]
    try:
        return [
            a
            for value in raw
            # RFC 6532: raw UTF-8 header bytes reach us surrogate-escaped; decode them
            for a in decode_received(re.sub(r"\r?\n(?=[ \t])", "", _utf8(value)), name)
        ]
    except (InvalidMessage, LookupError, ValueError):
        pass  # groups, obsolete syntax, unknown charsets: the stdlib's lenient parse
    out: list[Address] = []
    for header in msg.get_all(name, []):
        for found in getattr(header, "addresses", ()):
            try:
                out.append(Address(found.display_name or "", found.addr_spec))
            except InvalidMessage as exc:
                # a received mail may hold anything; one bad address does not lose the rest
                log.warning("from_mime: %s address skipped (%s)", name, exc.message)
    return out


def _utf8(value: object) -> str:
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _ids(value: Any) -> list[str]:
    return _MSG_IDS.findall(str(value)) if value is not None else []


def _priority(msg: Message) -> Priority | None:
    for name in ("X-Priority", "Importance", "Priority"):
        value = msg.get(name)
        if value is None:
            continue
        text = str(value).strip().lower()
        if text in ("urgent",):
            return Priority.HIGH
        if text in ("non-urgent",):
            return Priority.LOW
        try:
            return Priority.parse(text)
        except InvalidMessage:
            continue
    return None


def from_mime(data: bytes | bytearray | memoryview | str) -> Email:
    """Parse a MIME message into an :class:`Email` (4D ``MAIL Convert from MIME``).

    Text bodies come back with ``"\\n"`` line endings. Attachments hold their decoded
    bytes; base64 that does not decode cleanly is decoded leniently and will be
    re-encoded canonically when the mail is written again.

    Example::

        >>> from_mime(b"From: a@x.org\\r\\nSubject: Hi\\r\\n\\r\\nbody\\r\\n").subject
        'Hi'
    """
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogateescape")
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise InvalidMessage(f"expected bytes or str, not {type(data).__name__}", "data")
    try:
        msg = BytesParser(policy=email.policy.default).parsebytes(raw)
        return email_from_message(msg)
    except RecursionError:
        # the stdlib parser recurses per nesting level (security.md 3.6 row 30)
        raise InvalidMessage("MIME structure nested too deeply", "data") from None


def email_from_message(msg: Message) -> Email:
    """Map a parsed stdlib message onto an :class:`Email`."""
    senders = _addresses(msg, "Sender")
    subject = msg.get("Subject")
    mid = _ids(msg.get("Message-ID"))
    comments = msg.get("Comments")
    keywords = msg.get("Keywords")
    date = msg.get("Date")
    extra = [
        (name, _clean(str(value)))
        for name, value in msg.items()
        if name.lower() not in _FIELD_HEADERS
    ]
    mail = Email(
        from_=_addresses(msg, "From"),
        sender=senders[0] if senders else None,
        reply_to=_addresses(msg, "Reply-To"),
        to=_addresses(msg, "To"),
        cc=_addresses(msg, "Cc"),
        bcc=_addresses(msg, "Bcc"),
        subject="" if subject is None else _clean(str(subject)),
        message_id=mid[0] if mid else None,
        in_reply_to=_ids(msg.get("In-Reply-To")),
        references=_ids(msg.get("References")),
        comments=None if comments is None else _clean(str(comments)),
        keywords=[k.strip() for k in _clean(str(keywords or "")).split(",") if k.strip()],
        send_at=getattr(date, "datetime", None),
        priority=_priority(msg),
        disposition_notification=msg.get("Disposition-Notification-To") is not None,
        headers=extra,
    )

    values: dict[str, Any] = {}
    attachments: list[Attachment] = []
    bodies: dict[str, str] = {}
    counter = [0]

    def walk(part: Message, depth: int) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise InvalidMessage(f"MIME nested deeper than {MAX_DEPTH} levels", "data")
        ctype = part.get_content_type()
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            subs = part.get_payload()
            assert isinstance(subs, list)
            return {
                "type": ctype,
                "subParts": [walk(p, depth + 1) for p in subs if isinstance(p, Message)],
            }
        counter[0] += 1
        part_id = str(counter[0])
        node: dict[str, Any] = {"partId": part_id, "type": ctype}
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        cid = part.get("Content-ID")
        charset = part.get_content_charset()
        if charset:
            node["charset"] = charset
        if disposition:
            node["disposition"] = disposition
        if filename:
            node["name"] = filename
        cid_text = str(cid).strip().strip("<>") if cid is not None else None
        if cid_text:
            node["cid"] = cid_text
        is_text = part.get_content_maintype() == "text"
        if is_text and disposition != "attachment" and not filename:
            text = _text_content(part)
            values[part_id] = {"value": text}
            if ctype == "text/plain":
                bodies.setdefault("text", text)
            elif ctype == "text/html":
                bodies.setdefault("html", text)
            return node
        content = _binary_content(part)
        try:
            attachments.append(
                Attachment(
                    content,
                    name=filename or None,
                    cid=cid_text or None,
                    type=ctype,
                    disposition=disposition if disposition in ("inline", "attachment") else None,
                )
            )
        except InvalidMessage as exc:
            log.warning("from_mime: attachment kept as octets (%s)", exc)
            attachments.append(Attachment(content, name=filename or None))
        node["size"] = len(content)
        return node

    structure = walk(msg, 0)
    mail.text_body = bodies.get("text")
    mail.html_body = bodies.get("html")
    mail.attachments = tuple(attachments)
    # set last: setting a body field clears the structure
    mail.body_structure = structure
    mail.body_values = values
    return mail


def _clean(text: str) -> str:
    # a decoded header may hold controls that the Email model refuses; a received mail is
    # read anyway, with them replaced by spaces
    return re.sub("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]", " ", text)


def _text_content(part: Message) -> str:
    try:
        if isinstance(part, EmailMessage):
            text = part.get_content()
        else:
            text = part.get_payload(decode=True).decode(  # type: ignore[union-attr]
                part.get_content_charset() or "us-ascii", "replace"
            )
    except (LookupError, KeyError):
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(text, str):
        text = str(text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _binary_content(part: Message) -> bytes:
    if part.get_content_maintype() == "message":
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            inner = payload[0]
            return inner.as_bytes(policy=email.policy.SMTP) if isinstance(inner, Message) else b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""
