"""The streaming MIME writer (4D ``MAIL Convert to MIME``).

A message is first *planned*: every header is rendered, verified and frozen (Date,
Message-ID and the multipart boundaries are fixed), and the body becomes a tree of
parts whose leaves are either bytes already encoded (text) or attachments encoded
while streaming. :meth:`MimePlan.chunks` then yields the message in chunks of at most
64 KiB, any number of times, always the same bytes.

Base64 is encoded in blocks of 57 * 840 input bytes with ``binascii`` (76-column lines
cut by slicing, CRLF added in one join), so memory stays flat whatever the attachment
size and throughput is far above the network's.

Example::

    data = to_mime(mail)                 # bytes
    for chunk in iter_mime(mail):        # the same bytes, streamed
        sock.sendall(chunk)
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from ..errors import InvalidMessage
from ._text import MAX_HEADER_BLOCK, check_header_text
from .address import Address
from .attachment import Attachment
from .charset import (
    B64_LINE_IN,
    MAX_ENCODED_WORD,
    SOFT_LINE,
    CharsetMode,
    Item,
    b64_block,
    b64_size,
    encode_text_body,
    fold,
    param_items,
    phrase_items,
    unstructured_items,
)
from .model import Email, normalize_msg_id

__all__ = ["CHUNK_SIZE", "MimePlan", "iter_mime", "plan_email", "to_mime"]

log = logging.getLogger("postillon.message")

#: largest chunk :meth:`MimePlan.chunks` yields
CHUNK_SIZE = 65_536
#: deepest multipart nesting written (security.md 3.6 row 30)
MAX_DEPTH = 32

# Fields the writer always owns: an extra header with one of these names is ignored.
_STRUCTURAL = frozenset(
    {
        "bcc",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
    }
)


@dataclass
class _Leaf:
    headers: bytes
    data: bytes | None = None
    attachment: Attachment | None = None

    def size(self) -> int | None:
        if self.data is not None:
            return len(self.headers) + 2 + len(self.data)
        assert self.attachment is not None
        n = self.attachment.size
        return None if n is None else len(self.headers) + 2 + b64_size(n)

    def body(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        assert self.attachment is not None
        yield from _base64_stream(self.attachment)


@dataclass
class _Multi:
    headers: bytes
    boundary: str
    parts: list[_Leaf | _Multi] = field(default_factory=list)

    def size(self) -> int | None:
        b = len(self.boundary)
        total = len(self.headers) + 2
        for part in self.parts:
            n = part.size()
            if n is None:
                return None
            total += 4 + b + 2 + n  # "--b\r\n" part "\r\n"
        return total + 2 + b + 4  # "--b--\r\n"

    def body(self) -> Iterator[bytes]:
        delim = f"--{self.boundary}\r\n".encode("ascii")
        for part in self.parts:
            yield delim
            yield part.headers
            yield b"\r\n"
            yield from part.body()
            # RFC 2046 5.1.1: the CRLF before a boundary belongs to the boundary
            yield b"\r\n"
        yield f"--{self.boundary}--\r\n".encode("ascii")


def _base64_stream(att: Attachment) -> Iterator[bytes]:
    rest = b""
    for block in att.iter_blocks():
        data = rest + block if rest else block
        cut = len(data) - len(data) % B64_LINE_IN
        if cut:
            yield b64_block(memoryview(data)[:cut])
        rest = data[cut:]
    if rest:
        yield b64_block(rest)


def _bounded(pieces: Iterable[bytes], limit: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Coalesce small pieces and split big ones: every chunk is at most ``limit``."""
    buf = bytearray()
    for piece in pieces:
        if len(buf) + len(piece) <= limit:
            buf += piece
            continue
        if buf:
            yield bytes(buf)
            buf.clear()
        if len(piece) <= limit:
            if len(piece) > limit // 2:
                yield piece  # big enough on its own: no copy
            else:
                buf += piece
            continue
        view = memoryview(piece)
        for start in range(0, len(view), limit):
            part = view[start : start + limit]
            if len(part) == limit:
                yield bytes(part)
            else:
                buf += part
    if buf:
        yield bytes(buf)


@dataclass
class MimePlan:
    """A message ready to stream: frozen headers, fixed boundaries, lazy bodies."""

    header_block: bytes
    root: _Leaf | _Multi
    message_id: str
    needs_smtputf8: bool = False

    def _pieces(self) -> Iterator[bytes]:
        yield self.header_block
        yield self.root.headers
        yield b"\r\n"
        if isinstance(self.root, _Leaf) and self.root.data is not None:
            data = self.root.data
            yield data
            if data and not data.endswith(b"\r\n"):
                # the message ends with CRLF so the end-of-data mark is unambiguous
                yield b"\r\n"
        else:
            yield from self.root.body()

    def chunks(self) -> Iterator[bytes]:
        """The message, in chunks of at most 64 KiB; the same bytes on every call."""
        return _bounded(self._pieces())

    @property
    def size(self) -> int | None:
        """Exact size in bytes, or None when an attachment's size is unknown."""
        n = self.root.size()
        if n is None:
            return None
        if isinstance(self.root, _Leaf) and self.root.data is not None:
            data = self.root.data
            if data and not data.endswith(b"\r\n"):
                n += 2
        return len(self.header_block) + n


