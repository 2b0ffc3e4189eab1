"""S/MIME signing (RFC 8551): a detached ``multipart/signed`` with a CMS signature.

4D's ``certificate`` / ``certificatePassword`` and WinDev's ``Email.Certificate`` take a
PKCS#12 file holding the signer's certificate and private key; :class:`SmimeSigner` takes
the same (or PEM text holding both).

How memory stays bounded: ``cryptography``'s PKCS7 builder wants the whole content in
memory, so the CMS SignedData (RFC 5652 5) is built here with a small DER encoder
(:mod:`._der`) and ``cryptography``'s signature primitives. Thanks to the signed
attributes (RFC 5652 5.4), what is signed is a few hundred bytes holding the SHA-256 of
the content, not the content itself. So :meth:`SmimeSigner.sign` reads the message once
to hash the part to be signed, and the returned message reads it a second time while it
is sent. Neither pass holds more than the header block and one chunk.

Example::

    signer = SmimeSigner("signer.p12", password="s3cret")
    signed = signer.sign(prepared)
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Any, NoReturn

from ..message.prepared import Prepared
from . import _der as der
from ._stream import crlf_chunks, parse_fields, read_input, split_message

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = ["SmimeSigner"]

logger = logging.getLogger("postillon.signing.smime")

FIELD = "smime_certificate"

OID_DATA = "1.2.840.113549.1.7.1"
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SIGNING_TIME = "1.2.840.113549.1.9.5"

PREAMBLE = b"This is an S/MIME signed message.\r\n"

_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)


def _bad(problem: str) -> NoReturn:
    # from None: the caller needs a clear sentence, not a traceback from the PKCS#12 parser
    raise ValueError(f"{FIELD}: {problem}") from None


class SmimeSigner:
    """Signs messages with S/MIME: detached ``multipart/signed``, SHA-256, RSA or ECDSA.

    ``certificate`` is a PKCS#12 (.p12/.pfx) path or its bytes, or PEM text/bytes holding
    the certificate and its private key; ``password`` unlocks it. A certificate that
    cannot be loaded, holds no private key, does not match its key, is expired or not yet
    valid, or is not meant for signing mail, raises ``ValueError`` naming
    ``smime_certificate``. The password is used once and not kept.

    Example::

        signer = SmimeSigner(Path("me.p12"), "s3cret")
        signed = signer.sign(prepared)      # From/To/Subject... outside, content inside
    """

    __slots__ = ("_certificate", "_chain", "_key", "not_valid_after", "subject")

    subject: str
    not_valid_after: datetime.datetime
    _key: RSAPrivateKey | EllipticCurvePrivateKey
    _certificate: x509.Certificate
    _chain: tuple[x509.Certificate, ...]

    def __init__(
        self,
        certificate: str | bytes | os.PathLike[str],
        password: str | bytes | None = None,
    ) -> None:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import pkcs12
            from cryptography.x509.oid import NameOID
        except ImportError:  # pragma: no cover - depends on the installation
            raise ImportError(
                "S/MIME signing needs the 'cryptography' package: pip install 'postillon[crypto]'"
            ) from None
        if password is not None and not isinstance(password, str | bytes):
            raise ValueError(
                f"smime_password: expected a string or bytes, got {type(password).__name__}"
            )
        secret = password.encode("utf-8") if isinstance(password, str) else password
        data = read_input(certificate, FIELD, pem_str=True)

        key: object
        cert: x509.Certificate | None
        extra: list[x509.Certificate]
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                certs = x509.load_pem_x509_certificates(data)
            except ValueError:
                _bad("the PEM text holds no readable certificate")
            match = _PEM_KEY.search(data)
            if match is None:
                _bad("the PEM text holds no private key")
            try:
                key = serialization.load_pem_private_key(match.group(0), secret)
            except TypeError:
                _bad("the private key is encrypted and no password was given (smime_password)")
            except ValueError:
                _bad("the private key cannot be read: wrong password or damaged key")
            cert, extra = certs[0], certs[1:]
        else:
            try:
                key, cert, extra = pkcs12.load_key_and_certificates(data, secret)
            except (ValueError, TypeError):
                _bad("cannot load the PKCS#12 data: the password is wrong or it is not PKCS#12")
        # the key first: without one, PKCS#12 readers return the certificate among the
        # "additional" ones, and "no private key" is the useful diagnosis
        if key is None:
            _bad("the PKCS#12 data holds no private key, which signing needs")
        if cert is None:
            _bad("the PKCS#12 data holds no certificate")
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            _bad(f"S/MIME signs with RSA or ECDSA keys, not {type(key).__name__}")

        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.DER, spki) != (
            cert.public_key().public_bytes(serialization.Encoding.DER, spki)
        ):
            _bad("the private key does not belong to the certificate")
        subject = cert.subject.rfc4514_string({NameOID.EMAIL_ADDRESS: "E"})
        now = datetime.datetime.now(datetime.UTC)
        if now > cert.not_valid_after_utc:
            _bad(f"the certificate {subject!r} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        if now < cert.not_valid_before_utc:
            _bad(
                f"the certificate {subject!r} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            )
        _check_usage(cert)

        set_ = object.__setattr__
        set_(self, "_key", key)
        set_(self, "_certificate", cert)
        # the chain goes into the signature so that a receiver can build the path
        set_(self, "_chain", tuple(c for c in extra if c != cert))
        set_(self, "subject", subject)
        set_(self, "not_valid_after", cert.not_valid_after_utc)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> NoReturn:
        raise TypeError("SmimeSigner cannot be pickled: it holds a private key")

    def __repr__(self) -> str:
        return (
            f"SmimeSigner(subject={self.subject!r}, "
            f"not_valid_after={self.not_valid_after.isoformat()!r})"
        )

    def sign(
        self, prepared: Prepared, *, signing_time: datetime.datetime | None = None
    ) -> Prepared:
        """A copy of ``prepared`` as a detached ``multipart/signed`` message (RFC 8551 3.5.3).

        The identity fields (From, To, Subject, Date, Message-ID, ...) stay at the top;
        the ``Content-*`` fields and the body become the signed first part; the second
        part is ``smime.p7s``. ``signing_time`` defaults to now. The result reads the
        original source again when streamed, and raises ``RuntimeError`` if that source
        does not give the same bytes as the first time. Reading is blocking work: an
        asyncio caller runs this in a worker thread unless the source is ``in_memory``.
        """
        if not isinstance(prepared, Prepared):
            raise TypeError(f"expected a Prepared message, got {type(prepared).__name__}")
        if signing_time is None:
            signing_time = datetime.datetime.now(datetime.UTC)
        elif signing_time.tzinfo is None:
            raise ValueError("signing_time: must be timezone-aware")

        # pass 1: hash the content of the first part, one chunk at a time
        header, body = split_message(crlf_chunks(prepared.chunks()))
        fields = parse_fields(header)
        inner = [f for f in fields if f.key.startswith("content-")]
        outer = [f for f in fields if not f.key.startswith("content-")]
        # RFC 8551 3.1.1: the signed part is canonical MIME: CRLF line ends (crlf_chunks),
        # its own Content-* fields, an empty line, the body
        inner_head = b"".join(f.raw for f in inner) + b"\r\n"
        digest = hashlib.sha256(inner_head)
        body_size = 0
        for chunk in body:
            digest.update(chunk)
            body_size += len(chunk)
        signature = self._signed_data(digest.digest(), signing_time)

        # 128 random bits: content written before we chose the boundary cannot hold it
        boundary = b"----=_postillon_signed_" + secrets.token_hex(16).encode("ascii")
        head = bytearray(b"".join(f.raw for f in outer))
        if not any(f.key == "mime-version" for f in outer):
            head += b"MIME-Version: 1.0\r\n"
        head += (
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
            b' micalg=sha-256;\r\n boundary="' + boundary + b'"\r\n'
        )
        if prepared.eight_bit:
            # RFC 2045 6.4: a multipart holding 8-bit parts is itself 8bit
            head += b"Content-Transfer-Encoding: 8bit\r\n"
        head += b"\r\n" + PREAMBLE + b"\r\n--" + boundary + b"\r\n" + inner_head
        prefix = bytes(head)
        # RFC 2046 5.1.1: the CRLF before a delimiter belongs to the delimiter, so the
        # signed content ends exactly where the body ends
        suffix = (
            b"\r\n--" + boundary + b"\r\n"
            b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
            b"Content-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="smime.p7s"\r\n'
            b"Content-Description: S/MIME Cryptographic Signature\r\n"
            b"\r\n" + _base64_lines(signature) + b"\r\n--" + boundary + b"--\r\n"
        )
        logger.debug(
            "S/MIME-signed %s as %s", prepared.message_id or "(no Message-ID)", self.subject
        )

        def source() -> Iterator[bytes]:
            # pass 2: emit; the same header block and body length as pass 1, or stop
            again, rest = split_message(crlf_chunks(prepared.chunks()))
            if again != header:
                raise RuntimeError("the message source gave other headers on a second read")
            yield prefix
            seen = 0
            for chunk in rest:
                seen += len(chunk)
                yield chunk
            if seen != body_size:
                raise RuntimeError("the message source gave another body on a second read")
            yield suffix

        # replace(): every other field (envelope, flags, original) carries over as is
        size = len(prefix) + body_size + len(suffix)
        return dataclasses.replace(prepared, source=source, size=size)

    def _signed_data(self, content_digest: bytes, signing_time: datetime.datetime) -> bytes:
        """ContentInfo holding a detached SignedData (RFC 5652 3, 5.1), DER."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, padding

        # RFC 5754 2: SHA-256 AlgorithmIdentifier without parameters
        sha256 = der.sequence(der.oid(OID_SHA256))
        # RFC 5652 11.3: UTCTime through 2049, GeneralizedTime after
        when = (
            der.utc_time(signing_time)
            if signing_time.year < 2050
            else der.generalized_time(signing_time)
        )
        attributes = (
            der.sequence(der.oid(OID_CONTENT_TYPE), der.set_of(der.oid(OID_DATA))),
            der.sequence(der.oid(OID_SIGNING_TIME), der.set_of(when)),
            der.sequence(der.oid(OID_MESSAGE_DIGEST), der.set_of(der.octet_string(content_digest))),
        )
        # RFC 5652 5.4: the signature covers the DER of the attributes as a SET OF
        # (tag 0x31), while the SignerInfo stores them under [0] IMPLICIT
        to_sign = der.set_of(*attributes)
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            # RFC 5753 7.1.3 / RFC 5758 3.2: ecdsa-with-SHA256, parameters absent
            algorithm = der.sequence(der.oid(OID_ECDSA_WITH_SHA256))
            signature = self._key.sign(to_sign, ec.ECDSA(hashes.SHA256()))
        else:
            # RFC 3370 3.2: rsaEncryption with NULL parameters, PKCS#1 v1.5
            algorithm = der.sequence(der.oid(OID_RSA_ENCRYPTION), der.null())
            signature = self._key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())

        cert = self._certificate
        signer_info = der.sequence(
            der.integer(1),  # version 1: sid is issuerAndSerialNumber
            der.sequence(cert.issuer.public_bytes(), der.integer(cert.serial_number)),
            sha256,
            der.set_of(*attributes, tag=0xA0),
            algorithm,
            der.octet_string(signature),
        )
        certificates = [c.public_bytes(serialization.Encoding.DER) for c in (cert, *self._chain)]
        signed_data = der.sequence(
            der.integer(1),  # RFC 5652 5.1: version 1 for id-data without extras
            der.set_of(sha256),
            der.sequence(der.oid(OID_DATA)),  # detached: no eContent
            der.set_of(*certificates, tag=0xA0),  # certificates [0] IMPLICIT
            der.set_of(signer_info),
        )
        return der.sequence(der.oid(OID_SIGNED_DATA), der.context(0, signed_data))


def _check_usage(cert: x509.Certificate) -> None:
    """Refuse a certificate whose extensions forbid signing mail (RFC 8550 4.4)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not (usage.digital_signature or usage.content_commitment):
            _bad("the certificate's key usage does not allow digital signatures")
    try:
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    allowed = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed.intersection(extended):
        _bad("the certificate is not meant for e-mail (no emailProtection extended key usage)")


def _base64_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 characters with CRLF (RFC 2045 6.8), no final CRLF."""
    text = base64.b64encode(data)
    return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
