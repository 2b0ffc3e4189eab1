"""DKIM signing (RFC 6376) with rsa-sha256 and ed25519-sha256 (RFC 8463).

Canonicalisation is relaxed/relaxed (RFC 6376 3.4.2 and 3.4.4), the choice that survives
the whitespace and folding changes relays make. The body hash is computed while the body
streams by, one chunk at a time, so a 100 MB attachment costs no more memory than a
short note: what is kept is the header block (bounded), a SHA-256 state, and at most
one unfinished line of 64 KiB (longer lines are hashed in pieces, see
:class:`RelaxedBodyHash`).

``cryptography`` is imported only when a signer is built, so ``import postillon`` works
without it.

Example::

    signer = DkimSigner("example.com", "mail2025", "/etc/postillon/dkim.pem")
    print(signer.dns_record())      # publish at mail2025._domainkey.example.com
    transporter = Transporter("smtp.example.com", dkim=signer)
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import re
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import InvalidMessage
from ..message.prepared import Prepared
from ._stream import Field, crlf_chunks, parse_fields, read_input, split_message

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = ["DEFAULT_HEADERS", "DkimSigner", "RelaxedBodyHash", "relaxed_header"]

logger = logging.getLogger("postillon.signing.dkim")

#: the header fields signed when present (RFC 6376 5.4.1 lists the recommended ones)
DEFAULT_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")

# RFC 8301 3.2: verifiers must refuse RSA keys shorter than 1024 bits
MIN_RSA_BITS = 1024

# fold the DKIM-Signature under this many columns (RFC 5322 2.1.1 "SHOULD")
FOLD_WIDTH = 78
# and never over this (RFC 5322 2.1.1 "MUST")
MAX_LINE = 998

_WSP_RUN = re.compile(rb"[ \t]+")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")  # RFC 5322 2.2: ftext


class RelaxedBodyHash:
    """SHA-256 of a body under relaxed body canonicalisation, fed chunk by chunk.

    RFC 6376 3.4.4: whitespace at the end of a line is dropped, other runs of SP/HTAB
    become one SP, empty lines at the end of the body are ignored, and a non-empty body
    ends with CRLF. The work is done on whole chunks with ``re``/``bytes`` methods (C
    speed). Empty lines are counted rather than hashed until a non-empty line shows they
    were not trailing, and a line longer than 64 KiB is hashed in pieces cut after a
    non-whitespace byte, so memory stays bounded whatever the input.

    Example::

        h = RelaxedBodyHash()
        for chunk in (b"Hi  there \\r\\n", b"\\r\\n\\r\\n"):
            h.update(chunk)
        assert h.digest() == hashlib.sha256(b"Hi there\\r\\n").digest()
    """

    MAX_CARRY = 64 * 1024

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._carry = b""  # the unfinished last line
        self._pending = 0  # empty lines seen but not yet hashed
        self._mid_line = False  # part of the unfinished line is already hashed

    def update(self, chunk: bytes) -> None:
        """Feed the next piece of the body (CRLF line endings)."""
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\r\n")
        if cut < 0:
            self._carry = data
        else:
            self._carry = data[cut + 2 :]
            self._lines(data[: cut + 2])
        if len(self._carry) > self.MAX_CARRY:
            self._flush_partial()

    def _lines(self, complete: bytes) -> None:
        # complete ends with CRLF; compress runs, then drop the SP left before each CRLF
        text = _WSP_RUN.sub(b" ", complete).replace(b" \r\n", b"\r\n")
        if self._mid_line:
            # the first line continues bytes already hashed: it is not empty, whatever
            # is left of it after canonicalisation
            end = text.find(b"\r\n") + 2
            self._hash.update(text[:end])
            self._mid_line = False
            text = text[end:]
            if not text:
                return
        end = len(text)
        while end >= 2 and text.endswith(b"\r\n", 0, end):
            end -= 2
        if end == 0:
            self._pending += len(text) // 2
            return
        if self._pending:
            self._hash.update(b"\r\n" * self._pending)
        self._hash.update(text[:end])
        self._hash.update(b"\r\n")
        # one CRLF ends the last non-empty line; the others are empty lines
        self._pending = (len(text) - end) // 2 - 1

    def _flush_partial(self) -> None:
        carry = self._carry
        # keep back trailing whitespace (it may end the line) and a CR (it may start CRLF)
        head = carry.rstrip(b" \t")
        if head.endswith(b"\r"):
            head = head[:-1].rstrip(b" \t")
        if not head:
            # only whitespace: runs reduce to one SP anyway, so reduce them now
            self._carry = _WSP_RUN.sub(b" ", carry)
            return
        if not self._mid_line:
            if self._pending:
                self._hash.update(b"\r\n" * self._pending)
                self._pending = 0
            self._mid_line = True
        self._hash.update(_WSP_RUN.sub(b" ", head))
        self._carry = carry[len(head) :]

    def digest(self) -> bytes:
        """The body hash; call once, after the last :meth:`update`."""
        tail = _WSP_RUN.sub(b" ", self._carry).rstrip(b" ")
        self._carry = b""
        if tail or self._mid_line:
            # a last line without CRLF: SMTP adds the CRLF on the wire (RFC 5321 4.1.1.4),
            # so hash the line as the receiver will see it
            if self._pending:
                self._hash.update(b"\r\n" * self._pending)
            self._hash.update(tail + b"\r\n")
            self._pending = 0
            self._mid_line = False
        return self._hash.digest()


def relaxed_header(field: Field) -> bytes:
    """One header field under relaxed canonicalisation (RFC 6376 3.4.2), with CRLF.

    >>> relaxed_header(Field("Subject", b"Subject :  Hello\\r\\n\\tworld  \\r\\n"))
    b'subject:Hello world\\r\\n'
    """
    value = field.value.replace(b"\r\n", b"")
    value = _WSP_RUN.sub(b" ", value).strip(b" ")
    return field.key.encode("ascii") + b":" + value + b"\r\n"


def _bad(field: str, problem: str) -> NoReturn:
    # from None: the caller needs the field and the problem, not a traceback from inside
    raise ValueError(f"{field}: {problem}") from None


def _check_text(value: object, field: str, *, tag_chars: bool = True) -> str:
    if not isinstance(value, str):
        _bad(field, f"expected a string, got {type(value).__name__}")
    if not value:
        _bad(field, "must not be empty")
    for ch in value:
        # controls (CR, LF, NUL, DEL, U+0085...), separators (U+2028...) and spaces would
        # let a value break out of its tag or its header line (security.md 1.1)
        if unicodedata.category(ch)[0] in "CZ":
            _bad(field, f"character {ch!r} is not allowed")
    if tag_chars and (";" in value or "=" in value):
        _bad(field, "';' and '=' are not allowed (they delimit DKIM tags)")
    return value


def _check_domain(value: object, field: str) -> str:
    """A DNS name in lower-case A-labels (IDNA for non-ASCII), validated label by label."""
    text = _check_text(value, field)
    if text.endswith("."):
        text = text[:-1]
    if not text.isascii():
        import idna

        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            _bad(field, f"not a valid internationalised domain name ({exc})")
    text = text.lower()
    if len(text) > 253:
        _bad(field, "longer than 253 characters")
    for label in text.split("."):
        if not _LABEL.match(label):
            _bad(field, f"{text!r} is not a valid domain name (letters, digits, '-', '.')")
    return text


def _dkim_quoted_printable(text: str) -> str:
    # RFC 6376 2.11: octets outside %x21-3A / %x3C / %x3E-7E are written as =XX
    out = []
    for byte in text.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x3B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"={byte:02X}")
    return "".join(out)


class DkimSigner:
    """Adds a DKIM-Signature (RFC 6376, relaxed/relaxed) to every message it signs.

    ``private_key`` is PEM text, PEM or DER bytes, or the path of a PEM/DER file, holding
    an unencrypted RSA (at least 1024 bits, 2048 recommended) or Ed25519 key. The
    algorithm follows from the key: RSA gives ``rsa-sha256``, Ed25519 gives
    ``ed25519-sha256`` (RFC 8463). ``headers`` names the fields to sign when they are
    present; it must include From (RFC 6376 5.4). ``identity`` is the optional ``i=``
    tag, an address in ``domain`` or one of its subdomains.

    The signer is immutable and its repr never shows the key. Bad input raises
    ``ValueError`` naming the argument.

    Example::

        signer = DkimSigner("example.com", "s1", pem_text)
        signed = signer.sign(prepared)          # a new Prepared, DKIM-Signature first
        txt = signer.dns_record()               # "v=DKIM1; k=rsa; p=MIIB..."
    """

    __slots__ = ("_key", "_public", "algorithm", "domain", "headers", "identity", "selector")

    domain: str
    selector: str
    headers: tuple[str, ...]
    algorithm: str
    identity: str | None
    _key: RSAPrivateKey | Ed25519PrivateKey
    _public: bytes

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key: str | bytes | os.PathLike[str],
        headers: Sequence[str] = DEFAULT_HEADERS,
        *,
        algorithm: str | None = None,
        identity: str | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "domain", _check_domain(domain, "domain"))
        set_(self, "selector", _check_domain(selector, "selector"))
        if len(self.selector) + len("._domainkey.") + len(self.domain) > 253:
            _bad("selector", "selector._domainkey.domain is longer than 253 characters")
        set_(self, "headers", self._check_headers(headers))
        set_(self, "identity", self._check_identity(identity))
        key, public, key_algorithm = _load_key(private_key)
        if algorithm is not None:
            if not isinstance(algorithm, str):
                _bad("algorithm", f"expected a string, got {type(algorithm).__name__}")
            wanted = algorithm.strip().lower()
            if wanted == "rsa-sha1":
                _bad("algorithm", "rsa-sha1 is obsolete and must not be used (RFC 8301 3.1)")
            if wanted not in ALGORITHMS:
                _bad("algorithm", f"{algorithm!r} is not one of {', '.join(ALGORITHMS)}")
            if wanted != key_algorithm:
                _bad("algorithm", f"{wanted} does not match the key, which needs {key_algorithm}")
        set_(self, "algorithm", key_algorithm)
        set_(self, "_key", key)
        set_(self, "_public", public)

    @staticmethod
    def _check_headers(headers: Sequence[str]) -> tuple[str, ...]:
        if isinstance(headers, str | bytes) or not isinstance(headers, Iterable):
            _bad("headers", "expected a sequence of header names, such as ('From', 'To')")
        names: list[str] = []
        seen: set[str] = set()
        for name in headers:
            if not isinstance(name, str) or not _FIELD_NAME.match(name):
                _bad("headers", f"{name!r} is not a header field name")
            if name.lower() == "dkim-signature":
                _bad("headers", "DKIM-Signature cannot sign itself through h=")
            if name.lower() not in seen:
                seen.add(name.lower())
                names.append(name)
        if "from" not in seen:
            _bad("headers", "must include From (RFC 6376 5.4)")
        return tuple(names)

    def _check_identity(self, identity: str | None) -> str | None:
        if identity is None:
            return None
        # ';' and '=' are fine here: the local part is written dkim-quoted-printable
        text = _check_text(identity, "identity", tag_chars=False)
        local, at, domain = text.rpartition("@")
        if not at:
            _bad("identity", "expected an address such as 'user@example.com' or '@example.com'")
        domain = _check_domain(domain, "identity")
        if domain != self.domain and not domain.endswith("." + self.domain):
            # RFC 6376 3.5 (i=): the domain must be d= or a subdomain of it
            _bad("identity", f"its domain must be {self.domain} or one of its subdomains")
        return f"{local}@{domain}"

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __copy__(self) -> DkimSigner:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> DkimSigner:
        return self

    def __reduce__(self) -> NoReturn:
        # pickling would write the private key into whatever stores the pickle
        raise TypeError("DkimSigner cannot be pickled: it holds a private key")

    def __repr__(self) -> str:
        return (
            f"DkimSigner(domain={self.domain!r}, selector={self.selector!r}, "
            f"algorithm={self.algorithm!r}, headers={self.headers!r}, "
            f"identity={self.identity!r})"
        )

    def _identity_tuple(self) -> tuple[object, ...]:
        return (
            self.domain,
            self.selector,
            self.algorithm,
            self.headers,
            self.identity,
            self._public,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DkimSigner):
            return NotImplemented
        return self._identity_tuple() == other._identity_tuple()

    def __hash__(self) -> int:
        return hash(self._identity_tuple())

    def dns_record(self) -> str:
        """The TXT record to publish at ``<selector>._domainkey.<domain>`` (RFC 6376 3.6.1).

        >>> signer.dns_record()          # doctest: +SKIP
        'v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo='
        """
        kind = "rsa" if self.algorithm == "rsa-sha256" else "ed25519"
        return f"v=DKIM1; k={kind}; p={base64.b64encode(self._public).decode('ascii')}"

    @property
    def record_name(self) -> str:
        """Where :meth:`dns_record` goes: ``<selector>._domainkey.<domain>``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(self, prepared: Prepared, *, timestamp: int | None = None) -> Prepared:
        """A copy of ``prepared`` with a DKIM-Signature header in front.

        The message is read once here (body hash) and again each time the result is
        streamed; both reads are chunk by chunk. ``timestamp`` (``t=``, seconds since
        the epoch) defaults to now. Raises :class:`InvalidMessage` when the message has
        no From field (RFC 6376 5.4) or a malformed header block. Reading is blocking
        work: an asyncio caller runs this in a worker thread unless the source is
        ``in_memory``.
        """
        if not isinstance(prepared, Prepared):
            raise TypeError(f"expected a Prepared message, got {type(prepared).__name__}")
        if timestamp is None:
            timestamp = int(time.time())
        elif not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0:
            _bad("timestamp", "expected a non-negative integer (seconds since the epoch)")

        counted = _Counter(crlf_chunks(prepared.chunks()))
        header, body = split_message(counted)
        body_hash = RelaxedBodyHash()
        for chunk in body:
            body_hash.update(chunk)
        bh = base64.b64encode(body_hash.digest()).decode("ascii")

        fields = parse_fields(header)
        by_name: dict[str, list[Field]] = {}
        for field in fields:
            by_name.setdefault(field.key, []).append(field)
        if "from" not in by_name:
            raise InvalidMessage("the message has no From field, which DKIM must sign", "from")

        # RFC 6376 5.4.2: list a name once per instance; instances are taken bottom-up
        h_names: list[str] = []
        for name in self.headers:
            h_names.extend([name.lower()] * len(by_name.get(name.lower(), ())))
        # RFC 6376 8.15: From is listed once more than it occurs; the extra entry signs
        # an absent field (the empty string, 5.4.2), so a From added on the way breaks
        # the signature instead of showing a forged sender under a valid one
        h_names.append("from")
        signed = bytearray()
        for name in h_names:
            instances = by_name[name]
            if instances:
                signed += relaxed_header(instances.pop())

        tags = [
            ("v", "1"),
            ("a", self.algorithm),
            ("c", "relaxed/relaxed"),
            ("d", self.domain),
            ("s", self.selector),
        ]
        if self.identity is not None:
            local, _, domain = self.identity.rpartition("@")
            tags.append(("i", _dkim_quoted_printable(local) + "@" + domain))
        tags.append(("t", str(timestamp)))
        unsigned = _signature_header(tags, h_names, bh, "")
        # RFC 6376 3.7: the signature header itself is hashed last, with b= empty and
        # without its final CRLF
        signed += relaxed_header(Field("DKIM-Signature", unsigned))[:-2]
        signature = base64.b64encode(self._sign(bytes(signed))).decode("ascii")
        sig_header = _signature_header(tags, h_names, bh, signature)
        logger.debug(
            "DKIM-signed %s: d=%s s=%s a=%s h=%s",
            prepared.message_id or "(no Message-ID)",
            self.domain,
            self.selector,
            self.algorithm,
            ":".join(h_names),
        )

        expected = counted.total

        def source() -> Iterator[bytes]:
            yield sig_header
            seen = 0
            for chunk in crlf_chunks(prepared.chunks()):
                seen += len(chunk)
                yield chunk
            if seen != expected:
                # the signature was computed over other bytes: stop before the final dot
                raise RuntimeError("the message source gave other bytes on a second read")

        # replace(): every other field (envelope, flags, original) carries over as is
        return dataclasses.replace(prepared, source=source, size=len(sig_header) + counted.total)

    def _sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # RFC 8463 3: ed25519-sha256 signs the SHA-256 hash of the canonicalised headers
        return self._key.sign(hashlib.sha256(data).digest())


