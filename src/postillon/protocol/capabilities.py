"""What the server said it can do: the EHLO keyword table (RFC 5321 4.1.1.1).

The table is read defensively (security.md R14): malformed keywords are skipped, the first
of duplicate keywords wins, at most :data:`MAX_KEYWORDS` keywords and
:data:`MAX_AUTH_MECHANISMS` AUTH mechanisms are kept, and an absurd SIZE counts as no limit.

Example::

    caps = Capabilities.from_ehlo(Reply(250, ("mx.example.com hi", "PIPELINING", "SIZE 1000")))
    assert caps.pipelining and caps.size == 1000 and not caps.starttls
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from .reply import Reply

__all__ = ["MAX_AUTH_MECHANISMS", "MAX_KEYWORDS", "MAX_SIZE", "Capabilities"]

#: EHLO keywords kept; the rest is ignored
MAX_KEYWORDS = 200
#: AUTH mechanisms kept
MAX_AUTH_MECHANISMS = 64
#: a SIZE above this (1 TiB) is not a real limit: treated as absent
MAX_SIZE = 1 << 40

# RFC 5321 4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*", re.ASCII)
# RFC 4422 3.1: a mechanism name is 1 to 20 of upper-case letters, digits, "-" and "_"
_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}", re.ASCII)
_SIZE = re.compile(r"[0-9]{1,20}", re.ASCII)


@dataclass(frozen=True)
class Capabilities:
    """The server's EHLO (or HELO) answer, as a read-only keyword table.

    ``keywords`` maps each UPPERCASE keyword to its parameters, whitespace-normalised
    ("" when it has none). The AUTH entry holds the mechanisms of every AUTH line,
    including the pre-standard ``AUTH=LOGIN PLAIN`` form.

    Example::

        >>> caps = Capabilities.from_ehlo(Reply(250, ("mx", "AUTH PLAIN login", "8BITMIME")))
        >>> caps.auth, caps.eightbitmime, caps.has("auth")
        (('PLAIN', 'LOGIN'), True, True)
    """

    esmtp: bool
    domain: str
    keywords: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A read-only view: the table cannot change once parsed.
        object.__setattr__(self, "keywords", types.MappingProxyType(dict(self.keywords)))

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        """Parse a positive EHLO reply (RFC 5321 4.1.1.1)."""
        _check_reply(reply, "EHLO")
        keywords: dict[str, str] = {}
        mechanisms: dict[str, None] = {}  # ordered set
        for line in reply.lines[1:]:
            parts = line.split(None, 1)
            if not parts:
                continue
            word, rest = parts[0], parts[1] if len(parts) > 1 else ""
            if not word.isascii():
                continue  # str.upper() maps some non-ASCII letters to ASCII ones
            params = " ".join(rest.split())
            upper = word.upper()
            if upper.startswith("AUTH="):
                # Pre-standard servers (old Outlook/Exchange) announce "AUTH=LOGIN PLAIN".
                _add_mechanisms(mechanisms, (upper[5:] + " " + params).split())
                continue
            if not _KEYWORD.fullmatch(word):
                continue
            if upper == "AUTH":
                _add_mechanisms(mechanisms, params.split())
                params = ""  # filled in below from the merged mechanisms
            if upper in keywords or len(keywords) >= MAX_KEYWORDS:
                continue
            keywords[upper] = params
        if mechanisms:
            if "AUTH" not in keywords and len(keywords) < MAX_KEYWORDS:
                keywords["AUTH"] = ""
            if "AUTH" in keywords:
                keywords["AUTH"] = " ".join(mechanisms)
        return cls(True, _first_word(reply), keywords)

    @classmethod
    def from_helo(cls, reply: Reply) -> Capabilities:
        """The answer to a HELO fallback: plain SMTP, no extensions."""
        _check_reply(reply, "HELO")
        return cls(False, _first_word(reply), {})

    def has(self, keyword: str) -> bool:
        """Whether the server announced ``keyword`` (case-insensitive)."""
        return keyword.upper() in self.keywords

    @property
    def pipelining(self) -> bool:
        """RFC 2920 PIPELINING."""
        return "PIPELINING" in self.keywords

    @property
    def chunking(self) -> bool:
        """RFC 3030 CHUNKING (the BDAT command)."""
        return "CHUNKING" in self.keywords

    @property
    def binarymime(self) -> bool:
        """RFC 3030 BINARYMIME."""
        return "BINARYMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        """RFC 6531 SMTPUTF8."""
        return "SMTPUTF8" in self.keywords

    @property
    def eightbitmime(self) -> bool:
        """RFC 6152 8BITMIME."""
        return "8BITMIME" in self.keywords

    @property
    def dsn(self) -> bool:
        """RFC 3461 DSN."""
        return "DSN" in self.keywords

    @property
    def starttls(self) -> bool:
        """RFC 3207 STARTTLS."""
        return "STARTTLS" in self.keywords

    @property
    def enhancedstatuscodes(self) -> bool:
        """RFC 2034 ENHANCEDSTATUSCODES."""
        return "ENHANCEDSTATUSCODES" in self.keywords

    @property
    def requiretls(self) -> bool:
        """RFC 8689 REQUIRETLS."""
        return "REQUIRETLS" in self.keywords

    @property
    def size(self) -> int | None:
        """The SIZE limit in octets (RFC 1870 4), or None when there is no usable one.

        Absent, "SIZE" with no number, 0 (RFC 1870: no fixed maximum), anything that
        is not a plain decimal, and values above :data:`MAX_SIZE` all give None.
        """
        params = self.keywords.get("SIZE")
        if not params:
            return None
        first = params.split()[0]
        if not _SIZE.fullmatch(first):
            return None
        value = int(first)
        if value == 0 or value > MAX_SIZE:
            return None
        return value

    @property
    def auth(self) -> tuple[str, ...]:
        """The SASL mechanisms offered, upper-case, deduplicated, in the server's order."""
        return tuple(self.keywords.get("AUTH", "").split())


def _check_reply(reply: Reply, command: str) -> None:
    if not isinstance(reply, Reply):
        raise ValueError(f"reply: must be a Reply, not {type(reply).__name__}")
    if not reply.is_positive:
        # aiosmtplib 5.1.2 lesson: a table is only read from a success reply.
        raise ValueError(f"reply: {command} capabilities need a 2xx reply, not {reply.code}")


def _first_word(reply: Reply) -> str:
    words = reply.lines[0].split(None, 1) if reply.lines else []
    return words[0] if words else ""


def _add_mechanisms(mechanisms: dict[str, None], names: list[str]) -> None:
    for name in names:
        if len(mechanisms) >= MAX_AUTH_MECHANISMS:
            return
        upper = name.upper()
        if name.isascii() and _MECHANISM.fullmatch(upper):
            mechanisms.setdefault(upper, None)
