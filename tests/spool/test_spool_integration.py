"""The spool with the real Transporter against real servers (aiosmtpd, Postfix smtp-sink)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import make_prepared, transporter_for

from postillon.spool import RetryPolicy, Spool, SpoolState

from support.smtpd import Fault

QUICK = RetryPolicy(min_backoff=0.05, max_backoff=0.1, jitter=0, server_pause=0.05)


def drain(spool: Spool, transporter: Any, retry: RetryPolicy = QUICK, rounds: int = 50) -> None:
    """Run until nothing is pending (retries are scheduled 50-100 ms later)."""
    for _ in range(rounds):
        spool.run(transporter, workers=2, until_empty=True, retry=retry)
        if spool.counts()[SpoolState.PENDING] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"still pending: {spool.counts()}")


def test_451_then_250(spool: Spool, smtpd_server: Callable[..., Any]) -> None:
    server = smtpd_server(faults={"RCPT": Fault(reply="451 4.3.0 later", times=1)})
    p = make_prepared()
    mail_id = spool.submit(p)
    drain(spool, transporter_for(server.host, server.port))
    e = spool.status(mail_id)
    assert e.state is SpoolState.SENT and e.attempts == 2 and not e.uncertain
    [msg] = server.wait_for(1)
    assert msg.content.replace(b"\r\n", b"\n") == p.read().replace(b"\r\n", b"\n")


def test_mixed_recipients_b_retried_alone(spool: Spool, smtpd_server: Callable[..., Any]) -> None:
    a, b, c = "a@example.org", "b@example.org", "c@example.org"
    first = smtpd_server(refuse={b: (451, "4.2.1 mailbox busy"), c: (550, "5.1.1 no such user")})
    mail_id = spool.submit(make_prepared(to=(a, b, c)))
    t1 = transporter_for(first.host, first.port)
    spool.run(t1, workers=1, until_empty=True, retry=QUICK)
    e = spool.status(mail_id)
    assert e.recipients == {a: "sent", b: "pending", c: "failed"}
    assert e.state is SpoolState.PENDING and e.attempts == 1
    [msg] = first.wait_for(1)
    assert msg.rcpt_tos == [a]
    # the next attempt (here to a server that now takes B) holds only B
    second = smtpd_server()
    drain(spool, transporter_for(second.host, second.port))
    [msg2] = second.wait_for(1)
    assert msg2.rcpt_tos == [b]
    e = spool.status(mail_id)
    assert e.recipients == {a: "sent", b: "sent", c: "failed"} and e.state is SpoolState.ERROR
    assert len(first.messages) == 1  # A got it once


def test_535_pause_keeps_mail_and_no_secret_leaks(
    spool: Spool,
    smtpd_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    server = smtpd_server(auth=["PLAIN"], credentials={"alice": "right-pw"},
                          auth_require_tls=False)  # fmt: skip
    ids = spool.submit_many([make_prepared() for _ in range(3)])
    wrong = "s3cret-wr0ng-pw"
    caplog.set_level(logging.DEBUG)
    bad = transporter_for(server.host, server.port, user="alice", password=wrong)
    stats = spool.run(bad, workers=1, until_empty=True, retry=QUICK)
    assert stats.auth_pauses == 1 and stats.auth_error and "535" in stats.auth_error
    assert all(spool.status(i).attempts == 0 for i in ids)
    assert server.messages == []
    assert wrong not in caplog.text
    for e in spool.entries():
        assert wrong not in repr(e) and wrong not in str(e.to_dict())
    if spool._store.__class__.__name__ == "SQLiteStore":
        for f in Path(spool._store.path).parent.glob("spool.db*"):  # type: ignore[attr-defined]
            assert wrong.encode() not in f.read_bytes()
    good = transporter_for(server.host, server.port, user="alice", password="right-pw")
    drain(spool, good)
    assert len(server.wait_for(3)) == 3


def test_uncertain_after_final_dot(spool: Spool, smtpd_server: Callable[..., Any]) -> None:
    # the server takes the message and drops the connection before answering the dot
    server = smtpd_server(faults={"EOD": Fault(disconnect=True, deliver=True, times=1)})
    p = make_prepared()
    mail_id = spool.submit(p)
    drain(spool, transporter_for(server.host, server.port))
    e = spool.status(mail_id)
    assert e.state is SpoolState.SENT and e.uncertain and e.attempts == 2
    assert len(server.wait_for(2)) == 2  # the one duplicate the uncertain flag warned of


def test_smtp_sink_soft_and_hard_rejects(
    open_spool: Callable[..., Spool], sink_server: Callable[..., Any]
) -> None:
    spool = open_spool()
    soft = sink_server("-r", "RCPT")
    mail_id = spool.submit(make_prepared())
    spool.run(transporter_for(soft.host, soft.port), workers=1, until_empty=True, retry=QUICK)
    e = spool.status(mail_id)
    assert e.state is SpoolState.PENDING and e.attempts == 1
    assert e.last_status is not None and 400 <= e.last_status.status < 500
    hard = sink_server("-f", "MAIL")
    # the backoff of the first attempt may not be over: make the entry due now, or the
    # until_empty run below could find nothing due and return at once
    assert spool.retry(mail_id)
    spool.run(
        transporter_for(hard.host, hard.port), workers=1, until_empty=True,
        retry=RetryPolicy(min_backoff=0, max_backoff=0),
    )  # fmt: skip
    e = spool.status(mail_id)
    assert e.state is SpoolState.ERROR and e.attempts == 2
    assert e.recipients == {"bob@example.org": "failed"}


def test_smtp_sink_disconnect_then_recovers(
    open_spool: Callable[..., Spool], sink_server: Callable[..., Any]
) -> None:
    spool = open_spool()
    dropping = sink_server("-q", "DATA")
    ids = spool.submit_many([make_prepared() for _ in range(3)])
    spool.run(transporter_for(dropping.host, dropping.port), workers=1, until_empty=True,
              retry=QUICK)  # fmt: skip
    assert all(spool.status(i).state is SpoolState.PENDING for i in ids)
    good = sink_server(dump=True)
    drain(spool, transporter_for(good.host, good.port))
    assert len(good.wait_for(3)) == 3
    assert all(spool.status(i).state is SpoolState.SENT for i in ids)


def test_asynchronous_transporter(tmp_path: Path, smtpd_server: Callable[..., Any]) -> None:
    server = smtpd_server()
    path = tmp_path / "async.db"
    t = transporter_for(server.host, server.port, asynchronous=True, spool=str(path))
    try:
        s = t.send(make_prepared())
        assert s.mail_id and s.state is SpoolState.PENDING
        deadline = time.monotonic() + 10
        while t.email_status(s.mail_id) is not SpoolState.SENT:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        t.close()
    assert len(server.wait_for(1)) == 1
