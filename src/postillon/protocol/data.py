"""Message data on the wire: DATA transparency (RFC 5321 4.5.2) and BDAT framing (RFC 3030).

Our client is "service A" of SMTP smuggling (security.md 1.6): whatever the message source
holds, no bare CR or bare LF leaves here, every line that starts with "." gets one more
".", and the only ``CRLF . CRLF`` in the stream is the terminator we add. Line endings are
canonicalised first: CRLF, a bare CR and a bare LF each become one CRLF ("\\r\\r\\n" is a
bare CR then a CRLF: two line breaks). U+2028, U+0085 and the other Unicode separators are
plain text here, not line breaks.

The work is done on whole chunks with ``bytes.count`` and ``bytes.replace`` (C loops); a
chunk that is already canonical costs three counts and one search. Only a CR at the very
end of a chunk is held back, because the next chunk decides whether it is half of a CRLF.

Example::

    >>> dot_stuff(b"Subject: x\\r\\n\\r\\n.hidden\\nend")
    b'Subject: x\\r\\n\\r\\n..hidden\\r\\nend\\r\\n.\\r\\n'
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import cast

from ..errors import InvalidMessage
from .commands import bdat

__all__ = [
    "BdatStream",
    "DataEncoder",
    "canonicalize",
    "data_stream",
    "dot_stuff",
    "unstuff",
]

_CR = b"\r"
_LF = b"\n"
_CRLF = b"\r\n"
_TERMINATOR = b".\r\n"


def _as_bytes(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise InvalidMessage(f"message chunks must be bytes, not {type(chunk).__name__}", "data")


def canonicalize(data: bytes | bytearray | memoryview) -> bytes:
    """Every CRLF, bare CR and bare LF becomes CRLF (RFC 5321 2.3.8).

    Example::

        >>> canonicalize(b"a\\nb\\rc\\r\\r\\nd")
        b'a\\r\\nb\\r\\nc\\r\\n\\r\\nd'
    """
    data = _as_bytes(data)
    crs = data.count(_CR)
    # Fast path: as many CR as LF, and each of them part of a CRLF pair.
    if crs == data.count(_LF) and (crs == 0 or crs == data.count(_CRLF)):
        return data
    return data.replace(_CRLF, _LF).replace(_CR, _LF).replace(_LF, _CRLF)


def dot_stuff(data: bytes) -> bytes:
    """A whole message -> the DATA wire bytes, terminator included (RFC 5321 4.5.2).

    A CRLF is added before the terminator only when the message does not end in one;
    an empty message is the terminator line alone.

    Example::

        >>> dot_stuff(b".\\r\\n..x")
        b'..\\r\\n...x\\r\\n.\\r\\n'
    """
    encoder = DataEncoder()
    return encoder.feed(data) + encoder.finish()


def unstuff(wire: bytes) -> bytes:
    """Inverse of :func:`dot_stuff`: strip the terminator and the stuffed dots.

    Applies the receiver rule of RFC 5321 4.5.2 (a line that starts with "." loses that
    first "."). Raises ValueError when the terminator is missing or appears early.

    Example::

        >>> unstuff(b"..x\\r\\ny\\r\\n.\\r\\n")
        b'.x\\r\\ny\\r\\n'
    """
    wire = _as_bytes(wire)
    if wire == _TERMINATOR:
        return b""
    if not wire.endswith(_CRLF + _TERMINATOR):
        raise ValueError("wire: does not end with CRLF . CRLF")
    body = wire[: -len(_TERMINATOR)]
    if _CRLF + _TERMINATOR in _CRLF + body:
        raise ValueError("wire: end of data before the end")
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\r\n.", _CRLF)


class DataEncoder:
    """Streaming :func:`dot_stuff`: chunks in, DATA wire bytes out, minding chunk boundaries.

    Example::

        >>> enc = DataEncoder()
        >>> enc.feed(b"a\\r") + enc.feed(b"\\n.b") + enc.finish()
        b'a\\r\\n..b\\r\\n.\\r\\n'
    """

    __slots__ = ("_at_line_start", "_finished", "_pending_cr")

    def __init__(self) -> None:
        self._at_line_start = True  # the next output byte starts a line
        self._pending_cr = False  # a CR ended the last chunk: its meaning is not known yet
        self._finished = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Encode the next chunk; returns what can be sent now (maybe b"")."""
        if self._finished:
            raise ValueError("data: feed() after finish()")
        chunk = _as_bytes(chunk)
        if not chunk:
            return b""
        if self._pending_cr:
            chunk = _CR + chunk
            self._pending_cr = False
        if chunk.endswith(_CR):
            chunk = chunk[:-1]
            self._pending_cr = True
            if not chunk:
                return b""
        canon = canonicalize(chunk)
        # RFC 5321 4.5.2: a line that starts with "." gets one more.
        out = canon.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and out.startswith(b"."):
            out = b"." + out
        self._at_line_start = out.endswith(_CRLF)
        return out

    def finish(self) -> bytes:
        """What was held back, a CRLF if the last line is open, and the terminator."""
        if self._finished:
            raise ValueError("data: finish() called twice")
        self._finished = True
        if self._pending_cr:
            # A message that ends in a bare CR: that CR is a line break.
            self._pending_cr = False
            return _CRLF + _TERMINATOR
        if self._at_line_start:
            return _TERMINATOR
        return _CRLF + _TERMINATOR


