"""The load run: 10,000 messages over 1 to 50 connections and through the spool.

Every message carries a unique Message-ID; a counting SMTP server (aiosmtpd, in a thread)
records each one it receives. After each run the script checks the invariants of
security.md 3.7: every message delivered (0 lost), none delivered twice (0 duplicated),
every status a success, and memory flat (RSS sampled during the run).

Usage::

    python bench/load_run.py                      # 10,000 messages per run
    python bench/load_run.py --messages 2000      # a quicker look

Prints one line per run and exits non-zero if an invariant breaks. This is a load run,
not a test: the times are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from postillon import AsyncTransporter, RawMessage, Security, Spool

BODY = b"x" * 76 + b"\r\n"


class Counter:
    """aiosmtpd handler that counts Message-IDs."""

    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or b""
        head = data.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                with self.lock:
                    self.seen[line.split(b":", 1)[1].strip().decode()] += 1
                break
        return "250 2.0.0 Ok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def messages(n: int, tag: str) -> list[RawMessage]:
    out = []
    for i in range(n):
        mid = f"<{tag}-{i}-{uuid.uuid4().hex[:8]}@load.test>"
        head = f"From: a@load.test\r\nTo: b@load.test\r\nSubject: load {i}\r\nMessage-ID: {mid}\r\n\r\n"
        out.append(RawMessage(head.encode() + BODY * 26, "a@load.test", ["b@load.test"]))
    return out


def ids(mails: list[RawMessage]) -> list[str]:
    return [m.data.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in mails]


class Sampler:
    """Samples RSS every 100 ms in a thread."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(rss_mb())

    def __enter__(self) -> Sampler:
        self.samples.append(rss_mb())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mb())


def check(
    name: str, counter: Counter, expected: list[str], ok: int, elapsed: float, rss: Sampler
) -> bool:
    with counter.lock:
        got = {k: counter.seen[k] for k in expected}
    lost = sum(1 for v in got.values() if v == 0)
    dup = sum(v - 1 for v in got.values() if v > 1)
    n = len(expected)
    start, peak, end = rss.samples[0], max(rss.samples), rss.samples[-1]
    print(
        f"{name:<24} {n:>6} msgs {elapsed:7.2f} s {n / elapsed:8.0f} msg/s  "
        f"ok {ok:>6}  lost {lost}  dup {dup}  RSS start {start:6.1f} peak {peak:6.1f} "
        f"end {end:6.1f} MB"
    )
    return lost == 0 and dup == 0 and ok == n


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--connections", default="1,5,20,50")
    parser.add_argument("--spool-workers", type=int, default=4)
    args = parser.parse_args()

    counter = Counter()
    port = free_port()
    controller = Controller(counter, hostname="127.0.0.1", port=port)
    controller.start()
    good = True
    print(f"load run: {args.messages} messages per run to aiosmtpd on 127.0.0.1:{port}")
    try:
        for m in (int(x) for x in args.connections.split(",")):
            mails = messages(args.messages, f"c{m}")

            async def run(mails: list[RawMessage] = mails, m: int = m) -> int:
                async with AsyncTransporter(
                    "127.0.0.1", port, security=Security.NONE, max_connections=m
                ) as t:
                    statuses = await t.send_many(mails)
                return sum(1 for s in statuses if s.success)

            with Sampler() as rss:
                began = time.perf_counter()
                ok = asyncio.run(run())
                elapsed = time.perf_counter() - began
            good &= check(f"async, {m} connection(s)", counter, ids(mails), ok, elapsed, rss)

        mails = messages(args.messages, "spool")
        with tempfile.TemporaryDirectory() as tmp:
            from postillon import Transporter

            with Sampler() as rss:
                began = time.perf_counter()
                with Spool(os.path.join(tmp, "load.db")) as spool:
                    spool.submit_many(mails)
                    t = Transporter("127.0.0.1", port, security=Security.NONE)
                    stats = spool.run(t, workers=args.spool_workers, until_empty=True)
                    t.close()
                elapsed = time.perf_counter() - began
            good &= check(
                f"spool, {args.spool_workers} workers",
                counter,
                ids(mails),
                stats.sent,
                elapsed,
                rss,
            )
    finally:
        controller.stop()
    print("invariants:", "hold" if good else "BROKEN")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
