"""iter_send(): send_many streamed, with bounded memory, on both transporters.

Real servers on loopback (aiosmtpd, Postfix's smtp-sink). The properties: statuses in
input order and equal to send_many's; the input read at most a window ahead of the
caller (backpressure); an early stop that leaves nothing behind; faults mid-stream; and
memory that does not grow with the number of messages (the million-message run).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import gc
import logging
import os
import re
import threading
import time
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from postillon import (
    AsyncTransporter,
    Dsn,
    Email,
    RawMessage,
    Security,
    SendStatus,
    SpoolState,
    Transporter,
)
from postillon.pool import PoolPolicy
from postillon.testing import Outbox

from support.sink import free_port

HEAD = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: stream\r\n"
BODY = b"\r\n" + b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n" * 16


def raw(i: int, to: list[str] | None = None) -> RawMessage:
    """About 1 KiB, with its own Message-ID, so that each status names its message."""
    data = HEAD + b"Message-ID: <m%d@x.test>\r\n" % i + BODY
    return RawMessage(data, "a@x.test", to or ["b@x.test"])


def mid(i: int) -> str:
    return f"<m{i}@x.test>"


def rss() -> int:
    """This process's resident set size in bytes (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Streamer:
    """Either transporter behind one synchronous interface, so each test is written once.

    The async consumer runs on its own event loop; while it pauses (``await
    asyncio.sleep``) the transporter's tasks go on sending, as they would for a real
    slow consumer.
    """

    def __init__(self, kind: str, host: str, port: int, **settings: Any) -> None:
        self.kind = kind
        settings.setdefault("security", Security.NONE)
        settings.setdefault("connection_timeout", 5)
        settings.setdefault("send_timeout", 20)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.t: Any
        if kind == "sync":
            settings.pop("max_connections", None)
            self.t = Transporter(host, port, **settings)
        else:
            self.loop = asyncio.new_event_loop()
            self.t = AsyncTransporter(host, port, **settings)
        #: tasks other than the consumer's, seen right after the generator was closed
        self.leftover_tasks: set[asyncio.Task[Any]] = set()

    @property
    def window(self) -> int:
        return int(self.t._stream_window)

    def _run(self, result: Any) -> Any:
        return result if self.loop is None else self.loop.run_until_complete(result)

    def send(self, mail: Any) -> SendStatus:
        return self._run(self.t.send(mail))  # type: ignore[no-any-return]

    def send_many(self, mails: Any, **kwargs: Any) -> list[SendStatus]:
        return self._run(self.t.send_many(mails, **kwargs))  # type: ignore[no-any-return]

    def stream(
        self,
        mails: Any,
        each: Callable[[int, SendStatus], object] | None = None,
        *,
        pause: float = 0.0,
        **kwargs: Any,
    ) -> int:
        """Consume ``t.iter_send(mails)``, calling ``each(i, status)``; a true result
        stops there (the generator is closed at once). Returns the statuses consumed."""
        if self.loop is None:
            n = 0
            with contextlib.closing(self.t.iter_send(mails, **kwargs)) as statuses:
                for status in statuses:
                    n += 1
                    if each is not None and each(n - 1, status):
                        break
                    if pause:
                        time.sleep(pause)
            return n

        async def consume() -> int:
            n = 0
            async with contextlib.aclosing(self.t.iter_send(mails, **kwargs)) as statuses:
                async for status in statuses:
                    n += 1
                    if each is not None and each(n - 1, status):
                        break
                    if pause:
                        await asyncio.sleep(pause)
            self.leftover_tasks = asyncio.all_tasks() - {asyncio.current_task()}
            return n

        return self._run(consume())  # type: ignore[no-any-return]

    def close(self) -> None:
        self._run(self.t.close())
        if self.loop is not None:
            self.loop.close()
            self.loop = None


@pytest.fixture(params=["sync", "async"])
def streamer(request: pytest.FixtureRequest) -> Iterator[Callable[..., Streamer]]:
    made: list[Streamer] = []

    def factory(host: str, port: int, **settings: Any) -> Streamer:
        s = Streamer(request.param, host, port, **settings)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def counted(n: int, make: Callable[[int], Any] = raw) -> tuple[Iterator[Any], list[int]]:
    """A generator of ``n`` messages and a one-item list counting those pulled."""
    pulled = [0]

    def gen() -> Iterator[Any]:
        for i in range(n):
            pulled[0] += 1
            yield make(i)

    return gen(), pulled


# -------------------------------------------------------------------- content and order


