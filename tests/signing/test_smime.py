"""S/MIME signing checked by ``openssl cms -verify``, plus certificate errors."""

from __future__ import annotations

import datetime
import email
import email.policy
import pickle
import subprocess
import tracemalloc
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from postillon.message.prepared import Prepared
from postillon.signing import SmimeSigner

from .conftest import (
    P12_PASSWORD,
    Pki,
    make_signer,
    openssl_verify,
    prepared,
    rich_message,
    simple_message,
    to_p12,
)


def assert_verifies(openssl: str, pki: Pki, message: bytes) -> None:
    result = openssl_verify(openssl, pki.ca_pem, message, pki.tmp)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Verification successful" in result.stderr


def assert_fails(openssl: str, pki: Pki, message: bytes) -> None:
    result = openssl_verify(openssl, pki.ca_pem, message, pki.tmp)
    assert result.returncode != 0
    assert b"Verification failure" in result.stderr


# ---------------------------------------------------------------- verified by openssl


def test_simple_message_verifies(openssl: str, pki: Pki) -> None:
    signer = SmimeSigner(pki.p12, P12_PASSWORD)
    signed = signer.sign(prepared(simple_message()))
    data = signed.read()
    assert signed.size == len(data)
    assert_verifies(openssl, pki, data)
    # what openssl hands back is exactly the signed first part
    content = (pki.tmp / "content.out").read_bytes()
    assert content.startswith(b"Content-Type: text/plain; charset=us-ascii\r\n")
    assert content.endswith(b"\r\n\r\nHello Bob,\r\n\r\nsee you  tomorrow. \r\n")


def test_structure(pki: Pki) -> None:
    data = SmimeSigner(pki.p12, P12_PASSWORD).sign(prepared(simple_message())).read()
    head, _, _ = data.partition(b"\r\n\r\n")
    # identity fields stay outside; the Content-* fields moved into the first part
    for name in (b"From:", b"To:", b"Subject:", b"Date:", b"Message-ID:", b"MIME-Version:"):
        assert head.count(b"\r\n" + name) + head.startswith(name) == 1, name
    assert b"Content-Transfer-Encoding" not in head
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/signed"
    assert parsed.get_param("protocol") == "application/pkcs7-signature"
    assert parsed.get_param("micalg") == "sha-256"
    first, second = parsed.iter_parts()
    assert first.get_content_type() == "text/plain"
    assert first["Content-Transfer-Encoding"] == "7bit"
    assert second.get_content_type() == "application/pkcs7-signature"
    assert second.get_filename() == "smime.p7s"
    assert second["Content-Transfer-Encoding"] == "base64"
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 78


def test_cms_structure_is_what_rfc_5652_asks(openssl: str, pki: Pki) -> None:
    data = SmimeSigner(pki.p12, P12_PASSWORD).sign(prepared(simple_message())).read()
    eml = pki.tmp / "m.eml"
    eml.write_bytes(data)
    printed = subprocess.run(
        [openssl, "cms", "-cmsout", "-print", "-in", str(eml), "-inform", "SMIME"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    assert "contentType: pkcs7-signedData" in printed
    assert "eContentType: pkcs7-data" in printed
    assert "eContent: <ABSENT>" in printed  # detached
    for attribute in ("contentType", "signingTime", "messageDigest"):
        assert f"object: {attribute}" in printed
    assert "algorithm: sha256" in printed
    assert "algorithm: rsaEncryption" in printed
    assert "CN=postillon test CA" in printed  # the chain travels with the signature


def test_rich_message_verifies(openssl: str, pki: Pki) -> None:
    # non-ASCII headers, long folded fields, multipart/alternative + attachment, and a
    # source that mixes LF with CRLF (canonicalised to CRLF once, hashed and sent alike)
    source = rich_message()
    data = SmimeSigner(pki.p12, P12_PASSWORD).sign(prepared(source, chunk=4093)).read()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert_verifies(openssl, pki, data)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert "Réunion" in str(parsed["Subject"])
    inner = next(parsed.iter_parts())
    assert inner.get_content_type() == "multipart/mixed"
    attachment = next(iter(inner.iter_attachments()))
    assert attachment.get_filename() == "données.bin"
    assert attachment.get_content() == bytes(range(256)) * (200_000 // 256)


def test_raw_utf8_headers_verify(openssl: str, pki: Pki) -> None:
    message = (
        "From: Zoë <zoë@exämple.com>\r\n"
        "To: 山田 <yamada@example.jp>\r\n"
        "Subject: Grüße aus Köln\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Schöne Grüße\r\n"
    ).encode()
    marker = object()
    source = Prepared(
        "zoë@exämple.com",
        ("yamada@example.jp",),
        "<m4@example.com>",
        lambda: [message],
        needs_smtputf8=True,
        eight_bit=True,
        original=marker,
    )
    signed = SmimeSigner(pki.p12, P12_PASSWORD).sign(source)
    # the envelope and the flags carry over
    assert signed.needs_smtputf8 and signed.eight_bit and signed.original is marker
    assert (signed.mail_from, signed.recipients) == (source.mail_from, source.recipients)
    assert signed.message_id == "<m4@example.com>"
    data = signed.read()
    assert b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nThis is an S/MIME" in data
    assert_verifies(openssl, pki, data)


def test_message_without_content_headers(openssl: str, pki: Pki) -> None:
    message = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: bare\r\n\r\nplain text\r\n"
    data = SmimeSigner(pki.p12, P12_PASSWORD).sign(prepared(message)).read()
    assert b"MIME-Version: 1.0\r\n" in data
    assert_verifies(openssl, pki, data)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda m: m.replace(b"Hello Bob,", b"Hello Bib,"), id="body"),
        pytest.param(
            lambda m: m.replace(b"charset=us-ascii", b"charset=iso-8859-1"), id="part-header"
        ),
        pytest.param(
            lambda m: m.replace(b"tomorrow. \r\n", b"tomorrow. \r\nextra\r\n"), id="added-line"
        ),
    ],
)
def test_tampered_content_fails(openssl: str, pki: Pki, tamper: object) -> None:
    data = SmimeSigner(pki.p12, P12_PASSWORD).sign(prepared(simple_message())).read()
    changed = tamper(data)  # type: ignore[operator]
    assert changed != data
    assert_fails(openssl, pki, changed)


