"""TLS contexts with WinDev's ``IgnoreError`` switches, each ignoring exactly one class.

OpenSSL stops at the first verification error it meets, so "ignore only expired
certificates" cannot be had by catching errors. Each class is switched off where it is
checked instead:

- ``EXPIRED``: OpenSSL's ``X509_V_FLAG_NO_CHECK_TIME`` skips the validity dates only;
- ``INVALID_NAME``: ``check_hostname = False``; the chain is still verified;
- ``REVOCATION``: the CRL flags are cleared (they are off unless a context sets them);
- ``INVALID_CERTIFICATE`` (untrusted or self-signed chain): OpenSSL cannot skip only the
  chain, so the handshake runs without verification and :func:`verify_leaf` then checks
  the name and the dates of the leaf certificate itself (with ``cryptography``), unless
  those are ignored too.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import ssl
from dataclasses import dataclass

from ..errors import TLSError
from ..settings import IgnoreCert

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (x509_vfy.h); Python does not name it.
_NO_CHECK_TIME = 0x200000

# OpenSSL verify error codes, to say in plain words what failed.
_REASONS = {
    9: "the certificate is not yet valid (ignore_errors=IgnoreCert.EXPIRED skips the dates)",
    10: "the certificate has expired (ignore_errors=IgnoreCert.EXPIRED skips the dates)",
    18: "the certificate is self-signed (IgnoreCert.INVALID_CERTIFICATE, or an ssl_context "
    "that trusts it)",
    19: "the chain holds a self-signed certificate that is not trusted "
    "(IgnoreCert.INVALID_CERTIFICATE, or an ssl_context that trusts the CA)",
    20: "the certificate's issuer is not trusted (IgnoreCert.INVALID_CERTIFICATE, or an "
    "ssl_context that trusts the CA)",
    21: "the certificate chain cannot be verified (IgnoreCert.INVALID_CERTIFICATE)",
    23: "the certificate has been revoked (IgnoreCert.REVOCATION)",
    62: "the certificate does not match the host name (IgnoreCert.INVALID_NAME)",
}


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """The TLS part of the transporter settings, built once at construction."""

    context: ssl.SSLContext
    ignore: IgnoreCert
    #: the leaf certificate is checked by verify_leaf() after the handshake
    manual_leaf_check: bool

    @property
    def verified(self) -> bool:
        return self.ignore == IgnoreCert.NONE


def build(
    ssl_context: ssl.SSLContext | None,
    ignore: IgnoreCert,
    client_certificate: str | tuple[str, str] | None,
) -> TLSSettings:
    """Build the client context; raise ValueError naming the setting on bad input."""
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise ValueError("ssl_context: must be an ssl.SSLContext")
    ctx = ssl_context if ssl_context is not None else ssl.create_default_context()
    if ignore:
        # Never change the caller's own context behind its back.
        if ssl_context is not None:
            ctx = _copy(ssl_context)
        if IgnoreCert.EXPIRED in ignore:
            ctx.verify_flags = ssl.VerifyFlags(int(ctx.verify_flags) | _NO_CHECK_TIME)
        if IgnoreCert.REVOCATION in ignore:
            ctx.verify_flags &= ~(ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_CRL_CHECK_CHAIN)
        if IgnoreCert.INVALID_NAME in ignore or IgnoreCert.INVALID_CERTIFICATE in ignore:
            ctx.check_hostname = False
        if IgnoreCert.INVALID_CERTIFICATE in ignore:
            ctx.verify_mode = ssl.CERT_NONE
    manual = IgnoreCert.INVALID_CERTIFICATE in ignore and not (
        IgnoreCert.INVALID_NAME in ignore and IgnoreCert.EXPIRED in ignore
    )
    if manual:
        try:
            import cryptography.x509  # noqa: F401
        except ImportError:  # pragma: no cover - cryptography is installed with [crypto]
            raise ValueError(
                "ignore_errors: IgnoreCert.INVALID_CERTIFICATE without INVALID_NAME and "
                "EXPIRED needs the 'cryptography' package (pip install postillon[crypto])"
            ) from None
    if client_certificate is not None:
        if ssl_context is not None and not ignore:
            ctx = _copy(ssl_context)
        if isinstance(client_certificate, str):
            cert, key = client_certificate, None
        elif isinstance(client_certificate, tuple) and len(client_certificate) == 2:
            cert, key = client_certificate
        else:
            raise ValueError("client_certificate: a PEM path, or a (certificate, key) pair")
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"client_certificate: cannot be loaded ({exc})") from None
    return TLSSettings(ctx, ignore, manual)


def _copy(source: ssl.SSLContext) -> ssl.SSLContext:
    """A context with the same trust and options (SSLContext cannot be copied as such)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.options = source.options
    ctx.minimum_version = source.minimum_version
    ctx.maximum_version = source.maximum_version
    ctx.verify_flags = source.verify_flags
    ca_der = source.get_ca_certs(binary_form=True)
    if ca_der:
        pem = "".join(ssl.DER_cert_to_PEM_cert(der) for der in ca_der)
        ctx.load_verify_locations(cadata=pem)
    else:
        ctx.load_default_certs()
    ctx.check_hostname = source.check_hostname
    ctx.verify_mode = source.verify_mode
    return ctx


def describe(exc: BaseException, host: str) -> TLSError:
    """A TLSError in plain words, with the setting that would change the outcome."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _REASONS.get(exc.verify_code, exc.verify_message or str(exc))
        return TLSError(f"certificate verify failed for {host}: {reason}")
    text = str(exc)
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return TLSError(
            f"TLS handshake with {host} failed: the server did not answer in TLS. Port 587 "
            "and 25 use security=Security.STARTTLS; implicit TLS (Security.TLS) is port 465"
        )
    return TLSError(f"TLS handshake with {host} failed: {text}")


def verify_leaf(der: bytes | None, host: str, ignore: IgnoreCert) -> None:
    """Check the leaf certificate's name and dates when the chain check is switched off."""
    if der is None:
        raise TLSError(f"the server {host} presented no certificate")
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    if IgnoreCert.EXPIRED not in ignore:
        now = _dt.datetime.now(_dt.UTC)
        if now > cert.not_valid_after_utc:
            raise TLSError(f"certificate verify failed for {host}: {_REASONS[10]}")
        if now < cert.not_valid_before_utc:
            raise TLSError(f"certificate verify failed for {host}: {_REASONS[9]}")
    if IgnoreCert.INVALID_NAME not in ignore and not _name_matches(cert, host):
        raise TLSError(f"certificate verify failed for {host}: {_REASONS[62]}")


def _name_matches(cert: object, host: str) -> bool:
    # RFC 6125 6.4: subjectAltName only; a wildcard stands for one whole left-most label.
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    wanted = host.rstrip(".").lower().encode("idna").decode("ascii").split(".")
    for name in san.get_values_for_type(x509.DNSName):
        labels = name.rstrip(".").lower().split(".")
        if len(labels) != len(wanted):
            continue
        if labels[0] == "*" and len(labels) > 2 and labels[1:] == wanted[1:]:
            return True
        if labels == wanted:
            return True
    return False
