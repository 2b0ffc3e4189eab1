"""Signing on every send path, checked on what a real server received.

Each path (sync ``send`` and ``send_many``, ``AsyncTransporter.send`` and ``send_many``
over two connections, the spool through ``Transporter(asynchronous=True)`` and through
``Spool.submit`` + ``Spool.run``) sends two messages to the aiosmtpd harness: an ``Email``
with a non-ASCII subject and an in-memory attachment, and one with a file attachment that
is streamed. Each is signed with DKIM rsa-sha256, DKIM ed25519-sha256, S/MIME, or S/MIME
and DKIM together. The received bytes are verified by independent tools: dkimpy for
DKIM, ``openssl cms -verify`` against the test CA for S/MIME; then parsed back to check
that the subject and the attachment bytes arrived intact.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import sqlite3
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from postillon import AsyncTransporter, Attachment, Email, Security, SpoolState, Transporter
from postillon.message import prepare
from postillon.signing import DkimSigner, SmimeSigner
from postillon.spool import RetryPolicy, Spool

from .signing_helpers import (
    P12_PASSWORD,
    DkimKeys,
    Pki,
    assert_smime_verifies,
    dkim_tags,
    dkim_verifies,
    need_nacl,
)
from support.smtpd import Fault

SUBJECT = "Réunion — compte rendu, 会議の議事録"
INLINE = bytes(range(256)) * 400  # 100 KiB, every byte value
INLINE_NAME = "données.bin"
FILE_NAME = "relevé.pdf"
NOW_RETRY = RetryPolicy(min_backoff=0, max_backoff=0, jitter=0, server_pause=0)


# ---------------------------------------------------------------- the signing setups


@dataclass
class Setup:
    """One signing configuration: the transporter keywords and the verification."""

    name: str
    dkim: DkimSigner | None
    smime_p12: bytes | None
    pki: Pki
    openssl: str | None

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.dkim is not None:
            kw["dkim"] = self.dkim
        if self.smime_p12 is not None:
            kw["smime_certificate"] = self.smime_p12
            kw["smime_password"] = P12_PASSWORD
        return kw

    def check(self, content: bytes, tmp: Path) -> EmailMessage:
        """Verify ``content`` as received; return it parsed."""
        assert content.count(b"DKIM-Signature:") == (1 if self.dkim else 0)
        if self.dkim is not None:
            assert content.startswith(b"DKIM-Signature: v=1; a=" + self.dkim.algorithm.encode())
            assert dkim_verifies(content, self.dkim), "dkimpy refused the DKIM signature"
            tags = dkim_tags(content)
            assert tags["d"] == "example.com" and tags["c"] == "relaxed/relaxed"
            h = tags["h"].split(":")
            assert {"from", "subject", "content-type", "message-id"} <= set(h)
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        if self.smime_p12 is not None:
            assert self.openssl is not None
            inner = assert_smime_verifies(self.openssl, self.pki.ca_pem, content, tmp)
            assert parsed.get_content_type() == "multipart/signed"
            assert parsed.get_param("protocol") == "application/pkcs7-signature"
            # exactly one signature level: nothing signed twice
            assert content.count(b"application/pkcs7-signature;") == 1
            assert inner.startswith(b"Content-Type: multipart/mixed")
        else:
            assert parsed.get_content_type() == "multipart/mixed"
        return parsed


SETUPS = ["dkim-rsa", "dkim-ed25519", "smime", "smime+dkim"]


@pytest.fixture(params=SETUPS)
def setup(request: pytest.FixtureRequest, dkim_keys: DkimKeys, pki: Pki, openssl: str) -> Setup:
    name = request.param
    dkim = None
    if "dkim" in name:
        if name == "dkim-ed25519":
            need_nacl()
            pem = dkim_keys.ed25519_pem
        else:
            pem = dkim_keys.rsa_pem
        dkim = DkimSigner("example.com", "s2024", pem)
    p12 = pki.p12 if "smime" in name else None
    return Setup(name, dkim, p12, pki, openssl)


# ---------------------------------------------------------------- the messages


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = hashlib.shake_256(b"postillon").digest(300_000)  # not in memory when sent
    path = tmp_path / FILE_NAME
    path.write_bytes(data)
    return path, data


def mails(big_file: tuple[Path, bytes], tag: str = "") -> list[Email]:
    path, _ = big_file
    return [
        Email(
            from_="Zoë Ærø <ann@example.com>",
            to="Bob <bob@example.org>",
            subject=SUBJECT,
            text_body="Bonjour Bob,\n\nvoici le fichier. Ça marche ?\n",
            attachments=[Attachment(INLINE, name=INLINE_NAME)],
            message_id=f"<inline{tag}@example.com>",
        ),
        Email(
            from_="ann@example.com",
            to="carol@example.org",
            subject="Relevé",
            text_body="Le relevé est joint.\n",
            attachments=[Attachment(str(path))],
            message_id=f"<file{tag}@example.com>",
        ),
    ]


def attachment_bytes(parsed: EmailMessage, name: str) -> bytes:
    for part in parsed.walk():
        if part.get_filename() == name:
            content = part.get_content()
            assert isinstance(content, bytes)
            return content
    raise AssertionError(f"no attachment named {name!r}")


def check_received(
    setup: Setup, server: Any, big_file: tuple[Path, bytes], tmp: Path, tag: str = ""
) -> None:
    wanted = {f"<inline{tag}@example.com>", f"<file{tag}@example.com>"}
    received = {m.parsed()["Message-ID"]: m for m in server.wait_for(2)}
    assert wanted <= set(received)
    first = setup.check(received[f"<inline{tag}@example.com>"].content, tmp)
    assert first["Subject"] == SUBJECT
    assert attachment_bytes(first, INLINE_NAME) == INLINE
    second = setup.check(received[f"<file{tag}@example.com>"].content, tmp)
    assert attachment_bytes(second, FILE_NAME) == big_file[1]
    assert received[f"<file{tag}@example.com>"].rcpt_tos == ["carol@example.org"]


def plain(server: Any, **kw: Any) -> dict[str, Any]:
    return {"security": Security.NONE, "send_timeout": 30, **kw}


# ---------------------------------------------------------------- the paths


def test_sync_send(setup: Setup, smtpd: Any, big_file: Any, tmp_path: Path) -> None:
    server = smtpd()
    with Transporter(server.host, server.port, **plain(server), **setup.kwargs()) as t:
        for mail in mails(big_file):
            status = t.send(mail)
            assert status.success, status
    check_received(setup, server, big_file, tmp_path)


def test_sync_send_many(setup: Setup, smtpd: Any, big_file: Any, tmp_path: Path) -> None:
    server = smtpd()
    with Transporter(server.host, server.port, **plain(server), **setup.kwargs()) as t:
        statuses = t.send_many(mails(big_file))
    assert [s.success for s in statuses] == [True, True], statuses
    check_received(setup, server, big_file, tmp_path)


def test_async_send(setup: Setup, smtpd: Any, big_file: Any, tmp_path: Path) -> None:
    server = smtpd()

    async def main() -> list[Any]:
        async with AsyncTransporter(
            server.host, server.port, **plain(server), **setup.kwargs()
        ) as t:
            return list(await asyncio.gather(*(t.send(m) for m in mails(big_file))))

    statuses = asyncio.run(main())
    assert all(s.success for s in statuses), statuses
    check_received(setup, server, big_file, tmp_path)


def test_async_send_many_two_connections(
    setup: Setup, smtpd: Any, big_file: Any, tmp_path: Path
) -> None:
    server = smtpd()

    async def main() -> list[Any]:
        async with AsyncTransporter(
            server.host, server.port, max_connections=2, **plain(server), **setup.kwargs()
        ) as t:
            return await t.send_many(mails(big_file))

    statuses = asyncio.run(main())
    assert [s.message_id for s in statuses] == ["<inline@example.com>", "<file@example.com>"]
    assert all(s.success for s in statuses), statuses
    check_received(setup, server, big_file, tmp_path)


def wait_sent(spool: Spool, mail_ids: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(spool.status(i).state is SpoolState.SENT for i in mail_ids):
        assert time.monotonic() < deadline, [spool.status(i) for i in mail_ids]
        time.sleep(0.02)


def test_spool_through_asynchronous_transporter(
    setup: Setup, smtpd: Any, big_file: Any, tmp_path: Path
) -> None:
    server = smtpd()
    spool = Spool(tmp_path / "spool.db")
    t = Transporter(
        server.host, server.port, asynchronous=True, spool=spool,
        **plain(server), **setup.kwargs(),
    )  # fmt: skip
    try:
        statuses = [t.send(m) for m in mails(big_file)]
        assert all(s.state is SpoolState.PENDING for s in statuses)
        wait_sent(spool, [s.mail_id for s in statuses])
    finally:
        t.close()
        spool.close()
    check_received(setup, server, big_file, tmp_path)


def test_spool_submit_then_run(setup: Setup, smtpd: Any, big_file: Any, tmp_path: Path) -> None:
    # Spool.submit() knows no signer: the transporter given to run() signs at delivery.
    server = smtpd()
    with Spool(tmp_path / "spool.db") as spool:
        ids = [spool.submit(m) for m in mails(big_file)]
        t = Transporter(server.host, server.port, **plain(server), **setup.kwargs())
        stats = spool.run(t, workers=2, until_empty=True, retry=NOW_RETRY)
        assert stats.sent == 2, stats
        assert all(spool.status(i).state is SpoolState.SENT for i in ids)
    check_received(setup, server, big_file, tmp_path)


def test_per_message_signers_sync_and_async(
    smtpd: Any, dkim_keys: DkimKeys, pki: Pki, openssl: str, big_file: Any, tmp_path: Path
) -> None:
    # send(mail, smime=..., dkim=...) signs that message only; the transporter has none.
    dkim = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)
    smime = SmimeSigner(pki.p12, P12_PASSWORD)
    both = Setup("smime+dkim", dkim, pki.p12, pki, openssl)
    server = smtpd()
    inline, on_file = mails(big_file)
    with Transporter(server.host, server.port, **plain(server)) as t:
        assert t.send(inline, smime=smime, dkim=dkim).success
        assert t.send(on_file, smime=(pki.p12, P12_PASSWORD), dkim=dkim).success
        assert t.send(Email(from_="a@example.com", to="b@example.org", subject="bare")).success
    check_received(both, server, big_file, tmp_path)
    bare = server.wait_for(3)[2].content
    assert b"DKIM-Signature" not in bare and b"multipart/signed" not in bare

    server2 = smtpd()

    async def main() -> list[Any]:
        async with AsyncTransporter(server2.host, server2.port, **plain(server2)) as t:
            return [await t.send(m, smime=smime, dkim=dkim) for m in mails(big_file)]

    assert all(s.success for s in asyncio.run(main()))
    check_received(both, server2, big_file, tmp_path)


# ---------------------------------------------------------------- the spool signs once


def stored_bytes(db: Path, mail_id: str) -> bytes:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT data FROM spool_chunks WHERE mail_id = ? ORDER BY seq", (mail_id,)
        ).fetchall()
    assert rows, "the message bytes are not in the spool"
    return b"".join(r[0] for r in rows)


def test_spool_stores_signed_bytes_and_a_retry_sends_them_unchanged(
    smtpd: Any, dkim_keys: DkimKeys, pki: Pki, openssl: str, tmp_path: Path
) -> None:
    dkim = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)
    both = Setup("smime+dkim", dkim, pki.p12, pki, openssl)
    server = smtpd(faults={"EOD": Fault(reply="451 4.3.0 later", times=1)})
    db = tmp_path / "spool.db"
    spool = Spool(db)
    t = Transporter(
        server.host, server.port, asynchronous=True, spool=spool, **plain(server),
        **both.kwargs(),
    )  # fmt: skip
    mail = Email(
        from_="ann@example.com", to="bob@example.org", subject=SUBJECT,
        text_body="une fois", attachments=[Attachment(INLINE, name=INLINE_NAME)],
    )  # fmt: skip
    try:
        mail_id = t.send(mail).mail_id
        assert mail_id
        deadline = time.monotonic() + 10
        while spool.status(mail_id).attempts < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        entry = spool.status(mail_id)
        assert entry.state is SpoolState.PENDING
        assert entry.last_status is not None and entry.last_status.status == 451
        stored = stored_bytes(db, mail_id)
        # signed at submit: the stored bytes carry both signatures already
        assert stored.startswith(b"DKIM-Signature: ")
        both.check(stored, tmp_path)
        time.sleep(1.1)  # a second signature would carry another t=
        assert spool.retry(mail_id)
        wait_sent(spool, [mail_id])
    finally:
        t.close()
        spool.close()
    [received] = server.wait_for(1)
    assert received.content == stored
    assert dkim_tags(received.content)["t"] == dkim_tags(stored)["t"]
    both.check(received.content, tmp_path)


def test_spool_submit_without_signer_is_signed_at_each_delivery(
    smtpd: Any, dkim_keys: DkimKeys, pki: Pki, openssl: str, tmp_path: Path
) -> None:
    # The other case: Spool.submit() stored plain bytes; run() signs them when it sends,
    # and a retry signs them again (they were never stored signed).
    dkim = DkimSigner("example.com", "s2024", dkim_keys.ed25519_pem)
    need_nacl()
    server = smtpd(faults={"EOD": Fault(reply="451 4.3.0 later", times=1)})
    db = tmp_path / "spool.db"
    with Spool(db) as spool:
        mail_id = spool.submit(
            Email(from_="ann@example.com", to="bob@example.org", subject="x", text_body="y")
        )
        t = Transporter(server.host, server.port, **plain(server), dkim=dkim)
        spool.run(t, workers=1, until_empty=True, retry=NOW_RETRY)
        entry = spool.status(mail_id)
        assert entry.state is SpoolState.SENT and entry.attempts == 2
        stored = stored_bytes(db, mail_id)
    assert b"DKIM-Signature" not in stored
    [received] = server.wait_for(1)
    assert received.content.endswith(stored)
    assert dkim_verifies(received.content, dkim)
    assert received.content.count(b"DKIM-Signature:") == 1


def test_spool_submit_with_signers_stores_signed_bytes(
    smtpd: Any, dkim_keys: DkimKeys, tmp_path: Path
) -> None:
    # Spool.submit(mail, dkim=...) signs once, at submit: the retry sends those bytes.
    dkim = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)
    server = smtpd(faults={"EOD": Fault(reply="451 4.3.0 later", times=1)})
    db = tmp_path / "spool.db"
    with Spool(db) as spool:
        mail_id = spool.submit(
            Email(from_="ann@example.com", to="bob@example.org", subject="x", text_body="y"),
            dkim=dkim,
        )
        stored = stored_bytes(db, mail_id)
        assert stored.startswith(b"DKIM-Signature: ")
        time.sleep(1.1)  # a second signature would carry another t=
        t = Transporter(server.host, server.port, **plain(server), dkim=dkim)
        spool.run(t, workers=1, until_empty=True, retry=NOW_RETRY)
        assert spool.status(mail_id).attempts == 2
    [received] = server.wait_for(1)
    assert received.content == stored
    assert dkim_verifies(received.content, dkim)


def test_spool_entry_signed_by_another_key_gets_ours_too(
    smtpd: Any, dkim_keys: DkimKeys, tmp_path: Path
) -> None:
    # Only our own signature (same d= and s=) means "signed at submit"; a message
    # carrying someone else's DKIM-Signature is still signed by the transporter.
    theirs = DkimSigner("example.net", "other", dkim_keys.rsa_pem)
    ours = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)
    server = smtpd()
    mail = Email(from_="ann@example.com", to="bob@example.org", subject="x", text_body="y")
    with Spool(tmp_path / "spool.db") as spool:
        spool.submit(theirs.sign(prepare(mail)))
        t = Transporter(server.host, server.port, **plain(server), dkim=ours)
        assert spool.run(t, workers=1, until_empty=True, retry=NOW_RETRY).sent == 1
    [received] = server.wait_for(1)
    assert received.content.count(b"DKIM-Signature:") == 2
    assert dkim_tags(received.content)["d"] == "example.com"  # ours, on top
    assert dkim_verifies(received.content, ours, theirs)


def test_outbox_captures_signed_bytes(dkim_keys: DkimKeys, big_file: Any) -> None:
    # The in-process outbox takes the same path as the wire: what it holds is signed.
    from postillon.testing import Outbox

    dkim = DkimSigner("example.com", "s2024", dkim_keys.rsa_pem)

    async def main() -> None:
        async with AsyncTransporter("smtp.invalid", dkim=dkim) as t:
            for m in mails(big_file):
                assert (await t.send(m)).success

    with Outbox() as box:
        asyncio.run(main())
        with Transporter("smtp.invalid", dkim=dkim) as t:
            t.send_many(mails(big_file, "-sync"))
    assert len(box.messages) == 4
    for captured in box.messages:
        assert dkim_verifies(captured.raw, dkim)
