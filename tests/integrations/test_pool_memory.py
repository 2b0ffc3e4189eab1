"""Memory stays flat over thousands of pooled sends (tracemalloc), connections renewed."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable

from postillon import AsyncTransporter, RawMessage, Security, Transporter
from postillon.pool import PoolPolicy

BODY = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: load\r\n\r\n" + b"x" * 2000 + b"\r\n"
MSG = RawMessage(BODY, "a@x.test", ["b@x.test"])


def growth(run: Callable[[int], None], warm: int, rounds: int, per_round: int) -> list[int]:
    """Traced memory after each round, relative to the end of the warm-up."""
    tracemalloc.start()
    try:
        run(warm)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        out = []
        for _ in range(rounds):
            run(per_round)
            gc.collect()
            out.append(tracemalloc.get_traced_memory()[0] - base)
        return out
    finally:
        tracemalloc.stop()


def test_sync_sends_keep_memory_flat(smtp_sink: object) -> None:
    sink = smtp_sink()  # type: ignore[operator]
    # max_messages=250: the connection is renewed a dozen times during the run
    t = Transporter(sink.host, sink.port, security=Security.NONE,
                    pool=PoolPolicy(max_messages=250))  # fmt: skip

    def run(n: int) -> None:
        for _ in range(n):
            assert t.send(MSG).success

    try:
        deltas = growth(run, warm=300, rounds=4, per_round=600)
    finally:
        t.close()
    # 2,400 sends after the warm-up: no per-message residue (a leak of even 100 bytes a
    # message would show 240 KB)
    assert max(deltas) < 150_000, deltas
    assert deltas[-1] - deltas[0] < 60_000, deltas


def test_async_pool_keeps_memory_flat(smtp_sink: object) -> None:
    sink = smtp_sink()  # type: ignore[operator]

    async def main() -> list[int]:
        t = AsyncTransporter(sink.host, sink.port, security=Security.NONE, max_connections=4,
                             pool=PoolPolicy(max_messages=200))  # fmt: skip
        loop_results: list[int] = []

        async def burst(n: int) -> None:
            statuses = await asyncio.gather(*(t.send(MSG) for _ in range(n)))
            assert all(s.success for s in statuses)

        tracemalloc.start()
        try:
            await burst(600)  # the same size as a round: the loop sizes its structures
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            for _ in range(5):
                await burst(600)
                gc.collect()
                loop_results.append(tracemalloc.get_traced_memory()[0] - base)
        finally:
            tracemalloc.stop()
            await t.close()
        assert t.connections_opened >= 2700 // 200
        return loop_results

    deltas = asyncio.run(main())
    # 3,000 sends after the warm-up; the loop's own bookkeeping moves by ~100 KB from one
    # round to the next, a residue of 100 bytes a message would add 300 KB
    assert max(deltas) < 250_000, deltas
    assert deltas[-1] - min(deltas) < 150_000, deltas