def mixed() -> list[Any]:
    """Valid, invalid and multi-recipient messages of every accepted kind."""
    out: list[Any] = []
    for k in range(40):
        stdlib = email.message.EmailMessage()
        stdlib["From"], stdlib["To"], stdlib["Message-ID"] = "a@x.test", "b@x.test", f"<s{k}@x>"
        stdlib.set_content(f"stdlib {k}")
        out += [
            raw(k),
            Email(from_="a@x.test", to="b@x.test", text_body="hi", message_id=f"<e{k}@x>"),
            Email(from_="a@x.test", subject="no recipient"),  # invalid: its status fails
            raw(1000 + k, ["b@x.test", "bad@x.test"]),  # one refused
            stdlib,
            b"bytes without an envelope",  # invalid: raw bytes need from_= and to=
        ]
        if k % 10 == 0:
            out.append(raw(2000 + k, [f"r{j}@x.test" for j in range(150)]))  # two transactions
    return out


def shape(status: SendStatus) -> str:
    """A status as text, the server's queue ids left out (they differ between runs)."""
    return re.sub(r"queued as \w+", "queued as ID", repr(status.to_dict()))


def test_statuses_match_send_many_on_mixed_input(smtpd: Any, streamer: Any) -> None:
    server = smtpd(refuse={"bad@x.test": (550, "5.1.1 no such user")})
    s = streamer(server.host, server.port, max_connections=3)
    streamed: list[SendStatus] = []
    assert s.stream(mixed(), lambda _, status: streamed.append(status)) == len(mixed())
    many = s.send_many(mixed())
    assert [shape(x) for x in streamed] == [shape(x) for x in many]
    # and they are the right ones, in input order
    expected: list[Any] = []
    for item in mixed():
        if isinstance(item, bytes) or (isinstance(item, Email) and not item.to):
            expected.append(("message", False))
        elif isinstance(item, RawMessage) and "bad@x.test" in item.to:
            expected.append(("rcpt", False))
        else:
            expected.append((None, True))
    assert [(x.stage, x.success) for x in streamed] == expected
    partial = [x for x in streamed if x.stage == "rcpt"]
    assert all(x.accepted == ["b@x.test"] and x.refused == ["bad@x.test"] for x in partial)
    split = [x for x in streamed if len(x.recipients) == 150]
    assert len(split) == 4 and all(x.success for x in split)
    sent = sum(1 for x in streamed if x.success or x.accepted)
    server.wait_for(2 * (sent + len(split)))  # a split message is two transactions


# ------------------------------------------------------------------ backpressure, order


def test_input_read_at_most_a_window_ahead(smtp_sink: Any, streamer: Any) -> None:
    sink = smtp_sink()
    s = streamer(sink.host, sink.port, max_connections=2)
    window = s.window
    n = 3 * window + 17  # several windows, slices and groups, and a ragged end
    source, pulled = counted(n)
    consumed = [0]
    ahead: list[int] = []

    def watched() -> Iterator[Any]:
        for mail in source:
            ahead.append(pulled[0] - consumed[0])
            yield mail

    def each(i: int, status: SendStatus) -> None:
        assert status.success and status.message_id == mid(i), (i, status)
        consumed[0] += 1

    # The consumer is slow: the sending must wait for it, not read on.
    assert s.stream(watched(), each, pause=0.0005) == n
    assert pulled[0] == n
    assert max(ahead) <= window, (max(ahead), window)
    assert max(ahead) >= window // 2  # it did read ahead: the bound is not vacuous


def test_async_window_scales_with_connections() -> None:
    one = AsyncTransporter("127.0.0.1", 25, max_connections=1)
    eight = AsyncTransporter("127.0.0.1", 25, max_connections=8)
    assert eight._stream_window == 8 * one._stream_window