class _Counter:
    """Passes chunks through and counts their bytes."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.total = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.total += len(chunk)
            yield chunk


def _signature_header(tags: list[tuple[str, str]], h_names: list[str], bh: str, b: str) -> bytes:
    """The DKIM-Signature field, folded under 78 columns (FWS is allowed between tags,
    around the colons of h= and anywhere inside base64 values, RFC 6376 3.5).

    The layout up to ``b=`` does not depend on the b= value, so the field signed with an
    empty b= is exactly the emitted field with its b= value removed.
    """
    lines: list[str] = []
    line = "DKIM-Signature:"

    def add(atom: str, sep: str) -> None:
        nonlocal line
        if len(line) + len(sep) + len(atom) <= FOLD_WIDTH or line == " ":
            line += sep + atom
        else:
            lines.append(line)
            line = " " + atom

    def add_base64(prefix: str, value: str, suffix: str) -> None:
        nonlocal line
        if len(line) + 1 + len(prefix) + 1 > FOLD_WIDTH:
            lines.append(line)
            line = " "
        else:
            line += " "
        text = prefix + value + suffix
        while True:
            room = max(FOLD_WIDTH - len(line), len(prefix) + 1)
            line += text[:room]
            text = text[room:]
            if not text:
                break
            lines.append(line)
            line = " "

    for name, value in tags:
        add(f"{name}={value};", " ")
    if h_names:
        for i, name in enumerate(h_names):
            last = i == len(h_names) - 1
            atom = ("h=" if i == 0 else "") + name + (";" if last else ":")
            add(atom, " " if i == 0 else "")
    add_base64("bh=", bh, ";")
    add_base64("b=", b, "")
    lines.append(line)
    text = "\r\n".join(lines) + "\r\n"
    if any(len(part) > MAX_LINE for part in lines):  # pragma: no cover - tags are bounded
        raise ValueError("DKIM-Signature line longer than 998 characters")
    return text.encode("ascii")


def _load_key(
    private_key: str | bytes | os.PathLike[str],
) -> tuple[RSAPrivateKey | Ed25519PrivateKey, bytes, str]:
    """Load the key; return it with its DNS public key bytes and its algorithm."""
    data = read_input(private_key, "private_key", pem_str=True)
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "DKIM signing needs the 'cryptography' package: pip install 'postillon[crypto]'"
        ) from None
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        _bad("private_key", "the key is encrypted; give the unencrypted key")
    except (ValueError, UnsupportedAlgorithm):
        _bad("private_key", "not a PEM or DER private key")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            _bad("private_key", f"RSA key of {key.key_size} bits; DKIM needs at least 1024")
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return key, public, "rsa-sha256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8463 4.2: the DNS record holds the raw 32-byte public key
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return key, public, "ed25519-sha256"
    _bad("private_key", f"DKIM signs with RSA or Ed25519 keys, not {type(key).__name__}")
