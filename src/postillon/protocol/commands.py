"""SMTP command lines (RFC 5321 4.1). Every command byte that reaches the socket comes from here.

Each builder checks every argument before it returns anything: no control character
(the whole C0 range, DEL, U+0085, U+2028, U+2029) can reach the wire, addresses must be
RFC 5321 Mailboxes, parameters must be well-formed ``esmtp-param`` tokens, and a line may
not exceed 512 octets (2048 with parameters). Bad input raises
:class:`~postillon.errors.InvalidMessage` naming the field (security.md 1.2, 3.6 rows 5, 6,
9, 20, 23, 36, 37).

Example::

    >>> mail_from("a@example.com", [esmtp_param("SIZE", "1200"), "BODY=8BITMIME"])
    b'MAIL FROM:<a@example.com> SIZE=1200 BODY=8BITMIME\\r\\n'
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Sequence

from ..errors import InvalidMessage
from .reply import printable

__all__ = [
    "DATA",
    "MAX_COMMAND_LINE",
    "MAX_COMMAND_LINE_WITH_PARAMS",
    "NOOP",
    "QUIT",
    "RSET",
    "SASL_CANCEL",
    "STARTTLS",
    "auth",
    "auth_fits",
    "auth_response",
    "bdat",
    "check_ehlo_name",
    "check_no_controls",
    "ehlo",
    "esmtp_param",
    "helo",
    "mail_from",
    "mailbox",
    "rcpt_to",
    "xtext",
]

#: RFC 5321 4.5.3.1.4: a command line, CRLF included
MAX_COMMAND_LINE = 512
#: MAIL/RCPT with ESMTP parameters: each extension may add to the line (RFC 5321 4.5.3.1.4);
#: 2048 leaves room for SIZE, BODY, SMTPUTF8, RET, ENVID, NOTIFY, ORCPT and REQUIRETLS
MAX_COMMAND_LINE_WITH_PARAMS = 2048

DATA = b"DATA\r\n"
RSET = b"RSET\r\n"
NOOP = b"NOOP\r\n"
QUIT = b"QUIT\r\n"
STARTTLS = b"STARTTLS\r\n"
#: RFC 4954 4: the client cancels an AUTH exchange with a single "*"
SASL_CANCEL = b"*\r\n"

_CONTROLS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# RFC 5321 4.1.2: atext of a Dot-string (ASCII part)
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*", re.ASCII)
# RFC 5321 4.1.2: esmtp-value = 1*(%d33-60 / %d62-126)
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")
_ESMTP_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?")
_MECHANISM = re.compile(r"[A-Za-z0-9_-]{1,20}", re.ASCII)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
# Non-ASCII characters refused even with SMTPUTF8: controls, surrogates, spaces,
# separators and format characters such as the bidi overrides (ZWNJ/ZWJ stay: IDNA
# allows them in context).
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")


def check_no_controls(value: str, field: str) -> None:
    """Refuse ``value`` if it holds a control character (C0, DEL, U+0085, U+2028, U+2029).

    The whole C0 range is refused, not only CR and LF (aiosmtplib policy,
    security.md 1.2): NUL, TAB, ESC and friends have no business in a command.

    Example::

        >>> check_no_controls("a@b>\\r\\nRCPT TO:<x@evil>", "mail_from")
        Traceback (most recent call last):
        postillon.errors.InvalidMessage: mail_from: control character \\x0d at offset 4
    """
    if not isinstance(value, str):
        raise InvalidMessage(f"must be a str, not {type(value).__name__}", field)
    match = _CONTROLS.search(value)
    if match is not None:
        # Say where and what, never the value itself (it may be a secret).
        raise InvalidMessage(
            f"control character {printable(match.group())} at offset {match.start()}", field
        )


def _utf8(value: str, field: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage("holds a lone surrogate (not valid Unicode text)", field) from None


def _check_unicode(text: str, field: str, what: str) -> None:
    for ch in text:
        if ord(ch) > 0x7F and ch not in _JOINERS and unicodedata.category(ch) in _BAD_CATEGORIES:
            raise InvalidMessage(f"{what} holds the character U+{ord(ch):04X}", field)


def mailbox(address: str, *, field: str, smtputf8: bool, allow_null: bool = False) -> str:
    """Validate an RFC 5321 Mailbox and return it unchanged.

    ``Local-part "@" (Domain / address-literal)``: the local part a Dot-string or a
    Quoted-string (RFC 5321 4.1.2), the domain dot-separated LDH labels, ``[IPv4]`` or
    ``[IPv6:...]``. Non-ASCII is accepted only with ``smtputf8`` (RFC 6531 3.3). Sizes per
    RFC 5321 4.5.3.1: local part 64 octets, domain 255, path 256. The null path "" only
    with ``allow_null``. A quoted local part stays one token: ``"a@x> NOTIFY=NEVER"@y``
    is a valid address at y and is never split (security.md 1.2).

    Example::

        >>> mailbox('"john doe"@example.com', field="to", smtputf8=False)
        '"john doe"@example.com'
    """
    check_no_controls(address, field)
    if address == "":
        if allow_null:
            return address
        raise InvalidMessage("empty address", field)
    encoded = _utf8(address, field)
    if not smtputf8 and not address.isascii():
        raise InvalidMessage("non-ASCII address needs a server with SMTPUTF8 (RFC 6531)", field)
    if address.startswith('"'):
        at = _quoted_end(address, field, smtputf8) + 1
        if at >= len(address) or address[at] != "@":
            raise InvalidMessage("a quoted local part must be followed by '@'", field)
    else:
        at = address.find("@")
        if at < 0:
            raise InvalidMessage("address has no '@'", field)
        _check_dot_string(address[:at], field, smtputf8)
    local, domain = address[:at], address[at + 1 :]
    if len(local.encode("utf-8")) > 64:
        raise InvalidMessage("local part longer than 64 octets (RFC 5321 4.5.3.1.1)", field)
    _check_domain(domain, field, smtputf8)
    # RFC 5321 4.5.3.1.3: the path "<" mailbox ">" is at most 256 octets.
    if len(encoded) + 2 > 256:
        raise InvalidMessage("address longer than 254 octets (RFC 5321 4.5.3.1.3)", field)
    return address


def _quoted_end(address: str, field: str, smtputf8: bool) -> int:
    """Index of the closing quote of the Quoted-string that starts ``address``."""
    i = 1
    n = len(address)
    while i < n:
        ch = address[i]
        if ch == '"':
            return i
        if ch == "\\":
            # RFC 5321 4.1.2: quoted-pairSMTP = "\" followed by %d32-126
            if i + 1 >= n or not 32 <= ord(address[i + 1]) <= 126:
                raise InvalidMessage("bad backslash escape in the quoted local part", field)
            i += 2
            continue
        # qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 with SMTPUTF8 (RFC 6531)
        if ord(ch) > 126:
            _check_unicode(ch, field, "quoted local part")
        i += 1
    raise InvalidMessage("unterminated quoted local part", field)


def _check_dot_string(local: str, field: str, smtputf8: bool) -> None:
    # RFC 5321 4.1.2: Dot-string = Atom *("."  Atom); Atom = 1*atext
    if not local:
        raise InvalidMessage("empty local part", field)
    for atom in local.split("."):
        if not atom:
            raise InvalidMessage("local part has an empty atom (leading, trailing or '..')", field)
        for ch in atom:
            if ch not in _ATEXT and (ord(ch) < 0x80 or not smtputf8):
                raise InvalidMessage(
                    f"character {printable(repr(ch))} not allowed in an unquoted local part",
                    field,
                )
    _check_unicode(local, field, "local part")


def _check_domain(domain: str, field: str, smtputf8: bool) -> None:
    if not domain:
        raise InvalidMessage("empty domain", field)
    if domain.startswith("["):
        _check_address_literal(domain, field)
        return
    if len(domain.encode("utf-8")) > 255:
        raise InvalidMessage("domain longer than 255 octets (RFC 5321 4.5.3.1.2)", field)
    for label in domain.split("."):
        if label.isascii():
            if not _LDH_LABEL.fullmatch(label):
                raise InvalidMessage(f"bad domain label {printable(repr(label), 80)}", field)
        else:
            # RFC 6531 3.3: sub-domain =/ U-label. The message layer has already applied
            # IDNA; here we only keep out what can never be part of a host name.
            if not smtputf8:  # pragma: no cover - mailbox() refuses non-ASCII first
                raise InvalidMessage("non-ASCII domain needs SMTPUTF8", field)
            if label.startswith("-") or label.endswith("-") or len(label.encode()) > 63:
                raise InvalidMessage(f"bad domain label {printable(repr(label), 80)}", field)
            for ch in label:
                if ch.isascii() and not (ch.isalnum() or ch == "-"):
                    raise InvalidMessage(f"bad domain label {printable(repr(label), 80)}", field)
            _check_unicode(label, field, "domain")


def _check_address_literal(literal: str, field: str) -> None:
    """RFC 5321 4.1.3: "[" IPv4 "]" or "[IPv6:" IPv6 "]"."""
    if not literal.endswith("]") or len(literal) < 3:
        raise InvalidMessage("unterminated address literal", field)
    inner = literal[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            text = inner[5:]
            if "%" in text:  # a zone id means nothing to another host
                raise ValueError(text)
            ipaddress.IPv6Address(text)
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        raise InvalidMessage(f"bad address literal {printable(repr(literal), 80)}", field) from None


def xtext(value: str, *, field: str = "xtext") -> str:
    """Encode ``value`` as RFC 3461 4 xtext (for ENVID and ORCPT).

    Octets outside 33..126, "+" and "=" become "+HH"; non-ASCII text is encoded octet by
    octet from UTF-8. Control characters are refused first, not encoded.

    Example::

        >>> xtext("a b+c=d")
        'a+20b+2Bc+3Dd'
    """
    check_no_controls(value, field)
    out = []
    for octet in _utf8(value, field):
        if 33 <= octet <= 126 and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def esmtp_param(keyword: str, value: str | None = None) -> str:
    """One MAIL/RCPT parameter: ``KEY`` or ``KEY=value`` (RFC 5321 4.1.2 esmtp-param).

    Example::

        >>> esmtp_param("NOTIFY", "SUCCESS,FAILURE")
        'NOTIFY=SUCCESS,FAILURE'
    """
    check_no_controls(keyword, "params")
    if not _ESMTP_KEYWORD.fullmatch(keyword):
        raise InvalidMessage(f"bad ESMTP keyword {printable(repr(keyword), 80)}", "params")
    if value is None:
        return keyword
    check_no_controls(value, "params")
    if not _ESMTP_VALUE.fullmatch(value):
        raise InvalidMessage(
            f"bad value for {keyword}: only printable ASCII except '=' and space", "params"
        )
    return f"{keyword}={value}"


def check_ehlo_name(name: str) -> str:
    """Validate the name we give in EHLO/HELO: a domain or an address literal.

    Example::

        >>> check_ehlo_name("[192.0.2.1]")
        '[192.0.2.1]'
    """
    field = "local_hostname"
    check_no_controls(name, field)
    if not name:
        raise InvalidMessage("empty host name", field)
    if not name.isascii():
        raise InvalidMessage("host name must be ASCII (use its A-label)", field)
    if name.startswith("["):
        _check_address_literal(name, field)
        return name
    if len(name) > 255:
        raise InvalidMessage("host name longer than 255 octets", field)
    for label in name.split("."):
        if not _LDH_LABEL.fullmatch(label):
            raise InvalidMessage(
                f"not a domain name or address literal: {printable(repr(name), 80)}", field
            )
    return name


def _line(text: str, field: str, limit: int = MAX_COMMAND_LINE) -> bytes:
    line = _utf8(text, field) + b"\r\n"
    if len(line) > limit:
        raise InvalidMessage(
            f"command line of {len(line)} octets exceeds {limit} (RFC 5321 4.5.3.1.4)", field
        )
    return line


def ehlo(name: str) -> bytes:
    """``EHLO name`` (RFC 5321 4.1.1.1).

    Example::

        >>> ehlo("client.example.com")
        b'EHLO client.example.com\\r\\n'
    """
    return _line("EHLO " + check_ehlo_name(name), "local_hostname")


def helo(name: str) -> bytes:
    """``HELO name``, the fallback for servers that refuse EHLO (RFC 5321 4.1.1.1)."""
    return _line("HELO " + check_ehlo_name(name), "local_hostname")


def _params(params: Sequence[str], field: str) -> str:
    if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
        raise InvalidMessage("params must be a sequence of strings", field)
    out = []
    for param in params:
        check_no_controls(param, field)
        # A space or "=" in the wrong place would smuggle another parameter.
        if not _ESMTP_PARAM.fullmatch(param):
            raise InvalidMessage(f"bad ESMTP parameter {printable(repr(param), 80)}", field)
        out.append(" " + param)
    return "".join(out)


def _path_command(verb: str, address: str, params: Sequence[str], field: str) -> bytes:
    extra = _params(params, field)
    limit = MAX_COMMAND_LINE_WITH_PARAMS if extra else MAX_COMMAND_LINE
    return _line(f"{verb}:<{address}>{extra}", field, limit)


def mail_from(address: str, params: Sequence[str] = (), *, smtputf8: bool = False) -> bytes:
    """``MAIL FROM:<address> [params]`` (RFC 5321 4.1.1.2); "" gives the null path.

    Example::

        >>> mail_from("", ["RET=HDRS"])
        b'MAIL FROM:<> RET=HDRS\\r\\n'
    """
    mailbox(address, field="mail_from", smtputf8=smtputf8, allow_null=True)
    return _path_command("MAIL FROM", address, params, "mail_from")


def rcpt_to(address: str, params: Sequence[str] = (), *, smtputf8: bool = False) -> bytes:
    """``RCPT TO:<address> [params]`` (RFC 5321 4.1.1.3); also ``<Postmaster>``.

    Example::

        >>> rcpt_to("b@example.com", ["NOTIFY=FAILURE", "ORCPT=rfc822;" + xtext("b@example.com")])
        b'RCPT TO:<b@example.com> NOTIFY=FAILURE ORCPT=rfc822;b@example.com\\r\\n'
    """
    check_no_controls(address, "rcpt_to")
    # RFC 5321 4.1.1.3: "<Postmaster>" without a domain is a valid forward-path.
    if address.lower() != "postmaster":
        mailbox(address, field="rcpt_to", smtputf8=smtputf8)
    return _path_command("RCPT TO", address, params, "rcpt_to")


def _mechanism(mechanism: str) -> str:
    check_no_controls(mechanism, "authentication_mode")
    if not _MECHANISM.fullmatch(mechanism):
        raise InvalidMessage(
            f"bad SASL mechanism name {printable(repr(mechanism), 40)}", "authentication_mode"
        )
    return mechanism.upper()


def _check_base64(text: str, field: str) -> None:
    check_no_controls(text, field)
    if text and not _BASE64.fullmatch(text):
        # Never echo the text: it carries credentials.
        raise InvalidMessage("SASL response is not base64 text", field)


def auth_fits(mechanism: str, initial: str | None) -> bool:
    """Whether ``AUTH mechanism initial`` fits the 512-octet command line.

    RFC 4954 4: when it does not, the client MUST NOT send the initial response on the
    AUTH line; it sends ``AUTH mechanism`` and answers the empty 334 challenge with it.
    """
    size = len("AUTH ") + len(mechanism) + 2
    if initial is not None:
        size += 1 + max(len(initial), 1)
    return size <= MAX_COMMAND_LINE


def auth(mechanism: str, initial: str | None = None) -> bytes:
    """``AUTH mechanism [initial-response]`` (RFC 4954 4).

    ``initial`` is already base64 text; "" is an empty initial response, sent as "=".
    A line over 512 octets is refused: check :func:`auth_fits` first.

    Example::

        >>> auth("PLAIN", "AHVzZXIAcGFzcw==")
        b'AUTH PLAIN AHVzZXIAcGFzcw==\\r\\n'
        >>> auth("LOGIN")
        b'AUTH LOGIN\\r\\n'
    """
    name = _mechanism(mechanism)
    if initial is None:
        return _line(f"AUTH {name}", "authentication_mode")
    _check_base64(initial, "initial_response")
    # RFC 4954 4: an empty initial response is sent as a single "=".
    return _line(f"AUTH {name} {initial or '='}", "initial_response")


def auth_response(encoded: str) -> bytes:
    """One client line in answer to a 334 challenge: base64 text (maybe empty) + CRLF.

    RFC 4954 4 puts no line limit on these (the mechanism decides the size).

    Example::

        >>> auth_response("dXNlcg==")
        b'dXNlcg==\\r\\n'
    """
    _check_base64(encoded, "sasl_response")
    return encoded.encode("ascii") + b"\r\n"


def bdat(size: int, last: bool = False) -> bytes:
    """``BDAT size [LAST]`` (RFC 3030 2); the payload follows the line immediately.

    Example::

        >>> bdat(0, last=True)
        b'BDAT 0 LAST\\r\\n'
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size: must be an int >= 0, not {size!r}")
    return b"BDAT %d LAST\r\n" % size if last else b"BDAT %d\r\n" % size
