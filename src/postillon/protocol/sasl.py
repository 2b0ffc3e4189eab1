"""SASL mechanisms for SMTP AUTH (RFC 4954), each one a generator flow (httpx auth flows).

Protocol between a flow and the conversation that drives it:

1. ``next(flow)`` gives the initial response as raw bytes (the conversation base64-encodes
   it), or :data:`NO_INITIAL` for a mechanism that has none (``b""`` is a real, empty
   response, sent as "=").
2. For each 334 challenge, ``flow.send(decoded_challenge)`` gives the raw answer.
3. ``StopIteration`` on a challenge means the client has nothing more to say: the
   conversation cancels the exchange with "*" (RFC 4954 4).

Credentials are checked before anything is produced: a NUL in the user name, password or
token would move the field boundaries of PLAIN and friends (security.md 1.14), so it is an
:class:`~postillon.errors.InvalidMessage` naming the field. Nothing here logs, and no
error text carries a secret.

Example::

    >>> flow = plain("user", "pass")
    >>> next(flow)
    b'\\x00user\\x00pass'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from collections.abc import Callable, Generator, Sequence
from typing import Final

from ..errors import InvalidMessage, ProtocolError
from ..settings import AuthMode
from .reply import printable

__all__ = [
    "MAX_SCRAM_ITERATIONS",
    "NO_INITIAL",
    "PASSWORD_PREFERENCE",
    "SaslFlow",
    "choose_mechanism",
    "cram_md5",
    "flow_for",
    "login",
    "oauthbearer",
    "plain",
    "saslprep",
    "scram_sha_256",
    "xoauth2",
]

SaslFlow = Generator[bytes, bytes, None]


class _NoInitial(bytes):
    """Type of :data:`NO_INITIAL`: an empty bytes value that is not ``b""``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_INITIAL"


#: yielded first by a mechanism that sends no initial response; compare with ``is``
NO_INITIAL: Final[bytes] = _NoInitial()

#: strongest first, for a password (API.md "Authentication")
PASSWORD_PREFERENCE: Final = (
    AuthMode.SCRAM_SHA_256,
    AuthMode.CRAM_MD5,
    AuthMode.PLAIN,
    AuthMode.LOGIN,
)
_TOKEN_PREFERENCE: Final = (AuthMode.XOAUTH2, AuthMode.OAUTHBEARER)

#: a server asking for more PBKDF2 rounds than this is refused (CPU exhaustion)
MAX_SCRAM_ITERATIONS = 1_000_000

_C0 = re.compile("[\x00-\x1f\x7f]")


def _check_secret(value: object, field: str, *, controls: bool = False) -> str:
    """A str without NUL (or, with ``controls``, without any C0 control or DEL)."""
    if not isinstance(value, str):
        raise InvalidMessage(f"must be a str, not {type(value).__name__}", field)
    if "\x00" in value:
        raise InvalidMessage("must not contain a NUL character", field)
    if controls and _C0.search(value):
        raise InvalidMessage("must not contain control characters", field)
    return value


