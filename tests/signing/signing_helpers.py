"""Helpers of the signing tests: keys, a throwaway CA, S/MIME certificates, messages, and
the independent verifiers (``openssl cms -verify`` for S/MIME, dkimpy for DKIM).

A plain module (no fixtures), so that tests outside ``tests/signing`` can import it as
``signing.signing_helpers`` (``tests/`` is on ``sys.path``); the fixtures of
``tests/signing/conftest.py`` are thin wrappers around :func:`make_pki` and
:func:`make_dkim_keys`.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from postillon.message.prepared import Prepared

P12_PASSWORD = b"correct horse battery staple"

try:
    import nacl  # noqa: F401  (dkimpy needs PyNaCl for ed25519-sha256)

    HAVE_NACL = True
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_NACL = False


def prepared(data: bytes, chunk: int = 7_000) -> Prepared:
    """A Prepared over ``data`` handed out in chunks of ``chunk`` bytes."""

    def source() -> Iterable[bytes]:
        return (data[i : i + chunk] for i in range(0, len(data), chunk))

    return Prepared("ann@example.com", ("bob@example.org",), "<m1@example.com>", source, len(data))


def simple_message() -> bytes:
    return (
        b"From: Ann <ann@example.com>\r\n"
        b"To: Bob <bob@example.org>\r\n"
        b"Subject: Hello\r\n"
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        b"Message-ID: <m1@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n"
        b"\r\n"
        b"Hello Bob,\r\n\r\nsee you  tomorrow. \r\n"
    )


def rich_message(attachment_size: int = 200_000) -> bytes:
    """Non-ASCII headers, a long folded header, text + HTML, and a binary attachment."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Zoë Ærø <zoe@example.com>"
    msg["To"] = ", ".join(f"Ünïcode Person {i} <p{i}@example.org>" for i in range(6))
    msg["Cc"] = "Renée <renee@example.net>"
    msg["Subject"] = "Réunion — compte rendu d'une très longue réunion " * 3
    msg["Date"] = "Tue, 02 Jan 2024 09:30:00 +0100"
    msg["Message-ID"] = "<m2@example.com>"
    msg["References"] = " ".join(f"<ref{i}@example.com>" for i in range(12))
    msg.set_content("Bonjour,\n\nvoici le fichier. Ça marche ?\n")
    msg.add_alternative("<p>Bonjour, <b>voici</b> le fichier.</p>\n", subtype="html")
    payload = bytes(range(256)) * (attachment_size // 256)
    msg.add_attachment(
        payload, maintype="application", subtype="octet-stream", filename="données.bin"
    )
    data = msg.as_bytes()
    assert b"\n" in data and b"\r\n" in data
    return data


# ---------------------------------------------------------------- S/MIME material


@dataclass
class Pki:
    ca_pem: Path
    p12: bytes  # signer certificate + key + CA, password P12_PASSWORD
    tmp: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(key: rsa.RSAPrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name("postillon test CA"))
        .issuer_name(_name("postillon test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def make_signer(
    ca: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    days: tuple[int, int] = (-1, 30),
    email_eku: bool = True,
    signing_usage: bool = True,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "Ann Signer"),
                    x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ann@example.com"),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name("ann@example.com")]), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=signing_usage,
                content_commitment=signing_usage,
                key_encipherment=not signing_usage,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    eku = ExtendedKeyUsageOID.EMAIL_PROTECTION if email_eku else ExtendedKeyUsageOID.SERVER_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def to_p12(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None,
    cert: x509.Certificate,
    cas: list[x509.Certificate],
    password: bytes | None = P12_PASSWORD,
) -> bytes:
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(b"ann", key, cert, cas, enc)


def make_pki(
    tmp: Path,
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    signer_key: rsa.RSAPrivateKey,
) -> Pki:
    """The CA certificate as ``tmp/ca.pem`` and a signer's PKCS#12 (P12_PASSWORD)."""
    ca_pem = tmp / "ca.pem"
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert = make_signer(ca_cert, ca_key, signer_key)
    return Pki(ca_pem, to_p12(signer_key, cert, [ca_cert]), tmp)


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def openssl_path() -> str:
    """The openssl command, or skip (fail under ``POSTILLON_REQUIRE_ALL``)."""
    path = shutil.which("openssl")
    if path is None:
        if os.environ.get("POSTILLON_REQUIRE_ALL") == "1":
            pytest.fail("the openssl command is required to verify S/MIME")
        pytest.skip("the openssl command is not installed (needed to verify S/MIME)")
    return path


def openssl_verify(
    openssl: str, ca_pem: Path, message: bytes, tmp: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run ``openssl cms -verify`` over an S/MIME message; return the finished process."""
    eml = tmp / "signed.eml"
    eml.write_bytes(message)
    out = tmp / "content.out"
    return subprocess.run(
        [
            openssl,
            "cms",
            "-verify",
            "-in",
            str(eml),
            "-inform",
            "SMIME",
            "-CAfile",
            str(ca_pem),
            "-purpose",
            "smimesign",
            "-out",
            str(out),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


def assert_smime_verifies(openssl: str, ca_pem: Path, message: bytes, tmp: Path) -> bytes:
    """``openssl cms -verify`` accepts ``message``; return the signed content it printed."""
    result = openssl_verify(openssl, ca_pem, message, tmp)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Verification successful" in result.stderr
    return (tmp / "content.out").read_bytes()


# ---------------------------------------------------------------- DKIM material


@dataclass
class DkimKeys:
    rsa_pem: bytes
    ed25519_pem: bytes


def make_dkim_keys() -> DkimKeys:
    def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    return DkimKeys(pem(new_rsa_key()), pem(ed25519.Ed25519PrivateKey.generate()))


def need_nacl() -> None:
    """Skip (fail under ``POSTILLON_REQUIRE_ALL``) when dkimpy cannot verify ed25519."""
    if not HAVE_NACL:
        if os.environ.get("POSTILLON_REQUIRE_ALL"):
            pytest.fail("PyNaCl is required to verify ed25519-sha256 with dkimpy")
        pytest.skip("PyNaCl is not installed: dkimpy cannot verify ed25519-sha256")


def dns_for(*signers: object) -> Callable[..., bytes | None]:
    """A dkimpy ``dnsfunc`` answering the TXT lookups of the given signers."""
    records = {
        f"{s.record_name}.".encode(): s.dns_record().encode()  # type: ignore[attr-defined]
        for s in signers
    }

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


def dkim_verifies(message: bytes, *signers: object) -> bool:
    """dkimpy's verdict on the first DKIM-Signature of ``message``."""
    import dkim

    return bool(dkim.verify(message, dnsfunc=dns_for(*signers)))


def dkim_tags(message: bytes) -> dict[str, str]:
    """The tags of the first DKIM-Signature field of ``message`` (whitespace removed)."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
    lines = head.split("\r\n")
    for i, line in enumerate(lines):
        if line.lower().startswith("dkim-signature:"):
            value = line.split(":", 1)[1]
            for cont in lines[i + 1 :]:
                if cont[:1] not in (" ", "\t"):
                    break
                value += cont
            tags = {}
            for part in "".join(value.split()).split(";"):
                name, eq, text = part.partition("=")
                if eq:
                    tags[name] = text
            return tags
    raise AssertionError("no DKIM-Signature field in the message")