def test_async_lane_pipelines_run_after_run_without_draining(smtp_sink: Any) -> None:
    """Runs of a lane follow each other on its connection: the pipeline drains (a body
    leaves with no next envelope behind it) only at the end of the input."""
    sink = smtp_sink()
    n = 10 * 64 + 5  # ten runs and a ragged one

    async def main() -> tuple[list[SendStatus], list[bytes]]:
        t = AsyncTransporter(sink.host, sink.port, security=Security.NONE)
        await t.open()
        (conn,) = t._idle
        writes: list[bytes] = []
        write = conn.transport.write

        def recorded(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        conn.transport.write = recorded
        statuses = [s async for s in t.iter_send(raw(i) for i in range(n))]
        await t.close()
        return statuses, writes

    statuses, writes = asyncio.run(main())
    assert [s.message_id for s in statuses] == [mid(i) for i in range(n)]
    assert all(s.success for s in statuses)
    alone = [w for w in writes if w.endswith(b"\r\n.\r\n")]
    assert len(alone) == 1 and writes[-1] == alone[0], len(alone)


def test_async_lane_goes_on_across_connection_renewals(smtp_sink: Any) -> None:
    """A lane's run of messages outlives its connections (PoolPolicy.max_messages)."""
    sink = smtp_sink()
    n = 500

    async def main() -> tuple[list[SendStatus], int]:
        t = AsyncTransporter(
            sink.host, sink.port, security=Security.NONE, pool=PoolPolicy(max_messages=7)
        )
        statuses = [s async for s in t.iter_send(raw(i) for i in range(n))]
        await t.close()
        return statuses, t.connections_opened

    statuses, opened = asyncio.run(main())
    assert [s.message_id for s in statuses] == [mid(i) for i in range(n)]
    assert all(s.success for s in statuses)
    assert opened == -(-n // 7)  # one connection per 7 messages, none wasted


# ------------------------------------------------------------------------- early stop


@pytest.mark.parametrize("keep_alive", [True, False])
def test_early_stop_leaves_the_transporter_clean(
    smtpd: Any, streamer: Any, keep_alive: bool
) -> None:
    server = smtpd()
    s = streamer(server.host, server.port, max_connections=2, keep_alive=keep_alive)
    k = 10
    source, pulled = counted(100_000)
    assert s.stream(source, lambda i, _: i + 1 >= k) == k
    assert pulled[0] <= k + s.window
    # nothing left running or held
    if s.kind == "async":
        assert s.leftover_tasks == set()
        assert s.t._busy == set()
    else:
        assert s.t._streams == 0
        assert s.t._lock.acquire(blocking=False)  # free (an RLock: ours again)
        s.t._lock.release()
        if not keep_alive:
            assert s.t._conn is None  # closed with the generator
    # the transporter goes on working
    assert s.send(raw(-1)).success
    assert all(x.success for x in s.send_many([raw(-2), raw(-3)]))
    server.wait_for(k + 3)
    time.sleep(0.2)  # whatever else was in flight has landed by now
    assert len(server.messages) <= k + s.window + 3


def test_sync_stream_holds_one_connection_without_keep_alive(smtpd: Any) -> None:
    server = smtpd()
    # (a connection is renewed after PoolPolicy.max_messages, 1,000 by default)
    t = Transporter(server.host, server.port, security=Security.NONE, keep_alive=False,
                    pool=PoolPolicy(max_messages=10_000))  # fmt: skip
    n = 2 * t._stream_window + 5  # three slices
    statuses = t.iter_send(raw(i) for i in range(n))
    assert sum(1 for x in statuses if x.success) == n
    assert server.connections == 1
    assert t._conn is None  # closed at the end of the iteration
    assert t.send(raw(-1)).success and server.connections == 2


def test_async_break_without_aclose_cleans_up(smtp_sink: Any, caplog: Any) -> None:
    # A plain ``break`` leaves the generator to the collector; the event loop's hook
    # closes it, which cancels its tasks: nothing may stay pending or warn.
    sink = smtp_sink()
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def main() -> tuple[bool, set[Any], set[Any]]:
        t = AsyncTransporter(sink.host, sink.port, security=Security.NONE, max_connections=3)
        async for status in t.iter_send(raw(i) for i in range(100_000)):
            assert status.success
            break
        me = asyncio.current_task()
        for _ in range(200):
            if asyncio.all_tasks() == {me}:
                break
            await asyncio.sleep(0.01)
        left, busy = asyncio.all_tasks() - {me}, set(t._busy)
        ok = (await t.send(raw(-1))).success
        await t.close()
        return ok, left, busy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok, left, busy = asyncio.run(main(), debug=True)
        gc.collect()
    assert ok and left == set() and busy == set()
    # debug mode reports tasks destroyed while pending, exceptions never retrieved and
    # coroutines never awaited (slow callbacks are the machine's business, not ours)
    problems = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert [p for p in problems if "took" not in p] == []
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_async_consumer_cancelled_mid_stream(smtp_sink: Any) -> None:
    sink = smtp_sink()

    async def main() -> tuple[int, set[Any], set[Any], bool]:
        t = AsyncTransporter(sink.host, sink.port, security=Security.NONE, max_connections=2)
        got = 0

        async def consume() -> None:
            nonlocal got
            statuses = t.iter_send(raw(i) for i in range(100_000))
            async with contextlib.aclosing(statuses):  # closed as the cancellation passes
                async for status in statuses:
                    assert status.message_id == mid(got)
                    got += 1
                    await asyncio.sleep(0.001)

        task = asyncio.create_task(consume())
        while got < 50:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        left = asyncio.all_tasks() - {asyncio.current_task()}
        busy = set(t._busy)  # a group cancelled mid-conversation dropped its connection
        ok = all(s.success for s in await t.send_many([raw(-1), raw(-2)]))
        await t.close()
        return got, left, busy, ok

    got, left, busy, ok = asyncio.run(main())
    assert got >= 50 and left == set() and busy == set() and ok


# ------------------------------------------------------------------- faults mid-stream


@pytest.mark.parametrize(
    ("switches", "n"),
    [
        (("-M", "500"), 1500),  # the server exits after 500 messages
        (("-q", "."), 40),  # every end of data: disconnect without a reply
    ],
)
def test_server_fault_mid_stream(
    smtp_sink: Any, streamer: Any, switches: tuple[str, str], n: int
) -> None:
    sink = smtp_sink(*switches)
    s = streamer(sink.host, sink.port, max_connections=3, connection_timeout=3, send_timeout=5)
    statuses: list[SendStatus] = []
    assert s.stream((raw(i) for i in range(n)), lambda _, x: statuses.append(x)) == n
    assert [x.message_id for x in statuses] == [mid(i) for i in range(n)]
    for x in statuses:
        assert (x.success, x.status) in ((True, 250), (False, 0)), x
        assert x.success or x.stage in ("connect", "greeting", "mail", "rcpt", "data"), x
    ok = sum(x.success for x in statuses)
    uncertain = sum(x.uncertain for x in statuses)
    if switches[0] == "-M":
        # The 500th message reached the server, whose answer was lost with it; its
        # neighbours on other connections may share that fate. None was lost silently.
        assert ok <= 500 <= ok + uncertain, (ok, uncertain)
        assert not sink.alive
        if s.kind == "sync":  # one connection: everything after the fault failed
            assert [x.success for x in statuses] == [True] * ok + [False] * (n - ok)
    else:
        assert ok == 0 and uncertain == n  # each was sent, none was confirmed


# ---------------------------------------------------------------------- inputs, modes


def test_bad_mails_and_options_name_the_argument(streamer: Any) -> None:
    s = streamer("127.0.0.1", free_port())
    for bad in (42, None, raw(0), b"raw bytes", "a@x.test", Email(from_="a@x.test", to="b@x")):
        with pytest.raises(TypeError, match="mails"):
            s.t.iter_send(bad)
        with pytest.raises(TypeError, match="mails"):
            s.send_many(bad)
    with pytest.raises(ValueError, match="dsn"):
        s.t.iter_send([raw(0)], dsn="SUCCESS")
    s.t.iter_send([raw(0)], dsn=Dsn(notify=["SUCCESS"]))  # a generator: nothing sent yet


def test_input_error_comes_after_the_statuses_before_it(smtp_sink: Any, streamer: Any) -> None:
    sink = smtp_sink()
    s = streamer(sink.host, sink.port, max_connections=2)

    def failing() -> Iterator[RawMessage]:
        for i in range(130):
            yield raw(i)
        raise LookupError("the database went away")

    seen: list[str] = []
    with pytest.raises(LookupError, match="database"):
        s.stream(failing(), lambda _, x: seen.append(x.message_id))
    assert seen == [mid(i) for i in range(130)]
    assert s.send(raw(-1)).success  # the connection was left in a clean state


def test_async_iterable_input(smtp_sink: Any) -> None:
    sink = smtp_sink()

    async def source() -> AsyncIterator[Any]:
        for i in range(300):
            await asyncio.sleep(0)
            yield raw(i) if i % 7 else Email(from_="a@x.test", subject="no recipient")

    async def main() -> list[SendStatus]:
        async with AsyncTransporter(sink.host, sink.port, security=Security.NONE) as t:
            return [x async for x in t.iter_send(source())]

    statuses = asyncio.run(main())
    assert [x.success for x in statuses] == [bool(i % 7) for i in range(300)]
    assert [x.message_id for x in statuses if x.success] == [mid(i) for i in range(300) if i % 7]


def test_outbox_captures_the_stream(streamer: Any) -> None:
    s = streamer("127.0.0.1", free_port(), max_connections=3)  # nobody listens there
    ids: list[str] = []
    with Outbox() as box:
        assert s.stream((raw(i) for i in range(250)), lambda _, x: ids.append(x.message_id)) == 250
    assert ids == [mid(i) for i in range(250)]
    # captured in the order the connections took them (several lanes for async)
    assert sorted(m.message_id for m in box) == sorted(ids)


def test_spool_mode_queues_lazily(tmp_path: Path) -> None:
    t = Transporter("127.0.0.1", free_port(), security=Security.NONE, asynchronous=True,
                    spool=str(tmp_path / "spool.db"))  # fmt: skip
    source, pulled = counted(50)
    with Outbox():
        try:
            statuses = t.iter_send(source)
            first = next(statuses)
            assert pulled[0] == 1  # each message is queued as it is read
            rest = list(statuses)
        finally:
            t.close()
    assert len(rest) == 49
    assert all(x.state is SpoolState.PENDING and x.mail_id for x in [first, *rest])


# --------------------------------------------------------------------- memory, at scale


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_million_messages_in_flat_memory(smtp_sink: Any) -> None:
    n = 1_000_000
    sink = smtp_sink()

    def source() -> Iterator[RawMessage]:
        for i in range(n):
            yield raw(i)

    async def main() -> tuple[int, int, int, float]:
        count = 0
        at_100k = 0
        start = time.monotonic()
        t = AsyncTransporter(sink.host, sink.port, security=Security.NONE, max_connections=4)
        async for status in t.iter_send(source()):
            # compared as they come, never stored
            if not status.success or status.message_id != mid(count):
                raise AssertionError((count, status))
            count += 1
            if count == 100_000:
                gc.collect()
                at_100k = rss()
        await t.close()
        gc.collect()
        return count, at_100k, rss(), time.monotonic() - start

    count, at_100k, at_end, seconds = asyncio.run(main())
    print(f"\n{count} messages in {seconds:.1f} s ({count / seconds:.0f} msg/s); RSS "
          f"{at_100k / 1e6:.1f} MB at 100k, {at_end / 1e6:.1f} MB at the end")  # fmt: skip
    assert count == n
    assert at_end - at_100k < 20_000_000, (at_100k, at_end)


def held_per_status(run: Callable[[], list[SendStatus]]) -> float:
    """Bytes that the statuses returned by ``run()`` hold, per status (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        statuses = run()
        gc.collect()
        held, n = tracemalloc.get_traced_memory()[0], len(statuses)
        del statuses
        gc.collect()
        return (held - tracemalloc.get_traced_memory()[0]) / n
    finally:
        tracemalloc.stop()


def test_send_many_memory_is_the_statuses_only(smtp_sink: Any, streamer: Any) -> None:
    sink = smtp_sink()
    s = streamer(sink.host, sink.port, max_connections=4)
    s.send_many(raw(i) for i in range(1000))  # connections, caches, the loop's structures
    per_status = held_per_status(lambda: s.send_many(raw(i) for i in range(5000)))
    n = 100_000
    gc.collect()
    before = rss()
    statuses = s.send_many(raw(i) for i in range(n))
    gc.collect()
    growth = (rss() - before) / n
    assert len(statuses) == n and statuses[-1].message_id == mid(n - 1)
    # the list's slot and allocator slack on top of the statuses themselves, nothing that
    # grows with the messages (the messages are long gone)
    assert growth <= per_status + 100, (growth, per_status)


def test_sync_unreachable_server_fails_the_rest_at_once(smtpd: Any) -> None:
    # As send_many always did: a connection that cannot be made fails every message
    # left, without a new attempt (and its timeout) per slice.
    server = smtpd(faults={"CONNECT": "554 5.3.2 not now"})
    t = Transporter(server.host, server.port, security=Security.NONE)
    n = 2 * t._stream_window + 5
    statuses = list(t.iter_send(raw(i) for i in range(n)))
    assert [x.message_id for x in statuses] == [mid(i) for i in range(n)]
    assert all(not x.success and x.stage == "greeting" and x.status == 554 for x in statuses)
    assert server.connections == 1


def test_sync_stream_releases_the_lock_between_slices(smtpd: Any) -> None:
    # Another thread can send while a stream is paused between two slices.
    server = smtpd()
    t = Transporter(server.host, server.port, security=Security.NONE)
    statuses = t.iter_send(raw(i) for i in range(t._stream_window + 10))
    assert next(statuses).success
    other: list[SendStatus] = []
    worker = threading.Thread(target=lambda: other.append(t.send(raw(-1))))
    worker.start()
    worker.join(10)
    assert other and other[0].success
    assert sum(1 for x in statuses if x.success) == t._stream_window + 9
    t.close()
