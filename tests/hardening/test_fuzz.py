"""Fuzzing with hypothesis: reply handling, address parser, header encoder, MIME round trip.

Profiles (registered in conftest.py): "ci" by default, each test well under 10 s;
``HYPOTHESIS_PROFILE=nightly`` runs 100 times the examples (docs/fuzzing.md).

The oracles are those of security.md 3.7: no exception but the documented one, no
header-injection hit (parsing the output with a strict parser gives the header count and
the address set of the input model), header and envelope agree, and pathological inputs
finish in linear time.
"""

from __future__ import annotations

import email.policy
import itertools
import re
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from postillon import Email, InvalidMessage, RawMessage, Security, SMTPError, from_mime, to_mime
from postillon.errors import ServerDisconnected
from postillon.message import prepare
from postillon.message.address import parse_addresses
from postillon.protocol.conversation import (
    READ,
    START_TLS,
    Conversation,
    Done,
    ReadUpTo,
    SendOptions,
    SessionConfig,
    WriteBody,
)

from ._support import fuzz_settings

FUZZ = fuzz_settings()
A = "a@example.com"

# ------------------------------------------------------------- replies, end to end


REPLY_PIECES = [
    b"220 hi\r\n", b"250 ok\r\n", b"250-PIPELINING\r\n", b"250-SIZE 10\r\n", b"250 8BITMIME\r\n",
    b"354 go\r\n", b"421 bye\r\n", b"451 later\r\n", b"550 no\r\n", b"334 \r\n", b"221 bye\r\n",
    b"\r\n", b"\n", b"\r", b"2", b"25", b"250", b"-", b" ", b"\xff", b"\x00", b"999 x\r\n",
]  # fmt: skip
reply_stream = st.lists(
    st.one_of(st.sampled_from(REPLY_PIECES), st.binary(max_size=6)), max_size=40
).map(b"".join)


def _drive(conv: Conversation, flow: Iterator[object], feed: Iterator[bytes]) -> list[Done]:
    """A driver without sockets: answer READs from ``feed``; EOF is a disconnect."""
    done: list[Done] = []
    answer = None
    for _ in range(10_000):  # bounded: a flow that loops forever is a bug
        try:
            req = flow.send(answer)  # type: ignore[attr-defined]
        except StopIteration:
            return done
        answer = None
        if req is READ or isinstance(req, ReadUpTo):
            reply = conv.parser.next_reply()
            while reply is None:
                chunk = next(feed, None)
                if chunk is None:
                    raise ServerDisconnected("end of the fuzzed stream")
                conv.parser.feed(chunk)
                reply = conv.parser.next_reply()
            answer = [reply] if isinstance(req, ReadUpTo) else reply
            while isinstance(req, ReadUpTo) and len(answer) < req.n:
                more = conv.parser.next_reply()
                if more is None:
                    break
                answer.append(more)
        elif isinstance(req, WriteBody):
            for _chunk in req.chunks:
                pass
        elif isinstance(req, Done):
            done.append(req)
        elif req is START_TLS:
            pass
    raise AssertionError("the conversation did not end within 10,000 requests")


