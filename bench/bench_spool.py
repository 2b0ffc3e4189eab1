"""Benchmark of the spool: durable submits, and the drain rate against direct sending.

Measured in one run, medians of 3 rounds:

* ``submit_many`` into SQLite and PostgreSQL (batches of 1,000; each batch one durable
  transaction). Target: at least 10,000 submits/s into SQLite.
* draining the spool to Postfix's ``smtp-sink`` with ``spool.run(until_empty=True)``
  against ``Transporter.send_many`` of the same messages to the same sink.
  Target: the drain rate at least 0.8x direct sending.

Usage::

    python bench/bench_spool.py [--messages 5000] [--workers 4] [--pg postgresql://...]

Nothing asserts a time: the script prints the numbers and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from postillon.message.prepared import Prepared
from postillon.settings import Security
from postillon.spool import Spool, SpoolState
from postillon.transporter import Transporter

BODY = b"x" * 70 + b"\r\n"


def message(i: int, size: int = 2048) -> Prepared:
    mid = f"<{uuid.uuid4().hex}@bench.example>"
    head = (
        f"From: a@bench.example\r\nTo: b@bench.example\r\nMessage-ID: {mid}\r\n"
        f"Subject: bench {i}\r\n\r\n"
    ).encode()
    data = head + BODY * max(1, (size - len(head)) // len(BODY))

    def source() -> Iterator[bytes]:
        return iter((data,))

    return Prepared("a@bench.example", ("b@bench.example",), mid, source, len(data))


def median_of(rounds: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(rounds))


def bench_submit(make_spool: Callable[[], Spool], n: int, batch: int) -> float:
    msgs = [message(i) for i in range(n)]
    with make_spool() as spool:
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            spool.submit_many(msgs[i : i + batch])
        dt = time.perf_counter() - t0
    return n / dt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    extra = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([binary, *extra, f"127.0.0.1:{port}", "256"])
    for _ in range(250):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("smtp-sink did not start")


def transporter(port: int) -> Transporter:
    return Transporter("127.0.0.1", port, security=Security.NONE, accept_unsecure_connection=True)


def bench_direct(port: int, n: int) -> float:
    msgs = [message(i) for i in range(n)]
    t = transporter(port)
    t0 = time.perf_counter()
    statuses = t.send_many(msgs)
    dt = time.perf_counter() - t0
    t.close()
    assert all(s.success for s in statuses), statuses[0]
    return n / dt


def bench_drain(tmp: Path, port: int, n: int, workers: int) -> float:
    path = tmp / f"drain-{uuid.uuid4().hex}.db"
    with Spool(path) as spool:
        for i in range(0, n, 1000):
            spool.submit_many([message(j) for j in range(i, min(n, i + 1000))])
        t = transporter(port)
        t0 = time.perf_counter()
        stats = spool.run(t, workers=workers, until_empty=True, batch=64)
        dt = time.perf_counter() - t0
        assert stats.sent == n and spool.counts()[SpoolState.SENT] == n, stats
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--submits", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--pg", default=os.environ.get("POSTILLON_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    try:
        counter = iter(range(10**6))
        sqlite_rate = median_of(
            args.rounds,
            lambda: bench_submit(
                lambda: Spool(tmp / f"submit-{next(counter)}.db"), args.submits, args.batch
            ),
        )
        print(f"submit_many SQLite   : {sqlite_rate:10.0f} msgs/s (batches of {args.batch})")
        try:
            from postillon.spool._postgres import PostgresStore

            schemas: list[str] = []

            def pg_spool() -> Spool:
                schemas.append(f"bench_{uuid.uuid4().hex[:10]}")
                return Spool(args.pg, schema=schemas[-1])

            pg_rate = median_of(
                args.rounds, lambda: bench_submit(pg_spool, args.submits, args.batch)
            )
            print(f"submit_many Postgres : {pg_rate:10.0f} msgs/s (batches of {args.batch})")
            for s in schemas:
                store = PostgresStore(args.pg, schema=s)
                store.drop()
                store.close()
        except Exception as exc:  # the PostgreSQL part is optional
            print(f"submit_many Postgres : skipped ({type(exc).__name__}: {exc})")

        proc, port = start_sink()
        try:
            direct = median_of(args.rounds, lambda: bench_direct(port, args.messages))
            drain = median_of(
                args.rounds, lambda: bench_drain(tmp, port, args.messages, args.workers)
            )
            drain1 = median_of(args.rounds, lambda: bench_drain(tmp, port, args.messages, 1))
        finally:
            proc.kill()
            proc.wait()
        print(f"direct send_many     : {direct:10.0f} msgs/s (one pipelined connection)")
        print(
            f"spool drain, {args.workers} wkrs : {drain:10.0f} msgs/s  ratio {drain / direct:.2f}x"
        )
        print(f"spool drain, 1 wkr   : {drain1:10.0f} msgs/s  ratio {drain1 / direct:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
