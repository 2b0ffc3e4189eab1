"""EHLO capability table: keyword parsing, AUTH forms, SIZE, defensive limits (R14)."""

from __future__ import annotations

import pytest

from postillon.protocol.capabilities import (
    MAX_AUTH_MECHANISMS,
    MAX_KEYWORDS,
    MAX_SIZE,
    Capabilities,
)
from postillon.protocol.reply import Reply, ReplyParser


def ehlo(*lines: str) -> Capabilities:
    return Capabilities.from_ehlo(Reply(250, lines))


def parse(wire: bytes) -> Capabilities:
    parser = ReplyParser()
    parser.feed(wire)
    reply = parser.next_reply()
    assert reply is not None
    return Capabilities.from_ehlo(reply)


def test_typical_ehlo_reply_from_the_wire() -> None:
    caps = parse(
        b"250-smtp.example.com at your service, [192.0.2.7]\r\n"
        b"250-SIZE 35882577\r\n"
        b"250-8BITMIME\r\n"
        b"250-STARTTLS\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-PIPELINING\r\n"
        b"250-CHUNKING\r\n"
        b"250-SMTPUTF8\r\n"
        b"250-DSN\r\n"
        b"250-REQUIRETLS\r\n"
        b"250-BINARYMIME\r\n"
        b"250 AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER\r\n"
    )
    assert caps.esmtp and caps.domain == "smtp.example.com"
    assert caps.size == 35882577
    assert caps.eightbitmime and caps.starttls and caps.enhancedstatuscodes
    assert caps.pipelining and caps.chunking and caps.smtputf8 and caps.dsn
    assert caps.requiretls and caps.binarymime
    assert caps.auth == ("LOGIN", "PLAIN", "XOAUTH2", "OAUTHBEARER")
    assert caps.keywords["SIZE"] == "35882577"
    assert caps.keywords["PIPELINING"] == ""


def test_minimal_ehlo_reply_has_nothing() -> None:
    caps = ehlo("mx.example.com")
    assert caps.esmtp and caps.domain == "mx.example.com"
    assert dict(caps.keywords) == {}
    for prop in (
        "pipelining",
        "chunking",
        "smtputf8",
        "eightbitmime",
        "dsn",
        "starttls",
        "enhancedstatuscodes",
        "requiretls",
        "binarymime",
    ):
        assert getattr(caps, prop) is False, prop
    assert caps.size is None and caps.auth == ()


def test_keywords_are_case_insensitive_and_whitespace_normalised() -> None:
    caps = ehlo("mx", "pipelining", "  size\t 1000  ", "X-Custom  a   b ")
    assert caps.pipelining and caps.size == 1000
    assert caps.keywords["X-CUSTOM"] == "a b"
    assert caps.has("x-custom") and caps.has("Pipelining") and not caps.has("CHUNKING")


@pytest.mark.parametrize(
    "line",
    ["-BAD", "B@D", "AUTH_X", "", "   ", "=", "\u00e9tendu", "SP\u0130CE", "STARTTLS\u0131"],
)
def test_invalid_keywords_are_skipped(line: str) -> None:
    caps = ehlo("mx", line, "PIPELINING")
    assert list(caps.keywords) == ["PIPELINING"]


def test_duplicate_keywords_keep_the_first() -> None:
    caps = ehlo("mx", "SIZE 1000", "size 2000", "SIZE")
    assert caps.size == 1000 and caps.keywords["SIZE"] == "1000"


