"""SMTP replies: the value type and an incremental, bounded parser (sans-I/O).

Theory of operation: the driver hands every octet it reads to :meth:`ReplyParser.feed` and
takes complete replies with :meth:`ReplyParser.next_reply`. The parser never looks at an
octet twice: ``feed`` searches only the new data for the next line feed, and only within
the room the current line still has under ``max_line``, so a server that sends 10 MB
without a newline is refused after ``max_line`` octets, and a million continuation lines
are refused at the line cap, both in time linear in what was fed. Malformed input (a bad
code, a mismatched multi-line code) is reported by ``next_reply`` after every good reply
that came before it; a crossed limit is reported by ``feed`` at once.

Example::

    parser = ReplyParser()
    parser.feed(b"250-smtp.example.com\\r\\n250 2.0.0 SIZE 1000\\r\\n")
    reply = parser.next_reply()
    assert reply is not None and reply.code == 250 and reply.enhanced is None
"""

from __future__ import annotations

import collections
import logging
import re
from dataclasses import dataclass
from typing import NoReturn

from ..errors import ProtocolError

__all__ = [
    "MAX_LINE_LENGTH",
    "MAX_REPLY_LENGTH",
    "MAX_REPLY_LINES",
    "Reply",
    "ReplyParser",
    "printable",
]

log = logging.getLogger("postillon.protocol.reply")

#: octets per reply line, CRLF included (RFC 5321 4.5.3.1.5 says 512; real servers exceed it)
MAX_LINE_LENGTH = 8192
#: octets per whole (multi-line) reply
MAX_REPLY_LENGTH = 65536
#: lines per reply
MAX_REPLY_LINES = 1000

# RFC 3463 2: class "." subject "." detail; only the classes 2, 4 and 5 exist.
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |\Z)")
_ENHANCED_ONLY = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")

#: single-line replies remembered per parser, and the longest line worth remembering
_CACHE_SIZE = 64
_CACHED_LINE = 256

_DIGIT_0 = 0x30
_HYPHEN = 0x2D
_SPACE = 0x20


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete SMTP reply (RFC 5321 4.2), single- or multi-line.

    ``lines`` holds the text of each line after the code and its separator, with the
    enhanced status code (RFC 3463) removed when the reply carries one.

    Example::

        >>> r = Reply(250, ("ok",), "2.0.0")
        >>> r.is_positive, str(r)
        (True, '250 2.0.0 ok')
    """

    code: int
    lines: tuple[str, ...] = ("",)
    enhanced: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int):
            raise ValueError(f"code: must be an int, not {type(self.code).__name__}")
        if not 200 <= self.code <= 599:
            raise ValueError(f"code: must be within 200..599, not {self.code}")
        if not isinstance(self.lines, tuple) or not all(isinstance(x, str) for x in self.lines):
            raise ValueError("lines: must be a tuple of str")
        if self.enhanced is not None and not _ENHANCED_ONLY.fullmatch(self.enhanced):
            raise ValueError(f"enhanced: not an RFC 3463 status code: {printable(self.enhanced)}")

    @property
    def text(self) -> str:
        """The text of every line, joined with "\\n"."""
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        """2xx: the command succeeded."""
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        """3xx: the server waits for more (354 after DATA, 334 during AUTH)."""
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """4xx: try again later."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5xx: do not retry as is."""
        return 500 <= self.code < 600

    def __str__(self) -> str:
        # For logs: one line, controls escaped, bounded (log forging, security.md 1.13).
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        text = " / ".join(line for line in self.lines if line)
        if text:
            parts.append(text)
        return printable(" ".join(parts))


