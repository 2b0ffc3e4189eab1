"""AsyncTransporter signs without blocking the event loop.

Signing reads the whole message once before it is sent (the DKIM body hash, the S/MIME
digest). For a file attachment that is disk I/O and, for 20 MB, seconds of hashing: the
asyncio transporter does it in a worker thread at staging, and the batch then sends the
signed message as is (it is not signed a second time when the conversation takes it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from postillon import AsyncTransporter, Attachment, Email, Security
from postillon.message.prepared import Prepared
from postillon.signing import DkimSigner, SmimeSigner

from .signing_helpers import P12_PASSWORD, DkimKeys, Pki, assert_smime_verifies, dkim_verifies

MB = 1024 * 1024


def write_file(path: Path, size: int) -> bytes:
    block = hashlib.shake_256(path.name.encode()).digest(MB)
    with path.open("wb") as f:
        for _ in range(size // MB):
            f.write(block)
    return block


def test_twenty_megabytes_signed_with_dkim_and_smime_never_block_the_loop(
    smtpd: Any,
    tmp_path: Path,
    dkim_keys: DkimKeys,
    pki: Pki,
    openssl: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # asyncio debug mode logs every callback slower than slow_callback_duration: the
    # signing of a 20 MB file attachment (read, base64, two hashes) must produce none.
    big = tmp_path / "big.bin"
    block = write_file(big, 20 * MB)
    dkim = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)
    server = smtpd()
    mail = Email(
        from_="ann@example.com",
        to="bob@example.org",
        subject="Vingt mégaoctets",
        text_body="see attachment",
        attachments=[Attachment(str(big))],
    )

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.1
        async with AsyncTransporter(
            server.host, server.port, security=Security.NONE, send_timeout=120,
            dkim=dkim, smime_certificate=pki.p12, smime_password=P12_PASSWORD,
        ) as t:  # fmt: skip
            return await t.send(mail)

    caplog.set_level(logging.WARNING, logger="asyncio")
    status = asyncio.run(main(), debug=True)
    assert status.success, status
    slow = [
        r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()
    ]
    assert slow == []
    [received] = server.wait_for(1, timeout=30)
    content = received.content
    assert len(content) > 27 * MB  # base64 of 20 MB, plus the signature
    assert dkim_verifies(content, dkim)
    inner = assert_smime_verifies(openssl, pki.ca_pem, content, tmp_path)
    assert inner.startswith(b"Content-Type: multipart/mixed")
    # the attachment arrived whole: its first base64 line is the file's first bytes
    import base64

    first_line = base64.b64encode(block[:57])
    assert first_line in content


@pytest.fixture
def sign_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record each DkimSigner/SmimeSigner.sign call: (signer, on the main thread?)."""
    calls: list[tuple[str, bool]] = []
    for cls in (DkimSigner, SmimeSigner):
        original = cls.sign

        def wrapper(self: Any, prepared: Prepared, *a: Any, __o: Any = original, **k: Any) -> Any:
            calls.append(
                (type(self).__name__, threading.current_thread() is threading.main_thread())
            )
            return __o(self, prepared, *a, **k)

        monkeypatch.setattr(cls, "sign", wrapper)
    return calls


def test_file_message_is_signed_once_in_a_worker_thread(
    smtpd: Any, tmp_path: Path, dkim_keys: DkimKeys, pki: Pki, sign_calls: list[Any]
) -> None:
    path = tmp_path / "doc.bin"
    write_file(path, MB)
    dkim = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)
    server = smtpd()
    mails = [
        Email(from_="ann@example.com", to="bob@example.org", subject=f"n{i}",
              attachments=[Attachment(str(path))])
        for i in range(3)
    ]  # fmt: skip

    async def main() -> list[Any]:
        async with AsyncTransporter(
            server.host, server.port, security=Security.NONE, max_connections=2,
            dkim=dkim, smime_certificate=pki.p12, smime_password=P12_PASSWORD,
        ) as t:  # fmt: skip
            one = await t.send(mails[0])
            return [one, *await t.send_many(mails[1:])]

    statuses = asyncio.run(main())
    assert all(s.success for s in statuses), statuses
    # one S/MIME and one DKIM signature per message, none of them on the loop's thread
    assert sorted(name for name, _ in sign_calls) == ["DkimSigner"] * 3 + ["SmimeSigner"] * 3
    assert not any(on_main for _, on_main in sign_calls), sign_calls
    for received in server.wait_for(3):
        assert received.content.count(b"DKIM-Signature:") == 1
        assert dkim_verifies(received.content, dkim)


def test_small_in_memory_message_is_signed_once_on_the_loop(
    smtpd: Any, dkim_keys: DkimKeys, sign_calls: list[Any]
) -> None:
    # A few kilobytes in memory: hashing them costs less than a trip to a thread.
    dkim = DkimSigner("example.com", "s2024", dkim_keys.ed25519_pem)
    server = smtpd()

    async def main() -> Any:
        async with AsyncTransporter(
            server.host, server.port, security=Security.NONE, dkim=dkim
        ) as t:
            return await t.send(
                Email(from_="ann@example.com", to="bob@example.org", subject="s", text_body="t")
            )

    assert asyncio.run(main()).success
    assert sign_calls == [("DkimSigner", True)]
    [received] = server.wait_for(1)
    assert received.content.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256")


def test_signing_error_in_send_many_fails_that_message_only(
    smtpd: Any, dkim_keys: DkimKeys
) -> None:
    # DKIM must sign From (RFC 6376 5.4): a raw message without one cannot be signed.
    from postillon import RawMessage

    dkim = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)
    server = smtpd()
    no_from = RawMessage(b"To: b@example.org\r\nSubject: x\r\n\r\nbody\r\n", "a@x.org", ["b@x.org"])
    good = Email(from_="ann@example.com", to="bob@example.org", subject="ok", text_body="t")

    async def main() -> list[Any]:
        async with AsyncTransporter(
            server.host, server.port, security=Security.NONE, dkim=dkim
        ) as t:
            with pytest.raises(ValueError, match="From"):
                await t.send(no_from)
            return await t.send_many([no_from, good])

    bad, ok = asyncio.run(main())
    assert not bad.success and "no From field" in bad.errors[0].message
    assert ok.success
    [received] = server.wait_for(1)
    assert dkim_verifies(received.content, dkim)


def test_message_needing_smtputf8_is_signed_off_the_loop_too(
    smtpd: Any, tmp_path: Path, dkim_keys: DkimKeys, sign_calls: list[Any]
) -> None:
    # A non-ASCII local part cannot go without SMTPUTF8 (RFC 6531): the rendering that
    # will go is the SMTPUTF8 one, and that is the one signed at staging, in a thread.
    path = tmp_path / "doc.bin"
    write_file(path, MB)
    dkim = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)
    server = smtpd(smtputf8=True)
    mail = Email(
        from_="ann@example.com", to="jürgen@example.org", subject="Grüße",
        attachments=[Attachment(str(path))],
    )  # fmt: skip

    async def main() -> Any:
        async with AsyncTransporter(
            server.host, server.port, security=Security.NONE, dkim=dkim
        ) as t:
            return await t.send(mail)

    status = asyncio.run(main())
    assert status.success, status
    assert sign_calls == [("DkimSigner", False)]
    [received] = server.wait_for(1)
    assert received.rcpt_tos == ["jürgen@example.org"]
    assert received.content.count(b"DKIM-Signature:") == 1
    assert dkim_verifies(received.content, dkim)
