"""Checks shared by the message tests: parse what we wrote and verify it strictly."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser

MAX_LINE = 998


def parse(data: bytes) -> EmailMessage:
    """Parse with the stdlib (policy default) and require no defect anywhere."""
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    for part in msg.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
        for name in part:
            for value in part.get_all(name, []):
                assert not getattr(value, "defects", ()), (name, value.defects)
    return msg


def assert_wire_clean(data: bytes) -> None:
    """CRLF only, no bare CR or LF, no line over 998 octets, no NUL, ends with CRLF."""
    assert data.endswith(b"\r\n")
    assert b"\x00" not in data
    lines = data.split(b"\r\n")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= MAX_LINE, len(line)


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def header_names(data: bytes) -> list[str]:
    """Names of the top-level header fields, from the raw bytes (not a parser)."""
    names = []
    for line in header_block(data).split(b"\r\n"):
        if line and line[:1] not in b" \t":
            names.append(line.split(b":", 1)[0].decode().lower())
    return names