class ReplyParser:
    """Turns the octets a server sends into :class:`Reply` values, with hard limits.

    Lines end in CRLF or a bare LF (be liberal in what we accept). A line is three digits
    (first 2-5, second 0-5), then "-" (more lines follow), " " or the end of the line. All
    lines of one reply carry the same code. Text that is not UTF-8 is decoded with
    replacement characters. Any breach raises :class:`~postillon.errors.ProtocolError`.

    Example::

        >>> p = ReplyParser()
        >>> p.feed(b"250 ok\\r\\n354 go")
        >>> p.next_reply().code, p.next_reply(), p.buffered
        (250, None, 6)
    """

    __slots__ = (
        "_cache",
        "_code",
        "_error",
        "_lines",
        "_max_line",
        "_max_lines",
        "_max_reply",
        "_partial",
        "_ready",
        "_reply_octets",
        "_sizes",
        "_spoiled",
    )

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE_LENGTH,
        max_reply: int = MAX_REPLY_LENGTH,
        max_lines: int = MAX_REPLY_LINES,
    ) -> None:
        for name, value, low in (
            ("max_line", max_line, 5),  # "250\r\n" must fit
            ("max_reply", max_reply, 5),
            ("max_lines", max_lines, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: must be an int >= {low}, not {value!r}")
        self._max_line = max_line
        self._max_reply = max_reply
        self._max_lines = max_lines
        # the current line, not yet terminated (always shorter than max_line)
        self._partial = bytearray()
        # the reply being assembled: its code, its decoded lines, its octets so far
        self._code = 0
        self._lines: list[str] = []
        self._reply_octets = 0
        # complete replies not yet taken, with their size on the wire (for discard())
        self._ready: collections.deque[Reply] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        # the first error met; once set, everything after it is dropped
        self._error: ProtocolError | None = None
        self._spoiled = 0  # octets dropped after the error
        # Single-line replies already parsed, by their exact octets (terminator included).
        # A server repeats the same few lines ("250 2.1.0 Ok", "354 ..."), and a Reply is
        # immutable, so sharing one is safe; the checks a line passed depend only on its
        # octets and this parser's limits, so a hit is exactly what parsing would give.
        self._cache: dict[bytes, Reply] = {}

    # -- input -------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next octets from the server.

        Raises :class:`ProtocolError` as soon as a line, a reply or a line count crosses
        its limit, even when the line has no newline yet. After an error, more data is
        counted and dropped.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"data: must be bytes, not {type(data).__name__}")
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._error is not None:
            self._spoiled += len(data)
            return
        pos = 0
        end = len(data)
        max_line = self._max_line
        partial = self._partial
        while pos < end:
            room = max_line - len(partial)
            # Search only the room left for this line: a long line fails after max_line
            # octets, whatever the size of the chunk (security.md 1.11, R6/R7).
            nl = data.find(b"\n", pos, pos + room)
            if nl < 0:
                if end - pos >= room:
                    self._fail(f"reply line longer than {max_line} octets", end - pos)
                partial += data[pos:]
                return
            if partial:
                partial += data[pos : nl + 1]
                line = bytes(partial)
                partial.clear()
            else:
                line = data[pos : nl + 1]
            pos = nl + 1
            if not self._lines:
                # Fast path: a single-line reply seen before (no decode, regex or object).
                cached = self._cache.get(line)
                if cached is not None:
                    self._ready.append(cached)
                    self._sizes.append(len(line))
                    continue
            try:
                good = self._take_line(line)
            except ProtocolError:
                self._spoiled += end - pos
                raise
            if not good:
                self._spoiled += end - pos
                return

    def _fail(self, why: str, extra: int = 0) -> NoReturn:
        """Record and raise a limit error (the connection cannot be trusted any more)."""
        self._error = ProtocolError(why)
        self._spoiled += extra
        log.debug("reply parser: %s", why)
        raise self._error

    def _take_line(self, line: bytes) -> bool:
        """Add one complete line to the reply in progress; False once the input is bad."""
        size = len(line)
        # RFC 5321 4.2: CRLF ends a line; a bare LF is accepted too (R1).
        body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        n = len(body)
        if (
            n < 3
            or not 0x32 <= body[0] <= 0x35  # RFC 5321 4.2.1: first digit 2..5
            or not 0x30 <= body[1] <= 0x35  # second digit 0..5
            or not 0x30 <= body[2] <= 0x39
            or (n > 3 and body[3] not in (_HYPHEN, _SPACE))
        ):
            return self._malformed(f"malformed reply line {printable(repr(body[:40]))}", size)
        code = (body[0] - _DIGIT_0) * 100 + (body[1] - _DIGIT_0) * 10 + body[2] - _DIGIT_0
        if self._lines and code != self._code:
            # Every line of a multi-line reply carries the same code (MailKit rule, R4).
            return self._malformed(f"multi-line reply mixes codes {self._code} and {code}", size)
        if len(self._lines) >= self._max_lines:
            self._fail(f"reply has more than {self._max_lines} lines", size)
        if self._reply_octets + size > self._max_reply:
            self._fail(f"reply longer than {self._max_reply} octets", size)
        self._code = code
        self._reply_octets += size
        # R5: text that is not UTF-8 is kept, with replacement characters.
        self._lines.append(body[4:].decode("utf-8", "replace"))
        if n > 3 and body[3] == _HYPHEN:
            return True
        reply = _make_reply(code, self._lines)
        if len(self._lines) == 1 and size <= _CACHED_LINE and len(self._cache) < _CACHE_SIZE:
            self._cache[line] = reply
        self._ready.append(reply)
        self._sizes.append(self._reply_octets)
        self._lines = []
        self._reply_octets = 0
        return True

    def _malformed(self, why: str, size: int) -> bool:
        self._error = ProtocolError(why)
        self._spoiled += size + self._reply_octets
        self._lines = []
        self._reply_octets = 0
        return False

    # -- output ------------------------------------------------------------------------

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None when more octets are needed.

        Raises :class:`ProtocolError` when the input that follows the replies already
        taken is malformed or crossed a limit.
        """
        if self._ready:
            self._sizes.popleft()
            return self._ready.popleft()
        if self._error is not None:
            raise self._error
        return None

    @property
    def buffered(self) -> int:
        """Octets held that do not yet form a complete reply."""
        return len(self._partial) + self._reply_octets

    def has_data(self) -> bool:
        """Whether anything was received and not taken: a partial or complete reply, or
        bad input (a server that speaks out of turn)."""
        return bool(self._partial or self._lines or self._ready or self._error is not None)

    def discard(self) -> int:
        """Drop everything held and forget any error; return the octets dropped.

        Called right after the reply to STARTTLS: anything the server sent after it
        in clear text must not be read as if it came over TLS (RFC 3207 5, CVE-2011-0411).
        """
        dropped = len(self._partial) + self._reply_octets + sum(self._sizes) + self._spoiled
        self._partial.clear()
        self._lines = []
        self._reply_octets = 0
        self._code = 0
        self._ready.clear()
        self._sizes.clear()
        self._error = None
        self._spoiled = 0
        return dropped


def _make_reply(code: int, lines: list[str]) -> Reply:
    """Build the Reply, lifting the enhanced status code (RFC 3463, RFC 2034 3)."""
    first_digit = str(code // 100)
    match = _ENHANCED.match(lines[0])
    if match is None or match.group(1) != first_digit:
        return _trusted(code, tuple(lines), None)
    enhanced = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
    # RFC 2034 3: every line of the reply is prefixed by the enhanced code; remove it
    # wherever it is the same one, keep any other text untouched.
    prefix = enhanced + " "
    out = []
    for line in lines:
        if line.startswith(prefix):
            out.append(line[len(prefix) :])
        elif line == enhanced:
            out.append("")
        else:
            out.append(line)
    return _trusted(code, tuple(out), enhanced)


_new = object.__new__
_set = object.__setattr__


def _trusted(code: int, lines: tuple[str, ...], enhanced: str | None) -> Reply:
    """A Reply built without ``__post_init__``: the parser has already checked the code
    (three digits, 2..5 first), the text (decoded str) and the enhanced code (the same
    pattern), so the checks of the public constructor would only repeat them."""
    reply: Reply = _new(Reply)
    _set(reply, "code", code)
    _set(reply, "lines", lines)
    _set(reply, "enhanced", enhanced)
    return reply


def _escape_table() -> dict[int, str]:
    table = {c: f"\\x{c:02x}" for c in range(0x20)}
    table[0x7F] = "\\x7f"
    table.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})  # C1, U+0085 included
    # Line and paragraph separators, and the bidirectional overrides and isolates that
    # can make a log line read differently from what it holds.
    for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F):
        table[c] = f"\\u{c:04x}"
    return table


_ESCAPES = _escape_table()


def printable(text: str, limit: int = 512) -> str:
    """Make server text safe for a log line or an exception message (security.md 1.13).

    C0 controls (ESC, CR, LF included), DEL and C1 controls become ``\\xNN``; U+2028,
    U+2029 and bidirectional controls become ``\\uNNNN``. A result longer than ``limit``
    characters is cut (never inside an escape) and ends with "...".

    Example::

        >>> printable("ok\\x1b[2J\\r\\nFAKE")
        'ok\\\\x1b[2J\\\\x0d\\\\x0aFAKE'
    """
    if not isinstance(text, str):
        raise ValueError(f"text: must be a str, not {type(text).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 3:
        raise ValueError(f"limit: must be an int >= 3, not {limit!r}")
    if len(text) <= limit and text.isascii() and text.isprintable():
        # Fast path: ASCII without C0 controls or DEL has nothing to escape (the other
        # escaped characters are all outside ASCII).
        return text
    # Escaping never shortens text, so only the first `limit` characters can matter.
    head = text[: limit + 1]
    out = head.translate(_ESCAPES)
    if len(out) <= limit and len(head) == len(text):
        return out
    budget = limit - 3
    pieces: list[str] = []
    used = 0
    # head has limit + 1 characters and each gives at least one: the budget always runs
    # out before the loop does.
    for ch in head:  # pragma: no branch
        piece = _ESCAPES.get(ord(ch), ch)
        if used + len(piece) > budget:
            break
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces) + "..."
