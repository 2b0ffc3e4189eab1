"""AsyncTransporter's own promises: the pool bound, healing, cancellation, a free loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from postillon import AsyncTransporter, Attachment, Email, RawMessage, Security, Transporter

from support.script import SMTP_DEFAULTS, expect, send, stall
from support.smtpd import Fault

RAW = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: hi\r\n\r\nhello\r\n"


def raw(i: int = 0) -> RawMessage:
    body = RAW.replace(b"hello", f"hello {i}".encode())
    return RawMessage(
        body.replace(b"Subject: hi", f"Message-ID: <m{i}@x.test>".encode()),
        "a@x.test",
        ["b@x.test"],
    )


def test_hundred_concurrent_sends_share_four_connections(smtpd: Any) -> None:
    server = smtpd()

    async def main() -> list[Any]:
        async with AsyncTransporter(
            server.host, server.port, security=Security.NONE, max_connections=4
        ) as t:
            return await asyncio.gather(*(t.send(raw(i)) for i in range(100)))

    statuses = asyncio.run(main())
    assert all(s.success for s in statuses)
    server.wait_for(100)
    assert 1 <= server.connections <= 4
    ids = sorted(m.parsed().get("Message-ID") for m in server.messages)
    assert ids == sorted(f"<m{i}@x.test>" for i in range(100))


def test_send_many_uses_the_pool_and_keeps_order(smtpd: Any) -> None:
    server = smtpd()

    async def main() -> list[Any]:
        async with AsyncTransporter(
            server.host, server.port, security=Security.NONE, max_connections=3
        ) as t:
            return await t.send_many(raw(i) for i in range(60))

    statuses = asyncio.run(main())
    assert [s.message_id for s in statuses] == [f"<m{i}@x.test>" for i in range(60)]
    assert all(s.success for s in statuses)
    assert server.connections <= 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_server_drops_mid_batch_every_message_gets_a_status(smtpd: Any, kind: str) -> None:
    # The server takes message 1, then drops the connection before answering its end of
    # data: message 1 is "uncertain" (it was delivered), every other one is delivered.
    server = smtpd(faults={"EOD": Fault(disconnect=True, times=1, deliver=True)})
    mails = [raw(i) for i in range(20)]
    if kind == "sync":
        with Transporter(server.host, server.port, security=Security.NONE) as t:
            statuses = t.send_many(mails)
    else:

        async def main() -> list[Any]:
            async with AsyncTransporter(server.host, server.port, security=Security.NONE) as t:
                return await t.send_many(mails)

        statuses = asyncio.run(main())
    assert len(statuses) == 20
    assert statuses[0].uncertain and not statuses[0].success and statuses[0].status == 0
    assert all(s.success for s in statuses[1:]), [s for s in statuses if not s.success]
    server.wait_for(20)
    ids = [m.parsed().get("Message-ID") for m in server.messages]
    assert sorted(ids) == sorted(f"<m{i}@x.test>" for i in range(20))  # none lost, none twice


def test_cancelled_send_drops_its_connection(script_server: Any) -> None:
    # First connection: the server never answers MAIL. The send is cancelled; the next
    # send must use a fresh connection and never see a late reply.
    server = script_server(
        [
            send(b"220 hi\r\n"),
            expect(b"EHLO"),
            send(b"250-mx\r\n250 PIPELINING\r\n"),
            expect(b"MAIL"),
            stall(3),
        ],
    )

    async def main() -> tuple[bool, int]:
        t = AsyncTransporter(server.host, server.port, security=Security.NONE)
        task = asyncio.create_task(t.send(raw()))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        idle = len(t._idle)
        await t.close()
        return task.cancelled(), idle

    cancelled, idle = asyncio.run(main())
    assert cancelled and idle == 0


def test_cancelled_send_then_new_send_works(smtpd: Any) -> None:
    server = smtpd(faults={"MAIL": Fault(delay=1.0, times=1)})

    async def main() -> Any:
        async with AsyncTransporter(server.host, server.port, security=Security.NONE) as t:
            task = asyncio.create_task(t.send(raw(1)))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await t.send(raw(2)), t.connections_opened

    status, opened = asyncio.run(main())
    assert status.success and status.message_id == "<m2@x.test>"
    assert opened == 2


def test_event_loop_never_blocked(
    smtpd: Any, tmp_path: Path, client_ssl_context: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # asyncio debug mode logs every callback slower than the threshold: a 30 MB file
    # attachment read and encoded, and a TLS handshake, must produce none.
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(30):
            f.write(bytes(range(256)) * 4096)
    server = smtpd(tls="starttls")
    mail = Email(
        from_="a@x.test",
        to="b@x.test",
        subject="big",
        text_body="see attachment",
        attachments=[Attachment(str(big))],
    )

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.1
        async with AsyncTransporter(
            server.host, server.port, ssl_context=client_ssl_context, send_timeout=60
        ) as t:
            return await t.send(mail)

    caplog.set_level(logging.WARNING, logger="asyncio")
    status = asyncio.run(main(), debug=True)
    assert status.success, status
    slow = [
        r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()
    ]
    assert slow == []


def test_async_and_sync_share_one_protocol_core() -> None:
    # The drivers hold no protocol logic: both pump Conversation flows.
    import inspect

    import postillon.transport.aio as aio
    import postillon.transport.sync as sync

    for module in (aio, sync):
        source = inspect.getsource(module)
        assert "MAIL FROM" not in source and "EHLO" not in source and "334" not in source


def test_default_replies_server_smoke(script_server: Any) -> None:
    server = script_server(default_replies=SMTP_DEFAULTS, connections=1)

    async def main() -> Any:
        async with AsyncTransporter(server.host, server.port, security=Security.NONE) as t:
            return await t.check_connection()

    assert asyncio.run(main()).success
