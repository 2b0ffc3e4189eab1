"""Shared checks for text that ends up in a header: controls, surrogates, sizes.

Internal module. Every header-producing field goes through :func:`check_header_text`
before anything is written, so header injection (CR, LF, NUL, other controls, U+2028)
is refused with an :class:`~postillon.errors.InvalidMessage` naming the field.
"""

from __future__ import annotations

import re

from ..errors import InvalidMessage

#: C0 controls except HTAB, DEL, C1 controls (U+0085 NEL among them), and the Unicode
#: line and paragraph separators: any of them in a header value could end the line for
#: some reader (security.md 1.1, rows 1, 2, 4, 7, 9).
_HEADER_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")

#: the same set plus HTAB, for names, addresses and tokens where no whitespace is allowed
_TOKEN_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

#: the whole header block may not grow beyond this (Postfix ``header_size_limit``
#: silently drops the excess, security.md 3.6 row 10)
MAX_HEADER_BLOCK = 102_400

#: one header value (before encoding) may not grow beyond this
MAX_HEADER_VALUE = 65_536


def describe_char(ch: str) -> str:
    """A readable name for a rejected character (never the value around it)."""
    names = {"\r": "CR", "\n": "LF", "\x00": "NUL", "\t": "TAB", "\x7f": "DEL"}
    return names.get(ch, f"U+{ord(ch):04X}")


def check_unicode(value: str, field: str) -> None:
    """Refuse lone surrogates: they cannot be encoded losslessly (security.md row 33)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessage(
            f"holds an unpaired surrogate at position {exc.start}", field
        ) from None


def check_header_text(value: object, field: str, *, limit: int = MAX_HEADER_VALUE) -> str:
    """Validate text meant for a header: a str without line breaks or controls.

    Example::

        check_header_text("Hello", "subject")          # -> "Hello"
        check_header_text("Hi\\r\\nBcc: x", "subject")   # InvalidMessage: subject: ...
    """
    if not isinstance(value, str):
        raise InvalidMessage(f"must be a str, not {type(value).__name__}", field)
    if len(value) > limit:
        raise InvalidMessage(f"is longer than {limit} characters", field)
    bad = _HEADER_FORBIDDEN.search(value)
    if bad is not None:
        raise InvalidMessage(
            f"holds a forbidden control character ({describe_char(bad.group())})", field
        )
    check_unicode(value, field)
    return value


def check_token_text(value: object, field: str, *, limit: int = 998) -> str:
    """Like :func:`check_header_text`, but HTAB is refused as well."""
    text = check_header_text(value, field, limit=limit)
    bad = _TOKEN_FORBIDDEN.search(text)
    if bad is not None:
        raise InvalidMessage(
            f"holds a forbidden control character ({describe_char(bad.group())})", field
        )
    return text
