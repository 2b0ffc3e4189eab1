"""The worker with a fake sender (pure: no network): poison, 535 pause, server faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from spool_helpers import FakeSender, make_prepared, ok_status

from postillon.errors import InvalidMessage
from postillon.message.prepared import Prepared
from postillon.spool import RetryPolicy, RunStats, Spool, SpoolState
from postillon.status import SendStatus

FAST = RetryPolicy(min_backoff=60, max_backoff=60, auth_pause=0.1, server_pause=0.05)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_run_until_empty_sends_each_once(spool: Spool) -> None:
    ps = [make_prepared(f"body {i}\r\n".encode()) for i in range(50)]
    ids = spool.submit_many(ps)
    sender = FakeSender()
    seen: list[RunStats] = []
    stats = spool.run(sender, workers=3, until_empty=True, retry=FAST, progress=seen.append)
    assert stats.sent == 50 and stats.attempts == 50 and stats.failed == 0
    assert sorted(m for m, _, _ in sender.sent) == sorted(p.message_id for p in ps)
    # the very bytes stored at submit went out
    by_id = {p.message_id: p.read() for p in ps}
    assert all(data == by_id[m] for m, _, data in sender.sent)
    assert all(spool.status(i).state is SpoolState.SENT for i in ids)
    assert sender.clones == 3 and sender.closed >= 3
    assert seen and seen[-1].sent <= 50


def test_poison_message_never_blocks_the_others(spool: Spool) -> None:
    poison = make_prepared(b"poison\r\n")
    invalid = make_prepared(b"invalid\r\n")
    good = [make_prepared() for _ in range(30)]
    spool.submit_many([poison, invalid, *good])

    def script(p: Prepared, n: int) -> SendStatus:
        if p.message_id == poison.message_id:
            raise RuntimeError("the send blew up")
        if p.message_id == invalid.message_id:
            raise InvalidMessage("non-ASCII address to a server without SMTPUTF8", "to")
        return ok_status(p)

    stats = spool.run(FakeSender(script), workers=2, until_empty=True, retry=FAST)
    assert stats.sent == 30 and stats.failed == 1 and stats.deferred == 1
    [p_entry] = [e for e in spool.entries() if e.message_id == poison.message_id]
    assert p_entry.state is SpoolState.PENDING and p_entry.attempts == 1
    assert "RuntimeError" in (p_entry.error or "")
    [i_entry] = [e for e in spool.entries() if e.message_id == invalid.message_id]
    assert i_entry.state is SpoolState.ERROR and "SMTPUTF8" in (i_entry.error or "")


def test_auth_535_pauses_and_burns_no_attempt(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    ids = spool.submit_many([make_prepared() for _ in range(5)])
    refused = SendStatus(success=False, status=535, status_text="5.7.8 bad credentials",
                         stage="auth")  # fmt: skip
    sender = FakeSender(lambda p, n: refused)
    stats = spool.run(sender, workers=1, until_empty=True, retry=FAST)
    assert stats.auth_pauses == 1 and "535" in (stats.auth_error or "")
    assert len(sender.sent) == 1  # one login tried, the batch was given back
    assert all(spool.status(i).attempts == 0 for i in ids)
    assert all(spool.status(i).state is SpoolState.PENDING for i in ids)
    assert "refused our login" in caplog.text
    # the login works again: everything goes out
    stats = spool.run(FakeSender(), workers=1, until_empty=True, retry=FAST)
    assert stats.sent == 5


def test_auth_pause_then_login_again_in_a_long_run(spool: Spool) -> None:
    spool.submit_many([make_prepared() for _ in range(4)])
    refused = SendStatus(success=False, status=535, status_text="no", stage="auth")

    def script(p: Prepared, n: int) -> SendStatus:
        return refused if n < 2 else ok_status(p)

    stop = threading.Event()
    result: list[RunStats] = []
    th = threading.Thread(
        target=lambda: result.append(spool.run(FakeSender(script), workers=1, retry=FAST,
                                               stop=stop, idle_poll=0.05))
    )  # fmt: skip
    th.start()
    try:
        wait_until(lambda: spool.counts()[SpoolState.SENT] == 4)
    finally:
        stop.set()
        th.join(10)
    assert not th.is_alive() and result[0].auth_pauses == 2 and result[0].sent == 4


def test_server_fault_defers_the_batch_without_hammering(spool: Spool) -> None:
    ids = spool.submit_many([make_prepared() for _ in range(6)])
    down = SendStatus(success=False, status=0, status_text="Failed to send email", stage="connect")
    sender = FakeSender(lambda p, n: down)
    stats = spool.run(sender, workers=1, until_empty=True, retry=FAST, batch=6)
    assert len(sender.sent) == 1  # one connection tried for the whole batch
    assert stats.deferred == 6
    assert all(spool.status(i).attempts == 1 for i in ids)


def test_start_and_stop_keep_pending_mail(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    gate = threading.Event()

    def script(p: Prepared, n: int) -> SendStatus:
        gate.wait(10)
        return ok_status(p)

    handle = spool.start(FakeSender(script), workers=1, idle_poll=0.05)
    first = spool.submit(make_prepared())
    wait_until(lambda: handle.running)
    gate.set()
    wait_until(lambda: spool.status(first).state is SpoolState.SENT)
    assert handle.stop(timeout=10) and not handle.running
    later = spool.submit(make_prepared())
    spool.close()
    # closed and reopened: the mail submitted after the stop still waits
    again = open_spool()
    assert again.status(later).state is SpoolState.PENDING


def test_submit_wakes_an_idle_worker(spool: Spool) -> None:
    handle = spool.start(FakeSender(), workers=1, idle_poll=30)
    try:
        time.sleep(0.3)  # the worker is idle, sleeping on the long poll
        t0 = time.monotonic()
        mail_id = spool.submit(make_prepared())
        wait_until(lambda: spool.status(mail_id).state is SpoolState.SENT, 5)
        assert time.monotonic() - t0 < 2
    finally:
        handle.stop(10)


def test_run_validates_its_arguments(spool: Spool) -> None:
    with pytest.raises(ValueError, match="transporter"):
        spool.run(object(), until_empty=True)
    with pytest.raises(ValueError, match="workers"):
        spool.run(FakeSender(), workers=0, until_empty=True)
    with pytest.raises(ValueError, match="retry"):
        spool.run(FakeSender(), retry="often", until_empty=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop"):
        spool.run(FakeSender(), stop=True)  # type: ignore[arg-type]