@FUZZ
@given(data=reply_stream, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_fuzz_replies_through_the_conversation(data: bytes, cuts: list[int]) -> None:
    """Any server byte stream, in any fragmentation: only SMTPError, never a hang."""
    points = sorted({c for c in cuts if c < len(data)} | {0, len(data)})
    feed = iter([data[a:b] for a, b in itertools.pairwise(points)])
    conv = Conversation(SessionConfig("mx.test", 25, Security.NONE, "client.test"))
    msg = prepare(RawMessage(b"Subject: x\r\n\r\nhi\r\n", A, ["b@example.org"]))
    done: list[Done] = []
    try:
        _drive(conv, conv.handshake(), feed)
        done = _drive(conv, conv.transactions([msg], SendOptions()), feed)
    except SMTPError:
        return
    # a message reported sent had a 2xx answer to its final dot somewhere in the stream
    for d in done:
        if d.status.success:
            assert b"250" in data and b"354" in data


# ------------------------------------------------------------------ addresses


ADDR_PIECES = [*'abcxyz09.-_+@<>()[]":;,\\ \t=?é\u0444', "=?utf-8?q?a?=", "xn--", "..", "\u200d"]
addr_alphabet = st.sampled_from(ADDR_PIECES)
addr_text = st.lists(addr_alphabet, max_size=40).map("".join)


def _strict(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


@FUZZ
@given(text=addr_text)
def test_fuzz_address_parser_header_equals_envelope(text: str) -> None:
    """Parsed once: the header a strict parser reads back names the envelope recipients."""
    try:
        found = parse_addresses(text, "to")
    except InvalidMessage as exc:
        assert (exc.field or "").startswith("to"), exc.field
        return
    assume(found)
    try:
        prepared = prepare(Email(from_=A, to=list(found), text_body="x"))
    except InvalidMessage as exc:
        # accepted alone but not sendable (e.g. needs SMTPUTF8): must say which address
        assert (exc.field or "").startswith(("to", "from")), exc.field
        return
    header = _strict(prepared.read())["to"]
    assert not header.defects, (text, header.defects)
    got = [(a.username, a.domain.lower()) for a in header.addresses]
    want = [(a.local_part, a.ascii_domain.lower()) for a in found]
    assert got == want
    assert [r.rsplit("@", 1)[1].lower() for r in prepared.recipients] == [d for _, d in want]


# -------------------------------------------------------------- header encoder


header_chars = st.characters(codec="utf-8")  # every code point but lone surrogates
nasty = st.sampled_from(["\r\n", "\n", "\r", "\x00", "=?UTF-8?Q?=0A?=", "Bcc: x@evil", "\u2028",
                         "\x85", "\t", ":", ";", "\"", "(", "é", "\u202e", " ", "=?x?q?"])  # fmt: skip
header_value = st.lists(st.one_of(st.text(header_chars, max_size=10), nasty), max_size=12).map(
    "".join
)

_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _header_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[0].decode().lower()
        for line in head.split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    ]


@FUZZ
@given(subject=header_value, name=header_value, extra=header_value)
def test_fuzz_header_encoder_never_injects(subject: str, name: str, extra: str) -> None:
    """Either InvalidMessage, or one line per field and the values come back exactly."""
    try:
        mail = Email(
            from_={"name": name, "email": A}, to="b@example.org", subject=subject,
            headers={"X-Fuzz": extra}, text_body="x",
        )  # fmt: skip
    except InvalidMessage as exc:
        assert exc.field in ("subject", "from[0]", "headers[0]"), exc.field
        # refused only for a character the header rules forbid (or a lone surrogate)
        assert any(_FORBIDDEN.search(v) for v in (subject, name, extra)) or (
            exc.field == "headers[0]" and not extra.strip()
        ), (exc.field, exc.message)
        return
    data = to_mime(mail)
    for line in data.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line and len(line) <= 998
    names = _header_names(data)
    assert names.count("subject") == (1 if subject else 0), names
    assert names.count("from") == 1 and "bcc" not in names
    assert names.count("x-fuzz") <= 1
    back = from_mime(data)
    assert back.subject == subject
    assert [(a.name, a.email) for a in back.from_] == [(name.strip(), A)] or name.strip() == ""
    assert len(_strict(data)["from"].addresses) == 1


# ------------------------------------------------------------- MIME round trip


mime_pieces = st.sampled_from(
    [b"From: a@example.com\r\n", b"To: b@example.org\r\n", b"Subject: =?utf-8?b?w6k=?=\r\n",
     b"MIME-Version: 1.0\r\n", b'Content-Type: multipart/mixed; boundary="B"\r\n',
     b"Content-Type: text/plain; charset=utf-8\r\n", b"Content-Type: text/html\r\n",
     b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
     b'Content-Disposition: attachment; filename="a.bin"\r\n',
     b"Content-Disposition: attachment; filename*=utf-8''%C3%A9.txt\r\n",
     b"\r\n", b"--B\r\n", b"--B--\r\n", b"aGVsbG8=\r\n", b"=C3=A9=\r\n", b"line\r\n", b"\xff\xfe",
     b"Content-Type: message/rfc822\r\n", b" folded\r\n"]
)  # fmt: skip
mime_bytes = st.lists(st.one_of(mime_pieces, st.binary(max_size=5)), max_size=30).map(b"".join)


@FUZZ
@given(data=mime_bytes)
def test_fuzz_mime_reader_and_round_trip(data: bytes) -> None:
    """from_mime on any bytes: an Email or InvalidMessage; what it reads writes back stably."""
    try:
        mail = from_mime(data)
    except InvalidMessage:
        return
    # message/* attachments are written base64, which RFC 2046 5.2.1 forbids and which
    # does not read back: test_message_rfc822_attachment_round_trip covers it
    assume(not any(a.type.startswith("message/") for a in mail.attachments))
    try:
        out = to_mime(mail)
    except InvalidMessage:
        return  # e.g. no origin: refused with a field named, never a crash
    for line in out.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line and len(line) <= 998
    again = from_mime(out)
    assert again.subject == mail.subject
    assert (again.text_body or "").rstrip("\n") == (mail.text_body or "").rstrip("\n")
    assert [a.get_content() for a in again.attachments] == [
        a.get_content() for a in mail.attachments
    ]
    assert [(a.name, a.email) for a in again.to] == [(a.name, a.email) for a in mail.to]


# --------------------------------------------------------- pathological inputs


MB = 1_000_000
PATHOLOGICAL = {
    "at": "@" * MB,
    "paren": "(" * MB,
    "quote": '"' * MB,
    "backslash": "\\" * MB,
    "comma": "," * MB,
    "encoded-word": "=?x?q?" * (MB // 6),
    "colon": ":" * MB,
    "groups-10000": "g:" * 10_000 + "a@b.example" + ";" * 10_000,
    "groups-open": "a:" * 10_000,
    "angle": "<" * MB,
    "mixed": '("<\\@,' * (MB // 6),
}


@pytest.mark.parametrize("entry", ["Email", "parse_addresses"])
@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_addresses_are_linear(entry: str, name: str) -> None:
    text = PATHOLOGICAL[name]
    began = time.perf_counter()
    with pytest.raises(InvalidMessage) as info:
        if entry == "Email":
            Email(from_=A, to=text)
        else:
            parse_addresses(text, "to")
    elapsed = time.perf_counter() - began
    assert elapsed < 2.0, f"{name}: {elapsed:.2f}s"
    assert (info.value.field or "").startswith("to")
    assert len(str(info.value)) < 1000  # the error names the field; it does not echo 1 MB


def test_pathological_time_grows_linearly() -> None:
    """Twice the input, about twice the time (not four times): no quadratic path."""

    def timed(n: int) -> float:
        text = '("<\\@,' * n
        began = time.perf_counter()
        with pytest.raises(InvalidMessage):
            parse_addresses(text, "to")
        return time.perf_counter() - began

    small = min(timed(50_000) for _ in range(3))
    big = min(timed(400_000) for _ in range(3))
    assert big < max(small, 0.001) * 8 * 3  # 8x the input: linear is ~8x, allow 3x noise


def test_message_rfc822_attachment_round_trip() -> None:
    """Found by the MIME fuzzer: an attached .eml must come back byte for byte."""
    from postillon import Attachment

    inner = b"From: x@example.org\r\nSubject: inner\r\n\r\nbody\r\n"
    mail = Email(from_=A, to="b@example.org", text_body="x",
                 attachments=[Attachment(inner, name="fwd.eml")])  # fmt: skip
    out = to_mime(mail)
    assert b"message/rfc822" in out
    [att] = from_mime(out).attachments
    assert (
        att.get_content().replace(b"\r\n", b"\n").strip() == inner.replace(b"\r\n", b"\n").strip()
    )
