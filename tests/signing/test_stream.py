"""The streaming helpers and the DER encoder the signers are built on."""

from __future__ import annotations

import datetime
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import utils
from hypothesis import given
from hypothesis import strategies as st

from postillon.errors import InvalidMessage
from postillon.signing import _der as der
from postillon.signing._stream import Field, crlf_chunks, parse_fields, split_message


@given(
    data=st.binary(max_size=64).map(lambda b: b.replace(b"\x00", b"\r")),
    cuts=st.lists(st.integers(min_value=0, max_value=64), max_size=6),
)
def test_crlf_chunks_is_chunking_independent(data: bytes, cuts: list[int]) -> None:
    points = sorted({c for c in cuts if c <= len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert b"".join(crlf_chunks(pieces)) == expected


def test_crlf_chunks_leaves_crlf_alone() -> None:
    assert b"".join(crlf_chunks([b"a\r", b"\nb\n", b"c\r\n", b"\r"])) == b"a\r\nb\r\nc\r\n\r"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
def test_split_message_across_chunks(size: int) -> None:
    message = b"A: 1\r\nB: 2\r\n folded\r\n\r\nbody\r\n\r\nmore\r\n"
    header, body = split_message(message[i : i + size] for i in range(0, len(message), size))
    assert header == b"A: 1\r\nB: 2\r\n folded\r\n"
    assert b"".join(body) == b"body\r\n\r\nmore\r\n"


def test_split_message_edge_cases() -> None:
    header, body = split_message([b"\r\nonly body"])
    assert (header, b"".join(body)) == (b"", b"only body")
    header, body = split_message([b"A: 1\r\nB: 2"])
    assert (header, b"".join(body)) == (b"A: 1\r\nB: 2\r\n", b"")
    with pytest.raises(InvalidMessage) as info:
        split_message(iter([b"X: " + b"y" * 100 + b"\r\n"] * 100), limit=5000)
    assert info.value.field == "headers"


def test_parse_fields() -> None:
    fields = parse_fields(b"From: a\r\nSubject : x\r\n\ty\r\nX-E:\r\n")
    assert [f.name for f in fields] == ["From", "Subject", "X-E"]
    assert fields[1] == Field("Subject", b"Subject : x\r\n\ty\r\n")
    assert fields[1].key == "subject" and fields[1].value == b" x\r\n\ty"
    assert fields[2].value == b""
    for bad in (b" leading: continuation\r\n", b"no colon here\r\n", b"Bad Name: x\r\n"):
        with pytest.raises(InvalidMessage):
            parse_fields(bad)


def test_der_primitives() -> None:
    assert der.integer(0) == bytes.fromhex("020100")
    assert der.integer(127) == bytes.fromhex("02017f")
    assert der.integer(128) == bytes.fromhex("02020080")
    assert der.integer(-128) == bytes.fromhex("020180")
    assert der.integer(256) == bytes.fromhex("02020100")
    assert der.oid("1.2.840.113549.1.7.2") == bytes.fromhex("06092a864886f70d010702")
    assert der.oid("2.16.840.1.101.3.4.2.1") == bytes.fromhex("0609608648016503040201")
    assert der.null() == b"\x05\x00"
    assert der.octet_string(b"x" * 200)[:3] == bytes.fromhex("0481c8")
    assert der.octet_string(b"x" * 300)[:4] == bytes.fromhex("0482012c")
    assert der.set_of(der.integer(2), der.integer(1)) == bytes.fromhex("3106020101020102")
    assert der.context(0, b"\x05\x00") == bytes.fromhex("a0020500")
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert der.utc_time(when) == b"\x17\x0d240102030405Z"
    assert der.generalized_time(when) == b"\x18\x0f20240102030405Z"
    for bad in ("1", "3.1", "1.40", "a.b"):
        with pytest.raises(ValueError):
            der.oid(bad)
    with pytest.raises(ValueError):
        der.utc_time(datetime.datetime(2024, 1, 1))  # naive


@given(st.integers(min_value=0, max_value=2**2048))
def test_der_integer_reads_back(value: int) -> None:
    # an independent DER reader: the ECDSA signature decoder of cryptography
    r, s = utils.decode_dss_signature(der.sequence(der.integer(value), der.integer(1)))
    assert (r, s) == (value, 1)


def test_der_oid_reads_back() -> None:
    for dotted in ("1.2.840.10045.4.3.2", "2.5.4.3", "1.3.6.1.4.1.311.60.2.1.3", "2.999.1"):
        encoded = der.oid(dotted)
        name = x509.Name([x509.NameAttribute(x509.ObjectIdentifier(dotted), "FR")])
        assert encoded in name.public_bytes()


def test_import_without_cryptography() -> None:
    # cryptography is optional (postillon[crypto]): importing must not need it, and
    # building a signer without it says what to install
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import postillon.signing as s\n"
        "try:\n"
        "    s.DkimSigner('example.com', 's1', b'-----BEGIN PRIVATE KEY-----')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "postillon[crypto]" in out.stdout