def data_stream(chunks: Iterable[bytes], block: int = 65536) -> Iterator[bytes]:
    """DATA wire bytes for a stream of message chunks, ending with the terminator.

    Small outputs are joined into blocks of about ``block`` octets (a 1 KiB message
    leaves in one write); outputs of ``block`` octets or more pass through uncopied.

    Example::

        >>> list(data_stream([b"Subject: hi\\r\\n", b"\\r\\n", b"body"]))
        [b'Subject: hi\\r\\n\\r\\nbody\\r\\n.\\r\\n']
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block: must be an int >= 1, not {block!r}")
    if isinstance(chunks, (bytes, bytearray, memoryview, str)):
        raise InvalidMessage("chunks must be an iterable of bytes chunks", "data")
    return _data_stream(chunks, block)


def encode_small(chunks: Iterable[bytes]) -> tuple[bytes, ...]:
    """The DATA wire bytes of a small message held in memory, in one or two pieces.

    The same bytes as :func:`data_stream`; a message that is one ``bytes`` chunk (a raw
    message) is stuffed without a generator and without joining text and terminator,
    which the driver's write joins anyway.
    """
    if type(chunks) is tuple and len(chunks) == 1 and type(chunks[0]) is bytes:
        return _stuff_one(chunks[0])
    return (b"".join(data_stream(chunks)),)


def _stuff_one(chunk: bytes) -> tuple[bytes, bytes]:
    """:func:`dot_stuff` of a message that came in one chunk, without an encoder object:
    the stuffed text and the tail (terminator, after a CRLF if the last line is open).

    The same steps as :meth:`DataEncoder.feed` then :meth:`DataEncoder.finish` on one
    chunk: canonical line endings, a dot before every line that starts with one.
    """
    if chunk.endswith(_CR):
        # A message that ends in a bare CR: that CR is a line break.
        out = canonicalize(chunk[:-1]).replace(b"\r\n.", b"\r\n..")
        tail = _CRLF + _TERMINATOR
    else:
        # RFC 5321 4.5.2: a line that starts with "." gets one more.
        out = canonicalize(chunk).replace(b"\r\n.", b"\r\n..")
        tail = _TERMINATOR if not out or out.endswith(_CRLF) else _CRLF + _TERMINATOR
    if out.startswith(b"."):
        out = b"." + out
    return out, tail


_NOTHING = object()


def _data_stream(chunks: Iterable[bytes], block: int) -> Iterator[bytes]:
    it = iter(chunks)
    first = next(it, _NOTHING)
    second = next(it, _NOTHING) if first is not _NOTHING else _NOTHING
    if second is _NOTHING:
        # Fast path: the whole message came in one chunk (a small in-memory message, the
        # bulk of a bulk send): one pass of bytes methods and no encoder. The outputs are
        # those of the general loop below: one if short, else the text then the tail.
        out, tail = _stuff_one(_as_bytes(first)) if first is not _NOTHING else (b"", _TERMINATOR)
        if len(out) >= block:
            yield out
            yield tail
        else:
            yield out + tail
        return
    encoder = DataEncoder()
    pending: list[bytes] = []
    size = 0
    for chunk in cast(Iterator[bytes], itertools.chain((first, second), it)):
        out = encoder.feed(chunk)
        if len(out) >= block:
            if pending:
                yield b"".join(pending)
                pending = []
                size = 0
            yield out
            continue
        if out:
            pending.append(out)
            size += len(out)
            if size >= block:
                yield b"".join(pending)
                pending = []
                size = 0
    pending.append(encoder.finish())
    yield b"".join(pending)


class BdatStream:
    """The wire bytes of a message sent with CHUNKING (RFC 3030 2).

    Each item is ``b"BDAT <n>\\r\\n"`` followed by ``n`` octets of the canonicalised
    message (no dot-stuffing: BDAT counts octets); the last is ``b"BDAT <n> LAST\\r\\n"``
    plus its payload, and an empty message is ``b"BDAT 0 LAST\\r\\n"``. Payloads hold at
    most ``max_chunk`` octets. ``commands`` is the number of BDAT commands produced,
    valid once iterated. Iterate once per message.

    Example::

        >>> stream = BdatStream([b"Subject: x\\n\\nhello\\n"], max_chunk=16)
        >>> list(stream), stream.commands
        ([b'BDAT 16\\r\\nSubject: x\\r\\n\\r\\nhe', b'BDAT 5 LAST\\r\\nllo\\r\\n'], 2)
    """

    def __init__(self, chunks: Iterable[bytes], max_chunk: int = 1 << 20) -> None:
        if isinstance(max_chunk, bool) or not isinstance(max_chunk, int) or max_chunk < 1:
            raise ValueError(f"max_chunk: must be an int >= 1, not {max_chunk!r}")
        if isinstance(chunks, (bytes, bytearray, memoryview, str)):
            raise InvalidMessage("chunks must be an iterable of bytes chunks", "data")
        self._chunks = chunks
        self._max_chunk = max_chunk
        self.commands = 0

    def __iter__(self) -> Iterator[bytes]:
        self.commands = 0
        limit = self._max_chunk
        pending: list[bytes] = []
        size = 0
        held_cr = False
        for item in self._chunks:
            chunk = _as_bytes(item)
            if not chunk:
                continue
            if held_cr:
                chunk = _CR + chunk
                held_cr = False
            if chunk.endswith(_CR):
                chunk = chunk[:-1]
                held_cr = True
            canon = canonicalize(chunk)
            if not canon:
                continue
            pending.append(canon)
            size += len(canon)
            # Strictly more than one payload: what is left may still be the LAST one.
            if size > limit:
                data = b"".join(pending)
                offset = 0
                while len(data) - offset > limit:
                    self.commands += 1
                    yield bdat(limit) + data[offset : offset + limit]
                    offset += limit
                rest = data[offset:]
                pending = [rest]
                size = len(rest)
        if held_cr:
            # A message that ends in a bare CR: that CR is a line break.
            pending.append(_CRLF)
            size += 2
        data = b"".join(pending)
        offset = 0
        while len(data) - offset > limit:
            # The held CR pushed the tail over the limit.
            self.commands += 1
            yield bdat(limit) + data[offset : offset + limit]
            offset += limit
        self.commands += 1
        yield bdat(len(data) - offset, last=True) + data[offset:]
