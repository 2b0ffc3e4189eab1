"""DATA transparency and BDAT framing: smuggling bodies (security.md 1.6, 1.7, 3.6 rows
13-16), chunk boundaries, property tests and linear time."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postillon.errors import InvalidMessage
from postillon.protocol.data import (
    BdatStream,
    DataEncoder,
    canonicalize,
    data_stream,
    dot_stuff,
    encode_small,
    unstuff,
)

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def assert_safe_wire(wire: bytes) -> None:
    """No bare CR/LF; the only CRLF.CRLF is the terminator (or the wire is ".\\r\\n")."""
    assert BARE.search(wire) is None, wire
    if wire == b".\r\n":
        return
    assert wire.endswith(b"\r\n.\r\n"), wire
    assert wire.count(b"\r\n.\r\n") == 1, wire
    assert not wire.startswith(b".\r\n"), wire
    # every line that starts with "." (except the terminator) starts with ".."
    lines = wire[:-5].split(b"\r\n")
    for line in lines:
        assert not line.startswith(b".") or line.startswith(b".."), wire


def expected_body(body: bytes) -> bytes:
    canon = canonicalize(body)
    return canon if not canon or canon.endswith(b"\r\n") else canon + b"\r\n"


# -- canonicalize ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"abc", b"abc"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb", b"a\r\nb"),
        (b"a\rb", b"a\r\nb"),
        (b"a\r\r\nb", b"a\r\n\r\nb"),
        (b"a\n\rb", b"a\r\n\r\nb"),
        (b"\r", b"\r\n"),
        (b"\n", b"\r\n"),
        (b"\r\n\n\r", b"\r\n\r\n\r\n"),
        (b"x\r\n\r", b"x\r\n\r\n"),
        (b"\n\r\n", b"\r\n\r\n"),  # equal counts of CR and LF, but not paired
        (b"\r\r\n\n", b"\r\n\r\n\r\n"),
        ("a\u2028b\u0085c".encode(), "a\u2028b\u0085c".encode()),  # not line breaks
    ],
)
def test_canonicalize(data: bytes, expected: bytes) -> None:
    assert canonicalize(data) == expected


def test_canonicalize_fast_path_returns_the_same_object() -> None:
    data = b"line one\r\nline two\r\n" * 100
    assert canonicalize(data) is data


def test_canonicalize_accepts_bytearray_refuses_str() -> None:
    assert canonicalize(bytearray(b"a\nb")) == b"a\r\nb"
    with pytest.raises(InvalidMessage) as info:
        canonicalize("a\nb")  # type: ignore[arg-type]
    assert info.value.field == "data"


# -- dot_stuff: security.md 1.6 bodies and rows 13-16 ------------------------------------

SMUGGLING = [
    (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\r.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\r\n.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\r\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"\r\n.\r\n", b"\r\n..\r\n.\r\n"),
    (b"a\r.\r", b"a\r\n..\r\n.\r\n"),  # row 14
    (b"a\r", b"a\r\n.\r\n"),  # row 16: lone CR at the end
    (b"a", b"a\r\n.\r\n"),  # row 16: no final newline
    (b"a\r\n", b"a\r\n.\r\n"),  # no extra blank line
    (b".x", b"..x\r\n.\r\n"),  # row 15: leading dot on line 1
    (b".", b"..\r\n.\r\n"),  # row 15: the body a single "."
    (b"a\r\n.", b"a\r\n..\r\n.\r\n"),  # row 15: ending with "." and no newline
    (b"..\r\n...x\r\n", b"...\r\n....x\r\n.\r\n"),
    (b"a.\r\nb.c\r\n", b"a.\r\nb.c\r\n.\r\n"),  # dots elsewhere untouched
    (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),  # row 13
    (b"\r\r\n", b"\r\n\r\n.\r\n"),
    (b"", b".\r\n"),  # an empty message is the terminator line alone
    (b"\n", b"\r\n.\r\n"),
    ("a\u2028.b\u0085.c".encode(), "a\u2028.b\u0085.c\r\n.\r\n".encode()),
    (b"Subject: x\n folded\n\n.body\n", b"Subject: x\r\n folded\r\n\r\n..body\r\n.\r\n"),
]


@pytest.mark.parametrize(("body", "wire"), SMUGGLING)
def test_dot_stuff(body: bytes, wire: bytes) -> None:
    assert dot_stuff(body) == wire
    assert_safe_wire(wire)
    assert unstuff(wire) == expected_body(body)


@pytest.mark.parametrize(("body", "wire"), SMUGGLING)
def test_encoder_every_two_way_split(body: bytes, wire: bytes) -> None:
    for i in range(len(body) + 1):
        enc = DataEncoder()
        assert enc.feed(body[:i]) + enc.feed(body[i:]) + enc.finish() == wire, i


@pytest.mark.parametrize(("body", "wire"), SMUGGLING)
def test_encoder_one_byte_at_a_time(body: bytes, wire: bytes) -> None:
    enc = DataEncoder()
    out = b"".join(enc.feed(body[i : i + 1]) for i in range(len(body)))
    assert out + enc.finish() == wire


def test_cr_then_lf_across_chunks() -> None:
    enc = DataEncoder()
    assert enc.feed(b"a\r") == b"a"  # the CR waits for the next chunk
    assert enc.feed(b"\n.b\r") == b"\r\n..b"
    assert enc.feed(b"") == b""  # an empty chunk changes nothing
    assert enc.feed(b"\r") == b"\r\n"  # the held CR was bare; the new one waits
    assert enc.finish() == b"\r\n.\r\n"


def test_lone_cr_chunk_then_dot() -> None:
    enc = DataEncoder()
    assert enc.feed(b"x") == b"x"
    assert enc.feed(b"\r") == b""
    assert enc.feed(b".") == b"\r\n.."
    assert enc.finish() == b"\r\n.\r\n"


def test_encoder_misuse() -> None:
    enc = DataEncoder()
    enc.finish()
    with pytest.raises(ValueError, match="after finish"):
        enc.feed(b"x")
    with pytest.raises(ValueError, match="twice"):
        enc.finish()
    with pytest.raises(InvalidMessage):
        DataEncoder().feed("text")  # type: ignore[arg-type]


def test_encoder_accepts_memoryview() -> None:
    enc = DataEncoder()
    assert enc.feed(memoryview(b".a\n")) + enc.finish() == b"..a\r\n.\r\n"


# -- unstuff ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..x\r\n.\r\n", b".x\r\n"),
        (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n"),
        (b".x\r\n.\r\n", b"x\r\n"),  # RFC 5321 4.5.2 receiver rule
    ],
)
def test_unstuff(wire: bytes, body: bytes) -> None:
    assert unstuff(wire) == body


@pytest.mark.parametrize(
    "wire",
    [b"", b"a\r\n", b"a\r\n.", b"a.\r\n", b"a\r\n.\r\nb\r\n.\r\n", b".\r\n.\r\n", b"a\n.\r\n"],
)
def test_unstuff_refuses_bad_wire(wire: bytes) -> None:
    with pytest.raises(ValueError, match="wire"):
        unstuff(wire)


# -- data_stream ------------------------------------------------------------------------------


def test_small_message_leaves_in_one_write() -> None:
    chunks = [b"Subject: hi\r\n", b"\r\n"] + [b"line %d\r\n" % i for i in range(100)]
    out = list(data_stream(chunks))
    assert len(out) == 1
    assert out[0] == dot_stuff(b"".join(chunks))


def test_large_chunks_pass_through_uncopied() -> None:
    big = b"x" * 70_000 + b"\r\n"
    out = list(data_stream([big, big]))
    assert out[0] is big and out[1] is big
    assert out[2] == b".\r\n"


def test_pending_small_output_is_flushed_before_a_large_one() -> None:
    big = b"y" * 100 + b"\r\n"
    out = list(data_stream([b"a\r\n", b"b\r\n", big, b"c"], block=50))
    assert out == [b"a\r\nb\r\n", big, b"c\r\n.\r\n"]


def test_small_outputs_are_coalesced_into_blocks() -> None:
    out = list(data_stream([b"abcd\r\n"] * 10, block=20))
    assert b"".join(out) == b"abcd\r\n" * 10 + b".\r\n"
    assert [len(x) for x in out] == [24, 24, 12 + 3]


def test_data_stream_empty_message() -> None:
    assert list(data_stream([])) == [b".\r\n"]
    assert list(data_stream([b"", b""])) == [b".\r\n"]


@pytest.mark.parametrize("block", [0, -1, 1.5, True])
def test_data_stream_bad_block(block: object) -> None:
    with pytest.raises(ValueError, match="block"):
        data_stream([b"x"], block=block)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunks", [b"abc", "abc", bytearray(b"abc")])
def test_data_stream_refuses_a_single_bytes_object(chunks: object) -> None:
    with pytest.raises(InvalidMessage, match="iterable"):
        data_stream(chunks)  # type: ignore[arg-type]


def test_data_stream_refuses_str_chunks() -> None:
    with pytest.raises(InvalidMessage, match="bytes"):
        list(data_stream(["text"]))  # type: ignore[list-item]


# -- BDAT ---------------------------------------------------------------------------------------


def bdat_payload(items: list[bytes]) -> tuple[bytes, list[tuple[int, bool]]]:
    """Check every frame's header against its payload; return the payload and headers."""
    body = b""
    headers = []
    for item in items:
        head, _, payload = item.partition(b"\r\n")
        m = re.fullmatch(rb"BDAT (\d+)( LAST)?", head)
        assert m is not None, item
        assert int(m.group(1)) == len(payload)
        headers.append((len(payload), m.group(2) is not None))
        body += payload
    assert [last for _, last in headers] == [False] * (len(headers) - 1) + [True]
    return body, headers


