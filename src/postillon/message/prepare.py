"""``prepare()``: any message the API accepts -> :class:`Prepared` (envelope + bytes).

The one hand-over point to the transport. Date, Message-ID and boundaries are fixed
here, so ``Prepared.source()`` yields the same bytes on every call (a retry, a DKIM
pass). The envelope comes from the same parsed :class:`Address` values as the headers.

Example::

    p = prepare(mail, smtputf8=server_offers_smtputf8)
    p.mail_from, p.recipients, p.size
    for chunk in p.chunks(): ...
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from email import errors
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.utils import format_datetime
from io import BytesIO

from ..errors import InvalidMessage
from ._text import _HEADER_FORBIDDEN, describe_char
from .address import Address, parse_addresses
from .charset import MAX_LINE, CharsetMode
from .model import Email, RawMessage
from .prepared import Prepared
from .writer import CHUNK_SIZE, MAX_DEPTH, _Builder, plan_email

__all__ = ["prepare"]

_MSG_ID_VALUE = re.compile(rb"[ \t]*(<[^<>\r\n]+>)")
_HEADER_LINE = re.compile(rb"[!-9;-~]+:")


def _mailbox(addr: Address, smtputf8: bool, field: str) -> str:
    try:
        return addr.addr_spec(smtputf8)
    except InvalidMessage as exc:
        raise InvalidMessage(exc.message, field) from None


def _envelope(
    origin: Address | None,
    origin_field: str,
    groups: Sequence[tuple[str, Sequence[Address]]],
    smtputf8: bool,
    *,
    null_origin: bool = False,
) -> tuple[str, tuple[str, ...], bool]:
    if origin is None and not null_origin:
        raise InvalidMessage("no origin: set from_ (or sender)", "from")
    mail_from = "" if origin is None else _mailbox(origin, smtputf8, origin_field)
    seen: set[tuple[str, str]] = set()
    recipients: list[str] = []
    for field, addresses in groups:
        for k, addr in enumerate(addresses):
            key = addr.dedup_key()
            if key in seen:
                continue
            seen.add(key)
            recipients.append(_mailbox(addr, smtputf8, f"{field}[{k}]"))
    if not recipients:
        raise InvalidMessage("no recipient: set to, cc or bcc", "to")
    needs = not mail_from.isascii() or any(not r.isascii() for r in recipients)
    return mail_from, tuple(recipients), needs


def _bytes_source(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


def prepare(
    message: Email | EmailMessage | Message | RawMessage,
    *,
    header_charset: CharsetMode | str = CharsetMode.UTF8_QP,
    body_charset: CharsetMode | str = CharsetMode.UTF8_QP,
    smtputf8: bool = False,
) -> Prepared:
    """Turn an :class:`Email`, a stdlib ``EmailMessage`` or a :class:`RawMessage` into
    a :class:`Prepared` (envelope, message id, re-iterable bytes).

    ``smtputf8`` says whether the server offers SMTPUTF8: without it, non-ASCII domains
    go as A-labels and a non-ASCII local part is an :class:`InvalidMessage`.

    Example::

        >>> p = prepare(Email(from_="a@example.com", to="B <b@example.com>", text_body="hi"))
        >>> p.mail_from, p.recipients
        ('a@example.com', ('b@example.com',))
    """
    if isinstance(message, Email):
        return _prepare_email(message, header_charset, body_charset, smtputf8)
    if isinstance(message, RawMessage):
        return _prepare_raw(message, smtputf8)
    if isinstance(message, Message):
        return _prepare_stdlib(message, smtputf8)
    raise InvalidMessage(
        f"expected an Email, an EmailMessage or a RawMessage, not {type(message).__name__}",
        "message",
    )


def _prepare_email(
    mail: Email, header_charset: CharsetMode | str, body_charset: CharsetMode | str, smtputf8: bool
) -> Prepared:
    origin = mail.sender if mail.sender is not None else (mail.from_[0] if mail.from_ else None)
    origin_field = "sender" if mail.sender is not None else "from[0]"
    mail_from, recipients, env_utf8 = _envelope(
        origin, origin_field, [("to", mail.to), ("cc", mail.cc), ("bcc", mail.bcc)], smtputf8
    )
    plan = plan_email(mail, header_charset, body_charset, smtputf8=smtputf8)
    return Prepared(
        mail_from=mail_from,
        recipients=recipients,
        message_id=plan.message_id,
        source=plan.chunks,
        size=plan.size,
        needs_smtputf8=smtputf8 and (env_utf8 or plan.needs_smtputf8),
        # the writer encodes every body as 7bit, quoted-printable or base64
        eight_bit=False,
        in_memory=not any(a.is_file_source for a in mail.attachments),
        original=mail,
    )


@functools.lru_cache(maxsize=1024)
def _raw_envelope(
    sender: Address | None, recipients: tuple[Address, ...], smtputf8: bool
) -> tuple[str, tuple[str, ...], bool]:
    # A bulk send repeats one envelope: Address values are immutable, so the envelope
    # derived from them is too (errors raise and are not cached).
    return _envelope(sender, "from", [("to", recipients)], smtputf8, null_origin=True)


def _message_id(head: bytes) -> str:
    """The value of the first well-formed Message-ID field of a header block, or "".

    A case-insensitive regex anchored at line starts tries every position of the block;
    a search of the lowered block for the field name is several times cheaper, and this
    runs once per message of a bulk send.
    """
    lowered = head.lower()
    at = lowered.find(b"message-id:")
    while at >= 0:
        if at == 0 or head[at - 1] == 0x0A:  # at the start of a line
            found = _MSG_ID_VALUE.match(head, at + 11)
            if found:
                return found.group(1).decode("ascii", "replace")
        at = lowered.find(b"message-id:", at + 11)
    return ""


def _prepare_raw(raw: RawMessage, smtputf8: bool) -> Prepared:
    if len(raw.recipient_addresses) <= 100:
        mail_from, recipients, env_utf8 = _raw_envelope(
            raw.sender_address, raw.recipient_addresses, smtputf8
        )
    else:
        mail_from, recipients, env_utf8 = _envelope(
            raw.sender_address, "from", [("to", raw.recipient_addresses)], smtputf8,
            null_origin=True,
        )  # fmt: skip
    data = raw.data
    end = data.find(b"\r\n\r\n")  # one scan for the end of the header block
    head = data[:end] if end >= 0 else data[:200_000]
    message_id = _message_id(head)
    eight_bit = not data.isascii()
    # A message that fits one chunk is handed over as is: no generator, no copy (the
    # common case of a bulk send; bytes are immutable, so sharing them is safe).
    one_chunk = (data,) if data else ()
    source = (lambda: one_chunk) if len(data) <= CHUNK_SIZE else (lambda: _bytes_source(data))
    return Prepared(
        mail_from=mail_from,
        recipients=recipients,
        message_id=message_id,
        source=source,
        size=len(data),
        needs_smtputf8=smtputf8 and (env_utf8 or not head.isascii()),
        eight_bit=eight_bit,
        in_memory=True,
        original=raw,
    )


def _header_addresses(msg: Message, name: str) -> list[Address]:
    out: list[Address] = []
    for header in msg.get_all(name, []):
        found = getattr(header, "addresses", None)
        if found is not None:
            # The stdlib parses leniently: "user@good.com(x)evil.com" comes back as
            # "user@good.com" plus an InvalidHeaderDefect, while the header goes out as
            # written. An address list it had to guess at must not pick the envelope
            # (security.md 1.4: header and envelope from one strict parse).
            if any(
                isinstance(d, errors.InvalidHeaderDefect) for d in getattr(header, "defects", ())
            ):
                raise InvalidMessage(
                    "the address list does not parse cleanly (RFC 5322 3.4)", name.lower()
                )
            for a in found:
                try:
                    out.append(Address(a.display_name or "", a.addr_spec))
                except InvalidMessage as exc:
                    raise InvalidMessage(exc.message, f"{name.lower()}[{len(out)}]") from None
        else:
            # compat32 messages hold plain strings: the same parser as Email fields
            out.extend(parse_addresses(str(header), name.lower()))
    return out


def _check_stdlib_headers(msg: Message) -> None:
    for part in msg.walk():
        # raw_items(): items() unfolds and would hide a CR/LF stored in the value; the
        # str() of a header object is its decoded text, where an encoded word could
        # hide a newline (CVE-2024-6923): both are checked
        for name, value in part.raw_items():
            bad = _HEADER_FORBIDDEN.search(str(value)) or _HEADER_FORBIDDEN.search(
                str(getattr(value, "_parse_tree", "") and value)
            )
            if _HEADER_FORBIDDEN.search(name):
                raise InvalidMessage("a header name holds a control character", "headers")
            if bad is not None:
                raise InvalidMessage(
                    f"holds a forbidden control character ({describe_char(bad.group())})",
                    f"headers[{name!r}]",
                )


def _verify_header_block(block: bytes) -> None:
    # the stdlib generator had injection bugs (CVE-2024-6923, gh-144125): check what it
    # wrote before it can reach the wire
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if b"\r" in line or b"\n" in line:
            raise InvalidMessage("the serialised headers hold a bare CR or LF", "headers")
        if len(line) > MAX_LINE:
            raise InvalidMessage(f"a serialised header line exceeds {MAX_LINE} octets", "headers")
        if line[:1] not in b" \t" and not _HEADER_LINE.match(line):
            raise InvalidMessage("the serialised headers hold a malformed line", "headers")


def _strip_fields(block: bytes, names: frozenset[bytes]) -> bytes:
    """Remove the named header fields (with their continuation lines) from a block."""
    out: list[bytes] = []
    skipping = False
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and line:
            if not skipping:
                out.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() in names
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)


#: address fields rewritten from the parsed addresses, so header and envelope agree
#: (the stdlib writes a non-ASCII domain as an encoded word under policy SMTP)
_ADDRESS_FIELDS = (
    ("From", "from"),
    ("Sender", "sender"),
    ("Reply-To", "reply_to"),
    ("To", "to"),
    ("Cc", "cc"),
)
_STRIPPED = frozenset({b"bcc", b"from", b"sender", b"reply-to", b"to", b"cc"})


def _check_stdlib_depth(msg: Message) -> None:
    # The stdlib generator recurses once per nesting level, so a deep tree would end in
    # a RecursionError: refuse what our own writer would not produce (security.md 3.6
    # row 30), walking iteratively.
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidMessage(f"MIME nested deeper than {MAX_DEPTH} levels", "message")
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))


def _prepare_stdlib(msg: Message, smtputf8: bool) -> Prepared:
    _check_stdlib_depth(msg)
    _check_stdlib_headers(msg)
    senders = _header_addresses(msg, "Sender")
    froms = _header_addresses(msg, "From")
    origin = senders[0] if senders else (froms[0] if froms else None)
    groups: list[tuple[str, Sequence[Address]]] = [
        ("to", _header_addresses(msg, "To")),
        ("cc", _header_addresses(msg, "Cc")),
        ("bcc", _header_addresses(msg, "Bcc")),
    ]
    mail_from, recipients, env_utf8 = _envelope(
        origin, "sender" if senders else "from", groups, smtputf8
    )
    policy = email_policy.SMTPUTF8 if smtputf8 else email_policy.SMTP
    buf = BytesIO()
    try:
        BytesGenerator(buf, policy=policy).flatten(msg)  # type: ignore[arg-type]
    except (ValueError, TypeError, UnicodeError, LookupError, RecursionError) as exc:
        raise InvalidMessage(f"cannot serialise the message ({exc})", "message") from None
    data = buf.getvalue()
    split = data.find(b"\r\n\r\n")
    head, body = (data, b"") if split < 0 else (data[: split + 2], data[split + 2 :])
    head = _strip_fields(head, _STRIPPED)
    builder = _Builder(CharsetMode.UTF8_QP, CharsetMode.UTF8_QP, smtputf8)
    extra = b""
    for name, field in _ADDRESS_FIELDS:
        listed = _header_addresses(msg, name)
        if listed:
            items = builder.address_items(listed, field, len(name))
            extra += builder.header(name, items, field)
    message_id = _message_id(head)
    if not message_id:
        right = (
            origin.ascii_domain
            if origin and not origin.ascii_domain.startswith("[")
            else ("postillon.invalid")
        )
        message_id = f"<{uuid.uuid4().hex}@{right}>"
        extra += f"Message-ID: {message_id}\r\n".encode("ascii")
    if msg.get("Date") is None:
        now = format_datetime(datetime.now(UTC).astimezone())
        extra += f"Date: {now}\r\n".encode("ascii")
    head = extra + head
    _verify_header_block(head)
    if not smtputf8 and not head.isascii():
        raise InvalidMessage(
            "the headers hold non-ASCII text and the server does not offer SMTPUTF8",
            "headers",
        )
    data = head + body
    return Prepared(
        mail_from=mail_from,
        recipients=recipients,
        message_id=message_id,
        source=lambda: _bytes_source(data),
        size=len(data),
        needs_smtputf8=smtputf8 and (env_utf8 or not head.isascii()),
        eight_bit=not body.isascii(),
        in_memory=True,
        original=msg,
    )