def test_at_most_max_keywords() -> None:
    lines = [f"X-K{i}" for i in range(MAX_KEYWORDS + 50)]
    caps = ehlo("mx", *lines, "PIPELINING")
    assert len(caps.keywords) == MAX_KEYWORDS
    assert not caps.pipelining
    assert "X-K0" in caps.keywords and f"X-K{MAX_KEYWORDS}" not in caps.keywords


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["AUTH PLAIN LOGIN"], ("PLAIN", "LOGIN")),
        (["AUTH plain  login cram-md5"], ("PLAIN", "LOGIN", "CRAM-MD5")),
        (["AUTH=LOGIN PLAIN"], ("LOGIN", "PLAIN")),  # pre-standard form alone
        (["auth=login"], ("LOGIN",)),
        (["AUTH LOGIN", "AUTH=LOGIN PLAIN"], ("LOGIN", "PLAIN")),  # both forms, merged
        (["AUTH=LOGIN", "AUTH PLAIN CRAM-MD5"], ("LOGIN", "PLAIN", "CRAM-MD5")),
        (["AUTH PLAIN PLAIN plain"], ("PLAIN",)),  # deduplicated
        (["AUTH"], ()),
        (["AUTH PL@IN G$$ THIS-NAME-IS-TOO-LONG-FOR-SASL LOGIN"], ("LOGIN",)),
        (["AUTH PLAİN LOGIN"], ("LOGIN",)),  # non-ASCII never becomes a known name
        (["AUTH SCRAM-SHA-256 X_Y"], ("SCRAM-SHA-256", "X_Y")),
    ],
)
def test_auth_mechanisms(lines: list[str], expected: tuple[str, ...]) -> None:
    caps = ehlo("mx", *lines)
    assert caps.auth == expected
    assert caps.has("AUTH")


def test_R14_ten_thousand_auth_mechanisms_are_capped() -> None:
    mechanisms = " ".join(f"M{i}" for i in range(10_000))
    caps = ehlo("mx", "AUTH " + mechanisms, "AUTH=EXTRA")
    assert len(caps.auth) == MAX_AUTH_MECHANISMS
    assert caps.auth[:2] == ("M0", "M1")
    assert "EXTRA" not in caps.auth


def test_old_auth_form_when_keyword_table_is_full() -> None:
    lines = [f"X-K{i}" for i in range(MAX_KEYWORDS)]
    caps = ehlo("mx", *lines, "AUTH=LOGIN")
    assert len(caps.keywords) == MAX_KEYWORDS
    assert caps.auth == ()


def test_auth_keyword_counts_once_when_table_fills_up() -> None:
    lines = ["AUTH PLAIN", *(f"X-K{i}" for i in range(MAX_KEYWORDS)), "AUTH=LOGIN"]
    caps = ehlo("mx", *lines)
    assert len(caps.keywords) == MAX_KEYWORDS
    assert caps.auth == ("PLAIN", "LOGIN")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("SIZE 1000", 1000),
        ("SIZE 1000 extra", 1000),
        ("SIZE", None),  # RFC 1870: no fixed maximum
        ("SIZE 0", None),
        ("SIZE -1", None),
        ("SIZE 99999999999999999999", None),
        ("SIZE 999999999999999999999", None),
        (f"SIZE {MAX_SIZE}", MAX_SIZE),
        (f"SIZE {MAX_SIZE + 1}", None),
        ("SIZE 1_000", None),
        ("SIZE 1e6", None),
        ("SIZE \u0661\u0662", None),  # Arabic-Indic digits: int() would take them
        ("SIZE 0x10", None),
    ],
)
def test_R14_size(line: str, expected: int | None) -> None:
    assert ehlo("mx", line).size == expected


def test_domain_is_first_word_or_empty() -> None:
    assert ehlo("mx.example.com ESMTP ready").domain == "mx.example.com"
    assert ehlo("").domain == ""
    assert ehlo("   ").domain == ""


def test_from_helo() -> None:
    caps = Capabilities.from_helo(Reply(250, ("old.example.com hello",)))
    assert caps == Capabilities(False, "old.example.com", {})
    assert not caps.esmtp and not caps.pipelining and caps.size is None and caps.auth == ()


@pytest.mark.parametrize("code", [354, 421, 502, 550])
def test_only_positive_replies_are_read(code: int) -> None:
    with pytest.raises(ValueError, match="2xx"):
        Capabilities.from_ehlo(Reply(code, ("mx", "PIPELINING")))
    with pytest.raises(ValueError, match="2xx"):
        Capabilities.from_helo(Reply(code, ("mx",)))


def test_reply_type_checked() -> None:
    with pytest.raises(ValueError, match="reply"):
        Capabilities.from_ehlo("250 mx")  # type: ignore[arg-type]


def test_table_is_read_only() -> None:
    caps = ehlo("mx", "PIPELINING")
    with pytest.raises(TypeError):
        caps.keywords["STARTTLS"] = ""  # type: ignore[index]
    source = {"STARTTLS": ""}
    direct = Capabilities(True, "mx", source)
    source["CHUNKING"] = ""
    assert not direct.chunking and direct.starttls