@pytest.mark.parametrize(
    ("chunks", "max_chunk", "expected"),
    [
        ([], 10, [b"BDAT 0 LAST\r\n"]),
        ([b""], 10, [b"BDAT 0 LAST\r\n"]),
        ([b"abc"], 10, [b"BDAT 3 LAST\r\nabc"]),
        ([b".\n"], 10, [b"BDAT 3 LAST\r\n.\r\n"]),  # no stuffing, no added CRLF
        ([b"0123456789"], 10, [b"BDAT 10 LAST\r\n0123456789"]),  # exact: no empty LAST
        ([b"0123456789a"], 10, [b"BDAT 10\r\n0123456789", b"BDAT 1 LAST\r\na"]),
        (
            [b"01234", b"56789", b"abcde", b"fghij"],
            10,
            [b"BDAT 10\r\n0123456789", b"BDAT 10 LAST\r\nabcdefghij"],
        ),
        ([b"a\r", b"\nb"], 10, [b"BDAT 4 LAST\r\na\r\nb"]),
        ([b"a\r"], 10, [b"BDAT 3 LAST\r\na\r\n"]),
        ([b"012345678\r"], 10, [b"BDAT 10\r\n012345678\r", b"BDAT 1 LAST\r\n\n"]),
        ([b"\r"], 1, [b"BDAT 1\r\n\r", b"BDAT 1 LAST\r\n\n"]),
        ([b"ab\r"], 1, [b"BDAT 1\r\na", b"BDAT 1\r\nb", b"BDAT 1\r\n\r", b"BDAT 1 LAST\r\n\n"]),
    ],
)
def test_bdat_stream(chunks: list[bytes], max_chunk: int, expected: list[bytes]) -> None:
    stream = BdatStream(chunks, max_chunk=max_chunk)
    assert list(stream) == expected
    assert stream.commands == len(expected)