class _Builder:
    def __init__(self, header_mode: CharsetMode, body_mode: CharsetMode, smtputf8: bool) -> None:
        self.header_mode = header_mode
        self.body_mode = body_mode
        self.smtputf8 = smtputf8
        self.utf8_used = False
        self.boundaries: set[str] = set()
        self.texts: list[str] = []

    # ---------------------------------------------------------------- headers

    def address_items(
        self, addresses: Iterable[Address], field: str, name_len: int = 4
    ) -> list[Item]:
        items: list[Item] = []
        for k, addr in enumerate(addresses):
            try:
                spec = addr.addr_spec(self.smtputf8)
            except InvalidMessage as exc:
                raise InvalidMessage(exc.message, f"{field}[{k}]") from None
            if not spec.isascii():
                self.utf8_used = True
            room = SOFT_LINE - name_len - 2 if k == 0 else MAX_ENCODED_WORD
            phrase = phrase_items(addr.name, self.header_mode, room)
            mine: list[Item] = []
            for j, (lead, text) in enumerate(phrase):
                mine.append(((" " if k else "") if j == 0 else lead, text))
            if phrase:
                mine.append((" ", f"<{spec}>"))
            else:
                mine.append((" " if k else "", spec))
            if items:
                last_lead, last_text = items[-1]
                items[-1] = (last_lead, last_text + ",")
            items.extend(mine)
        return items

    def header(self, name: str, items: list[Item], field: str) -> bytes:
        return fold(name, items, field, utf8=self.smtputf8)

    # ---------------------------------------------------------------- parts

    def boundary(self) -> str:
        # "=_" cannot occur in base64 or quoted-printable output; 128 random bits make
        # a clash with 7bit text practically impossible, and it is checked anyway
        while True:
            b = f"=_{secrets.token_hex(16)}"
            if b not in self.boundaries and not any(b in t for t in self.texts):
                self.boundaries.add(b)
                return b

    def multi(self, subtype: str, parts: list[_Leaf | _Multi]) -> _Multi:
        b = self.boundary()
        head = self.header(
            "Content-Type", [("", f"multipart/{subtype};"), (" ", f'boundary="{b}"')], "type"
        )
        return _Multi(head, b, parts)

    def text_leaf(self, text: str, mime_type: str, field: str) -> _Leaf:
        charset, cte, data = encode_text_body(text, self.body_mode, field)
        self.texts.append(text)
        head = self.header(
            "Content-Type", [("", f"{mime_type};"), (" ", f'charset="{charset}"')], field
        ) + self.header("Content-Transfer-Encoding", [("", cte)], field)
        return _Leaf(head, data=data)

    def attachment_leaf(self, att: Attachment, field: str) -> _Leaf:
        mime_type = att.type
        inline: bytes | None = None
        if mime_type.lower().startswith("message/"):
            # RFC 2046 5.2.1: a message/* part is never base64 or quoted-printable. A
            # 7-bit clean message goes as it is; anything else goes as an opaque file.
            inline = _seven_bit_message(att)
            if inline is None:
                mime_type = "application/octet-stream"
        name_params = param_items("name", att.name, self.header_mode)
        ct: list[Item] = [("", mime_type + ";")]
        ct += [
            (" ", p + (";" if k < len(name_params) - 1 else "")) for k, p in enumerate(name_params)
        ]
        file_params = param_items("filename", att.name, self.header_mode)
        cd: list[Item] = [("", att.disposition + ";")]
        cd += [
            (" ", p + (";" if k < len(file_params) - 1 else "")) for k, p in enumerate(file_params)
        ]
        cte = "7bit" if inline is not None else "base64"
        head = (
            self.header("Content-Type", ct, f"{field}.type")
            + self.header("Content-Transfer-Encoding", [("", cte)], field)
            + self.header("Content-Disposition", cd, f"{field}.name")
        )
        if att.cid:
            head += self.header("Content-ID", [("", f"<{att.cid}>")], f"{field}.cid")
        if inline is not None:
            return _Leaf(head, data=inline)
        return _Leaf(head, attachment=att)


#: a message/* attachment larger than this goes as application/octet-stream (it would
#: have to be held in memory to be checked and sent as 7bit)
MAX_INLINE_MESSAGE = 8 * 1024 * 1024


