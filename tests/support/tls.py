"""Test certificates: a local CA and the bad certificates the IgnoreCert tests need.

A session-wide ``trustme.CA`` issues the good server certificate (for "localhost" and
"127.0.0.1"). :class:`BadCerts` makes the broken ones, each as a ready server
``ssl.SSLContext``: expired, not yet valid, issued for the wrong name, self-signed, and
issued by a CA the client does not trust. trustme cannot make a self-signed leaf, so that
one is built with ``cryptography`` directly.

Example::

    ctx = bad_certs.expired()          # server side
    server = smtpd(tls="implicit", ssl_context=ctx)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: The names the good server certificate is issued for.
SERVER_NAMES = ("localhost", "127.0.0.1")


def server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    """A server-side ``SSLContext`` presenting ``leaf`` (no client certificate asked)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client ``SSLContext`` that trusts only ``ca``, with host-name checks on."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(frozen=True)
class PemFiles:
    """Paths of PEM files written for a certificate (for APIs that take file names)."""

    cert: Path
    key: Path


def write_leaf(leaf: trustme.LeafCert, directory: Path, stem: str = "cert") -> PemFiles:
    """Write ``leaf``'s chain and key as PEM files under ``directory``."""
    cert = directory / f"{stem}.pem"
    key = directory / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return PemFiles(cert, key)


def _context_from_pem(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    # ssl can only load certificates from files; the files live only for the load.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="postillon-cert-") as tmp:
        cert = Path(tmp) / "cert.pem"
        key = Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def self_signed_pem(*names: str, days: int = 30) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``names`` (default: the good names), as PEM (cert, key)."""
    names = names or SERVER_NAMES
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


class BadCerts:
    """Server contexts whose certificate fails exactly one client check.

    Every method returns a fresh server-side ``ssl.SSLContext``; all but
    :meth:`self_signed` and :meth:`unknown_ca` are issued by the trusted test CA, so only the
    named check fails (the flag tests of ``IgnoreCert`` depend on that).

    Example::

        server = smtpd(tls="starttls", ssl_context=bad_certs.wrong_name())
    """

    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca

    def expired(self) -> ssl.SSLContext:
        """Valid names and chain; validity ended yesterday."""
        now = dt.datetime.now(dt.UTC)
        leaf = self.ca.issue_cert(
            *SERVER_NAMES,
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )
        return server_context(leaf)

    def not_yet_valid(self) -> ssl.SSLContext:
        """Valid names and chain; validity starts tomorrow."""
        now = dt.datetime.now(dt.UTC)
        leaf = self.ca.issue_cert(
            *SERVER_NAMES,
            not_before=now + dt.timedelta(days=1),
            not_after=now + dt.timedelta(days=30),
        )
        return server_context(leaf)

    def wrong_name(self) -> ssl.SSLContext:
        """Trusted chain, in date; issued for ``wrong.example`` only."""
        return server_context(self.ca.issue_cert("wrong.example"))

    def self_signed(self) -> ssl.SSLContext:
        """Right names, in date; signed by itself (no CA the client trusts)."""
        return _context_from_pem(*self_signed_pem())

    def unknown_ca(self) -> ssl.SSLContext:
        """Right names, in date; issued by another CA that the client does not trust."""
        return server_context(trustme.CA().issue_cert(*SERVER_NAMES))

    def expired_and_wrong_name(self) -> ssl.SSLContext:
        """Two faults at once: a flag that ignores one of them must still fail."""
        now = dt.datetime.now(dt.UTC)
        leaf = self.ca.issue_cert(
            "wrong.example",
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )
        return server_context(leaf)
