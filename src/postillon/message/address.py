"""Addresses: one parser, one canonical value, header and envelope derived from it.

Every address form of the API (``"a@example.com"``, ``"Ann <a@example.com>"``, lists
separated by commas or semicolons, :class:`Address`, ``{"name", "email"}`` dicts, and
lists of any of them) goes through :func:`parse_addresses` exactly once. The result is
an :class:`Address` whose header form and envelope form both come from the same parsed
local part and the same IDNA-mapped domain, so the header and the envelope never
disagree (security.md 1.4: no parser differential).

The parser is a single left-to-right scan: linear time, no recursion, and a length cap
before anything else (security.md 1.5). It is deliberately stricter than RFC 5322:
groups, source routes, comments inside an addr-spec and encoded words in a local part
are refused with an :class:`~postillon.errors.InvalidMessage` naming the field
(``"to[2]"``).

Example::

    >>> [a.email for a in parse_addresses("Ann <a@example.com>; b@example.org", "to")]
    ['a@example.com', 'b@example.org']
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import idna

from ..errors import InvalidMessage
from ._text import check_header_text

__all__ = ["Address", "AddressInput", "parse_address", "parse_addresses"]

#: longest address field accepted (a header block is capped at 100 KB anyway)
MAX_ADDRESS_FIELD = 100_000
#: RFC 5321 4.5.3.1.1 / 4.5.3.1.2: local part 64 octets, domain 255 octets
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
#: RFC 5321 4.5.3.1.3: reverse- or forward-path 256 octets, "<" and ">" included
MAX_ADDR_SPEC = 254
#: comment nesting is counted, never recursed; anything deeper is refused
MAX_COMMENT_DEPTH = 32

# RFC 5322 3.2.3 atext, plus every non-ASCII character (RFC 6532 3.2 extends atext).
_ATEXT_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_SPECIALS = frozenset('()<>[]:;@\\,."')
_WSP = frozenset(" \t")
_DOT_ATOM = re.compile(r"[^.\s()<>\[\]:;@\\,\"]+(?:\.[^.\s()<>\[\]:;@\\,\"]+)*\Z")
# RFC 2047 5: an encoded word may not appear in an addr-spec; refuse anything shaped
# like one so no reader decodes it into another address (CPython gh-152519).
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[^?]*\?.*\?=", re.DOTALL)
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")

# Token kinds of the scanner.
_ATOM, _QS, _COMMENT, _ANGLE, _AT, _SEP, _DOMLIT = range(7)


def _is_atext(ch: str) -> bool:
    return ch in _ATEXT_ASCII or ord(ch) > 127


@dataclass(frozen=True)
class Address:
    """One mailbox: a display name and an email address, parsed once.

    ``name`` and ``email`` are kept as given (Unicode). The derived fields hold what
    the header and the envelope need: the local part without quoting, the domain as
    given, its IDNA A-label (``ascii_domain``) and its UTS-46 mapped U-label
    (``unicode_domain``).

    Example::

        >>> a = Address("Jörg", "jorg@bücher.example")
        >>> a.ascii_domain
        'xn--bcher-kva.example'
        >>> a.addr_spec()
        'jorg@xn--bcher-kva.example'
    """

    name: str = ""
    email: str = ""
    local_part: str = field(init=False, repr=False, compare=False)
    domain: str = field(init=False, repr=False, compare=False)
    ascii_domain: str = field(init=False, repr=False, compare=False)
    unicode_domain: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = "" if self.name is None else self.name
        check_header_text(name, "name", limit=4096)
        if not isinstance(self.email, str):
            raise InvalidMessage(f"must be a str, not {type(self.email).__name__}", "email")
        email = self.email.strip()
        check_header_text(email, "email", limit=MAX_LOCAL_PART * 4 + MAX_DOMAIN * 4 + 8)
        if not email:
            raise InvalidMessage("is empty", "email")
        local, domain = _parse_addr_spec(email, "email")
        object.__setattr__(self, "name", name.strip())
        object.__setattr__(self, "email", email)
        object.__setattr__(self, "local_part", local)
        object.__setattr__(self, "domain", domain)
        ascii_domain, unicode_domain = _map_domain(domain, "email")
        object.__setattr__(self, "ascii_domain", ascii_domain)
        object.__setattr__(self, "unicode_domain", unicode_domain)

    @classmethod
    def parse(cls, text: str, field: str = "address") -> Address:
        """Parse exactly one mailbox (``"Ann <a@example.com>"`` or ``"a@example.com"``)."""
        return parse_address(text, field)

    @property
    def needs_smtputf8(self) -> bool:
        """True when the local part is not ASCII: only SMTPUTF8 (RFC 6531) can carry it."""
        return not self.local_part.isascii()

    def quoted_local_part(self) -> str:
        """The local part as RFC 5321 4.1.2 writes it: a Dot-string, else a Quoted-string."""
        return _quote_local(self.local_part)

    def addr_spec(self, smtputf8: bool = False) -> str:
        """The RFC 5321 Mailbox text (``local@domain``) used by the envelope and headers.

        Without ``smtputf8`` the domain is the A-label and a non-ASCII local part is an
        :class:`InvalidMessage`; with it the domain is the UTS-46 mapped U-label.
        """
        if smtputf8:
            return f"{self.quoted_local_part()}@{self.unicode_domain}"
        if self.needs_smtputf8:
            raise InvalidMessage(
                "has a non-ASCII local part, which needs a server offering SMTPUTF8",
                "email",
            )
        return f"{self.quoted_local_part()}@{self.ascii_domain}"

    def dedup_key(self) -> tuple[str, str]:
        """Identity for deduplication: local part as is, domain case-insensitive."""
        return (self.local_part, self.ascii_domain.lower())

    def to_dict(self) -> dict[str, str]:
        """``{"name": ..., "email": ...}`` (4D / JMAP EmailAddress)."""
        return {"name": self.name, "email": self.email}

    def __str__(self) -> str:
        if not self.name:
            return self.email
        return f"{_display_phrase(self.name)} <{self.email}>"


#: everything an address field accepts
AddressInput = str | Address | Mapping[str, Any] | Iterable[Any] | None


def _display_phrase(name: str) -> str:
    if all(_is_atext(c) or c in " " for c in name) and name.strip() == name:
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _quote_local(local: str) -> str:
    if _DOT_ATOM.match(local):
        return local
    # RFC 5321 4.1.2: quoted-pairSMTP for backslash and double quote only
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _map_domain(domain: str, field: str) -> tuple[str, str]:
    """(A-label form, U-label form) of a domain, with one UTS-46 mapping for both."""
    if domain.startswith("["):
        return domain, domain
    if domain.isascii():
        labels = domain.split(".")
        for label in labels:
            if not _LDH_LABEL.match(label):
                raise InvalidMessage(f"invalid domain label {label!r}", field)
        if not any(label[:4].lower() == "xn--" for label in labels):
            return domain, domain
    try:
        # RFC 5890 / UTS-46 (non-transitional: "ß" stays "ß"): the same A-label for the
        # header and the envelope (security.md 1.4, GHSA-r7q5-h7cx-p54x)
        ascii_domain = idna.encode(domain, uts46=True, transitional=False).decode("ascii")
        unicode_domain = idna.decode(ascii_domain)
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise InvalidMessage(f"invalid internationalised domain ({exc})", field) from None
    if len(ascii_domain) > MAX_DOMAIN:
        raise InvalidMessage(f"domain longer than {MAX_DOMAIN} octets", field)
    return ascii_domain, unicode_domain


def _check_domain_literal(text: str, field: str) -> None:
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        raise InvalidMessage(f"invalid address literal {text!r}", field) from None


class _Token:
    __slots__ = ("kind", "text")

    def __init__(self, kind: int, text: str) -> None:
        self.kind = kind
        self.text = text


def _scan(text: str, field: str, *, in_angle: bool = False) -> list[_Token]:
    """Split an address string into tokens in one linear pass (no recursion)."""
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in _WSP:
            i += 1
        elif c == '"':
            j = i + 1
            buf: list[str] = []
            while j < n:
                ch = text[j]
                if ch == "\\":
                    if j + 1 >= n:
                        break
                    buf.append(text[j + 1])
                    j += 2
                    continue
                if ch == '"':
                    break
                buf.append(ch)
                j += 1
            if j >= n:
                raise InvalidMessage("unterminated quoted string", field)
            tokens.append(_Token(_QS, "".join(buf)))
            i = j + 1
        elif c == "(":
            depth = 0
            j = i
            start = i + 1
            while j < n:
                ch = text[j]
                if ch == "\\":
                    j += 2
                    continue
                if ch == "(":
                    depth += 1
                    if depth > MAX_COMMENT_DEPTH:
                        raise InvalidMessage("comments nested too deeply", field)
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= n:
                raise InvalidMessage("unterminated comment", field)
            tokens.append(_Token(_COMMENT, text[start:j]))
            i = j + 1
        elif c == "<":
            if in_angle:
                raise InvalidMessage("unexpected '<'", field)
            j = i + 1
            quoted = False
            while j < n:
                ch = text[j]
                if quoted and ch == "\\":
                    j += 2
                    continue
                if ch == '"':
                    quoted = not quoted
                elif not quoted and ch == "<":
                    raise InvalidMessage("unexpected '<' inside an angle address", field)
                elif not quoted and ch == ">":
                    break
                j += 1
            if j >= n:
                raise InvalidMessage("unterminated angle address '<...'", field)
            tokens.append(_Token(_ANGLE, text[i + 1 : j]))
            i = j + 1
        elif c == "[":
            j = text.find("]", i + 1)
            if j < 0 or "[" in text[i + 1 : j]:
                raise InvalidMessage("unterminated domain literal '[...'", field)
            tokens.append(_Token(_DOMLIT, text[i : j + 1]))
            i = j + 1
        elif c in ",;":
            if in_angle:
                raise InvalidMessage(f"unexpected {c!r} inside an angle address", field)
            tokens.append(_Token(_SEP, c))
            i += 1
        elif c == "@":
            tokens.append(_Token(_AT, c))
            i += 1
        elif c == ":":
            # RFC 5322 3.4 groups and RFC 5321 source routes: refused outright, which also
            # makes 10,000-deep "a:a:a:..." nesting a constant-time rejection
            raise InvalidMessage("groups and source routes (':') are not supported", field)
        elif c in _SPECIALS and c != ".":
            raise InvalidMessage(f"unexpected {c!r}", field)
        else:
            j = i
            while j < n and (_is_atext(text[j]) or text[j] == "."):
                j += 1
            if j == i:
                raise InvalidMessage(f"unexpected character {text[i]!r}", field)
            tokens.append(_Token(_ATOM, text[i:j]))
            i = j
    return tokens


def _local_from_token(tok: _Token, field: str) -> str:
    if tok.kind == _QS:
        local = tok.text
    elif tok.kind == _ATOM:
        local = tok.text
        if not _DOT_ATOM.match(local):
            raise InvalidMessage(f"invalid local part {local!r}", field)
    else:
        raise InvalidMessage("missing local part before '@'", field)
    if not local:
        raise InvalidMessage("empty local part", field)
    if _ENCODED_WORD.search(local):
        raise InvalidMessage("an encoded word may not appear in a local part (RFC 2047 5)", field)
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise InvalidMessage(f"local part longer than {MAX_LOCAL_PART} octets", field)
    return local


def _domain_from_token(tok: _Token, field: str) -> str:
    if tok.kind == _DOMLIT:
        _check_domain_literal(tok.text, field)
        return tok.text
    if tok.kind != _ATOM or not _DOT_ATOM.match(tok.text):
        raise InvalidMessage("invalid domain after '@'", field)
    if len(tok.text.encode("utf-8")) > MAX_DOMAIN:
        raise InvalidMessage(f"domain longer than {MAX_DOMAIN} octets", field)
    return tok.text


def _spec_from_tokens(tokens: list[_Token], field: str) -> tuple[str, str]:
    if len(tokens) != 3 or tokens[1].kind != _AT:
        if sum(1 for t in tokens if t.kind == _AT) > 1:
            raise InvalidMessage("more than one '@' in an address", field)
        if not any(t.kind == _AT for t in tokens):
            raise InvalidMessage("not an email address (no '@')", field)
        raise InvalidMessage("malformed address", field)
    local, domain = _local_from_token(tokens[0], field), _domain_from_token(tokens[2], field)
    if len(local.encode("utf-8")) + 1 + len(domain.encode("utf-8")) > MAX_ADDR_SPEC:
        # RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets
        raise InvalidMessage(f"address longer than {MAX_ADDR_SPEC} octets", field)
    return local, domain


def _parse_addr_spec(text: str, field: str) -> tuple[str, str]:
    """``local@domain`` (no display name, no comment) -> (local part, domain)."""
    tokens = _scan(text, field, in_angle=True)
    if any(t.kind in (_COMMENT, _ANGLE, _SEP) for t in tokens):
        raise InvalidMessage("comments are not allowed inside an address", field)
    return _spec_from_tokens(tokens, field)


def _item_to_address(tokens: list[_Token], field: str) -> Address:
    angles = [k for k, t in enumerate(tokens) if t.kind == _ANGLE]
    if len(angles) > 1:
        raise InvalidMessage("more than one '<...>' in one address", field)
    if angles:
        k = angles[0]
        phrase = tokens[:k]
        if any(t.kind not in (_ATOM, _QS, _COMMENT) for t in phrase):
            raise InvalidMessage("unexpected '@' or '[' in the display name", field)
        if any(t.kind != _COMMENT for t in tokens[k + 1 :]):
            raise InvalidMessage("text after '<...>'", field)
        name = " ".join(t.text for t in phrase if t.kind != _COMMENT)
        return _make(name, tokens[k].text.strip(), field)
    # a bare addr-spec, optionally followed by a comment taken as the name (RFC 822 style)
    comments = []
    while tokens and tokens[-1].kind == _COMMENT:
        comments.append(tokens.pop().text)
    if any(t.kind == _COMMENT for t in tokens):
        # comment glue: user@good.com(x)evil.com (GHSA-cc9r-2j5m-2m83)
        raise InvalidMessage("comments are not allowed inside an address", field)
    local, domain = _spec_from_tokens(tokens, field)
    quoted = _quote_local(local) if tokens[0].kind == _QS else tokens[0].text
    name = " ".join(reversed(comments)).strip()
    return _make(name, f"{quoted}@{domain}", field)


def _make(name: str, email: str, field: str) -> Address:
    try:
        return Address(name, email)
    except InvalidMessage as exc:
        raise InvalidMessage(exc.message, field) from None


def _parse_string(text: str, field: str, start: int) -> list[Address]:
    check_header_text(text, field, limit=MAX_ADDRESS_FIELD)
    tokens = _scan(text, f"{field}[{start}]")
    out: list[Address] = []
    item: list[_Token] = []
    for tok in [*tokens, _Token(_SEP, "")]:
        if tok.kind != _SEP:
            item.append(tok)
            continue
        if item:
            out.append(_item_to_address(item, f"{field}[{start + len(out)}]"))
            item = []
    return out


def _parse_cached(text: str, field: str, start: int) -> tuple[Address, ...]:
    # Bulk senders give the same few address strings again and again; an Address is an
    # immutable value, so a parse is shared. Errors are never cached (they raise), and
    # long inputs stay out of the cache (it would hold them).
    if len(text) > 512:
        return tuple(_parse_string(text, field, start))
    return _parse_small(text, field, start)


@functools.lru_cache(maxsize=4096)
def _parse_small(text: str, field: str, start: int) -> tuple[Address, ...]:
    return tuple(_parse_string(text, field, start))


def parse_addresses(value: Any, field: str) -> tuple[Address, ...]:
    """Every accepted address form -> a flat tuple of :class:`Address`.

    ``field`` names the input in errors; items are numbered across the whole list
    (``"to[2]"`` is the third address, whatever form the input had).

    Example::

        >>> parse_addresses(["a@x.org", {"name": "B", "email": "b@x.org"}], "cc")[1].name
        'B'
    """
    out: list[Address] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if item is None:
            continue
        here = f"{field}[{len(out)}]"
        if isinstance(item, Address):
            out.append(item)
        elif isinstance(item, str):
            out.extend(_parse_cached(item, field, len(out)))
        elif isinstance(item, Mapping):
            email = item.get("email", item.get("address"))
            if email is None:
                raise InvalidMessage("an address dict needs an 'email' key", here)
            name = item.get("name") or ""
            if not isinstance(name, str) or not isinstance(email, str):
                raise InvalidMessage("'name' and 'email' must be str", here)
            try:
                out.append(Address(name, email))
            except InvalidMessage as exc:
                raise InvalidMessage(exc.message, here) from None
        elif isinstance(item, list | tuple):
            if len(item) > MAX_ADDRESS_FIELD:
                raise InvalidMessage("too many addresses", field)
            # nested lists are flattened in order (a stack, not recursion)
            stack.extend(reversed(item))
        else:
            raise InvalidMessage(
                f"expected an address, a str, a dict or a list, not {type(item).__name__}",
                here,
            )
        if len(out) > MAX_ADDRESS_FIELD // 3:
            raise InvalidMessage("too many addresses", field)
    return tuple(out)


def parse_address(value: Any, field: str) -> Address:
    """Exactly one mailbox (``sender``, a RawMessage's ``from_``)."""
    found = parse_addresses(value, field)
    if len(found) != 1:
        raise InvalidMessage(f"expected one address, got {len(found)}", field)
    return found[0]


def decode_received(text: str, field: str) -> tuple[Address, ...]:
    """Addresses of a received header, display names decoded per RFC 2047 6.2.

    Whitespace between adjacent encoded words is dropped (the stdlib's phrase parser
    keeps it, which splits names our writer had to spread over several words). Raises
    :class:`InvalidMessage` for what this strict parser refuses (groups included), so a
    caller can fall back to a lenient parser.
    """
    from email.header import decode_header, make_header

    check_header_text(text, field, limit=MAX_ADDRESS_FIELD)
    out: list[Address] = []
    item: list[_Token] = []
    for tok in [*_scan(text, field), _Token(_SEP, "")]:
        if tok.kind != _SEP:
            item.append(tok)
            continue
        if not item:
            continue
        angles = [k for k, t in enumerate(item) if t.kind == _ANGLE]
        if len(angles) != 1:
            out.append(_item_to_address(item, f"{field}[{len(out)}]"))
            item = []
            continue
        pieces: list[str] = []
        atoms: list[str] = []
        for t in item[: angles[0]]:
            if t.kind == _ATOM:
                atoms.append(t.text)
                continue
            if atoms:
                pieces.append(str(make_header(decode_header(" ".join(atoms)))))
                atoms = []
            if t.kind == _QS:
                pieces.append(t.text)
        if atoms:
            pieces.append(str(make_header(decode_header(" ".join(atoms)))))
        name = " ".join(p for p in pieces if p)
        out.append(_make(name, item[angles[0]].text.strip(), f"{field}[{len(out)}]"))
        item = []
    return tuple(out)
