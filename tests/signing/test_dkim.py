"""DKIM signing checked by an independent verifier (dkimpy), plus input validation."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import pickle
import re
import secrets
import tracemalloc
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from postillon.errors import InvalidMessage
from postillon.message.prepared import Prepared
from postillon.signing import DEFAULT_HEADERS, DkimSigner
from postillon.signing.dkim import RelaxedBodyHash

from .conftest import DkimKeys, dns_for, prepared, rich_message, simple_message

try:
    import nacl  # noqa: F401  (dkimpy needs PyNaCl for ed25519-sha256)

    HAVE_NACL = True
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_NACL = False

ALGORITHMS = ["rsa", "ed25519"]


@pytest.fixture(params=ALGORITHMS)
def signer(request: pytest.FixtureRequest, dkim_keys: DkimKeys) -> DkimSigner:
    if request.param == "ed25519" and not HAVE_NACL:
        if os.environ.get("POSTILLON_REQUIRE_ALL"):
            pytest.fail("PyNaCl is required to verify ed25519-sha256 with dkimpy")
        pytest.skip("PyNaCl is not installed: dkimpy cannot verify ed25519-sha256")
    pem = dkim_keys.rsa_pem if request.param == "rsa" else dkim_keys.ed25519_pem
    return DkimSigner("example.com", "s2024", pem)


def verify(signer: DkimSigner, message: bytes) -> bool:
    return bool(dkim.verify(message, dnsfunc=dns_for(signer)))


def signature_field(message: bytes) -> bytes:
    end = message.index(b"\r\n", 0)
    while message[end + 2 : end + 3] in (b" ", b"\t"):
        end = message.index(b"\r\n", end + 2)
    return message[: end + 2]


# ---------------------------------------------------------------- verified by dkimpy


def test_algorithm_follows_the_key(dkim_keys: DkimKeys) -> None:
    assert DkimSigner("example.com", "s", dkim_keys.rsa_pem).algorithm == "rsa-sha256"
    assert DkimSigner("example.com", "s", dkim_keys.ed25519_pem).algorithm == "ed25519-sha256"
    rsa_record = DkimSigner("example.com", "s", dkim_keys.rsa_pem).dns_record()
    assert rsa_record.startswith("v=DKIM1; k=rsa; p=MII")
    ed_record = DkimSigner("example.com", "s", dkim_keys.ed25519_pem).dns_record()
    # RFC 8463 4.2: the raw 32-byte key, 44 base64 characters
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", ed_record)


def test_simple_message_verifies(signer: DkimSigner) -> None:
    signed = signer.sign(prepared(simple_message()))
    data = signed.read()
    assert data.startswith(b"DKIM-Signature: v=1; a=" + signer.algorithm.encode())
    assert data.endswith(simple_message())
    assert signed.size == len(data)
    assert verify(signer, data)


def test_rich_message_verifies(signer: DkimSigner) -> None:
    # non-ASCII display names and subject, long folded To/Subject/References, text +
    # HTML, a binary attachment; the source mixes LF with CRLF (stdlib as_bytes)
    data = signer.sign(prepared(rich_message(), chunk=4093)).read()
    assert verify(signer, data)
    field = signature_field(data)
    for name in (b"from", b"to", b"cc", b"subject", b"references", b"content-type"):
        assert name in field


def test_raw_utf8_headers_verify(signer: DkimSigner) -> None:
    # SMTPUTF8 messages carry UTF-8 in header fields as is (RFC 6532)
    message = (
        "From: Zoë <zoë@exämple.com>\r\n"
        "To: 山田 <yamada@example.jp>\r\n"
        "Subject:   Grüße\t aus   Köln  \r\n"
        "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        "Message-ID: <m3@example.com>\r\n"
        "\r\n"
        "Schöne Grüße\r\n"
    ).encode()
    signed = signer.sign(prepared(message, chunk=5))
    assert verify(signer, signed.read())


def test_identity_tag_verifies(dkim_keys: DkimKeys) -> None:
    signer = DkimSigner(
        "example.com", "s1", dkim_keys.rsa_pem, identity="news=letter;x@mail.example.com"
    )
    data = signer.sign(prepared(simple_message())).read()
    # RFC 6376 2.11: '=' and ';' are written as =3D and =3B
    assert b"i=news=3Dletter=3Bx@mail.example.com;" in signature_field(data)
    assert verify(signer, data)


def test_every_instance_of_a_repeated_field_is_signed(signer: DkimSigner) -> None:
    message = simple_message().replace(b"To: Bob", b"To: Carl <carl@example.org>\r\nTo: Bob")
    data = signer.sign(prepared(message)).read()
    assert b"h=from:to:to:" in re.sub(rb"\r\n ", b"", signature_field(data))
    assert verify(signer, data)
    # the first To is covered too: changing it breaks the signature
    assert not verify(signer, data.replace(b"To: Carl", b"To: Mallory"))


def test_only_present_headers_are_listed(signer: DkimSigner) -> None:
    data = signer.sign(prepared(simple_message())).read()
    h = re.search(rb"h=([^;]+);", signature_field(data).replace(b"\r\n ", b""))
    assert h is not None
    assert h.group(1).split(b":") == [
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"from",  # oversigned: no From may be added (RFC 6376 8.15)
    ]


def test_added_from_breaks_the_signature(signer: DkimSigner) -> None:
    data = signer.sign(prepared(simple_message())).read()
    forged = data.replace(b"From: Ann", b"From: CEO <ceo@example.com>\r\nFrom: Ann")
    assert not verify(signer, forged)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda m: m.replace(b"Subject: Hello", b"Subject: Hellp"), id="header"),
        pytest.param(lambda m: m.replace(b"Hello Bob,", b"Hello Bib,"), id="body"),
        pytest.param(lambda m: m + b"P.S. added\r\n", id="appended-body"),
        pytest.param(lambda m: m.replace(b"From: Ann", b"From: Anne"), id="from"),
    ],
)
def test_tampering_fails(signer: DkimSigner, tamper: object) -> None:
    data = signer.sign(prepared(simple_message())).read()
    assert verify(signer, data)
    changed = tamper(data)  # type: ignore[operator]
    assert changed != data
    assert not verify(signer, changed)


def test_tampered_rich_message_fails(signer: DkimSigner) -> None:
    data = signer.sign(prepared(rich_message())).read()
    # one base64 character deep inside the attachment
    i = data.rindex(b"AAECAwQF")
    assert not verify(signer, data[:i] + b"B" + data[i + 1 :])
    assert not verify(signer, data.replace(b"Ren=C3=A9e", b"Ren=C3=A8e", 1))


def test_relaxed_survives_whitespace_changes(signer: DkimSigner) -> None:
    # what relaxed canonicalisation is for: relays that refold and pad whitespace
    data = signer.sign(prepared(simple_message())).read()
    relayed = data.replace(b"Subject: Hello", b"Subject:   Hello  ").replace(
        b"tomorrow. \r\n", b"tomorrow.\t\t\r\n\r\n\r\n"
    )
    assert verify(signer, relayed)


def test_signature_header_folding(signer: DkimSigner) -> None:
    long_selector = "selector-with-a-rather-long-name.sub"
    long = DkimSigner(
        "mail.departement-communication.example.com",
        long_selector,
        signer._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        headers=[*DEFAULT_HEADERS, "X-Very-Long-Header-Name-For-Folding-Tests"],
    )
    message = simple_message().replace(
        b"Subject: Hello\r\n",
        b"Subject: Hello\r\nX-Very-Long-Header-Name-For-Folding-Tests: 1\r\n",
    )
    data = long.sign(prepared(message)).read()
    field = signature_field(data)
    lines = field[:-2].split(b"\r\n")
    assert len(lines) > 3
    assert all(len(line) <= 78 for line in lines), [len(line) for line in lines]
    assert all(line.startswith(b" ") for line in lines[1:])
    assert verify(long, data)


def test_timestamp(signer: DkimSigner) -> None:
    data = signer.sign(prepared(simple_message()), timestamp=1_700_000_000).read()
    assert b" t=1700000000;" in signature_field(data)
    with pytest.raises(ValueError, match="timestamp"):
        signer.sign(prepared(simple_message()), timestamp=-1)


def test_same_bytes_on_every_read(signer: DkimSigner) -> None:
    signed = signer.sign(prepared(rich_message()))
    assert signed.read() == signed.read()
    assert signed.message_id == "<m1@example.com>"
    assert signed.recipients == ("bob@example.org",)
    assert signed.with_recipients(["x@example.org"]).read() == signed.read()


def test_source_that_changes_between_reads_is_caught(signer: DkimSigner) -> None:
    reads: list[int] = []

    def source() -> list[bytes]:
        reads.append(1)
        return [simple_message() + b"late addition\r\n" * (len(reads) - 1)]

    signed = signer.sign(Prepared("a@example.com", ("b@example.org",), "", source))
    with pytest.raises(RuntimeError, match="second read"):
        signed.read()


def test_message_without_from_is_refused(signer: DkimSigner) -> None:
    message = simple_message().replace(b"From: Ann <ann@example.com>\r\n", b"")
    with pytest.raises(InvalidMessage) as info:
        signer.sign(prepared(message))
    assert info.value.field == "from"


def test_body_without_final_crlf_is_hashed_as_sent(signer: DkimSigner) -> None:
    # SMTP puts a CRLF before the final dot; the receiver hashes the body with it
    message = simple_message() + b"no newline at the end   "
    data = signer.sign(prepared(message)).read()
    assert verify(signer, data + b"\r\n")


def test_empty_body(signer: DkimSigner) -> None:
    header = simple_message().split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert verify(signer, signer.sign(prepared(header)).read())
    assert verify(signer, signer.sign(prepared(header + b"\r\n\r\n")).read())


# ---------------------------------------------------------------- relaxed body hash


def _chunked(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        yield data[start:cut]
        start = cut
    yield data[start:]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.text(alphabet=" \t\r\nab=", max_size=12).map(lambda s: s.encode()), max_size=12
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_body_hash_matches_dkimpy_for_any_chunking(lines: list[bytes], cuts: list[int]) -> None:
    # CRLF-only bodies (what crlf_chunks guarantees), ending with CRLF as on the wire
    body = b"\r\n".join(line.replace(b"\r", b"").replace(b"\n", b"") for line in lines)
    body = body + b"\r\n" if body else body
    h = RelaxedBodyHash()
    for chunk in _chunked(body, [c for c in cuts if c <= len(body)]):
        h.update(chunk)
    assert h.digest() == hashlib.sha256(Relaxed.canonicalize_body(body)).digest()


def test_body_hash_long_lines_are_bounded_and_exact() -> None:
    # 300 KiB lines with whitespace runs straddling every 64 KiB cut
    line = (b"x" * 1000 + b" \t  ") * 300
    body = line + b"   \r\n\r\n" + line + b"\r\n\r\n\r\n"
    expected = hashlib.sha256(Relaxed.canonicalize_body(body)).digest()
    for size in (1, 997, 65536, len(body)):
        if size == 1:
            chunks: list[bytes] = [body[i : i + 1] for i in range(0, 20_000)]
            chunks.append(body[20_000:])
        else:
            chunks = [body[i : i + size] for i in range(0, len(body), size)]
        h = RelaxedBodyHash()
        for chunk in chunks:
            h.update(chunk)
            assert len(h._carry) <= RelaxedBodyHash.MAX_CARRY + size
        assert h.digest() == expected, size


def test_memory_bounded_for_100_mb(dkim_keys: DkimKeys) -> None:
    signer = DkimSigner("example.com", "s", dkim_keys.rsa_pem)
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    block = line * (65536 // len(line))
    blocks = (100 * 1024 * 1024) // len(block)
    header = simple_message().split(b"\r\n\r\n")[0] + b"\r\n\r\n"

    def source() -> Iterator[bytes]:
        yield header
        for _ in range(blocks):
            yield block

    size = len(header) + blocks * len(block)
    assert size >= 100 * 1024 * 1024 - len(block)
    tracemalloc.start()
    try:
        signed = signer.sign(Prepared("a@example.com", ("b@example.org",), "", source, size))
        total = sum(len(chunk) for chunk in signed.chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == signed.size
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"domain": "example.com\r\nBcc: x@evil"}, "domain"),
        ({"domain": "exa mple.com"}, "domain"),
        ({"domain": "example.com; s=evil"}, "domain"),
        ({"domain": "example.com\x00"}, "domain"),
        ({"domain": "example.com\u2028"}, "domain"),
        ({"domain": "-bad-.com"}, "domain"),
        ({"domain": ""}, "domain"),
        ({"domain": "a" * 64 + ".com"}, "domain"),
        ({"domain": 42}, "domain"),
        ({"selector": "s1; d=evil.com"}, "selector"),
        ({"selector": "s1\n"}, "selector"),
        ({"selector": "s\x7f1"}, "selector"),
        ({"selector": "s_1"}, "selector"),
        ({"identity": "user@other.com"}, "identity"),
        ({"identity": "no-at-sign"}, "identity"),
        ({"identity": "user\r\n@example.com"}, "identity"),
        ({"headers": "From"}, "headers"),
        ({"headers": ("To", "Subject")}, "headers"),
        ({"headers": ("From", "Bad Name")}, "headers"),
        ({"headers": ("From", "X:y")}, "headers"),
        ({"headers": ("From", "DKIM-Signature")}, "headers"),
        ({"algorithm": "rsa-sha1"}, "algorithm"),
        ({"algorithm": "ed25519-sha256"}, "algorithm"),
        ({"algorithm": "hmac"}, "algorithm"),
        ({"private_key": b"not a key"}, "private_key"),
        ({"private_key": "/nonexistent/dkim.pem"}, "private_key"),
        ({"private_key": b""}, "private_key"),
    ],
)
def test_bad_input_names_the_field(
    dkim_keys: DkimKeys, kwargs: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {
        "domain": "example.com",
        "selector": "s1",
        "private_key": dkim_keys.rsa_pem,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{field}: ") as info:
        DkimSigner(**args)  # type: ignore[arg-type]
    assert "PRIVATE KEY" not in str(info.value)
    # no chained traceback from inside the key parser
    assert info.value.__context__ is None or info.value.__suppress_context__


def _prime(bits: int) -> int:
    # cryptography refuses to generate keys under 1024 bits; build one from two primes
    while True:
        n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
            return n


def _small_rsa_key() -> rsa.RSAPrivateKey:
    e = 65537
    while True:
        p, q = _prime(256), _prime(256)
        phi = (p - 1) * (q - 1)
        if p != q and math.gcd(e, phi) == 1:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
    )
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def test_small_encrypted_and_unsupported_keys(tmp_path: Path) -> None:
    small = _small_rsa_key()
    assert small.key_size < 1024
    pem = small.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="at least 1024"):
        DkimSigner("example.com", "s", pem)
    big = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    encrypted = big.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ValueError, match="encrypted"):
        DkimSigner("example.com", "s", encrypted)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="RSA or Ed25519"):
        DkimSigner("example.com", "s", ec_pem)


def test_key_from_path_pem_text_and_der(tmp_path: Path, dkim_keys: DkimKeys) -> None:
    path = tmp_path / "dkim.pem"
    path.write_bytes(dkim_keys.ed25519_pem)
    from_path = DkimSigner("example.com", "s", path)
    from_str_path = DkimSigner("example.com", "s", str(path))
    from_text = DkimSigner("example.com", "s", dkim_keys.ed25519_pem.decode())
    key = serialization.load_pem_private_key(dkim_keys.ed25519_pem, None)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    from_der = DkimSigner("example.com", "s", der)
    assert from_path == from_str_path == from_text == from_der
    assert hash(from_path) == hash(from_der)
    assert from_path != DkimSigner("example.com", "s", dkim_keys.rsa_pem)


def test_idn_domain_and_case_are_normalised(dkim_keys: DkimKeys) -> None:
    signer = DkimSigner("Bücher.Example.", "S1", dkim_keys.rsa_pem, identity="Ann@BÜCHER.example")
    assert signer.domain == "xn--bcher-kva.example"
    assert signer.selector == "s1"
    assert signer.identity == "Ann@xn--bcher-kva.example"
    assert signer.record_name == "s1._domainkey.xn--bcher-kva.example"


def test_repr_frozen_and_not_picklable(dkim_keys: DkimKeys) -> None:
    signer = DkimSigner("example.com", "s1", dkim_keys.rsa_pem)
    text = repr(signer)
    assert text.startswith("DkimSigner(domain='example.com', selector='s1', algorithm='rsa-sha256'")
    assert "KEY" not in text and "MII" not in text and "_key" not in text
    with pytest.raises(FrozenInstanceError):
        signer.domain = "evil.com"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del signer.selector
    assert copy.copy(signer) is signer and copy.deepcopy(signer) is signer
    with pytest.raises(TypeError, match="private key"):
        pickle.dumps(signer)


def test_sign_rejects_non_prepared(dkim_keys: DkimKeys) -> None:
    signer = DkimSigner("example.com", "s1", dkim_keys.rsa_pem)
    with pytest.raises(TypeError, match="Prepared"):
        signer.sign(simple_message())  # type: ignore[arg-type]
