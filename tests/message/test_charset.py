"""The four charset modes against 4D's table (headers and bodies)."""

from __future__ import annotations

import pytest

from postillon.message import Attachment, CharsetMode, Email, from_mime, to_mime
from postillon.message.charset import encoded_words

from .helpers import assert_wire_clean, header_block, parse


def build(subject: str, body: str, mode: CharsetMode, name: str = "Ann") -> bytes:
    m = Email(
        from_={"name": name, "email": "a@example.com"},
        to="b@example.org",
        subject=subject,
        text_body=body,
        attachments=[Attachment(b"x", name=f"{subject or 'f'}.txt")],
    )
    return to_mime(m, header_charset=mode, body_charset=mode)


def text_part(data: bytes):  # type: ignore[no-untyped-def]
    return next(
        p
        for p in parse(data).walk()
        if p.get_content_type() == "text/plain" and not p.get_filename()
    )


# 4D: "US-ASCII if possible, else <charset> & <encoding>", with UTF-8 as the fallback
TABLE = [
    # mode, text, header word prefix, body charset, body CTE
    (CharsetMode.UTF8_QP, "Café", "=?UTF-8?Q?", "utf-8", "quoted-printable"),
    (CharsetMode.UTF8_B64, "Café", "=?UTF-8?B?", "utf-8", "base64"),
    (CharsetMode.ISO_8859_1, "Café", "=?ISO-8859-1?Q?", "iso-8859-1", "quoted-printable"),
    (CharsetMode.ISO_8859_1, "Café €", "=?UTF-8?Q?", "utf-8", "quoted-printable"),
    (CharsetMode.ISO_2022_JP, "日本語のメール", "=?ISO-2022-JP?B?", "iso-2022-jp", "7bit"),
    (CharsetMode.ISO_2022_JP, "Café", "=?UTF-8?Q?", "utf-8", "quoted-printable"),
]


@pytest.mark.parametrize(("mode", "text", "prefix", "charset", "cte"), TABLE)
def test_mode_table(mode: CharsetMode, text: str, prefix: str, charset: str, cte: str) -> None:
    data = build(text, text + "\n", mode, name=text)
    assert_wire_clean(data)
    head = header_block(data).decode("ascii")
    assert f"Subject: {prefix}" in head
    assert f"From: {prefix}" in head
    part = text_part(data)
    assert part.get_content_charset() == charset
    assert part["content-transfer-encoding"] == cte
    back = from_mime(data)
    assert back.subject == text
    assert back.text_body == text + "\n"
    assert back.from_[0].name == text
    assert back.attachments[0].name == f"{text}.txt"


@pytest.mark.parametrize("mode", list(CharsetMode))
def test_ascii_stays_ascii(mode: CharsetMode) -> None:
    data = build("Hello world", "plain text\n", mode)
    head = header_block(data)
    assert b"=?" not in head
    assert b"Subject: Hello world\r\n" in head
    part = text_part(data)
    assert part.get_content_charset() == "us-ascii"
    assert part["content-transfer-encoding"] == "7bit"


def test_iso_8859_1_attachment_name_uses_rfc2231_latin1() -> None:
    data = build("résumé", "x", CharsetMode.ISO_8859_1)
    assert b"filename*=ISO-8859-1''r%E9sum%E9.txt" in data


def test_parse_accepts_4d_strings_and_names() -> None:
    assert CharsetMode.parse("US-ASCII_UTF8_QP") is CharsetMode.UTF8_QP
    assert CharsetMode.parse("us-ascii_utf8_b64") is CharsetMode.UTF8_B64
    assert CharsetMode.parse("ISO_2022_JP") is CharsetMode.ISO_2022_JP
    assert CharsetMode("utf8_qp") is CharsetMode.UTF8_QP
    with pytest.raises(ValueError, match="header_charset"):
        CharsetMode.parse("EBCDIC", "header_charset")
    with pytest.raises(ValueError, match="header_charset"):
        to_mime(Email(from_="a@b.org", to="c@d.org"), header_charset="EBCDIC")


@pytest.mark.parametrize("mode", list(CharsetMode))
def test_encoded_words_never_exceed_75(mode: CharsetMode) -> None:
    text = "日本語のメール Café ü " * 20
    for word in encoded_words(text, mode):
        assert len(word) <= 75
    data = build(text.strip(), "x", mode)
    assert_wire_clean(data)
    assert max(len(line) for line in header_block(data).split(b"\r\n")) <= 78
    assert from_mime(data).subject == text.strip()


def test_iso_2022_jp_body_is_7bit_and_round_trips() -> None:
    body = "こんにちは\n世界\n"
    data = build("件名", body, CharsetMode.ISO_2022_JP)
    assert data.isascii()
    assert b"\x1b$B" in data  # ISO-2022-JP shift into JIS X 0208
    assert from_mime(data).text_body == body