def _utf8(value: str, field: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage("holds a lone surrogate (not valid Unicode text)", field) from None


def plain(user: str, password: str, authzid: str = "") -> SaslFlow:
    """PLAIN (RFC 4616): ``authzid NUL user NUL password`` as the initial response.

    Example::

        >>> next(plain("tim", "tanstaaftanstaaf", authzid="admin"))
        b'admin\\x00tim\\x00tanstaaftanstaaf'
    """
    message = (
        _utf8(_check_secret(authzid, "authzid"), "authzid")
        + b"\x00"
        + _utf8(_check_secret(user, "user"), "user")
        + b"\x00"
        + _utf8(_check_secret(password, "password"), "password")
    )
    return _plain(message)


def _plain(message: bytes) -> SaslFlow:
    yield message
    # A challenge after the whole answer was given: nothing to add (the conversation
    # cancels). The empty 334 of a server that refuses initial responses is handled by
    # the conversation, which then sends the initial response.


def login(user: str, password: str) -> SaslFlow:
    """LOGIN (draft-murchison-sasl-login): no initial response, then user, then password.

    Example::

        >>> flow = login("tim", "secret")
        >>> next(flow) is NO_INITIAL, flow.send(b"Username:"), flow.send(b"Password:")
        (True, b'tim', b'secret')
    """
    user_b = _utf8(_check_secret(user, "user"), "user")
    password_b = _utf8(_check_secret(password, "password"), "password")
    return _login(user_b, password_b)


def _login(user: bytes, password: bytes) -> SaslFlow:
    # The prompts ("Username:", "Password:", or localised ones) are not standard: answer
    # in order, as every client does. A third challenge ends the flow.
    yield NO_INITIAL
    yield user
    yield password


def cram_md5(user: str, password: str) -> SaslFlow:
    """CRAM-MD5 (RFC 2195): ``user SP hex(HMAC-MD5(password, challenge))``.

    Example::

        >>> flow = cram_md5("tim", "tanstaaftanstaaf")
        >>> _ = next(flow)
        >>> flow.send(b"<1896.697170952@postoffice.reston.mci.net>")
        b'tim b913a602c7eda7a495b4e6e7334d3890'
    """
    user_b = _utf8(_check_secret(user, "user"), "user")
    key = _utf8(_check_secret(password, "password"), "password")
    return _cram_md5(user_b, key)


def _cram_md5(user: bytes, key: bytes) -> SaslFlow:
    challenge = yield NO_INITIAL
    if not challenge:
        raise ProtocolError("CRAM-MD5: the server sent an empty challenge")
    digest = hmac.new(key, challenge, hashlib.md5).hexdigest()
    yield user + b" " + digest.encode("ascii")


def xoauth2(user: str, token: str) -> SaslFlow:
    """XOAUTH2 (Google, Microsoft): ``user=U ^A auth=Bearer T ^A ^A``.

    On an error challenge (a base64 JSON status) the answer is empty, as Google
    documents, so that the server ends with 535 and its reason.

    Example::

        >>> next(xoauth2("me@example.com", "tok"))
        b'user=me@example.com\\x01auth=Bearer tok\\x01\\x01'
    """
    # ^A separates the fields: no control character at all in either value.
    user_b = _utf8(_check_secret(user, "user", controls=True), "user")
    token_b = _utf8(_check_secret(token, "access_token", controls=True), "access_token")
    return _xoauth2(b"user=" + user_b + b"\x01auth=Bearer " + token_b + b"\x01\x01")


def _xoauth2(message: bytes) -> SaslFlow:
    yield message
    yield b""


def _saslname(name: str) -> str:
    # RFC 5801 / RFC 5802 5.1: "=" and "," are escaped in a SASL name.
    return name.replace("=", "=3D").replace(",", "=2C")


def oauthbearer(user: str, token: str, host: str, port: int) -> SaslFlow:
    """OAUTHBEARER (RFC 7628 3.1), no channel binding.

    ``n,a=USER,^Ahost=HOST^Aport=PORT^Aauth=Bearer TOKEN^A^A``; an error challenge is
    answered with a single ^A (RFC 7628 3.2.3) so that the server ends the exchange.

    Example::

        >>> next(oauthbearer("user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
        ...                  "server.example.com", 143))
        b'n,a=user@example.com,\\x01host=server.example.com\\x01port=143\\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\\x01\\x01'
    """  # noqa: E501
    _check_secret(user, "user", controls=True)
    _check_secret(token, "access_token", controls=True)
    _check_secret(host, "host", controls=True)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidMessage(f"must be an int within 1..65535, not {port!r}", "port")
    gs2 = f"n,a={_saslname(user)}," if user else "n,,"
    message = (
        _utf8(gs2, "user")
        + b"\x01host="
        + _utf8(host, "host")
        + b"\x01port=%d\x01auth=Bearer " % port
        + _utf8(token, "access_token")
        + b"\x01\x01"
    )
    return _oauthbearer(message)


def _oauthbearer(message: bytes) -> SaslFlow:
    yield message
    # RFC 7628 3.2.3: the error challenge is answered with a lone %x01.
    yield b"\x01"


# RFC 4013 2: the tables SASLprep uses (all in the stdlib stringprep module).
_PROHIBITED: tuple[Callable[[str], bool], ...] = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(text: str, field: str) -> str:
    """SASLprep (RFC 4013) for a query: unassigned code points are allowed.

    Example::

        >>> saslprep("I\\u00adX", "password"), saslprep("\\u2168", "password")
        ('IX', 'IX')
    """
    # RFC 4013 2.1: non-ASCII spaces -> SPACE; "commonly mapped to nothing" -> removed
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # RFC 4013 2.2: Unicode normalisation form KC
    normal = unicodedata.normalize("NFKC", mapped)
    if not normal:
        return normal
    # RFC 4013 2.3: prohibited output
    for ch in normal:
        if any(table(ch) for table in _PROHIBITED):
            raise InvalidMessage(
                f"holds a character SASLprep (RFC 4013) forbids: U+{ord(ch):04X}", field
            )
    # RFC 4013 2.4 / RFC 3454 6: bidirectional text
    if any(stringprep.in_table_d1(ch) for ch in normal):
        if any(stringprep.in_table_d2(ch) for ch in normal):
            raise InvalidMessage("mixes right-to-left and left-to-right text", field)
        if not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1])):
            raise InvalidMessage("right-to-left text must start and end so", field)
    return normal