def test_tampered_attachment_fails(openssl: str, pki: Pki) -> None:
    data = SmimeSigner(pki.p12, P12_PASSWORD).sign(prepared(rich_message())).read()
    i = data.index(b"AAECAwQF")
    assert_fails(openssl, pki, data[:i] + b"B" + data[i + 1 :])


def test_ecdsa_signer_verifies(
    openssl: str, pki: Pki, ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    p12 = to_p12(key, make_signer(ca_cert, ca_key, key), [ca_cert])
    data = SmimeSigner(p12, P12_PASSWORD).sign(prepared(simple_message())).read()
    assert_verifies(openssl, pki, data)


def test_pem_and_path_inputs(
    openssl: str,
    pki: Pki,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    signer_key: rsa.RSAPrivateKey,
) -> None:
    cert = make_signer(ca_cert, ca_key, signer_key)
    pem = (
        cert.public_bytes(serialization.Encoding.PEM)
        + signer_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pem-pass"),
        )
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    for signer in (
        SmimeSigner(pem, "pem-pass"),
        SmimeSigner(pem.decode(), b"pem-pass"),
    ):
        assert_verifies(openssl, pki, signer.sign(prepared(simple_message())).read())
    path = pki.tmp / "signer.p12"
    path.write_bytes(pki.p12)
    for source in (path, str(path)):
        signer = SmimeSigner(source, P12_PASSWORD.decode())
        assert_verifies(openssl, pki, signer.sign(prepared(simple_message())).read())


def test_signing_time(openssl: str, pki: Pki) -> None:
    when = datetime.datetime(2051, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    data = (
        SmimeSigner(pki.p12, P12_PASSWORD)
        .sign(prepared(simple_message()), signing_time=when)
        .read()
    )
    eml = pki.tmp / "t.eml"
    eml.write_bytes(data)
    printed = subprocess.run(
        [openssl, "cms", "-cmsout", "-print", "-in", str(eml), "-inform", "SMIME"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    # RFC 5652 11.3: GeneralizedTime from 2050 on
    assert "GENERALIZEDTIME:Mar  4 05:06:07 2051 GMT" in printed
    with pytest.raises(ValueError, match="signing_time"):
        SmimeSigner(pki.p12, P12_PASSWORD).sign(
            prepared(simple_message()), signing_time=datetime.datetime(2024, 1, 1)
        )


def test_source_that_changes_between_reads_is_caught(pki: Pki) -> None:
    calls = []

    def source() -> list[bytes]:
        calls.append(1)
        body = b"first\r\n" if len(calls) == 1 else b"second, longer\r\n"
        return [simple_message().split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body]

    signed = SmimeSigner(pki.p12, P12_PASSWORD).sign(Prepared("a@x.org", ("b@x.org",), "", source))
    with pytest.raises(RuntimeError, match="another body"):
        signed.read()


def test_memory_bounded_for_100_mb(pki: Pki) -> None:
    signer = SmimeSigner(pki.p12, P12_PASSWORD)
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    block = line * (65536 // len(line))
    blocks = (100 * 1024 * 1024) // len(block) + 1
    header = (
        simple_message()
        .split(b"\r\n\r\n")[0]
        .replace(b"text/plain; charset=us-ascii", b"application/octet-stream")
        .replace(b"7bit", b"base64")
        + b"\r\n\r\n"
    )

    def source() -> Iterator[bytes]:
        yield header
        for _ in range(blocks):
            yield block

    size = len(header) + blocks * len(block)
    assert size > 100 * 1024 * 1024
    tracemalloc.start()
    try:
        signed = signer.sign(Prepared("a@example.com", ("b@example.org",), "", source, size))
        total = sum(len(chunk) for chunk in signed.chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == signed.size
    # the promise is "well under 64 MB"; in practice it is a few chunks
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# ---------------------------------------------------------------- certificate errors


def _assert_clear(info: pytest.ExceptionInfo[ValueError], *words: str) -> None:
    text = str(info.value)
    assert text.startswith("smime_certificate: ")
    for word in words:
        assert word in text, text
    assert P12_PASSWORD.decode() not in text
    # raised "from None": no chained traceback from deep inside the parser
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_wrong_password(pki: Pki) -> None:
    with pytest.raises(ValueError) as info:
        SmimeSigner(pki.p12, "wrong password")
    _assert_clear(info, "password")
    with pytest.raises(ValueError) as info:
        SmimeSigner(pki.p12)
    _assert_clear(info, "password")


def test_not_pkcs12(pki: Pki) -> None:
    for garbage in (b"\x30\x82\x01\x00garbage", pki.p12[: len(pki.p12) // 2], b"plain text"):
        with pytest.raises(ValueError) as info:
            SmimeSigner(garbage, P12_PASSWORD)
        _assert_clear(info, "PKCS#12")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        SmimeSigner(tmp_path / "absent.p12", "x")
    _assert_clear(info, "absent.p12")


def test_no_private_key(
    pki: Pki, ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, signer_key: rsa.RSAPrivateKey
) -> None:
    p12 = to_p12(None, make_signer(ca_cert, ca_key, signer_key), [ca_cert])
    with pytest.raises(ValueError) as info:
        SmimeSigner(p12, P12_PASSWORD)
    _assert_clear(info, "no private key")
    pem_cert_only = ca_cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError) as info:
        SmimeSigner(pem_cert_only)
    _assert_clear(info, "no private key")


def test_expired_and_not_yet_valid(
    ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, signer_key: rsa.RSAPrivateKey
) -> None:
    expired = to_p12(
        signer_key, make_signer(ca_cert, ca_key, signer_key, days=(-30, -1)), [ca_cert]
    )
    with pytest.raises(ValueError) as info:
        SmimeSigner(expired, P12_PASSWORD)
    _assert_clear(info, "expired on", "Ann Signer")
    future = to_p12(signer_key, make_signer(ca_cert, ca_key, signer_key, days=(2, 30)), [ca_cert])
    with pytest.raises(ValueError) as info:
        SmimeSigner(future, P12_PASSWORD)
    _assert_clear(info, "not valid before")


def test_certificate_not_for_signing_mail(
    ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, signer_key: rsa.RSAPrivateKey
) -> None:
    server = to_p12(signer_key, make_signer(ca_cert, ca_key, signer_key, email_eku=False), [])
    with pytest.raises(ValueError) as info:
        SmimeSigner(server, P12_PASSWORD)
    _assert_clear(info, "emailProtection")
    no_sign = to_p12(signer_key, make_signer(ca_cert, ca_key, signer_key, signing_usage=False), [])
    with pytest.raises(ValueError) as info:
        SmimeSigner(no_sign, P12_PASSWORD)
    _assert_clear(info, "key usage")


def test_key_that_does_not_match(
    ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, signer_key: rsa.RSAPrivateKey
) -> None:
    cert = make_signer(ca_cert, ca_key, signer_key)
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = cert.public_bytes(serialization.Encoding.PEM) + other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError) as info:
        SmimeSigner(pem)
    _assert_clear(info, "does not belong")


def test_unsupported_key_type(ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    p12 = to_p12(key, make_signer(ca_cert, ca_key, key), [])  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        SmimeSigner(p12, P12_PASSWORD)
    _assert_clear(info, "RSA or ECDSA")


def test_bad_argument_types(pki: Pki) -> None:
    with pytest.raises(ValueError, match=r"^smime_password: "):
        SmimeSigner(pki.p12, 1234)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^smime_certificate: "):
        SmimeSigner(12345)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^smime_certificate: "):
        SmimeSigner(b"")


def test_repr_frozen_no_secrets(pki: Pki) -> None:
    signer = SmimeSigner(pki.p12, P12_PASSWORD)
    text = repr(signer)
    assert text.startswith("SmimeSigner(subject='E=ann@example.com,CN=Ann Signer'")
    assert P12_PASSWORD.decode() not in text and "KEY" not in text
    assert not hasattr(signer, "password") and not hasattr(signer, "_password")
    with pytest.raises(FrozenInstanceError):
        signer.subject = "x"  # type: ignore[misc]
    with pytest.raises(TypeError, match="private key"):
        pickle.dumps(signer)
