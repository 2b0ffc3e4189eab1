"""Memory of a bulk send: ``iter_send`` stays flat, ``send_many`` holds every status.

Sends N (default a million) 1 KiB messages, one recipient, to one Postfix ``smtp-sink``
started by this script on a free loopback port. The messages come from a generator, so
the input itself costs nothing that grows. Each contender runs in a fresh subprocess, so
its resident set (RSS, from ``/proc/self/statm``) and its peak (``VmHWM``) are its own:

* ``async-iter-1``: ``AsyncTransporter(max_connections=1).iter_send``;
* ``async-iter-8``: ``AsyncTransporter(max_connections=8).iter_send``;
* ``sync-iter``: ``Transporter.iter_send`` (one connection);
* ``async-many-8``: ``AsyncTransporter(max_connections=8).send_many``, for comparison:
  its list of statuses grows with N, and the bytes per message it costs are printed.

Each run prints the RSS after the warm-up (the base), at the checkpoints (10k, 100k, 1M
messages, those up to N) and at the end, the peak RSS and msg/s. Every status is checked
(successful, in input order) as it arrives and, for the streams, never stored. The sink's
own counter (``smtp-sink -c``) must have grown by N as well. Nothing asserts a figure.

Usage::

    python bench/bench_memory.py                       # a million messages per contender
    python bench/bench_memory.py --messages 100000 --only async-iter-8,async-many-8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_throughput import HELO, RECIPIENT, SENDER, Sink, find_binary, make_message

CONTENDERS = ("async-iter-1", "async-iter-8", "sync-iter", "async-many-8")
CHECKPOINTS = (10_000, 100_000, 1_000_000)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def label(count: int) -> str:
    """10000 -> "10k", 1000000 -> "1M"."""
    return f"{count // 1_000_000}M" if count % 1_000_000 == 0 else f"{count // 1000}k"


def rss_mb() -> float:
    """The resident set now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 1e6


def peak_rss_mb() -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


class Probe:
    """Checks each status as it comes (successful, in order) and samples RSS."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.bad = 0
        self.marks = [c for c in CHECKPOINTS if c <= n]
        self.samples: dict[str, float] = {}

    def see(self, status: Any) -> None:
        if not status.success:
            self.bad += 1
        self.count += 1
        if self.marks and self.count == self.marks[0]:
            self.samples[label(self.marks.pop(0))] = rss_mb()


def messages(n: int) -> Iterator[Any]:
    """N distinct RawMessage objects, made as they are read (the bytes are shared)."""
    from postillon import RawMessage

    data = make_message()
    for _ in range(n):
        yield RawMessage(data, SENDER, [RECIPIENT])


def child(name: str, port: int, n: int) -> dict[str, Any]:
    """Run one contender in this (fresh) process; return its figures."""
    from postillon import AsyncTransporter, Security, Transporter

    settings: dict[str, Any] = {"security": Security.NONE, "local_hostname": HELO}
    probe = Probe(n)
    held: list[Any] = []

    async def run_async(connections: int, stream: bool, count: int, p: Probe) -> None:
        t = AsyncTransporter("127.0.0.1", port, max_connections=connections, **settings)
        if stream:
            async for status in t.iter_send(messages(count)):
                p.see(status)
        else:
            held[:] = await t.send_many(messages(count))
            p.marks = []  # the list is whole before the first status is seen
            for status in held:
                p.see(status)
        await t.close()

    def run_sync(count: int, p: Probe) -> None:
        with Transporter("127.0.0.1", port, **settings) as t:
            for status in t.iter_send(messages(count)):
                p.see(status)

    runs: dict[str, Callable[[int, Probe], None]] = {
        "async-iter-1": lambda k, p: asyncio.run(run_async(1, True, k, p)),
        "async-iter-8": lambda k, p: asyncio.run(run_async(8, True, k, p)),
        "sync-iter": run_sync,
        "async-many-8": lambda k, p: asyncio.run(run_async(8, False, k, p)),
    }
    run = runs[name]
    warm = min(2000, n)
    run(warm, Probe(warm))  # imports, first connections, the allocator's pools
    held.clear()
    base = rss_mb()
    start = time.perf_counter()
    run(n, probe)
    seconds = time.perf_counter() - start
    end = rss_mb()  # send_many's statuses are still held here
    return {
        "name": name,
        "n": n,
        "warm": warm,
        "ok": probe.count - probe.bad,
        "count": probe.count,
        "seconds": seconds,
        "base": base,
        "samples": probe.samples,
        "end": end,
        "peak": peak_rss_mb(),
    }


def run_child(name: str, port: int, n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, "--port", str(port), "--messages", str(n)],
        capture_output=True,
        text=True,
        timeout=7200,
        check=False,
    )
    if proc.returncode != 0:
        return {"name": name, "error": proc.stderr.strip()[-300:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Start the sink, run each contender in a subprocess, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=1_000_000, help="messages per contender")
    ap.add_argument("--only", default="", help="comma-separated contender names")
    ap.add_argument("--json", metavar="PATH", help="write the figures to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.messages < 1:
        ap.error("--messages: must be at least 1")
    if args.child:
        print(json.dumps(child(args.child, args.port, args.messages)))
        return 0
    only = [x for x in args.only.split(",") if x]
    for name in only:
        if name not in CONTENDERS:
            ap.error(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")
    if not Path("/proc/self/statm").exists():
        print("bench_memory reads /proc/self/statm: Linux only", file=sys.stderr)
        return 2
    binary = find_binary("smtp-sink")
    if binary is None:
        print("smtp-sink (Postfix) not found: nothing to send to", file=sys.stderr)
        return 2

    n = args.messages
    print(f"{n} messages of {len(make_message())} octets, 1 recipient, to smtp-sink; "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")  # fmt: skip
    sink = Sink(binary).start()
    results = []
    try:
        for name in only or CONTENDERS:
            before = sink.received()
            r = run_child(name, sink.port, n)
            sent = n + r.get("warm", 0)
            got = sink.wait_received(before + sent, timeout=10) - before
            if "error" not in r and (r["ok"] != n or got != sent):
                r["error"] = f"client counted {r['ok']}/{n} successes, sink received {got}/{sent}"
            results.append(r)
            if "error" in r:
                print(f"  {name:<13} FAILED: {r['error']}", flush=True)
            else:
                print(f"  {name:<13} done in {r['seconds']:.1f} s", flush=True)
    finally:
        sink.remove()

    marks = [label(c) for c in CHECKPOINTS if c <= n]
    head = "".join(f"{m:>8}" for m in marks)
    print()
    print("RSS in MB: after the warm-up (base), at each checkpoint, at the end; peak")
    print(f"{'contender':<14}{'msg/s':>8}{'base':>8}{head}{'end':>8}{'peak':>8}  growth/msg")
    for r in results:
        if "error" in r:
            print(f"{r['name']:<14}{'FAILED':>8}")
            continue
        cols = "".join(
            f"{r['samples'][m]:>8.1f}" if m in r["samples"] else f"{'-':>8}" for m in marks
        )
        per = (r["end"] - r["base"]) * 1e6 / n
        print(
            f"{r['name']:<14}{n / r['seconds']:>8.0f}{r['base']:>8.1f}{cols}"
            f"{r['end']:>8.1f}{r['peak']:>8.1f}  {per:>6.0f} B"
        )
    print("growth/msg: (end - base) / N. A stream's growth is a fixed cost (its window of")
    print("messages and statuses), so it tends to 0 as N grows; send_many's list holds one")
    print("SendStatus per message until the caller drops it.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