def test_bdat_stream_big_message_default_chunk() -> None:
    body = (b"x" * 998 + b"\n") * 3000  # bare LF: 3000 more octets once canonical
    stream = BdatStream([body[i : i + 65536] for i in range(0, len(body), 65536)])
    items = list(stream)
    payload, headers = bdat_payload(items)
    assert payload == canonicalize(body)
    assert headers[0] == (1 << 20, False)
    assert stream.commands == 3


def test_bdat_stream_iterated_twice_restarts_the_count() -> None:
    stream = BdatStream([b"abc"], max_chunk=2)
    assert len(list(stream)) == 2 and stream.commands == 2
    list(stream)  # the list can be walked again
    assert stream.commands == 2


@pytest.mark.parametrize("max_chunk", [0, -5, 2.0, False])
def test_bdat_stream_bad_max_chunk(max_chunk: object) -> None:
    with pytest.raises(ValueError, match="max_chunk"):
        BdatStream([b"x"], max_chunk=max_chunk)  # type: ignore[arg-type]


def test_bdat_stream_refuses_single_bytes_and_str_chunks() -> None:
    with pytest.raises(InvalidMessage, match="iterable"):
        BdatStream(b"abc")  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="bytes"):
        list(BdatStream(["abc"]))  # type: ignore[list-item]


