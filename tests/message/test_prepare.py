"""prepare(): envelope, ids, Bcc, SMTPUTF8, the three message kinds; the Email model."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postillon.errors import InvalidMessage
from postillon.message import (
    Address,
    Attachment,
    Email,
    Priority,
    RawMessage,
    from_mime,
    prepare,
    to_mime,
)
from postillon.message.prepare import _message_id

from .helpers import header_block, header_names, parse


def test_envelope_from_sender_dedup_and_bcc_hidden() -> None:
    m = Email(
        from_="Ann <ann@example.com>",
        sender="sec@example.com",
        to="b@Example.ORG; c@example.org",
        cc=["b@example.org"],
        bcc=["hidden@example.net", "C@example.org"],
        text_body="x",
    )
    p = prepare(m)
    assert p.mail_from == "sec@example.com"
    # domain compared case-insensitively, local part case kept
    assert p.recipients == ("b@Example.ORG", "c@example.org", "hidden@example.net", "C@example.org")
    data = p.read()
    assert "bcc" not in header_names(data)
    assert b"hidden@" not in data
    assert p.message_id.startswith("<") and p.message_id.encode() in data
    assert p.size == len(data)
    assert p.read() == data
    assert not p.needs_smtputf8 and not p.eight_bit
    assert p.original is m


def test_missing_origin_or_recipients() -> None:
    with pytest.raises(InvalidMessage) as info:
        prepare(Email(to="b@example.org"))
    assert info.value.field == "from"
    with pytest.raises(InvalidMessage) as info:
        prepare(Email(from_="a@example.org"))
    assert info.value.field == "to"
    # Bcc only: delivered, never shown
    p = prepare(Email(from_="a@example.org", bcc="z@example.org"))
    assert p.recipients == ("z@example.org",)
    assert "bcc" not in header_names(p.read())


def test_smtputf8_local_part() -> None:
    m = Email(from_="a@example.com", to="jörg@bücher.example", text_body="x")
    with pytest.raises(InvalidMessage) as info:
        prepare(m)
    assert info.value.field == "to[0]"
    with pytest.raises(InvalidMessage):
        to_mime(m)
    p = prepare(m, smtputf8=True)
    assert p.needs_smtputf8
    assert p.recipients == ("jörg@bücher.example",)
    assert "jörg@bücher.example".encode() in header_block(p.read())
    assert (
        prepare(Email(from_="a@example.com", to="b@example.org"), smtputf8=True).needs_smtputf8
        is False
    )


def test_extra_headers_order_and_4d_duplicate_rule() -> None:
    m = Email(
        from_="a@example.com",
        to="b@example.org",
        subject="S",
        headers=[
            ("X-B", "2"),
            ("Subject", "ignored"),
            ("X-A", "1"),
            ("Bcc", "x@evil"),
            ("Content-Type", "text/evil"),
            ("Message-ID", "<given@example.com>"),
        ],
    )
    data = to_mime(m)
    names = header_names(data)
    assert names.index("x-b") < names.index("x-a")
    assert names.count("subject") == 1 and b"ignored" not in data
    assert "bcc" not in names and b"text/evil" not in data
    assert b"Message-ID: <given@example.com>" in data
    assert prepare(m).message_id == "<given@example.com>"


def test_fields_written_and_read_back() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    m = Email(
        from_="a@example.com",
        to="b@example.org",
        reply_to="r@example.org",
        subject="S",
        message_id="abc@example.com",
        in_reply_to="<p@example.com>",
        references=["<o@example.com>", "<p@example.com>"],
        comments="a comment",
        keywords={"$seen": True, "work": True, "off": False},
        send_at=when,
        priority=Priority.HIGH,
        disposition_notification=True,
        text_body="t",
    )
    data = to_mime(m)
    msg = parse(data)
    assert msg["x-priority"] == "1 (Highest)" and msg["importance"] == "high"
    assert msg["disposition-notification-to"] == "a@example.com"
    assert msg["date"].datetime == when
    back = from_mime(data)
    for name in (
        "reply_to",
        "subject",
        "message_id",
        "in_reply_to",
        "references",
        "comments",
        "keywords",
        "send_at",
        "priority",
        "disposition_notification",
    ):
        assert getattr(back, name) == getattr(m, name), name
    assert back.keywords == ("$seen", "work")


def test_email_message_path(tmp_path: Path) -> None:
    std = EmailMessage()
    std["From"] = "Ann <ann@example.com>"
    std["To"] = "b@example.org, c@bücher.example"
    std["Bcc"] = "secret@example.net"
    std["Subject"] = "Héllo"
    std.set_content("body\n")
    p = prepare(std)
    assert p.mail_from == "ann@example.com"
    assert p.recipients == ("b@example.org", "c@xn--bcher-kva.example", "secret@example.net")
    data = p.read()
    assert b"secret@" not in data and "bcc" not in header_names(data)
    assert "date" in header_names(data) and "message-id" in header_names(data)
    assert p.message_id.encode() in data
    assert parse(data)["subject"] == "Héllo"
    assert std["Bcc"] is not None  # the caller's object is untouched
    with pytest.raises(InvalidMessage):
        bad = EmailMessage()
        bad["From"] = "a@b@c.com"
        bad["To"] = "b@example.org"
        prepare(bad)


def test_raw_message() -> None:
    data = b"Message-ID: <raw@example.com>\r\nSubject: x\r\n\r\nh\xc3\xa9\r\n"
    raw = RawMessage(data, "a@example.com", ["b@example.org", "b@EXAMPLE.org"])
    p = prepare(raw)
    assert p.read() == data
    assert p.message_id == "<raw@example.com>"
    assert p.eight_bit and p.recipients == ("b@example.org",)
    assert prepare(RawMessage(b"x\r\n", "", ["b@example.org"])).mail_from == ""
    with pytest.raises(InvalidMessage) as info:
        RawMessage(b"x", "a@example.com", ["ok@example.org", "a@b@c.com"])
    assert info.value.field == "to[1]"
    with pytest.raises(InvalidMessage) as info:
        RawMessage(b"x", "a@example.com", [])
        prepare(RawMessage(b"x", "a@example.com", []))
    with pytest.raises(InvalidMessage):
        prepare(RawMessage(b"x", "ünï@example.com", ["b@example.org"]))
    assert prepare(
        RawMessage(b"x", "ünï@example.com", ["b@example.org"]), smtputf8=True
    ).needs_smtputf8


def test_address_forms_and_dicts() -> None:
    forms = [
        "a@example.com",
        "Ann <a@example.com>",
        "a@example.com (Ann)",
        Address("Ann", "a@example.com"),
        {"name": "Ann", "email": "a@example.com"},
        ["a@example.com", ["b@example.com; c@example.com"]],
    ]
    for form in forms:
        m = Email(to=form)
        assert m.to[0].email == "a@example.com"
    assert [a.email for a in Email(to=forms[-1]).to] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    m = Email.from_dict(
        {
            "from": "Ann <a@example.com>",
            "replyTo": [{"email": "r@x.org"}],
            "to": "b@x.org",
            "textBody": "t",
            "htmlBody": "<b>h</b>",
            "attachments": [{"name": "a.txt", "content": "aGk="}],
            "headers": [{"name": "X-A", "value": "1"}],
            "sendAt": "2024-01-02T03:04:05+00:00",
            "priority": "low",
            "keywords": ["k"],
            "id": "ignored",
        }
    )
    assert m.attachments[0].get_content() == b"hi" and m.attachments[0].type == "text/plain"
    again = Email.from_dict(m.to_dict())
    assert again == m
    with pytest.raises(InvalidMessage, match="unknown key"):
        Email.from_dict({"form": "a@x.org"})
    with pytest.raises(InvalidMessage) as info:
        Email(to={"name": "x"})
    assert info.value.field == "to[0]"


def test_attachment_types_and_dispositions(tmp_path: Path) -> None:
    path = tmp_path / "photo.JPG"
    path.write_bytes(b"jpeg")
    a = Attachment(path)
    assert (a.name, a.type, a.disposition, a.size, a.path) == (
        "photo.JPG",
        "image/jpeg",
        "attachment",
        4,
        str(path),
    )
    assert a.get_content() == b"jpeg"
    assert Attachment(b"x", name="a.docx").type.startswith("application/vnd.openxmlformats")
    assert Attachment(b"x", name="noext").type == "application/octet-stream"
    assert Attachment(b"x", name="x.json").type == "application/json"
    assert Attachment(b"x", name="a.tar.gz").type == "application/gzip"
    inline = Attachment(b"x", name="i.png", cid="<img1>")
    assert (inline.cid, inline.disposition) == ("img1", "inline")
    for kw in (
        {"type": "text/plain\r\nX: y"},
        {"type": "nonsense"},
        {"disposition": "evil"},
        {"cid": "a b"},
        {"cid": "a\nb"},
    ):
        with pytest.raises(InvalidMessage):
            Attachment(b"x", name="a", **kw)  # type: ignore[arg-type]


def test_structures() -> None:
    def kinds(m: Email) -> list[str]:
        return [p.get_content_type() for p in parse(to_mime(m)).walk()]

    base = {"from_": "a@example.com", "to": "b@example.org"}
    assert kinds(Email(**base, text_body="t")) == ["text/plain"]  # type: ignore[arg-type]
    assert kinds(Email(**base, html_body="h")) == ["text/html"]  # type: ignore[arg-type]
    assert kinds(Email(**base, text_body="t", html_body="h")) == [  # type: ignore[arg-type]
        "multipart/alternative",
        "text/plain",
        "text/html",
    ]
    img = Attachment(b"png", name="i.png", cid="i1")
    doc = Attachment(b"pdf", name="d.pdf")
    assert kinds(Email(**base, text_body="t", html_body="h", attachments=[img, doc])) == [  # type: ignore[arg-type]
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    # a structure read by from_mime is written back as it was
    m = from_mime(to_mime(Email(**base, text_body="t", html_body="h", attachments=[img, doc])))  # type: ignore[arg-type]
    assert m.body_structure is not None
    again = from_mime(to_mime(m))
    assert again.body_structure == m.body_structure
    # changing a body drops the old structure
    m.text_body = "new"
    assert m.body_structure is None


# The Message-ID of a raw message is found by a plain search (a hot path of bulk sends);
# it must agree with the field grammar written as a regex, on every header block.
_MSG_ID_REFERENCE = re.compile(rb"(?im)^message-id:[ \t]*(<[^<>\r\n]+>)")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"Message-ID:", b"message-id:", b"MESSAGE-ID: ", b"X-Message-ID:", b" Message-ID:",
             b"<a@b>", b"<x@y.z>", b"<>", b"<<q@r>>", b"\t", b" ", b"\r\n", b"\n", b"\r", b"a",
             b"Subject: message-id:", b"\xff"]
        ),
        max_size=14,
    )
)  # fmt: skip
def test_message_id_search_matches_the_field_grammar(parts: list[bytes]) -> None:
    head = b"".join(parts)
    found = _MSG_ID_REFERENCE.search(head)
    expected = found.group(1).decode("ascii", "replace") if found else ""
    assert _message_id(head) == expected


def test_message_id_of_a_raw_message() -> None:
    data = b"Subject: x\r\nmessage-ID:  <id-1@example.com>\r\nX: <no@example.com>\r\n\r\nbody\r\n"
    assert prepare(RawMessage(data, "a@example.com", ["b@example.com"])).message_id == (
        "<id-1@example.com>"
    )