_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


def scram_sha_256(user: str, password: str, *, nonce: str | None = None) -> SaslFlow:
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding ("n,,").

    The password goes through SASLprep; the server's proof (``v=``) is verified, and a
    mismatch or a server error (``e=``) raises :class:`ProtocolError`. After a good
    ``v=`` the flow answers with an empty response (RFC 4954 4: server data in a 334).

    Example (RFC 7677 3)::

        >>> flow = scram_sha_256("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
        >>> next(flow)
        b'n,,n=user,r=rOprNGfwEbeRWgbNEkqO'
    """
    _check_secret(user, "user")
    _check_secret(password, "password")
    if nonce is None:
        nonce = secrets.token_urlsafe(24)
    elif not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise ValueError("nonce: must be printable ASCII without ','")
    name = _saslname(saslprep(user, "user"))
    secret = _utf8(saslprep(password, "password"), "password")
    return _scram(_utf8(name, "user"), secret, nonce.encode("ascii"))


def _attributes(message: bytes, what: str) -> dict[bytes, bytes]:
    """Parse ``a=value,b=value`` (RFC 5802 7); a server error ``e=`` raises."""
    attrs: dict[bytes, bytes] = {}
    for part in message.split(b","):
        key, eq, value = part.partition(b"=")
        if len(key) != 1 or not eq:
            raise ProtocolError(f"SCRAM: malformed {what}")
        attrs.setdefault(key, value)
    if b"e" in attrs:
        reason = attrs[b"e"].decode("utf-8", "replace")
        raise ProtocolError(f"SCRAM: the server refused: {printable(reason, 200)}")
    return attrs


def _scram(name: bytes, secret: bytes, cnonce: bytes) -> SaslFlow:
    client_first_bare = b"n=" + name + b",r=" + cnonce
    server_first = yield b"n,," + client_first_bare
    attrs = _attributes(server_first, "server-first-message")
    if b"m" in attrs:
        # RFC 5802 5.1: an unknown mandatory extension must make authentication fail.
        raise ProtocolError("SCRAM: the server requires an unsupported extension")
    snonce = attrs.get(b"r", b"")
    if not snonce.startswith(cnonce) or len(snonce) <= len(cnonce):
        raise ProtocolError("SCRAM: the server nonce does not extend ours")
    try:
        salt = base64.b64decode(attrs.get(b"s", b""), validate=True)
    except binascii.Error:
        raise ProtocolError("SCRAM: the salt is not base64") from None
    iterations_text = attrs.get(b"i", b"")
    if not salt or not iterations_text.isdigit() or len(iterations_text) > 10:
        raise ProtocolError("SCRAM: missing or malformed salt or iteration count")
    iterations = int(iterations_text)
    if not 1 <= iterations <= MAX_SCRAM_ITERATIONS:
        raise ProtocolError(f"SCRAM: refusing an iteration count of {iterations}")

    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    # "biws" is base64("n,,"): the GS2 header, no channel binding.
    without_proof = b"c=biws,r=" + snonce
    auth_message = client_first_bare + b"," + server_first + b"," + without_proof
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = hmac.new(server_key, auth_message, hashlib.sha256).digest()

    server_final = yield without_proof + b",p=" + base64.b64encode(proof)
    attrs = _attributes(server_final, "server-final-message")
    try:
        verifier = base64.b64decode(attrs.get(b"v", b""), validate=True)
    except binascii.Error:
        verifier = b""
    if not hmac.compare_digest(verifier, expected):
        # The server does not know the password: it is not the server we think it is.
        raise ProtocolError("SCRAM: the server signature does not match")
    yield b""


def flow_for(
    mode: AuthMode,
    *,
    user: str,
    password: str | None,
    token: str | None,
    host: str,
    port: int,
) -> SaslFlow:
    """The flow for ``mode`` with these credentials.

    A password mechanism without a password, or an OAuth one without a token, is an
    :class:`InvalidMessage` naming the missing field.

    Example::

        >>> flow = flow_for(AuthMode.PLAIN, user="u", password="p", token=None,
        ...                 host="smtp.example.com", port=587)
        >>> next(flow)
        b'\\x00u\\x00p'
    """
    if not isinstance(mode, AuthMode):
        raise ValueError(f"mode: must be an AuthMode, not {type(mode).__name__}")
    if mode in _TOKEN_PREFERENCE:
        if token is None:
            raise InvalidMessage(f"{mode.value} needs an access token", "access_token")
        if mode is AuthMode.XOAUTH2:
            return xoauth2(user, token)
        return oauthbearer(user, token, host, port)
    if password is None:
        raise InvalidMessage(f"{mode.value} needs a password", "password")
    if mode is AuthMode.PLAIN:
        return plain(user, password)
    if mode is AuthMode.LOGIN:
        return login(user, password)
    if mode is AuthMode.CRAM_MD5:
        return cram_md5(user, password)
    return scram_sha_256(user, password)


def choose_mechanism(
    offered: Sequence[str],
    *,
    requested: AuthMode | None,
    have_password: bool,
    have_token: bool,
) -> AuthMode | None:
    """Pick the mechanism to use among those the server offers (API.md "Authentication").

    ``requested`` wins if offered (else None: the caller reports it). Otherwise, with a
    token: XOAUTH2, else OAUTHBEARER; with a password: the strongest offered of
    SCRAM-SHA-256 > CRAM-MD5 > PLAIN > LOGIN; None when nothing fits.

    Example::

        >>> choose_mechanism(["LOGIN", "PLAIN", "CRAM-MD5"], requested=None,
        ...                  have_password=True, have_token=False)
        <AuthMode.CRAM_MD5: 'CRAM-MD5'>
    """
    if isinstance(offered, (str, bytes)) or not isinstance(offered, Sequence):
        raise ValueError("offered: must be a sequence of mechanism names")
    names = {str(name).upper() for name in offered}
    if requested is not None:
        if not isinstance(requested, AuthMode):
            raise ValueError(f"requested: must be an AuthMode, not {type(requested).__name__}")
        return requested if requested.value in names else None
    candidates: list[AuthMode] = []
    if have_token:
        candidates += _TOKEN_PREFERENCE
    if have_password:
        candidates += PASSWORD_PREFERENCE
    for mode in candidates:
        if mode.value in names:
            return mode
    return None