def _seven_bit_message(att: Attachment) -> bytes | None:
    """The attachment as a 7bit message/* body (CRLF lines), or None when it is not one."""
    if att.size is None or att.size > MAX_INLINE_MESSAGE:
        return None
    data = att.get_content()
    if not data.isascii() or b"\0" in data:
        return None
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if any(len(line) > 998 for line in data.split(b"\n")):
        return None
    return data.replace(b"\n", b"\r\n")


def _date_value(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.astimezone()
    return format_datetime(value)


def plan_email(
    mail: Email,
    header_charset: CharsetMode | str = CharsetMode.UTF8_QP,
    body_charset: CharsetMode | str = CharsetMode.UTF8_QP,
    *,
    smtputf8: bool = False,
    now: datetime | None = None,
) -> MimePlan:
    """Render and verify every header of ``mail`` and lay out its MIME tree."""
    if not isinstance(mail, Email):
        raise InvalidMessage(f"expected an Email, not {type(mail).__name__}", "mail")
    b = _Builder(
        CharsetMode.parse(header_charset, "header_charset"),
        CharsetMode.parse(body_charset, "body_charset"),
        smtputf8,
    )
    extra = list(mail.headers)
    message_id = mail.message_id
    date_text: str | None = None
    # an extra Message-ID or Date stands in for the missing field (4D: else ignored)
    for name, value in extra:
        if name.lower() == "message-id" and message_id is None:
            message_id = normalize_msg_id(value, "headers")
        elif name.lower() == "date" and mail.send_at is None and date_text is None:
            try:
                date_text = _date_value(parsedate_to_datetime(value))
            except (TypeError, ValueError):
                raise InvalidMessage(f"not a date: {value!r}", "headers") from None
    if message_id is None:
        right = mail.from_[0].ascii_domain if mail.from_ else "postillon.invalid"
        if right.startswith("["):
            right = "postillon.invalid"
        message_id = f"<{uuid.uuid4().hex}@{right}>"
    if date_text is None:
        date_text = _date_value(mail.send_at or now or datetime.now(UTC).astimezone())

    out: list[bytes] = []
    covered: set[str] = set(_STRUCTURAL)

    def add(name: str, items: list[Item], field: str) -> None:
        covered.add(name.lower())
        out.append(b.header(name, items, field))

    add("Date", [("", date_text)], "send_at")
    if mail.from_:
        add("From", b.address_items(mail.from_, "from", 4), "from")
    if mail.sender is not None:
        add("Sender", b.address_items([mail.sender], "sender", 6), "sender")
    if mail.reply_to:
        add("Reply-To", b.address_items(mail.reply_to, "reply_to", 8), "reply_to")
    if mail.to:
        add("To", b.address_items(mail.to, "to", 2), "to")
    if mail.cc:
        add("Cc", b.address_items(mail.cc, "cc", 2), "cc")
    # RFC 5322 3.6.3: Bcc is never written; its addresses only go to the envelope
    covered.add("bcc")
    if mail.subject:
        add("Subject", unstructured_items(mail.subject, b.header_mode, SOFT_LINE - 9), "subject")
    add("Message-ID", [("", message_id)], "message_id")
    if mail.in_reply_to:
        add("In-Reply-To", [(" ", i) for i in mail.in_reply_to], "in_reply_to")
    if mail.references:
        add("References", [(" ", i) for i in mail.references], "references")
    if mail.comments:
        add(
            "Comments", unstructured_items(mail.comments, b.header_mode, SOFT_LINE - 10), "comments"
        )
    if mail.keywords:
        items: list[Item] = []
        for k, kw in enumerate(mail.keywords):
            words = phrase_items(kw, b.header_mode, SOFT_LINE - 10 if k == 0 else MAX_ENCODED_WORD)
            if items:
                items[-1] = (items[-1][0], items[-1][1] + ",")
            items += [(" " if (j or k) else "", w) for j, (_, w) in enumerate(words)]
        add("Keywords", items, "keywords")
    if mail.priority is not None:
        add("X-Priority", [("", mail.priority.x_priority)], "priority")
        add("Importance", [("", mail.priority.value)], "priority")
    if mail.disposition_notification:
        target = mail.from_[:1] or ((mail.sender,) if mail.sender else ())
        if target:
            add(
                "Disposition-Notification-To",
                b.address_items(target, "from", 27),
                "disposition_notification",
            )
    for k, (name, value) in enumerate(extra):
        if name.lower() in covered:
            log.debug("extra header %s ignored: the field is set", name)
            continue
        items = unstructured_items(value, b.header_mode, SOFT_LINE - len(name) - 2)
        out.append(b.header(name, items, f"headers[{k}]"))
    out.append(b"MIME-Version: 1.0\r\n")
    header_block = b"".join(out)
    if len(header_block) > MAX_HEADER_BLOCK:
        raise InvalidMessage(
            f"the header block would be {len(header_block)} octets (limit {MAX_HEADER_BLOCK})",
            "headers",
        )
    root = _body_tree(mail, b)
    return MimePlan(header_block, root, message_id, needs_smtputf8=b.utf8_used)


def _body_tree(mail: Email, b: _Builder) -> _Leaf | _Multi:
    if mail.body_structure is not None:
        return _tree_from_structure(mail, b)
    text = (
        b.text_leaf(mail.text_body, "text/plain", "text_body")
        if mail.text_body is not None
        else None
    )
    html = (
        b.text_leaf(mail.html_body, "text/html", "html_body")
        if mail.html_body is not None
        else None
    )
    inline: list[_Leaf | _Multi] = []
    others: list[_Leaf | _Multi] = []
    for k, att in enumerate(mail.attachments):
        leaf = b.attachment_leaf(att, f"attachments[{k}]")
        (inline if att.cid and html is not None else others).append(leaf)
    html_node: _Leaf | _Multi | None = html
    if html is not None and inline:
        html_node = b.multi("related", [html, *inline])
    body: _Leaf | _Multi | None
    if text is not None and html_node is not None:
        body = b.multi("alternative", [text, html_node])
    else:
        body = html_node if html_node is not None else text
    if others:
        return b.multi("mixed", ([body] if body is not None else []) + others)
    if body is None:
        return b.text_leaf("", "text/plain", "text_body")
    return body


def _tree_from_structure(mail: Email, b: _Builder) -> _Leaf | _Multi:
    values = mail.body_values or {}
    pending = list(enumerate(mail.attachments))

    def build(node: Any, path: str, depth: int) -> _Leaf | _Multi:
        if depth > MAX_DEPTH:
            raise InvalidMessage(f"nested deeper than {MAX_DEPTH} levels", path)
        if not isinstance(node, dict):
            raise InvalidMessage("a part must be a dict", path)
        mime_type = str(node.get("type") or "text/plain").lower()
        check_header_text(mime_type, f"{path}.type", limit=200)
        sub = node.get("subParts")
        if mime_type.startswith("multipart/") or sub:
            if not isinstance(sub, list) or not sub:
                raise InvalidMessage("a multipart needs subParts", path)
            subtype = mime_type.partition("/")[2] or "mixed"
            if not subtype.replace("-", "").isalnum():
                raise InvalidMessage(f"invalid multipart subtype {subtype!r}", f"{path}.type")
            parts = [build(p, f"{path}.subParts[{k}]", depth + 1) for k, p in enumerate(sub)]
            return b.multi(subtype, parts)
        part_id = node.get("partId")
        if part_id is not None and str(part_id) in values:
            value = values[str(part_id)]
            text = value.get("value") if isinstance(value, dict) else value
            if not isinstance(text, str):
                raise InvalidMessage("a body value must be text", f"body_values[{part_id!r}]")
            if not mime_type.startswith("text/"):
                mime_type = "text/plain"
            return b.text_leaf(text, mime_type, f"body_values[{part_id!r}]")
        if not pending:
            raise InvalidMessage("a part has neither a body value nor an attachment", path)
        k, att = pending.pop(0)
        return b.attachment_leaf(att, f"attachments[{k}]")

    root = build(mail.body_structure, "body_structure", 0)
    if pending:
        extra = [b.attachment_leaf(att, f"attachments[{k}]") for k, att in pending]
        if isinstance(root, _Multi) and b"multipart/mixed" in root.headers:
            root.parts.extend(extra)
        else:
            root = b.multi("mixed", [root, *extra])
    return root


def iter_mime(
    mail: Email,
    header_charset: CharsetMode | str = CharsetMode.UTF8_QP,
    body_charset: CharsetMode | str = CharsetMode.UTF8_QP,
    *,
    smtputf8: bool = False,
) -> Iterator[bytes]:
    """The MIME text of ``mail`` as chunks of at most 64 KiB (attachments read lazily).

    Example::

        >>> mail = Email(from_="a@example.com", to="b@example.com", text_body="hi")
        >>> b"".join(iter_mime(mail)).endswith(b"\\r\\n\\r\\nhi\\r\\n")
        True
    """
    return plan_email(mail, header_charset, body_charset, smtputf8=smtputf8).chunks()


def to_mime(
    mail: Email,
    header_charset: CharsetMode | str = CharsetMode.UTF8_QP,
    body_charset: CharsetMode | str = CharsetMode.UTF8_QP,
    *,
    smtputf8: bool = False,
) -> bytes:
    """The MIME text of ``mail`` (4D ``MAIL Convert to MIME``), CRLF line endings.

    Example::

        >>> to_mime(Email(from_="a@example.com", to="b@example.com", subject="Hi"))[:5]
        b'Date:'
    """
    return b"".join(iter_mime(mail, header_charset, body_charset, smtputf8=smtputf8))
