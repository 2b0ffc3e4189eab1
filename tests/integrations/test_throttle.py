"""Throttling: the token bucket and the adaptive back-off (fake clock), then real servers."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from postillon import AsyncTransporter, RawMessage, ReplyError, Security, Transporter
from postillon.pool import Lifetime, PoolPolicy, Throttle, TokenBucket, is_throttle_reply
from postillon.status import RecipientStatus, SendStatus

from .test_pool_healing import dynamic_fault
from support.smtpd import Fault


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def raw(i: int) -> RawMessage:
    data = f"From: a@x.test\r\nTo: b@x.test\r\nMessage-ID: <t{i}@x.test>\r\n\r\nbody {i}\r\n"
    return RawMessage(data.encode(), "a@x.test", ["b@x.test"])


# --- pure parts, fake clock ---------------------------------------------------------------


def test_token_bucket_rate_and_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4.0, capacity=2, clock=clock)
    assert bucket.try_take() and bucket.try_take()  # starts full: a burst of 2
    assert not bucket.try_take()
    assert bucket.wait_time() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.try_take() and not bucket.try_take()
    clock.advance(10)  # never more than the capacity
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]
    # over a long run the count follows the rate exactly
    taken = 0
    for _ in range(1000):
        clock.advance(0.01)
        taken += bucket.try_take()
    assert taken == pytest.approx(40, abs=1)
    bucket.set_rate(1.0)
    assert bucket.rate == 1.0 and bucket.wait_time() == pytest.approx(1.0, abs=0.05)


def test_token_bucket_and_policy_validate_their_input() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(1, capacity=float("inf"))
    for field, bad in [("idle_check", 0), ("check_timeout", -1), ("max_age", "x"),
                       ("max_messages", 1.5), ("rate_limit", 0), ("burst", True)]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            PoolPolicy(**{field: bad})
    with pytest.raises(ValueError, match="pool"):
        Transporter("h", pool={"rate_limit": 3})  # type: ignore[arg-type]


def test_policy_decisions() -> None:
    policy = PoolPolicy(idle_check=10, max_age=300, max_messages=3)
    life = Lifetime.start(0.0)
    assert not policy.needs_check(life, 9.9) and policy.needs_check(life, 10.0)
    assert not policy.worn_out(life, 299) and policy.worn_out(life, 300)
    life.messages = 3
    assert policy.worn_out(life, 1)


def test_throttle_replies() -> None:
    for code in (421, 450, 451, 454):
        assert is_throttle_reply(code, "")
    assert is_throttle_reply(554, "5.7.0 Too many connections from 10.0.0.1")
    assert is_throttle_reply(550, "too  MANY concurrent SESSIONS")
    assert not is_throttle_reply(550, "5.1.1 unknown user")
    assert not is_throttle_reply(452, "4.5.3 too many recipients")


def test_configured_rate_is_shared_and_never_exceeded() -> None:
    clock = FakeClock()
    throttle = Throttle(PoolPolicy(rate_limit=10), clock=clock)
    assert throttle.try_take() and not throttle.try_take()
    assert throttle.delay() == pytest.approx(0.1)
    sent = 1
    for _ in range(1000):  # 10 s in 10 ms steps, three "threads" competing
        clock.advance(0.01)
        sent += sum(throttle.try_take() for _ in range(3))
    assert sent == pytest.approx(101, abs=1)
    assert throttle.effective_rate == 10


def test_back_off_halves_the_rate_and_recovers_gradually() -> None:
    clock = FakeClock()
    throttle = Throttle(PoolPolicy(rate_limit=10), clock=clock)
    throttle.penalize()
    assert throttle.effective_rate == pytest.approx(5)  # halved
    throttle.penalize()
    assert throttle.effective_rate == pytest.approx(2.5)
    assert not throttle.try_take() and throttle.delay() == pytest.approx(0.4)
    rates = []
    ok = SendStatus(success=True, status=250, status_text="ok")
    for _ in range(20):
        throttle.observe(ok)
        rates.append(throttle.effective_rate)
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(rates))
    assert rates[0] is not None and rates[0] < 3  # one success does not restore full speed
    assert rates[-1] == 10  # ...twenty do
    assert throttle.spacing == 0


def test_back_off_without_a_configured_rate() -> None:
    clock = FakeClock()
    throttle = Throttle(clock=clock)
    assert throttle.effective_rate is None and throttle.delay() == 0
    refused = SendStatus(
        success=False, status=451, status_text="4.7.1 slow down",
        recipients={"b@x": RecipientStatus(451, "slow down", False)},
    )  # fmt: skip
    throttle.observe(refused)
    assert throttle.effective_rate == pytest.approx(10)
    assert throttle.try_take() is False and throttle.delay() == pytest.approx(0.1)
    clock.advance(0.1)
    assert throttle.try_take() and not throttle.try_take()
    for _ in range(10):
        throttle.penalize()
    assert throttle.spacing == 10.0  # bounded
    ok = SendStatus(success=True, status=250, status_text="ok")
    for _ in range(200):
        throttle.observe(ok)
    assert throttle.effective_rate is None
    # a permanent refusal is not a reason to slow down
    throttle.observe(SendStatus(success=False, status=550, status_text="5.1.1 no user"))
    assert throttle.effective_rate is None


def test_connection_cap_drops_on_too_many_connections_and_grows_back() -> None:
    throttle = Throttle(clock=FakeClock())
    assert throttle.connection_cap(8) == 8
    assert not throttle.observe_error(ReplyError(550, "5.7.1 relaying denied"), 5)
    assert throttle.observe_error(ReplyError(421, "4.7.0 Too many connections"), 3)
    assert throttle.connection_cap(8) == 3
    assert throttle.effective_rate is None  # fewer sessions, not a slower pace
    assert throttle.observe_error(ReplyError(421, "4.7.0 Too many connections"))
    assert throttle.effective_rate == pytest.approx(10)  # no other session: slow down
    ok = SendStatus(success=True, status=250, status_text="ok")
    for _ in range(20):
        throttle.observe(ok)
    assert throttle.connection_cap(8) == 4
    for _ in range(200):
        throttle.observe(ok)
    assert throttle.connection_cap(8) == 8


def test_throttle_is_thread_safe() -> None:
    throttle = Throttle(PoolPolicy(rate_limit=1000, burst=50))
    taken = [0] * 4

    def worker(k: int) -> None:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            if throttle.try_take():
                taken[k] += 1
            throttle.reward()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    began = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # the bucket's burst, then its rate over the time the workers really ran (a busy
    # machine starts the threads late and stretches the window past 0.3 s)
    elapsed = time.monotonic() - began
    assert 50 <= sum(taken) <= 50 + 1000 * elapsed * 1.1 + 20


# --- real servers -------------------------------------------------------------------------


def _every_tenth_mail_421(server: Any) -> None:
    dynamic_fault(server, "MAIL",
                  lambda n, _: Fault(reply="421 4.7.0 slow down") if n % 10 == 0 else None)  # fmt: skip


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_421_to_every_tenth_transaction_every_message_accounted_for(smtpd: Any, kind: str) -> None:
    server = smtpd()
    _every_tenth_mail_421(server)
    mails = [raw(i) for i in range(60)]
    start = time.monotonic()
    if kind == "sync":
        with Transporter(server.host, server.port, security=Security.NONE) as t:
            statuses = [t.send(m) for m in mails[:30]] + t.send_many(mails[30:])
    else:

        async def main() -> list[Any]:
            async with AsyncTransporter(
                server.host, server.port, security=Security.NONE, max_connections=4
            ) as t:
                return list(await asyncio.gather(*(t.send(m) for m in mails)))

        statuses = asyncio.run(main())
    elapsed = time.monotonic() - start
    delivered = {m.parsed()["Message-ID"] for m in server.messages}
    ok = {s.message_id for s in statuses if s.success}
    failed = [s for s in statuses if not s.success]
    assert ok == delivered  # every success is on the server, and only those
    assert len(server.messages) == len(delivered)  # no duplicate
    assert all(s.status == 421 for s in failed), failed  # the others: the server's 421
    assert len(ok) >= 54  # messages untouched by a 421 went again on a new connection
    assert elapsed < 20


def test_server_limiting_connections_async_pool_adapts(smtpd: Any) -> None:
    # The server takes two sessions at a time and answers a third with
    # "421 Too many connections": the pool caps itself and every message goes.
    server = smtpd()
    peak = [0]

    def decide(_n: int, state: Any) -> Fault | None:
        live = len(state.protocols)
        if live > 2:
            return Fault(reply="421 4.7.0 Too many connections, slow down")
        peak[0] = max(peak[0], live)
        return None

    dynamic_fault(server, "CONNECT", decide)

    async def main() -> tuple[list[Any], int]:
        async with AsyncTransporter(
            server.host, server.port, security=Security.NONE, max_connections=6
        ) as t:
            warm = await t.send(raw(999))  # one pool slot worked: refills are retried
            assert warm.success
            statuses = await asyncio.gather(*(t.send(raw(i)) for i in range(60)))
            return list(statuses), t._throttle.connection_cap(6)

    statuses, cap = asyncio.run(main())
    failed = [s for s in statuses if not s.success]
    assert not failed, failed[:3]
    assert len({m.parsed()["Message-ID"] for m in server.messages}) == 61
    assert peak[0] <= 2
    assert cap < 6  # still recovering: the cap grows one per 20 messages accepted


def test_rate_limit_holds_within_ten_percent_over_ten_seconds(smtp_sink: Any) -> None:
    # Three threads share one Transporter, and a spool-like clone shares its limiter:
    # together they send at 20 messages per second.
    sink = smtp_sink()
    t = Transporter(sink.host, sink.port, security=Security.NONE,
                    pool=PoolPolicy(rate_limit=20))  # fmt: skip
    clone = t._clone()
    stamps: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + 10.0

    def worker(sender: Transporter, base: int) -> None:
        i = 0
        while time.monotonic() < end:
            status = sender.send(raw(base + i))
            assert status.success, status
            with lock:
                stamps.append(time.monotonic())
            i += 1

    threads = [threading.Thread(target=worker, args=(s, k * 10000))
               for k, s in enumerate([t, t, clone])]  # fmt: skip
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    t.close()
    clone.close()
    stamps.sort()
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 18 <= rate <= 22, rate
    # no second holds more than the rate (+ the burst of 1)
    for i, s in enumerate(stamps):
        window = [x for x in stamps[i:] if x - s < 1.0]
        assert len(window) <= 22


def test_async_rate_limit_is_shared_by_every_pooled_connection(smtp_sink: Any) -> None:
    sink = smtp_sink()

    async def main() -> tuple[list[Any], float]:
        async with AsyncTransporter(
            sink.host, sink.port, security=Security.NONE, max_connections=4,
            pool=PoolPolicy(rate_limit=25),
        ) as t:  # fmt: skip
            start = time.monotonic()
            statuses = await asyncio.gather(*(t.send(raw(i)) for i in range(76)))
            return list(statuses), time.monotonic() - start

    statuses, elapsed = asyncio.run(main())
    assert all(s.success for s in statuses)
    # 76 messages at 25/s: the first goes at once, 75 more take 3 s
    assert 3.0 * 0.9 <= elapsed <= 3.0 * 1.1, elapsed
