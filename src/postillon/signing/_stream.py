"""Streaming helpers shared by the signers: line endings, header/body split, fields.

Both signers read a message twice (once to hash, once to emit) and never hold more
than the header block and one chunk at a time. The header block is bounded by
:data:`MAX_HEADER_BLOCK`; the body is never joined.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidMessage

__all__ = [
    "MAX_HEADER_BLOCK",
    "Field",
    "crlf_chunks",
    "parse_fields",
    "read_input",
    "split_message",
]

#: the largest header block we accept (Postfix's header_size_limit is 100 KiB; a signer
#: that buffered without a bound would let one message exhaust memory)
MAX_HEADER_BLOCK = 1024 * 1024


def crlf_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The same bytes with every bare LF turned into CRLF (RFC 5322 2.1; RFC 8551 3.1.1).

    ``Prepared`` promises CRLF already; this makes a signature robust to a source that
    breaks the promise, since a later hop would convert those LFs and break it. A CR that
    ends a chunk is held back so that a CRLF split across chunks is not doubled.
    """
    held = b""
    for chunk in chunks:
        if not chunk:
            continue
        data = held + chunk if held else chunk
        if data.endswith(b"\r"):
            data, held = data[:-1], b"\r"
        else:
            held = b""
        # fast path: count() runs in C and most chunks are already canonical
        if data.count(b"\n") != data.count(b"\r\n"):
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if data:
            yield data
    if held:
        yield held


def split_message(
    chunks: Iterable[bytes], limit: int = MAX_HEADER_BLOCK
) -> tuple[bytes, Iterator[bytes]]:
    """Split a CRLF message into its header block and an iterator over the body.

    The header block ends with the CRLF of its last field (the empty line is dropped);
    the body starts after the empty line. A message without an empty line is all header
    and has an empty body. Raises :class:`InvalidMessage` when the header block exceeds
    ``limit`` bytes.
    """
    it = iter(chunks)
    buf = bytearray()
    searched = 0
    for chunk in it:
        buf += chunk
        if buf.startswith(b"\r\n"):
            # RFC 5322 2.1: a message may have no header field at all
            return b"", _chain(bytes(buf[2:]), it)
        # resume the search a few bytes back: the separator may straddle two chunks
        idx = buf.find(b"\r\n\r\n", max(0, searched - 3))
        if idx >= 0:
            return bytes(buf[: idx + 2]), _chain(bytes(buf[idx + 4 :]), it)
        searched = len(buf)
        if len(buf) > limit:
            raise InvalidMessage(f"the header block is larger than {limit} bytes", field="headers")
    header = bytes(buf)
    if header and not header.endswith(b"\r\n"):
        header += b"\r\n"
    return header, iter(())


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


@dataclass(frozen=True, slots=True)
class Field:
    """One header field as it appears in the message."""

    #: the field name as written (no trailing whitespace)
    name: str
    #: the whole field, name, colon, folded value and final CRLF, byte for byte
    raw: bytes

    @property
    def key(self) -> str:
        """The name in lower case, for case-insensitive comparison."""
        return self.name.lower()

    @property
    def value(self) -> bytes:
        """Everything after the colon, folding included, without the final CRLF."""
        return self.raw.split(b":", 1)[1][:-2]


def parse_fields(header: bytes) -> list[Field]:
    """Split a header block (CRLF lines) into fields, keeping folded lines with theirs.

    Raises :class:`InvalidMessage` for a line that neither starts a field (``name:``)
    nor continues one (RFC 5322 2.2, 2.2.3).
    """
    fields: list[Field] = []
    if not header:
        return fields
    name = ""
    parts: list[bytes] = []
    for line in header[:-2].split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not parts:
                raise InvalidMessage("the header block starts with a continuation line", "headers")
            parts.append(line)
            continue
        if parts:
            fields.append(Field(name, b"\r\n".join(parts) + b"\r\n"))
        raw_name, colon, _ = line.partition(b":")
        raw_name = raw_name.rstrip(b" \t")
        # RFC 5322 2.2: field-name is printable US-ASCII except the colon
        if not colon or not raw_name or any(c < 33 or c > 126 for c in raw_name):
            shown = line[:40].decode("ascii", "backslashreplace")
            raise InvalidMessage(f"malformed header line {shown!r}", "headers")
        name = raw_name.decode("ascii")
        parts = [line]
    fields.append(Field(name, b"\r\n".join(parts) + b"\r\n"))
    return fields


def read_input(value: str | bytes | os.PathLike[str], field: str, *, pem_str: bool) -> bytes:
    """Key or certificate material: ``bytes`` as given, a path read from disk.

    With ``pem_str``, a ``str`` holding ``-----BEGIN`` is PEM text rather than a path.
    Errors name ``field`` and never echo the content.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if not data:
            raise ValueError(f"{field}: empty")
        return data
    if isinstance(value, str) and pem_str and "-----BEGIN" in value:
        try:
            return value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{field}: PEM text must be ASCII") from None
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"{field}: expected a path or bytes, got {type(value).__name__}")
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {str(path)!r}: {exc.strerror}") from None
    if not data:
        raise ValueError(f"{field}: {str(path)!r} is empty")
    return data
