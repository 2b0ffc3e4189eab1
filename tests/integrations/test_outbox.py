"""postillon.testing.Outbox: captures every send in the process, without a network."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from postillon import (
    AsyncTransporter,
    Email,
    InvalidMessage,
    RawMessage,
    Security,
    SpoolState,
    Transporter,
)
from postillon.spool import Spool
from postillon.testing import CapturedMessage, Outbox

from support.sink import free_port

# Nothing listens on this port: a send that escaped the outbox would fail to connect.
DEAD_PORT = free_port()


def mail(i: int = 0, **kw: Any) -> Email:
    fields: dict[str, Any] = {
        "from_": "Ann <ann@example.com>",
        "to": "bob@example.com",
        "subject": f"Hello {i}",
        "text_body": f"body {i}",
    }
    fields.update(kw)
    return Email(**fields)


def transporter(**kw: Any) -> Transporter:
    return Transporter("127.0.0.1", DEAD_PORT, security=Security.NONE, **kw)


def test_sync_send_is_captured_and_successful() -> None:
    with Outbox() as box, transporter() as t:
        status = t.send(mail(1, cc="Carl <carl@example.com>", bcc="dan@example.com"))
    assert status.success and status.status == 250
    assert status.accepted == ["bob@example.com", "carl@example.com", "dan@example.com"]
    assert len(box) == 1
    msg = box.messages[0]
    assert isinstance(msg, CapturedMessage)
    assert msg.subject == "Hello 1"
    assert msg.text_body is not None and msg.text_body.strip() == "body 1"
    assert [a.email for a in msg.to] == ["bob@example.com"]
    assert msg.envelope.mail_from == "ann@example.com"
    assert msg.envelope.recipients == ("bob@example.com", "carl@example.com", "dan@example.com")
    # Bcc is in the envelope only, never in the bytes (as on the wire)
    assert b"dan@example.com" not in msg.raw
    assert msg.message_id == status.message_id and msg.message_id.startswith("<")
    assert msg.email.subject == "Hello 1"


def test_send_many_raw_bytes_and_invalid_messages_keep_their_place() -> None:
    raw = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: raw\r\nMessage-ID: <r@x>\r\n\r\nhi\r\n"
    with Outbox() as box, transporter() as t:
        statuses = t.send_many([mail(0), RawMessage(raw, "a@x.test", ["b@x.test"]), mail(2)])
        one = t.send(raw, from_="a@x.test", to="c@x.test")
    assert [s.success for s in statuses] == [True, True, True]
    assert one.success and one.recipients["c@x.test"].accepted
    assert [m.subject for m in box] == ["Hello 0", "raw", "Hello 2", "raw"]
    assert box.messages[1].raw == raw  # raw bytes are captured exactly as given
    assert box.messages[3].envelope.recipients == ("c@x.test",)


def test_a_message_that_cannot_be_sent_still_raises() -> None:
    with Outbox() as box, transporter() as t:
        with pytest.raises(InvalidMessage) as err:
            t.send(Email(from_="a@example.com", subject="no recipient"))
        assert err.value.field == "to"
        with pytest.raises(InvalidMessage):
            t.send(mail(subject="bad\r\nBcc: evil@example.com"))
        # a non-ASCII local part needs SMTPUTF8: the outbox plays a server offering it
        ok = t.send(mail(to="jürgen@example.com"))
    assert ok.success
    assert len(box) == 1 and box.messages[0].envelope.recipients == ("jürgen@example.com",)


def test_async_send_and_send_many_are_captured() -> None:
    async def main() -> list[Any]:
        async with AsyncTransporter(
            "127.0.0.1", DEAD_PORT, security=Security.NONE, max_connections=3
        ) as t:
            one = await t.send(mail(0))
            many = await t.send_many(mail(i) for i in range(1, 21))
            return [one, *many]

    with Outbox() as box:
        statuses = asyncio.run(main())
    assert all(s.success for s in statuses) and len(statuses) == 21
    assert sorted(m.subject for m in box) == sorted(f"Hello {i}" for i in range(21))


def test_concurrent_tasks_share_the_outbox() -> None:
    async def main() -> None:
        t = AsyncTransporter("127.0.0.1", DEAD_PORT, security=Security.NONE, max_connections=4)
        await asyncio.gather(*(t.send(mail(i)) for i in range(50)))

    with Outbox() as box:
        asyncio.run(main())
    assert sorted(m.subject for m in box) == sorted(f"Hello {i}" for i in range(50))


def test_threads_capture_into_the_same_outbox_without_loss() -> None:
    t = transporter()

    def worker(base: int) -> None:
        own = transporter()  # one transporter per thread, and one shared by all
        for i in range(25):
            (own if i % 2 else t).send(mail(base + i))

    with Outbox() as box:
        threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
    subjects = sorted(m.subject for m in box)
    assert subjects == sorted(f"Hello {k * 100 + i}" for k in range(4) for i in range(25))


def test_nesting_innermost_captures_and_outer_resumes() -> None:
    with transporter() as t, Outbox() as outer:
        t.send(mail(1))
        with Outbox() as inner:
            t.send(mail(2))
        t.send(mail(3))
    assert [m.subject for m in outer] == ["Hello 1", "Hello 3"]
    assert [m.subject for m in inner] == ["Hello 2"]
    # inactive: nothing captured, the send goes to the (dead) network
    status = transporter(connection_timeout=2).send(mail(4))
    assert not status.success and status.status == 0
    assert len(outer) == 2


def test_clear_and_reentry_rules() -> None:
    box = Outbox()
    with box:
        transporter().send(mail(1))
        assert len(box) == 1
        box.clear()
        assert len(box) == 0 and box.messages == []
        with pytest.raises(RuntimeError):
            box.__enter__()
    with pytest.raises(ValueError, match="count"):
        box.wait_for(-1)
    with pytest.raises(TimeoutError):
        box.wait_for(1, timeout=0.05)


def test_spool_worker_in_process_is_captured(tmp_path: Path) -> None:
    # Transporter(asynchronous=True) queues in the spool; its worker thread (in this
    # process) sends through Transporter._send_prepared, which the outbox captures.
    with Outbox() as box:
        t = transporter(asynchronous=True, spool=str(tmp_path / "spool.db"))
        try:
            status = t.send(mail(7))
            assert status.state is SpoolState.PENDING and status.mail_id
            [captured] = box.wait_for(1, timeout=10)
            assert captured.subject == "Hello 7"
            assert captured.message_id == status.message_id
            for _ in range(100):
                if t.email_status(status.mail_id) is SpoolState.SENT:
                    break
                threading.Event().wait(0.05)
            assert t.email_status(status.mail_id) is SpoolState.SENT
        finally:
            t.close()


def test_spool_run_in_process_is_captured(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool.db"))
    ids = [spool.submit(mail(i)) for i in range(5)]
    with Outbox() as box:
        stats = spool.run(transporter(), workers=2, until_empty=True)
    assert stats.sent == 5
    assert all(spool.status(i).state is SpoolState.SENT for i in ids)
    assert sorted(m.subject for m in box) == [f"Hello {i}" for i in range(5)]
    spool.close()
