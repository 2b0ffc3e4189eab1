"""The pool heals itself: idle checks, age and message limits, 421s, retried connects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from postillon import AsyncTransporter, RawMessage, Security, Transporter
from postillon.pool import PoolPolicy

from support.script import close, expect, read_until, send, sleep
from support.smtpd import Fault

EHLO = b"250-script.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def raw(i: int) -> RawMessage:
    data = f"From: a@x.test\r\nTo: b@x.test\r\nMessage-ID: <m{i}@x.test>\r\n\r\nbody {i}\r\n"
    return RawMessage(data.encode(), "a@x.test", ["b@x.test"])


def dynamic_fault(server: Any, command: str, decide: Callable[[int, Any], Fault | None]) -> None:
    """Replace the harness's fault for ``command`` by ``decide(occurrence, state)``."""
    state = server._state
    original = state.take_fault
    seen = [0]

    def take(cmd: str) -> Fault | None:
        if cmd != command:
            return original(cmd)
        seen[0] += 1
        return decide(seen[0], state)

    state.take_fault = take


def one_transaction_then(*tail: Any) -> list[Any]:
    """A scripted session: greeting, EHLO, one pipelined transaction, then ``tail``."""
    return [
        send(b"220 script.test ESMTP\r\n"),
        expect(b"EHLO"),
        send(EHLO),
        expect(b"MAIL FROM"),
        expect(b"RCPT TO"),
        expect(b"DATA"),
        send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"),
        read_until(),
        send(b"250 2.0.0 Ok: queued\r\n"),
        *tail,
    ]


def sequence(kind: str, host: str, port: int, steps: list[Any], **kw: Any) -> list[Any]:
    """Send the RawMessages of ``steps`` in order, sleeping for the floats between them."""
    if kind == "sync":
        with Transporter(host, port, security=Security.NONE, **kw) as t:
            out = []
            for step in steps:
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    out.append(t.send(step))
            return out

    async def main() -> list[Any]:
        async with AsyncTransporter(host, port, security=Security.NONE, **kw) as a:
            out = []
            for step in steps:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    out.append(await a.send(step))
            return out

    return asyncio.run(main())


KINDS = ["sync", "async"]


@pytest.mark.parametrize("kind", KINDS)
def test_server_that_closes_idle_connections_after_one_second(
    script_server: Any, kind: str
) -> None:
    server = script_server(one_transaction_then(sleep(1.0), close()), connections=2)
    statuses = sequence(kind, server.host, server.port, [raw(1), 1.5, raw(2)])
    assert [s.success for s in statuses] == [True, True]
    server.assert_ok()


@pytest.mark.parametrize("kind", KINDS)
def test_half_dead_idle_connection_fails_its_noop_check_silently(
    script_server: Any, kind: str
) -> None:
    # The peer vanished without a FIN (a NAT forgot the flow): the socket looks alive.
    # Idle longer than idle_check, it is probed with NOOP, which gets no answer within
    # check_timeout: it is dropped and the message goes on a new connection.
    # The first session ignores the NOOP and closes late; the second one serves the
    # message (the server serves one connection at a time).
    server = script_server(
        one_transaction_then(expect(b"NOOP"), sleep(1.0), close()), connections=2
    )
    pool = PoolPolicy(idle_check=0.2, check_timeout=0.5)
    start = time.monotonic()
    statuses = sequence(kind, server.host, server.port, [raw(1), 0.3, raw(2)], pool=pool)
    assert [s.success for s in statuses] == [True, True], statuses
    assert b"NOOP" in bytes(server.received)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("kind", KINDS)
def test_noop_check_only_after_idle_and_421_to_it_reconnects(smtpd: Any, kind: str) -> None:
    server = smtpd(faults={"NOOP": Fault(reply="421 4.4.2 idle too long", times=1)})
    pool = PoolPolicy(idle_check=0.3)
    statuses = sequence(
        kind, server.host, server.port, [raw(1), raw(2), 0.4, raw(3), raw(4)], pool=pool
    )
    assert all(s.success for s in statuses)
    server.wait_for(4)
    # one NOOP: after the idle pause, not between the back-to-back sends
    assert sum(c.startswith("NOOP") for c in server.commands) == 1
    assert server.connections == 2


@pytest.mark.parametrize("kind", KINDS)
def test_max_messages_renews_the_connection_with_quit(smtpd: Any, kind: str) -> None:
    server = smtpd()
    statuses = sequence(kind, server.host, server.port, [raw(i) for i in range(7)],
                        pool=PoolPolicy(max_messages=3))  # fmt: skip
    assert all(s.success for s in statuses)
    server.wait_for(7)
    assert server.connections == 3
    # two connections retired when worn out, the last one closed by close()
    assert sum(c.startswith("QUIT") for c in server.commands) == 3


def test_max_messages_splits_a_long_batch_over_fresh_connections(smtpd: Any) -> None:
    server = smtpd()
    with Transporter(server.host, server.port, security=Security.NONE,
                     pool=PoolPolicy(max_messages=10)) as t:  # fmt: skip
        statuses = t.send_many(raw(i) for i in range(35))
    assert [s.message_id for s in statuses] == [f"<m{i}@x.test>" for i in range(35)]
    assert all(s.success for s in statuses)
    server.wait_for(35)
    assert server.connections == 4


@pytest.mark.parametrize("kind", KINDS)
def test_max_age_retires_an_old_connection(smtpd: Any, kind: str) -> None:
    server = smtpd()
    statuses = sequence(kind, server.host, server.port, [raw(1), 0.5, raw(2)],
                        pool=PoolPolicy(max_age=0.3))  # fmt: skip
    assert all(s.success for s in statuses)
    server.wait_for(2)
    assert server.connections == 2
    assert sum(c.startswith("QUIT") for c in server.commands) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_that_saw_421_is_never_reused(smtpd: Any, kind: str) -> None:
    # The server answers 421 to the second MAIL (closing); the message had not left,
    # so it goes again on a fresh connection; the closed one is not reused after.
    server = smtpd(faults={"EOD": Fault(reply="421 4.3.2 shutting down", times=1)})
    statuses = sequence(kind, server.host, server.port, [raw(1), raw(2), raw(3)])
    assert statuses[0].status == 421 and not statuses[0].success  # the body had left
    assert statuses[1].success and statuses[2].success
    assert server.connections == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_reconnect_of_a_pool_slot_is_retried_once(smtpd: Any, kind: str) -> None:
    # Every message retires its connection (max_messages=1), so each send reconnects.
    # The server refuses the second connection at the greeting (421): the send tries a
    # fresh connection once, transparently.
    server = smtpd()
    dynamic_fault(server, "CONNECT",
                  lambda n, _: Fault(reply="421 4.7.0 busy, try again") if n == 2 else None)  # fmt: skip
    statuses = sequence(kind, server.host, server.port, [raw(1), raw(2), raw(3)],
                        pool=PoolPolicy(max_messages=1))  # fmt: skip
    assert all(s.success for s in statuses), statuses
    server.wait_for(3)
    assert server.connections == 4


@pytest.mark.parametrize("kind", KINDS)
def test_a_first_connection_refused_fails_at_once(smtpd: Any, kind: str) -> None:
    server = smtpd(faults={"CONNECT": Fault(reply="421 4.7.0 not now", times=2)})
    statuses = sequence(kind, server.host, server.port, [raw(1)])
    assert statuses[0].status == 421 and statuses[0].stage == "greeting"
    assert server.connections == 1
