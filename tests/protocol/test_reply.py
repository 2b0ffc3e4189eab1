"""Reply parser and Reply value: table tests, limits, linear time, property tests."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postillon.errors import ProtocolError
from postillon.protocol.reply import (
    MAX_LINE_LENGTH,
    MAX_REPLY_LENGTH,
    MAX_REPLY_LINES,
    Reply,
    ReplyParser,
    printable,
)


def parse_all(data: bytes, *, step: int | None = None, **limits: int) -> list[Reply]:
    """Feed ``data`` (whole, or ``step`` octets at a time) and take every reply."""
    parser = ReplyParser(**limits)
    out: list[Reply] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not None:
            out.append(reply)
    return out


# -- well-formed input -----------------------------------------------------------------

GOOD = [
    pytest.param(b"250 ok\r\n", [Reply(250, ("ok",))], id="simple"),
    pytest.param(b"250 ok\n", [Reply(250, ("ok",))], id="R1-bare-LF"),
    pytest.param(b"250\r\n", [Reply(250, ("",))], id="R2-no-text"),
    pytest.param(b"250\n", [Reply(250, ("",))], id="R2-no-text-bare-LF"),
    pytest.param(b"250 \r\n", [Reply(250, ("",))], id="space-no-text"),
    pytest.param(
        b"250-mx.example.com hi\r\n250-PIPELINING\r\n250 SIZE 100\r\n",
        [Reply(250, ("mx.example.com hi", "PIPELINING", "SIZE 100"))],
        id="multi-line",
    ),
    pytest.param(b"250-a\n250 b\r\n", [Reply(250, ("a", "b"))], id="mixed-endings"),
    pytest.param(b"250-\r\n250 \r\n", [Reply(250, ("", ""))], id="empty-lines"),
    pytest.param(b"250-\r\n250\r\n", [Reply(250, ("", ""))], id="bare-final-line"),
    pytest.param(b"250 2.1.5 ok\r\n", [Reply(250, ("ok",), "2.1.5")], id="enhanced"),
    pytest.param(b"250 2.0.0\r\n", [Reply(250, ("",), "2.0.0")], id="enhanced-only"),
    pytest.param(
        b"550-5.1.1 no such\r\n550 5.1.1 user\r\n",
        [Reply(550, ("no such", "user"), "5.1.1")],
        id="enhanced-every-line",
    ),
    pytest.param(
        b"550-5.1.1 a\r\n550-5.1.1\r\n550 5.7.1 other\r\n",
        [Reply(550, ("a", "", "5.7.1 other"), "5.1.1")],
        id="enhanced-other-code-kept",
    ),
    pytest.param(b"250 5.1.1 x\r\n", [Reply(250, ("5.1.1 x",))], id="enhanced-class-mismatch"),
    pytest.param(b"354 3.0.0 go\r\n", [Reply(354, ("3.0.0 go",))], id="no-class-3"),
    pytest.param(b"250 2.1.5ok\r\n", [Reply(250, ("2.1.5ok",))], id="enhanced-needs-space"),
    pytest.param(b"250 2.1234.5 x\r\n", [Reply(250, ("2.1234.5 x",))], id="enhanced-too-long"),
    pytest.param(b"250 \xff\xfe\r\n", [Reply(250, ("\ufffd\ufffd",))], id="R5-invalid-utf8"),
    pytest.param(b"250 caf\xc3\xa9\r\n", [Reply(250, ("caf\u00e9",))], id="utf8"),
    pytest.param(b"250 ok\r\r\n", [Reply(250, ("ok\r",))], id="cr-kept-in-text"),
    pytest.param(
        b"250 a\r\n251 b\r\n354 c\r\n",
        [Reply(250, ("a",)), Reply(251, ("b",)), Reply(354, ("c",))],
        id="pipelined",
    ),
    pytest.param(b"559 x\r\n", [Reply(559, ("x",))], id="highest"),
    pytest.param(b"200 x\r\n", [Reply(200, ("x",))], id="lowest"),
]


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_good_replies(data: bytes, expected: list[Reply]) -> None:
    assert parse_all(data) == expected


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_good_replies_byte_at_a_time(data: bytes, expected: list[Reply]) -> None:
    assert parse_all(data, step=1) == expected


# -- malformed input -------------------------------------------------------------------

BAD = [
    pytest.param(b"25\r\n", id="R3-two-digits"),
    pytest.param(b"2500 ok\r\n", id="R3-four-digits"),
    pytest.param(b"abc\r\n", id="R3-letters"),
    pytest.param(b"\r\n", id="R3-empty-line"),
    pytest.param(b"\n", id="R3-empty-bare-LF"),
    pytest.param(b"150 x\r\n", id="first-digit-1"),
    pytest.param(b"099 x\r\n", id="below-100"),
    pytest.param(b"600 x\r\n", id="above-599"),
    pytest.param(b"260 x\r\n", id="second-digit-6"),
    pytest.param(b"25a x\r\n", id="third-not-digit"),
    pytest.param(b"250_x\r\n", id="bad-separator"),
    pytest.param(b"250\tx\r\n", id="tab-separator"),
    pytest.param(b"\xff\xfe\xfd\r\n", id="gibberish"),
    pytest.param(b"250-a\r\n451 b\r\n", id="R4-mismatched-codes"),
    pytest.param(b"250-a\r\n250-b\r\n421 bye\r\n", id="R12-421-mid-reply"),
    pytest.param(b"250-a\r\nxyz\r\n", id="garbage-mid-reply"),
]


@pytest.mark.parametrize("data", BAD)
def test_malformed_replies_raise(data: bytes) -> None:
    parser = ReplyParser()
    parser.feed(data)
    with pytest.raises(ProtocolError):
        parser.next_reply()


@pytest.mark.parametrize("data", BAD)
def test_malformed_replies_raise_byte_at_a_time(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_all(data, step=1)


def test_good_reply_before_garbage_is_returned_then_error_is_sticky() -> None:
    # Postfix smtp_chat.c: garbage must not be skipped, and what came before it is kept.
    parser = ReplyParser()
    parser.feed(b"250 first\r\nabc\r\n250 after\r\n")
    assert parser.next_reply() == Reply(250, ("first",))
    assert parser.has_data()
    with pytest.raises(ProtocolError, match="malformed"):
        parser.next_reply()
    with pytest.raises(ProtocolError):
        parser.next_reply()
    parser.feed(b"250 more\r\n")  # dropped, never returned
    with pytest.raises(ProtocolError):
        parser.next_reply()


def test_error_message_escapes_the_garbage() -> None:
    parser = ReplyParser()
    parser.feed(b"\x1b[2J\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_reply()
    assert "\x1b" not in str(info.value)


# -- limits (security.md 1.11, R6-R8) -------------------------------------------------


def test_defaults() -> None:
    assert (MAX_LINE_LENGTH, MAX_REPLY_LENGTH, MAX_REPLY_LINES) == (8192, 65536, 1000)


def test_line_of_exactly_max_line_is_accepted() -> None:
    line = b"250 " + b"x" * (100 - 6) + b"\r\n"
    assert len(line) == 100
    assert parse_all(line, max_line=100)[0].lines == ("x" * 94,)
    assert parse_all(line, step=7, max_line=100)[0].code == 250


def test_line_one_over_max_line_is_refused() -> None:
    line = b"250 " + b"x" * (101 - 6) + b"\r\n"
    with pytest.raises(ProtocolError, match="longer than 100"):
        parse_all(line, max_line=100)
    with pytest.raises(ProtocolError, match="longer than 100"):
        parse_all(line, step=1, max_line=100)


def test_partial_line_fails_as_soon_as_it_cannot_fit() -> None:
    parser = ReplyParser(max_line=100)
    parser.feed(b"250 " + b"x" * 95)  # 99 octets: "\n" could still end it in time
    assert parser.buffered == 99
    assert parser.next_reply() is None
    with pytest.raises(ProtocolError):
        parser.feed(b"x")  # 100 octets and no newline: the line can only be longer


def test_R6_single_line_of_1mb() -> None:
    with pytest.raises(ProtocolError, match="longer than 8192"):
        parse_all(b"250 " + b"x" * 1_000_000 + b"\r\n")


def test_R7_10mb_without_newline_fails_within_max_line_octets() -> None:
    parser = ReplyParser()
    fed = 0
    chunk = b"a" * 4096
    with pytest.raises(ProtocolError):
        for _ in range(10_000_000 // len(chunk)):
            parser.feed(chunk)
            fed += len(chunk)
    assert fed < MAX_LINE_LENGTH  # the third chunk (at most 12288 octets held) fails


def test_R7_10mb_in_one_feed_is_fast() -> None:
    parser = ReplyParser()
    start = time.perf_counter()
    with pytest.raises(ProtocolError):
        parser.feed(b"a" * 10_000_000)
    assert time.perf_counter() - start < 1.0
    assert parser.buffered == 0  # nothing of it was kept


def test_R8_million_continuation_lines_fail_at_the_line_cap() -> None:
    data = b"250-x\r\n" * 1_000_000
    parser = ReplyParser()
    start = time.perf_counter()
    with pytest.raises(ProtocolError, match="more than 1000 lines"):
        parser.feed(data)
    assert time.perf_counter() - start < 1.0


def test_R8_continuation_lines_in_chunks_fail_at_the_line_cap() -> None:
    parser = ReplyParser()
    chunk = b"250-x\r\n" * 100
    calls = 0
    with pytest.raises(ProtocolError):
        for _ in range(10_000):
            parser.feed(chunk)
            calls += 1
    assert calls == 10  # lines 1001..1000+ arrive in the eleventh chunk


def test_reply_length_cap() -> None:
    line = b"250-" + b"x" * 40 + b"\r\n"  # 46 octets
    parse_all(line * 4 + b"250 \r\n", max_reply=4 * 46 + 6)
    with pytest.raises(ProtocolError, match="longer than 189"):
        parse_all(line * 4 + b"250 \r\n", max_reply=189)


def test_line_count_cap_is_exact() -> None:
    assert parse_all(b"250-x\r\n" * 2 + b"250 y\r\n", max_lines=3)[0].lines == ("x", "x", "y")
    with pytest.raises(ProtocolError, match="more than 3 lines"):
        parse_all(b"250-x\r\n" * 3 + b"250 y\r\n", max_lines=3)


def test_limits_apply_per_reply_not_per_stream() -> None:
    replies = parse_all(b"250-a\r\n250 b\r\n" * 50, max_lines=2, max_reply=14)
    assert len(replies) == 50


def test_feed_after_limit_error_is_dropped_and_next_reply_raises() -> None:
    parser = ReplyParser(max_line=10)
    parser.feed(b"250 ok\r\n")
    with pytest.raises(ProtocolError):
        parser.feed(b"250 " + b"x" * 20 + b"\r\n250 z\r\n")
    parser.feed(b"250 later\r\n")
    assert parser.next_reply() == Reply(250, ("ok",))
    with pytest.raises(ProtocolError):
        parser.next_reply()
    assert parser.discard() == 33 + 11  # the bad feed and the one after; "ok" was taken


@pytest.mark.parametrize(
    "limits",
    [
        {"max_line": 4},
        {"max_reply": 0},
        {"max_lines": 0},
        {"max_line": True},
        {"max_lines": 1.5},
    ],
)
def test_bad_limits(limits: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(limits))):
        ReplyParser(**limits)  # type: ignore[arg-type]


# -- linear time (lettre #1143) ---------------------------------------------------------


def test_linear_time_long_reply_in_small_chunks() -> None:
    # 1 MB of continuation lines, 100 octets per feed, limits raised out of the way.
    # Rescanning or rejoining the held reply on every feed would take minutes here.
    data = b"250-xxxxxxxxxx\r\n" * 65536 + b"250 end\r\n"
    parser = ReplyParser(max_lines=10**6, max_reply=10**7)
    start = time.perf_counter()
    for i in range(0, len(data), 100):
        parser.feed(data[i : i + 100])
    reply = parser.next_reply()
    assert time.perf_counter() - start < 3.0
    assert reply is not None and len(reply.lines) == 65537


def test_linear_time_long_line_in_small_chunks() -> None:
    data = b"250 " + b"y" * 1_000_000 + b"\r\n"
    parser = ReplyParser(max_line=2_000_000, max_reply=2_000_000)
    start = time.perf_counter()
    for i in range(0, len(data), 100):
        parser.feed(data[i : i + 100])
    reply = parser.next_reply()
    assert time.perf_counter() - start < 3.0
    assert reply is not None and len(reply.text) == 1_000_000


# -- buffered, has_data, discard ----------------------------------------------------------


def test_buffered_and_has_data() -> None:
    parser = ReplyParser()
    assert parser.buffered == 0 and not parser.has_data()
    parser.feed(b"250-a\r\n25")
    assert parser.buffered == 9 and parser.has_data()
    assert parser.next_reply() is None
    parser.feed(b"0 b\r\n220 x\r\n")
    assert parser.buffered == 0 and parser.has_data()
    assert parser.next_reply() == Reply(250, ("a", "b"))
    assert parser.has_data()
    assert parser.next_reply() == Reply(220, ("x",))
    assert not parser.has_data()
    assert parser.next_reply() is None


def test_discard_after_starttls_reply() -> None:
    # RFC 3207 5 / CVE-2011-0411: what the server sent after "220 go ahead" in clear text
    # is thrown away before TLS starts.
    parser = ReplyParser()
    parser.feed(b"220 go ahead\r\n250-injected\r\n250 x\r\n250-half\r\n25")
    assert parser.next_reply() == Reply(220, ("go ahead",))
    assert parser.discard() == 14 + 7 + 10 + 2
    assert not parser.has_data() and parser.buffered == 0
    assert parser.next_reply() is None
    assert parser.discard() == 0
    parser.feed(b"250 fresh\r\n")
    assert parser.next_reply() == Reply(250, ("fresh",))


def test_discard_forgets_an_error() -> None:
    parser = ReplyParser()
    parser.feed(b"garbage\r\nmore")
    assert parser.has_data()
    assert parser.discard() == 13
    parser.feed(b"250 ok\r\n")
    assert parser.next_reply() == Reply(250, ("ok",))


def test_feed_accepts_bytearray_and_memoryview_and_refuses_str() -> None:
    parser = ReplyParser()
    parser.feed(bytearray(b"250 a\r\n"))
    parser.feed(memoryview(b"250 b\r\n"))
    assert [parser.next_reply(), parser.next_reply()] == [Reply(250, ("a",)), Reply(250, ("b",))]
    with pytest.raises(ValueError, match="data"):
        parser.feed("250 ok\r\n")  # type: ignore[arg-type]


# -- Reply ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "flags"),
    [
        (250, (True, False, False, False)),
        (354, (False, True, False, False)),
        (451, (False, False, True, False)),
        (554, (False, False, False, True)),
    ],
)
def test_reply_classes(code: int, flags: tuple[bool, bool, bool, bool]) -> None:
    r = Reply(code, ("x",))
    assert (r.is_positive, r.is_intermediate, r.is_transient, r.is_permanent) == flags


def test_reply_text_and_str() -> None:
    r = Reply(250, ("mx", "", "SIZE 10"))
    assert r.text == "mx\n\nSIZE 10"
    assert str(r) == "250 mx / SIZE 10"
    assert str(Reply(250, ("ok",), "2.0.0")) == "250 2.0.0 ok"
    assert str(Reply(250, ("",))) == "250"
    assert str(Reply(550, ("",), "5.0.0")) == "550 5.0.0"


def test_reply_str_escapes_R13() -> None:
    r = Reply(550, ("\x1b[2J", "\r\n2026-01-01 FAKE LOG LINE", "x" * 2000))
    s = str(r)
    assert "\x1b" not in s and "\r" not in s and "\n" not in s
    assert s.endswith("...") and len(s) <= 512


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((199, ("x",)), "code"),
        ((600, ("x",)), "code"),
        (("250", ("x",)), "code"),
        ((True, ("x",)), "code"),
        ((250, ["x"]), "lines"),
        ((250, (1,)), "lines"),
        ((250, ("x",), "2.0"), "enhanced"),
        ((250, ("x",), "2.0.0 "), "enhanced"),
        ((250, ("x",), "3.0.0"), "enhanced"),
    ],
)
def test_reply_validation(args: tuple[object, ...], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Reply(*args)  # type: ignore[arg-type]


def test_reply_is_frozen() -> None:
    r = Reply(250, ("x",))
    with pytest.raises(AttributeError):
        r.code = 251  # type: ignore[misc]


# -- printable (R13) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("a\x00b", "a\\x00b"),
        ("\x1b[2J", "\\x1b[2J"),
        ("line\r\nFAKE", "line\\x0d\\x0aFAKE"),
        ("tab\there", "tab\\x09here"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),
        ("sep\u2028\u2029", "sep\\u2028\\u2029"),
        ("bidi\u202egpj.exe", "bidi\\u202egpj.exe"),
        ("iso\u2066x\u2069", "iso\\u2066x\\u2069"),
        ("caf\u00e9 \u00a0ok", "caf\u00e9 \u00a0ok"),
        ("", ""),
    ],
)
def test_printable(text: str, expected: str) -> None:
    assert printable(text) == expected


def test_printable_truncates_without_splitting_an_escape() -> None:
    assert printable("abcdefghij", limit=10) == "abcdefghij"
    assert printable("abcdefghijk", limit=10) == "abcdefg..."
    assert printable("ab\x1bcdefgh", limit=10) == "ab\\x1bc..."
    assert printable("abcd\x1befgh", limit=10) == "abcd..."  # "\x1b" would not fit whole
    assert printable("\x00" * 3, limit=12) == "\\x00\\x00\\x00"
    assert printable("\x00" * 4, limit=12) == "\\x00\\x00..."
    out = printable("y" * 1_000_000)
    assert len(out) == 512 and out.endswith("...")


@pytest.mark.parametrize("limit", [2, -1, True, 3.0])
def test_printable_bad_limit(limit: object) -> None:
    with pytest.raises(ValueError, match="limit"):
        printable("x", limit=limit)  # type: ignore[arg-type]


def test_printable_refuses_non_str() -> None:
    with pytest.raises(ValueError, match="text"):
        printable(b"x")  # type: ignore[arg-type]


# -- property tests -----------------------------------------------------------------------


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=8))
def test_property_arbitrary_bytes_only_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    parser = ReplyParser(max_line=64, max_reply=200, max_lines=5)
    try:
        for chunk in _chunked(data, cuts):
            parser.feed(chunk)
            while parser.next_reply() is not None:
                pass
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"2", b"5", b"0", b"-", b" ", b"\r", b"\n", b"x"]), max_size=60))
def test_property_reply_alphabet_only_raise_protocol_error(parts: list[bytes]) -> None:
    parser = ReplyParser(max_line=16, max_reply=40, max_lines=3)
    try:
        for part in parts:
            parser.feed(part)
            while parser.next_reply() is not None:
                pass
    except ProtocolError:
        pass


_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=30,
)
_REPLY = st.builds(
    lambda code, lines: (code, lines),
    st.integers(min_value=2, max_value=5).flatmap(
        lambda a: st.integers(min_value=0, max_value=59).map(lambda bc: a * 100 + bc)
    ),
    st.lists(_TEXT, min_size=1, max_size=5),
)


def _wire(code: int, lines: list[str], crlf: bool) -> bytes:
    end = b"\r\n" if crlf else b"\n"
    out = []
    for i, text in enumerate(lines):
        sep = b" " if i == len(lines) - 1 else b"-"
        out.append(b"%d" % code + sep + text.encode("utf-8") + end)
    return b"".join(out)


def _expected(code: int, lines: list[str]) -> Reply:
    # Build the expectation independently of the parser's internals, except the rule
    # for enhanced codes (RFC 3463) which the generator may hit by chance.
    m = re.match(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |\Z)", lines[0])
    if m is None or m.group(1) != str(code)[0]:
        return Reply(code, tuple(lines))
    enh = m.group(0).strip()
    stripped = tuple(
        t[len(enh) + 1 :] if t.startswith(enh + " ") else ("" if t == enh else t) for t in lines
    )
    return Reply(code, stripped, enh)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_REPLY, min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=10),
    st.booleans(),
)
def test_property_well_formed_replies_round_trip_any_chunking(
    replies: list[tuple[int, list[str]]], cuts: list[int], crlf: bool
) -> None:
    wire = b"".join(_wire(code, lines, crlf) for code, lines in replies)
    expected = [_expected(code, lines) for code, lines in replies]
    parser = ReplyParser()
    got: list[Reply] = []
    for chunk in _chunked(wire, cuts):
        parser.feed(chunk)
        while (r := parser.next_reply()) is not None:
            got.append(r)
    assert got == expected
    assert parse_all(wire, step=1) == expected
    assert not parser.has_data()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["2.0.0 ", "2.1.5 ", "5.7.1 ", "", "x "]), min_size=1, max_size=4))
def test_property_enhanced_codes(prefixes: list[str]) -> None:
    lines = [p + f"line{i}" for i, p in enumerate(prefixes)]
    wire = _wire(250, lines, True)
    (reply,) = parse_all(wire)
    assert reply == _expected(250, lines)
    assert reply.enhanced == (prefixes[0].strip() if prefixes[0].startswith("2.") else None)
