"""Charset modes (4D ``headerCharset`` / ``bodyCharset``) and the encoders behind them.

4D's rule, for headers (subject, display names, attachment file names) and bodies:
US-ASCII when the text allows it, else the mode's charset and encoding, falling back
to UTF-8 when the text does not fit that charset.

===============  ============================  ==============  =================
``CharsetMode``  4D value                      header          body
===============  ============================  ==============  =================
``UTF8_QP``      US-ASCII_UTF8_QP (default)    UTF-8, Q        UTF-8, QP
``UTF8_B64``     US-ASCII_UTF8_B64             UTF-8, B        UTF-8, base64
``ISO_8859_1``   ISO-8859-1                    ISO-8859-1, Q   ISO-8859-1, QP
``ISO_2022_JP``  US-ASCII_ISO-2022-JP_UTF8_QP  ISO-2022-JP, B  ISO-2022-JP, 7bit
===============  ============================  ==============  =================

Text that the mode's charset cannot hold falls back to the UTF-8 quoted-printable row.
"""

from __future__ import annotations

import binascii
import enum
import re
from collections.abc import Iterator

from ..errors import InvalidMessage
from ._text import check_unicode

__all__ = ["CharsetMode"]

#: RFC 2047 2: an encoded word is at most 75 characters
MAX_ENCODED_WORD = 75
#: RFC 5322 2.1.1: a line must not exceed 998 characters (plus CRLF); 78 is the aim
MAX_LINE = 998
SOFT_LINE = 78
#: base64 reads 57 bytes per 76-column line (RFC 2045 6.8)
B64_LINE_IN = 57
B64_LINE_OUT = 76


class CharsetMode(enum.Enum):
    """4D's charset modes; the values are the 4D strings.

    Example::

        >>> CharsetMode.parse("US-ASCII_UTF8_B64")
        <CharsetMode.UTF8_B64: 'US-ASCII_UTF8_B64'>
    """

    UTF8_QP = "US-ASCII_UTF8_QP"
    UTF8_B64 = "US-ASCII_UTF8_B64"
    ISO_8859_1 = "ISO-8859-1"
    ISO_2022_JP = "US-ASCII_ISO-2022-JP_UTF8_QP"

    @classmethod
    def _missing_(cls, value: object) -> CharsetMode | None:
        # CharsetMode("utf8_qp") and other spellings accepted by parse()
        try:
            return cls.parse(value, "charset") if isinstance(value, str) else None
        except ValueError:
            return None

    @classmethod
    def parse(cls, value: CharsetMode | str, field: str = "charset") -> CharsetMode:
        """Accept a CharsetMode, its 4D value or its Python name (case-insensitive)."""
        if isinstance(value, CharsetMode):
            return value
        if isinstance(value, str):
            key = value.strip().upper().replace(" ", "_")
            for mode in cls.__members__.values():
                if key in (mode.value.upper(), mode.name):
                    return mode
            aliases = {"UTF-8": cls.UTF8_QP, "UTF8": cls.UTF8_QP, "ISO-2022-JP": cls.ISO_2022_JP}
            if key in aliases:
                return aliases[key]
        known = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{field}: unknown charset mode {value!r} (known: {known})")


# --------------------------------------------------------------------------- headers

# RFC 2047 5(3): in a phrase only these characters may stay literal in a Q word; using
# the strictest set everywhere keeps every encoded word valid in every position.
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")


def header_charset(text: str, mode: CharsetMode) -> tuple[str, str, str]:
    """(MIME charset, Python codec, "Q" or "B") for header text that is not plain ASCII."""
    if mode is CharsetMode.UTF8_B64:
        return "UTF-8", "utf-8", "B"
    if mode is CharsetMode.ISO_8859_1 and _fits(text, "iso-8859-1"):
        return "ISO-8859-1", "iso-8859-1", "Q"
    if mode is CharsetMode.ISO_2022_JP and _fits(text, "iso-2022-jp"):
        return "ISO-2022-JP", "iso-2022-jp", "B"
    return "UTF-8", "utf-8", "Q"


