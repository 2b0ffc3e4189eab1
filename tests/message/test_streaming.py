"""Streaming: bounded chunks, flat memory, exact size, the same bytes on every pass."""

from __future__ import annotations

import base64
import io
import os
import tracemalloc
from pathlib import Path

import pytest

from postillon.errors import InvalidMessage
from postillon.message import Attachment, Email, from_mime, iter_mime, prepare, to_mime
from postillon.message.charset import b64_size, iter_base64

from .helpers import assert_wire_clean, parse

CHUNK = 65_536


def sparse_file(tmp_path: Path, size: int, name: str = "big.bin") -> Path:
    path = tmp_path / name
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def mail_with(att: Attachment) -> Email:
    return Email(
        from_="a@example.com", to="b@example.org", subject="big", text_body="see", attachments=[att]
    )


def test_chunks_are_bounded_and_join_to_to_mime(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1_000_003))
    m = mail_with(Attachment(str(path)))
    p = prepare(m)
    chunks = list(p.chunks())
    assert all(0 < len(c) <= CHUNK for c in chunks)
    data = b"".join(chunks)
    assert p.size == len(data)
    assert p.read() == data  # same bytes on every pass: Date, ids, boundaries fixed
    assert_wire_clean(data)
    msg = parse(data)
    att = next(part for part in msg.walk() if part.get_filename() == "data.bin")
    assert att.get_content() == path.read_bytes()
    for line in data.split(b"\r\n\r\n", 4)[-1].split(b"\r\n")[:-5]:
        assert len(line) <= 76


def test_iter_mime_equals_to_mime_for_fixed_message() -> None:
    m = Email(
        from_="a@example.com",
        to="b@example.org",
        subject="s",
        text_body="x" * 300_000,
        message_id="<fixed@example.com>",
        send_at=__import__("datetime").datetime(
            2024, 1, 2, 3, 4, 5, tzinfo=__import__("datetime").UTC
        ),
    )
    chunks = list(iter_mime(m))
    assert all(len(c) <= CHUNK for c in chunks)
    a, b = b"".join(chunks), to_mime(m)
    # boundaries are random per call, the rest is fixed: single-part bodies are equal
    assert a == b


def test_base64_blocks_and_size() -> None:
    for n in (0, 1, 56, 57, 58, 57 * 840, 57 * 840 + 1, 200_000):
        data = os.urandom(n)
        out = b"".join(iter_base64(data))
        assert len(out) == b64_size(n)
        assert base64.b64decode(out) == data
        assert all(len(line) <= 76 for line in out.split(b"\r\n"))


def test_file_object_source_rewinds_and_unseekable_reads_once(tmp_path: Path) -> None:
    raw = os.urandom(100_000)
    buf = io.BytesIO(b"skip" + raw)
    buf.read(4)
    att = Attachment(buf, name="f.bin")
    assert att.size == len(raw)
    p = prepare(mail_with(att))
    assert p.read() == p.read()
    assert from_mime(p.read()).attachments[0].get_content() == raw

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = io.BytesIO(raw)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            chunk = self.data.read(min(len(b), 1000))  # short reads
            b[: len(chunk)] = chunk
            return len(chunk)

    once = Attachment(Pipe(), name="p.bin")
    assert once.size is None
    p2 = prepare(mail_with(once))
    assert p2.size is None
    data = p2.read()
    assert from_mime(data).attachments[0].get_content() == raw
    with pytest.raises(ValueError, match="cannot seek"):
        p2.read()


def _peak_while_iterating(m: Email) -> tuple[int, int]:
    tracemalloc.start()
    try:
        total = 0
        for chunk in iter_mime(m):
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return total, peak


def test_memory_flat_20mb(tmp_path: Path) -> None:
    path = sparse_file(tmp_path, 20 * 1024 * 1024)
    total, peak = _peak_while_iterating(mail_with(Attachment(str(path))))
    assert total > 20 * 1024 * 1024 * 4 // 3
    assert peak < 4 * 1024 * 1024, peak


@pytest.mark.slow
def test_memory_flat_200mb_sparse(tmp_path: Path) -> None:
    path = sparse_file(tmp_path, 200 * 1024 * 1024)
    total, peak = _peak_while_iterating(mail_with(Attachment(str(path))))
    assert total > 200 * 1024 * 1024 * 4 // 3
    assert peak < 64 * 1024 * 1024, peak
    assert peak < 4 * 1024 * 1024, peak  # in fact it stays near one block


def test_missing_or_special_sources_rejected(tmp_path: Path) -> None:
    for bad in (
        "phar://x",
        "file:///etc/shadow",
        "http://169.254.169.254/latest",
        "\\\\host\\share\\f",
        "//host/share/f",
        str(tmp_path / "nope.bin"),
        str(tmp_path),
    ):
        with pytest.raises(InvalidMessage) as info:
            Attachment(bad)
        assert info.value.field == "source"
    with pytest.raises(InvalidMessage):
        Attachment(io.StringIO("text"))  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage) as info:
        Email(attachments=["file:///etc/passwd"])
    assert info.value.field == "attachments[0].source"
