"""message/* attachments: never base64 (RFC 2046 5.2.1)."""

from __future__ import annotations

import email
import email.policy

from postillon import Attachment, Email, from_mime, to_mime


def _part(out: bytes, ctype: str) -> email.message.EmailMessage:
    msg = email.message_from_bytes(out, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type() == ctype]
    assert len(parts) == 1, [p.get_content_type() for p in msg.walk()]
    return parts[0]  # type: ignore[return-value]


def test_seven_bit_message_goes_as_is() -> None:
    inner = b"From: x@example.org\nSubject: inner\n\nline one\n.\nline two\n"
    mail = Email(from_="a@example.org", to="b@example.org", text_body="fwd",
                 attachments=[Attachment(inner, name="fwd.eml")])  # fmt: skip
    out = to_mime(mail)
    part = _part(out, "message/rfc822")
    assert part["Content-Transfer-Encoding"] == "7bit"
    assert b"Subject: inner\r\n\r\nline one\r\n.\r\nline two" in out
    [att] = from_mime(out).attachments
    assert att.get_content().replace(b"\r\n", b"\n").strip() == inner.strip()


def test_eight_bit_message_goes_as_an_opaque_file() -> None:
    inner = "From: x@example.org\nSubject: café\n\nnon-ASCII body é\n".encode()
    mail = Email(from_="a@example.org", to="b@example.org", text_body="fwd",
                 attachments=[Attachment(inner, name="fwd.eml")])  # fmt: skip
    out = to_mime(mail)
    part = _part(out, "application/octet-stream")
    assert part["Content-Transfer-Encoding"] == "base64"
    assert part.get_content() == inner
    assert b"message/rfc822" not in out