def _fits(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _q_len(data: bytes) -> int:
    return sum(1 if b in _Q_SAFE or b == 0x20 else 3 for b in data)


def _q_encode(data: bytes) -> str:
    out = []
    for b in data:
        if b in _Q_SAFE:
            out.append(chr(b))
        elif b == 0x20:
            out.append("_")
        else:
            out.append(f"={b:02X}")
    return "".join(out)


def _b_len(nbytes: int) -> int:
    return 4 * ((nbytes + 2) // 3)


def encoded_words(text: str, mode: CharsetMode, first_limit: int = MAX_ENCODED_WORD) -> list[str]:
    """RFC 2047 encoded words for ``text``, each at most 75 characters.

    Characters are never split across words, so every word decodes on its own
    (RFC 2047 5: each encoded word must be self-contained).

    Example::

        >>> encoded_words("Café", CharsetMode.UTF8_QP)
        ['=?UTF-8?Q?Caf=C3=A9?=']
    """
    charset, codec, enc = header_charset(text, mode)
    prefix = f"=?{charset}?{enc}?"
    full = MAX_ENCODED_WORD - len(prefix) - 2
    # the first word may have to share its line with "Subject: " and the like
    budget = max(8, min(first_limit, MAX_ENCODED_WORD) - len(prefix) - 2)
    chunks: list[str] = []
    if codec == "iso-2022-jp":
        # stateful codec: measure each candidate chunk as a whole (chunks are short)
        current = ""
        for ch in text:
            candidate = current + ch
            if current and _b_len(len(candidate.encode(codec))) > budget:
                chunks.append(current)
                current = ch
                budget = full
            else:
                current = candidate
        if current:
            chunks.append(current)
    else:
        current_chars: list[str] = []
        used = 0
        nbytes = 0
        for ch in text:
            data = ch.encode(codec)
            if enc == "Q":
                cost = _q_len(data)
                fits = used + cost <= budget
            else:
                cost = len(data)
                fits = _b_len(nbytes + cost) <= budget
            if current_chars and not fits:
                chunks.append("".join(current_chars))
                current_chars, used, nbytes = [], 0, 0
                budget = full
            current_chars.append(ch)
            used += cost if enc == "Q" else 0
            nbytes += len(data)
        if current_chars:
            chunks.append("".join(current_chars))
    words = []
    for chunk in chunks:
        data = chunk.encode(codec)
        body = _q_encode(data) if enc == "Q" else binascii.b2a_base64(data, newline=False).decode()
        words.append(f"{prefix}{body}?=")
    return words


#: a header item: (whitespace before it, text); a fold may replace nothing but goes
#: before the whitespace, so unfolding (removing CRLF) restores the exact value
Item = tuple[str, str]

_PIECES = re.compile(r"[ \t]*[^ \t]+|[ \t]+")
#: longest word written literally; longer ones are encoded so they can be split
MAX_RAW_WORD = 900


def _needs_encoding(word: str) -> bool:
    # a literal "=?...?=" would be decoded by the reader: encode it so it stays text
    # (security.md 3.6 row 3, CVE-2024-6923)
    return not word.isascii() or "=?" in word or len(word) > MAX_RAW_WORD


def unstructured_items(
    text: str, mode: CharsetMode, first_limit: int = MAX_ENCODED_WORD
) -> list[Item]:
    """Items of an unstructured header value (Subject, Comments, extra headers)."""
    pieces = _PIECES.findall(text)
    items: list[Item] = []
    run: list[str] = []
    run_lead = ""

    def flush() -> None:
        nonlocal run, run_lead
        if run:
            limit = first_limit if not items else MAX_ENCODED_WORD
            for k, word in enumerate(encoded_words("".join(run), mode, limit)):
                items.append((run_lead if k == 0 else " ", word))
            run = []

    for index, piece in enumerate(pieces):
        word = piece.lstrip(" \t")
        lead = piece[: len(piece) - len(word)]
        if not word:
            # trailing whitespace (or a value of whitespace only): kept with what precedes
            if run or not items:
                run.append(piece)
            else:
                items[-1] = (items[-1][0], items[-1][1] + piece)
            continue
        # leading whitespace of the value would be dropped by a reader: carried inside
        # an encoded word it survives
        if _needs_encoding(word) or (index == 0 and bool(lead)):
            if run:
                run.append(piece)
            elif index == 0:
                run_lead = ""
                run.append(piece)
            else:
                run_lead = lead[0]
                run.append(lead[1:] + word)
        else:
            flush()
            items.append((lead, word))
    flush()
    return items


def _is_phrase_atoms(name: str) -> bool:
    return all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~ " for c in name)


def phrase_items(name: str, mode: CharsetMode, first_limit: int = MAX_ENCODED_WORD) -> list[Item]:
    """Items of a display name: atoms, one quoted string, or encoded words."""
    if not name:
        return []
    if name.isascii() and "=?" not in name and len(name) <= MAX_RAW_WORD:
        if _is_phrase_atoms(name) and "  " not in name:
            return [("", name)]
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        # one item: a quoted string is never folded (gh-80222 dropped quotes on refold)
        return [("", f'"{escaped}"')]
    words = encoded_words(name, mode, first_limit)
    return [("" if k == 0 else " ", w) for k, w in enumerate(words)]


# RFC 2231 7: attribute-char, kept literal in extended values
_ATTR_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
_PLAIN_PARAM = re.compile(r"[ !#-\[\]-~]{1,60}\Z")  # printable ASCII without '"' and '\'
_PARAM_SEGMENT = 48


def param_items(attribute: str, value: str, mode: CharsetMode) -> list[str]:
    """``attribute="value"``, or RFC 2231 extended (and continued) segments.

    Example::

        >>> param_items("filename", "résumé.pdf", CharsetMode.UTF8_QP)
        ["filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"]
    """
    if _PLAIN_PARAM.match(value):
        return [f'{attribute}="{value}"']
    if mode is CharsetMode.ISO_8859_1 and _fits(value, "iso-8859-1"):
        charset, codec = "ISO-8859-1", "iso-8859-1"
    else:
        charset, codec = "UTF-8", "utf-8"
    segments: list[str] = []
    current: list[str] = []
    used = 0
    for ch in value:
        piece = "".join(chr(b) if b in _ATTR_CHARS else f"%{b:02X}" for b in ch.encode(codec))
        if current and used + len(piece) > _PARAM_SEGMENT:
            segments.append("".join(current))
            current, used = [], 0
        current.append(piece)
        used += len(piece)
    if current:
        segments.append("".join(current))
    if len(segments) == 1:
        return [f"{attribute}*={charset}''{segments[0]}"]
    out = []
    for k, seg in enumerate(segments):
        head = f"{charset}''" if k == 0 else ""
        out.append(f"{attribute}*{k}*={head}{seg}")
    return out


def fold(name: str, items: list[Item], field: str, *, utf8: bool = False) -> bytes:
    """One header field, folded at item boundaries, as bytes ending in CRLF.

    Folds happen only before whitespace between items, so an address, a quoted string
    or an encoded word is never broken. The output is verified: ASCII (or UTF-8 when
    ``utf8``), no CR or LF but the folds, no line over 998 octets.
    """
    lines: list[str] = []
    line = f"{name}:"
    for index, (lead, text) in enumerate(items):
        sep = " " if index == 0 else lead
        if (
            sep
            and index > 0
            and len((line + sep + text).encode("utf-8")) > SOFT_LINE
            and line.strip()
        ):
            lines.append(line)
            line = sep + text
        else:
            line += sep + text
    if not items:
        line += " "
    lines.append(line)
    out = "\r\n".join(lines) + "\r\n"
    data = out.encode("utf-8")
    _verify_header(name, data, field, utf8=utf8)
    return data


def _verify_header(name: str, data: bytes, field: str, *, utf8: bool) -> None:
    # Never trust the builder alone (the stdlib had injection and folding bugs,
    # security.md 1.1): every physical line is checked before it can be written.
    if not utf8 and not data.isascii():
        raise InvalidMessage("holds non-ASCII text that could not be encoded", field)
    lines = data[:-2].split(b"\r\n")
    for k, line in enumerate(lines):
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            raise InvalidMessage("would write a bare CR, LF or NUL", field)
        if len(line) > MAX_LINE:
            raise InvalidMessage(f"would write a line over {MAX_LINE} octets", field)
        if k > 0 and (not line or line[:1] not in b" \t" or not line.strip()):
            raise InvalidMessage("would write a malformed folded line", field)
    if not lines[0].startswith(name.encode("ascii") + b":"):
        raise InvalidMessage("malformed header line", field)


# --------------------------------------------------------------------------- bodies


def canonical_text(text: str, field: str) -> str:
    """Line endings to LF (CRLF, bare CR and bare LF alike), surrogates refused."""
    if not isinstance(text, str):
        raise InvalidMessage(f"must be a str, not {type(text).__name__}", field)
    check_unicode(text, field)
    return text.replace("\r\n", "\n").replace("\r", "\n")


_CTL_7BIT = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def _needs_qp(data: bytes) -> bool:
    """7bit is fine for short lines without controls (RFC 5322 2.3, RFC 2045 2.7)."""
    if _CTL_7BIT.search(data):
        return True
    return any(len(line) > MAX_LINE for line in data.split(b"\n"))


def encode_qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7) of LF-terminated text, as CRLF lines."""
    # binascii does the byte work in C; line endings are fixed in one replace
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def iter_base64(data: bytes | memoryview, block: int = B64_LINE_IN * 840) -> Iterator[bytes]:
    """Base64 in 76-column CRLF lines, in blocks of at most ~64 KiB."""
    view = memoryview(data)
    for start in range(0, len(view), block):
        yield b64_block(view[start : start + block])


def b64_block(data: bytes | memoryview) -> bytes:
    """Base64 of one block (a multiple of 57 bytes, or the last one) with CRLF lines."""
    enc = binascii.b2a_base64(data, newline=False)
    if not enc:
        return b""
    # slicing one big encoded string is faster than one b2a call per 57-byte line
    return b"\r\n".join([enc[i : i + B64_LINE_OUT] for i in range(0, len(enc), B64_LINE_OUT)]) + (
        b"\r\n"
    )


def b64_size(nbytes: int) -> int:
    """Exact length of :func:`iter_base64` output for ``nbytes`` input bytes."""
    enc = 4 * ((nbytes + 2) // 3)
    lines = (enc + B64_LINE_OUT - 1) // B64_LINE_OUT
    return enc + 2 * lines


def encode_text_body(text: str, mode: CharsetMode, field: str) -> tuple[str, str, bytes]:
    """(charset, Content-Transfer-Encoding, CRLF body bytes) for a text part.

    Example::

        >>> encode_text_body("Hello", CharsetMode.UTF8_QP, "text_body")
        ('us-ascii', '7bit', b'Hello')
    """
    text = canonical_text(text, field)
    if text.isascii():
        data = text.encode("ascii")
        if _needs_qp(data):
            # NUL, other controls or a 1000+ octet line: never sent raw (rows 8, 12)
            return "us-ascii", "quoted-printable", encode_qp(data)
        return "us-ascii", "7bit", data.replace(b"\n", b"\r\n")
    if mode is CharsetMode.UTF8_B64:
        data = text.encode("utf-8")
        return "utf-8", "base64", b"".join(iter_base64(data.replace(b"\n", b"\r\n")))
    if mode is CharsetMode.ISO_8859_1 and _fits(text, "iso-8859-1"):
        return "iso-8859-1", "quoted-printable", encode_qp(text.encode("iso-8859-1"))
    if mode is CharsetMode.ISO_2022_JP and _fits(text, "iso-2022-jp"):
        data = text.encode("iso-2022-jp")
        # RFC 1468: ISO-2022-JP is 7bit with ESC sequences; other controls or long
        # lines still need an encoding
        if _CTL_7BIT.search(data.replace(b"\x1b", b"")) or any(
            len(line) > MAX_LINE for line in data.split(b"\n")
        ):
            return "iso-2022-jp", "base64", b"".join(iter_base64(data.replace(b"\n", b"\r\n")))
        return "iso-2022-jp", "7bit", data.replace(b"\n", b"\r\n")
    return "utf-8", "quoted-printable", encode_qp(text.encode("utf-8"))