# -- property tests (security.md 1.7) --------------------------------------------------------

ALPHABET = st.lists(st.sampled_from([b".", b"\r", b"\n", b"a"]), max_size=40).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=60), max_size=8)


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(body[last:p])
        last = p
    out.append(body[last:])
    return out


@settings(max_examples=500, deadline=None)
@given(ALPHABET, CUTS)
def test_property_dot_stuffing(body: bytes, cuts: list[int]) -> None:
    chunks = split(body, cuts)
    enc = DataEncoder()
    wire = b"".join(enc.feed(chunk) for chunk in chunks) + enc.finish()
    assert wire == dot_stuff(body)
    assert b"".join(data_stream(chunks, block=7)) == wire
    # the encoding ahead of a small message: one chunk or several, the same bytes
    assert b"".join(encode_small(tuple(chunks))) == wire
    assert b"".join(encode_small((body,))) == wire
    assert_safe_wire(wire)
    assert unstuff(wire) == expected_body(body)


@settings(max_examples=300, deadline=None)
@given(ALPHABET, CUTS, st.integers(min_value=1, max_value=9))
def test_property_bdat(body: bytes, cuts: list[int], max_chunk: int) -> None:
    stream = BdatStream(split(body, cuts), max_chunk=max_chunk)
    items = list(stream)
    payload, headers = bdat_payload(items)
    assert payload == canonicalize(body)
    assert BARE.search(payload) is None
    assert all(0 < n <= max_chunk for n, _ in headers[:-1])
    assert headers[-1][0] <= max_chunk
    assert stream.commands == len(items)


# -- linear time on pathological inputs ------------------------------------------------------


@pytest.mark.parametrize("unit", [b"\r", b"\n", b".\n", b"\r.", b".\r\n", b"\n.\r"], ids=repr)
def test_linear_time_pathological_bodies(unit: bytes) -> None:
    body = unit * (1_000_000 // len(unit))
    start = time.perf_counter()
    wire = b"".join(data_stream([body[i : i + 1000] for i in range(0, len(body), 1000)]))
    elapsed = time.perf_counter() - start
    assert_safe_wire(wire)
    assert elapsed < 3.0


def test_linear_time_bdat_one_huge_chunk_small_frames() -> None:
    # Re-slicing the remainder after each frame would copy ~4 GB here.
    body = b"z" * 8_000_000
    start = time.perf_counter()
    stream = BdatStream([body], max_chunk=1000)
    total = sum(len(item) for item in stream)
    assert time.perf_counter() - start < 3.0
    assert stream.commands == 8000
    assert total == 8_000_000 + 7999 * len(b"BDAT 1000\r\n") + len(b"BDAT 1000 LAST\r\n")
