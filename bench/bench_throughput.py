"""Throughput of postillon's send path against smtplib, aiosmtplib, Nodemailer and smtp-source.

Every contender sends the same 1 KiB message (one recipient) N times to one Postfix
``smtp-sink`` started by this script on a free loopback port, in one run. Each round runs
every contender once, in an order rotated from round to round (so that none always runs
first or last); the figure kept is the median over the rounds.

One connection:

* ``postillon-sync``: ``Transporter.send_many`` (pipelined over one connection);
* ``postillon-async``: ``AsyncTransporter(max_connections=1).send_many``;
* ``smtplib``: ``SMTP.sendmail`` in a loop on one connection;
* ``aiosmtplib``: one ``SMTP`` client, ``sendmail`` in a loop;
* ``smtp-source-1``: ``smtp-source -d -s 1 -m N -l 1024`` (the process is timed);
* ``floor-asyncio``: a reference, not a client: ready-made bytes on asyncio's own
  transport, the same bytes on the wire as postillon, no parsing and no statuses. Its
  rate is what the round trip through this server leaves to any asyncio client; it is
  printed with its ratios to aiosmtplib and postillon-async, and in none of the targets.

Eight connections (``--connections``):

* ``postillon-sync-8``: 8 threads, each with its own ``Transporter`` and ``send_many``;
* ``postillon-async-8``: ``AsyncTransporter(max_connections=8).send_many``;
* ``smtplib-8``: 8 threads, each with one ``SMTP`` connection;
* ``aiosmtplib-8``: 8 clients in ``asyncio.gather``;
* ``nodemailer-8``: Nodemailer's pooled SMTP transport (``maxConnections: 8``), when
  ``node`` and ``npm`` are present (Nodemailer is installed into a temporary directory);
* ``smtp-source-8``: ``smtp-source -d -s 8 -m N -l 1024``.

A fast wrong answer cannot win: every contender counts its own successes (statuses,
refusal dictionaries, accepted lists, exit status), and the sink's own counter of
messages received (``smtp-sink -c``) must have grown by N as well. A run that fails
either check is printed as FAILED and left out of the ratios.

Timing covers connect, every message and QUIT, from the first client call to the last;
for Python contenders the message objects are built before the clock starts (smtplib and
aiosmtplib are handed ready bytes and strings too), and the garbage collector is run
then, for every contender, so that the objects the harness made are not collected in
the middle of someone's timed run. Nothing asserts a time.

Usage::

    python bench/bench_throughput.py [--messages 5000] [--rounds 3] [--json out.json]
    python bench/bench_throughput.py --only postillon-sync,smtplib --rounds 1
    python bench/bench_throughput.py --profile sync   # cProfile of postillon-sync only
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import postillon
from postillon import AsyncTransporter, RawMessage, Security, Transporter

SENDER = "sender@bench.example"
RECIPIENT = "rcpt@bench.example"
HELO = "bench.example"


def make_message() -> bytes:
    """A 1 KiB body (16 lines of 64 octets) under a few ordinary headers."""
    head = (
        f"From: Bench <{SENDER}>\r\n"
        f"To: <{RECIPIENT}>\r\n"
        "Subject: throughput\r\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        "Message-ID: <throughput@bench.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode("ascii")
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
    assert len(line) == 64
    return head + line * 16


# ------------------------------------------------------------------------------ the sink


def find_binary(name: str) -> str | None:
    """A Postfix test program: on PATH, else in the usual sbin directories."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/usr/lib/postfix", "/usr/libexec/postfix"):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Sink:
    """``smtp-sink -c 127.0.0.1:PORT 1024``; its counters are read from its stdout file."""

    _COUNT = re.compile(rb"mesg=(\d+)")

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.out = tempfile.NamedTemporaryFile(prefix="bench-sink-", delete=False)  # noqa: SIM115
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        extra = ["-u", "nobody"] if os.geteuid() == 0 else []
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [self.binary, *extra, "-c", f"127.0.0.1:{self.port}", "1024"],
                stdin=subprocess.DEVNULL,
                stdout=self.out,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._listening():
                    return self
                time.sleep(0.02)
            self.stop()
        raise RuntimeError("smtp-sink did not start")

    def _listening(self) -> bool:
        # Read the socket table rather than connecting: a probe would count as a session.
        want = f"{int.from_bytes(socket.inet_aton('127.0.0.1'), 'little'):08X}:{self.port:04X}"
        try:
            table = Path("/proc/net/tcp").read_text()
        except OSError:  # not Linux: a probe connection does no harm to the counts
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False
        return any(
            cols[1] == want and cols[3] == "0A"
            for cols in (line.split() for line in table.splitlines()[1:])
            if len(cols) > 3
        )

    def received(self) -> int:
        """Messages the sink has received so far (its ``mesg=`` counter)."""
        with open(self.out.name, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256))
            found = self._COUNT.findall(f.read())
        return int(found[-1]) if found else 0

    def wait_received(self, target: int, timeout: float = 3.0) -> int:
        """The counter once it reaches ``target`` (or whatever it says after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received()
            if got >= target or time.monotonic() > deadline:
                return got
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        self.out.close()
        Path(self.out.name).unlink(missing_ok=True)


# ------------------------------------------------------------------------ the contenders


def _cpu() -> float:
    """CPU seconds used so far by this process and by its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Wall clock and client CPU time of the timed part of a run.

    The CPU time is this process's (every thread) plus its finished children's; the sink
    has not finished, so it does not count. It is far less sensitive to a busy machine
    than the wall clock, and it includes the kernel's share of each send.
    """

    def __init__(self) -> None:
        # What the harness allocated before the clock (the messages of a run, the
        # garbage of the runs before) is collected now, not by a full collection that
        # its promotion would trigger in the middle of the timed part, charged to
        # whichever contender runs then. Collections caused by the contender's own
        # allocations still count.
        gc.collect()
        self.wall = time.perf_counter()
        self.cpu = _cpu()

    def run(self, ok: int, note: str = "") -> Run:
        return Run(time.perf_counter() - self.wall, ok, _cpu() - self.cpu, note)


@dataclass
class Run:
    """One timed run: seconds, the successes the client itself counted, CPU seconds."""

    seconds: float
    ok: int
    cpu: float = 0.0
    note: str = ""


@dataclass
class Env:
    port: int
    n: int
    connections: int
    data: bytes
    smtp_source: str | None
    node: NodeRunner | None


def _slices(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _raws(env: Env, n: int) -> list[RawMessage]:
    # Distinct objects with the same bytes: nothing may be cached on a message's identity.
    return [RawMessage(env.data, SENDER, [RECIPIENT]) for _ in range(n)]


def _transporter(env: Env) -> Transporter:
    return Transporter("127.0.0.1", env.port, security=Security.NONE, local_hostname=HELO)


def postillon_sync(env: Env) -> Run:
    msgs = _raws(env, env.n)
    t = _transporter(env)
    clock = Clock()
    statuses = t.send_many(msgs)
    t.close()
    return clock.run(sum(1 for s in statuses if s.success))


def postillon_sync_threads(env: Env) -> Run:
    parts = [_raws(env, k) for k in _slices(env.n, env.connections)]
    oks = [0] * len(parts)
    barrier = threading.Barrier(len(parts) + 1)

    def work(i: int) -> None:
        t = _transporter(env)
        barrier.wait()
        statuses = t.send_many(parts[i])
        t.close()
        oks[i] = sum(1 for s in statuses if s.success)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(parts))]
    for th in threads:
        th.start()
    barrier.wait()
    clock = Clock()
    for th in threads:
        th.join()
    return clock.run(sum(oks))


def _postillon_async(env: Env, connections: int) -> Run:
    msgs = _raws(env, env.n)

    async def main() -> Run:
        t = AsyncTransporter(
            "127.0.0.1",
            env.port,
            security=Security.NONE,
            local_hostname=HELO,
            max_connections=connections,
        )
        clock = Clock()
        statuses = await t.send_many(msgs)
        await t.close()
        return clock.run(sum(1 for s in statuses if s.success))

    return asyncio.run(main())


def postillon_async(env: Env) -> Run:
    return _postillon_async(env, 1)


def postillon_async_8(env: Env) -> Run:
    return _postillon_async(env, env.connections)


def _smtplib_session(env: Env, count: int) -> int:
    import smtplib

    ok = 0
    with smtplib.SMTP("127.0.0.1", env.port, local_hostname=HELO) as s:
        for _ in range(count):
            try:
                refused = s.sendmail(SENDER, [RECIPIENT], env.data)
            except smtplib.SMTPException:
                continue
            ok += not refused
    return ok


def smtplib_one(env: Env) -> Run:
    clock = Clock()
    ok = _smtplib_session(env, env.n)
    return clock.run(ok)


def smtplib_threads(env: Env) -> Run:
    counts = _slices(env.n, env.connections)
    oks = [0] * len(counts)

    def work(i: int) -> None:
        oks[i] = _smtplib_session(env, counts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(counts))]
    clock = Clock()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return clock.run(sum(oks))


async def _aiosmtplib_session(env: Env, count: int) -> int:
    import aiosmtplib

    ok = 0
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=env.port, start_tls=False, local_hostname=HELO
    )
    async with client:
        for _ in range(count):
            try:
                errors, _ = await client.sendmail(SENDER, [RECIPIENT], env.data)
            except aiosmtplib.SMTPException:
                continue
            ok += not errors
    return ok


def aiosmtplib_one(env: Env) -> Run:
    async def main() -> Run:
        clock = Clock()
        ok = await _aiosmtplib_session(env, env.n)
        return clock.run(ok)

    return asyncio.run(main())


def aiosmtplib_gather(env: Env) -> Run:
    async def main() -> Run:
        clock = Clock()
        oks = await asyncio.gather(
            *(_aiosmtplib_session(env, k) for k in _slices(env.n, env.connections))
        )
        return clock.run(sum(oks))

    return asyncio.run(main())


class _FloorProtocol(asyncio.BufferedProtocol):
    """The least an asyncio client can do per message on one connection (a reference).

    Not a client: ready-made bytes, no parsing beyond finding each reply's code, no
    statuses, no checks. It sends what postillon sends on the wire (the body, its final
    dot and the next message's pipelined MAIL, RCPT and DATA in one write, each time the
    354 comes), so its rate is the ceiling that the round trip through this server and
    the event loop leave to any asyncio client here.
    """

    def __init__(self, env: Env, done: asyncio.Future[int]) -> None:
        self.buf = bytearray(65536)
        self.pending = b""
        # make_message() ends in CRLF and has no line that starts with a dot
        assert env.data.endswith(b"\r\n") and b"\n." not in env.data
        self.body = env.data + b".\r\n"
        self.envelope = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
        self.left = env.n
        self.ok = 0
        # the command each reply answers, in order; None marks the greeting
        self.expect: list[bytes | None] = [None]
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        data = self.pending + bytes(self.buf[:nbytes])
        *lines, self.pending = data.split(b"\r\n")
        for line in lines:
            if line[3:4] == b"-":
                continue  # a multi-line reply goes on
            self._reply(self.expect.pop(0), line[:3])

    def _reply(self, command: bytes | None, code: bytes) -> None:
        assert self.transport is not None
        if command is None:
            self.expect.append(b"EHLO")
            self.transport.write(f"EHLO {HELO}\r\n".encode())
        elif command == b"EHLO" or (command == b"DATA" and code != b"354"):
            self._next(b"")
        elif command == b"DATA":
            self._next(self.body)
        elif command == b"DOT":
            self.ok += code == b"250"
        elif command == b"QUIT":
            self.transport.close()
            self.done.set_result(self.ok)

    def _next(self, before: bytes) -> None:
        assert self.transport is not None
        if before:
            self.expect.append(b"DOT")
        if self.left == 0:
            self.expect.append(b"QUIT")
            self.transport.write(before + b"QUIT\r\n")
            return
        self.left -= 1
        self.expect += [b"MAIL", b"RCPT", b"DATA"]
        self.transport.write(before + self.envelope)


def floor_asyncio(env: Env) -> Run:
    async def main() -> Run:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        clock = Clock()
        await loop.create_connection(lambda: _FloorProtocol(env, done), "127.0.0.1", env.port)
        ok = await done
        return clock.run(ok)

    return asyncio.run(main())


def _smtp_source(env: Env, sessions: int) -> Run:
    assert env.smtp_source is not None
    args = [
        env.smtp_source,
        "-d",
        "-s", str(sessions),
        "-m", str(env.n),
        "-l", "1024",
        "-M", HELO,
        "-f", SENDER,
        "-t", RECIPIENT,
        f"127.0.0.1:{env.port}",
    ]  # fmt: skip
    clock = Clock()
    proc = subprocess.run(args, capture_output=True, timeout=600, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-200:]
        return clock.run(0, f"exit {proc.returncode}: {err}")
    # smtp-source stops at the first unexpected reply, so exit 0 means all N were sent.
    return clock.run(env.n)


def smtp_source_1(env: Env) -> Run:
    return _smtp_source(env, 1)


def smtp_source_8(env: Env) -> Run:
    return _smtp_source(env, env.connections)


_NODE_SCRIPT = r"""
const nodemailer = require("nodemailer");
const fs = require("fs");
const [port, n, conns, file, from, to, helo] = process.argv.slice(2);
const raw = fs.readFileSync(file);
const transport = nodemailer.createTransport({
  pool: true, host: "127.0.0.1", port: Number(port), secure: false, ignoreTLS: true,
  maxConnections: Number(conns), maxMessages: Infinity, name: helo,
});
(async () => {
  let ok = 0;
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: Number(n) }, () =>
    transport.sendMail({ envelope: { from, to: [to] }, raw }).then(
      (info) => { if (info.accepted.length === 1 && info.rejected.length === 0) ok++; },
      () => {})));
  transport.close();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  process.stdout.write(JSON.stringify({ ok, seconds }) + "\n");
})();
"""


class NodeRunner:
    """Nodemailer installed with npm into a temporary directory."""

    def __init__(self, folder: Path, node: str, version: str) -> None:
        self.folder = folder
        self.node = node
        self.version = version

    @classmethod
    def setup(cls, data: bytes) -> tuple[NodeRunner | None, str]:
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            return None, "node or npm not found: nodemailer-8 skipped"
        folder = Path(tempfile.mkdtemp(prefix="bench-nodemailer-"))
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "nodemailer"],
            cwd=folder,
            capture_output=True,
            timeout=180,
            check=False,
        )
        pkg = folder / "node_modules" / "nodemailer" / "package.json"
        if proc.returncode != 0 or not pkg.exists():
            shutil.rmtree(folder, ignore_errors=True)
            why = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
            return None, f"npm install nodemailer failed ({why[0]}): nodemailer-8 skipped"
        (folder / "send.js").write_text(_NODE_SCRIPT)
        (folder / "message.eml").write_bytes(data)
        version = json.loads(pkg.read_text())["version"]
        return cls(folder, node, version), f"nodemailer {version} on node " + subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()

    def run(self, env: Env) -> Run:
        args = [
            self.node,
            "send.js",
            str(env.port),
            str(env.n),
            str(env.connections),
            "message.eml",
            SENDER,
            RECIPIENT,
            HELO,
        ]
        clock = Clock()
        proc = subprocess.run(args, cwd=self.folder, capture_output=True, timeout=600, check=False)
        whole = clock.run(0)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[-200:]
            return Run(0.0, 0, whole.cpu, f"exit {proc.returncode}: {err}")
        out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        # The time is Node's own (from the first sendMail to the last answer); the CPU
        # time covers the whole process, start-up included.
        return Run(float(out["seconds"]), int(out["ok"]), whole.cpu)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def nodemailer_8(env: Env) -> Run:
    assert env.node is not None
    return env.node.run(env)


@dataclass
class Contender:
    name: str
    group: str  # "one" or "eight"
    run: Callable[[Env], Run]
    kind: str  # "postillon", "peer" (Python/Node clients) or "smtp-source"
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates and not self.failures else None


CONTENDERS: list[tuple[str, str, Callable[[Env], Run], str]] = [
    ("postillon-sync", "one", postillon_sync, "postillon"),
    ("postillon-async", "one", postillon_async, "postillon"),
    ("smtplib", "one", smtplib_one, "peer"),
    ("aiosmtplib", "one", aiosmtplib_one, "peer"),
    ("smtp-source-1", "one", smtp_source_1, "smtp-source"),
    ("floor-asyncio", "one", floor_asyncio, "reference"),
    ("postillon-sync-8", "eight", postillon_sync_threads, "postillon"),
    ("postillon-async-8", "eight", postillon_async_8, "postillon"),
    ("smtplib-8", "eight", smtplib_threads, "peer"),
    ("aiosmtplib-8", "eight", aiosmtplib_gather, "peer"),
    ("nodemailer-8", "eight", nodemailer_8, "peer"),
    ("smtp-source-8", "eight", smtp_source_8, "smtp-source"),
]


# ------------------------------------------------------------------------------ running


def run_once(c: Contender, env: Env, sink: Sink) -> str:
    before = sink.received()
    run = c.run(env)
    cpu_us = run.cpu / env.n * 1e6
    got = sink.wait_received(before + env.n) - before
    rate = env.n / run.seconds if run.seconds > 0 else 0.0
    if run.ok != env.n or got != env.n:
        why = run.note or f"client counted {run.ok}/{env.n}, sink received {got}/{env.n}"
        c.failures.append(why)
        return f"{c.name:<18} FAILED: {why}"
    c.rates.append(rate)
    c.cpu_us.append(cpu_us)
    return f"{c.name:<18} {rate:>9.0f} msg/s  ({run.seconds:.3f} s, client CPU {cpu_us:.1f} us/msg)"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def best(cs: Sequence[Contender]) -> tuple[str | None, float | None]:
    scored = [(c.median, c.name) for c in cs if c.median is not None]
    if not scored:
        return None, None
    rate, name = max(scored)
    return name, rate


def report(contenders: list[Contender], env: Env, notes: list[str]) -> dict[str, Any]:
    by = {c.name: c for c in contenders}

    def med(name: str) -> float | None:
        return by[name].median if name in by else None

    one_post_name, one_post = best(
        [c for c in contenders if c.group == "one" and c.kind == "postillon"]
    )
    eight_post_name, eight_post = best(
        [c for c in contenders if c.group == "eight" and c.kind == "postillon"]
    )
    eight_peer_name, eight_peer = best(
        [c for c in contenders if c.group == "eight" and c.kind == "peer"]
    )
    ratios = [
        ("one connection: postillon-sync / smtplib", ratio(med("postillon-sync"), med("smtplib")), 3.0),
        ("one connection: postillon-async / aiosmtplib",
         ratio(med("postillon-async"), med("aiosmtplib")), 5.0),
        (f"one connection: {one_post_name} / smtp-source -s 1",
         ratio(one_post, med("smtp-source-1")), 1.5),
        (f"eight connections: {eight_post_name} / {eight_peer_name}",
         ratio(eight_post, eight_peer), 3.0),
        (f"eight connections: {eight_post_name} / smtp-source -s {env.connections}",
         ratio(eight_post, med("smtp-source-8")), 0.5),
    ]  # fmt: skip
    print()
    print(f"{'contender':<18} {'median msg/s':>12} {'CPU us/msg':>10}   rounds (msg/s)")
    for c in contenders:
        rounds = " ".join(f"{r:.0f}" for r in c.rates)
        shown = f"{c.median:>12.0f}" if c.median is not None else f"{'FAILED':>12}"
        cpu = f"{statistics.median(c.cpu_us):>10.1f}" if c.cpu_us else f"{'':>10}"
        print(f"{c.name:<18} {shown} {cpu}   {rounds}")
    print()
    print(f"{'ratio':<58} {'value':>6}  target")
    out_ratios = []
    for label, value, target in ratios:
        if value is None:
            print(f"{label:<58} {'n/a':>6}  >= {target}x")
        else:
            verdict = "met" if value >= target else "MISSED"
            print(f"{label:<58} {value:>5.2f}x  >= {target}x  {verdict}")
        out_ratios.append({"ratio": label, "value": value, "target": target})
    floor = med("floor-asyncio")
    if floor is not None:
        # Not targets: what the round trip leaves to any asyncio client on this server.
        print()
        print("reference: floor-asyncio (no parsing, no statuses: the round trip's ceiling)")
        for label, value in (
            ("floor-asyncio / aiosmtplib", ratio(floor, med("aiosmtplib"))),
            ("postillon-async / floor-asyncio", ratio(med("postillon-async"), floor)),
        ):
            shown = f"{value:>5.2f}x" if value is not None else f"{'n/a':>6}"
            print(f"{label:<58} {shown}")
    for note in notes:
        print(f"note: {note}")
    return {
        "messages": env.n,
        "message_bytes": len(env.data),
        "connections": env.connections,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "postillon": getattr(postillon, "__version__", "?"),
        "contenders": {
            c.name: {
                "group": c.group,
                "kind": c.kind,
                "median": c.median,
                "rates": c.rates,
                "client_cpu_us_per_message": c.cpu_us,
                "failures": c.failures,
            }
            for c in contenders
        },
        "ratios": out_ratios,
        "notes": notes,
    }


def profile(env: Env, top: int, which: str) -> None:
    """cProfile of one postillon contender on one connection, sorted by own time."""
    warm = Env(env.port, 200, 1, env.data, None, None)
    msgs = _raws(env, env.n)  # built outside the profile, as outside the timed runs
    prof = cProfile.Profile()
    if which == "sync":
        postillon_sync(warm)
        t = _transporter(env)
        clock = Clock()
        prof.enable()
        statuses = t.send_many(msgs)
        t.close()
        prof.disable()
    else:
        postillon_async(warm)

        async def send() -> list[postillon.SendStatus]:
            t = AsyncTransporter("127.0.0.1", env.port, security=Security.NONE, local_hostname=HELO)
            prof.enable()
            out = await t.send_many(msgs)
            await t.close()
            prof.disable()
            return out

        clock = Clock()
        statuses = asyncio.run(send())
    run = clock.run(sum(1 for s in statuses if s.success))
    print(f"postillon-{which} under cProfile: {env.n / run.seconds:.0f} msg/s, ok={run.ok}")
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    print(text.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, start the sink, run the rounds, print (and save) the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=5000, help="messages per run (N)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--connections", type=int, default=8, help="connections of the 'eight' group")
    ap.add_argument("--only", default="", help="comma-separated contender names")
    ap.add_argument("--skip", default="", help="comma-separated contender names to leave out")
    ap.add_argument("--no-node", action="store_true", help="do not install or run Nodemailer")
    ap.add_argument("--json", metavar="PATH", help="write the figures to this JSON file")
    ap.add_argument(
        "--profile",
        choices=["sync", "async"],
        help="profile postillon-sync or postillon-async (one connection) and exit",
    )
    ap.add_argument("--top", type=int, default=30, help="functions shown by --profile")
    args = ap.parse_args(argv)
    if args.messages < args.connections or args.messages < 1:
        ap.error("--messages: must be at least --connections")
    if args.rounds < 1 or args.connections < 1:
        ap.error("--rounds and --connections: must be at least 1")
    names = [c[0] for c in CONTENDERS]
    only = [x for x in args.only.split(",") if x]
    skip = [x for x in args.skip.split(",") if x]
    for name in only + skip:
        if name not in names:
            ap.error(f"unknown contender {name!r}; known: {', '.join(names)}")

    sink_bin = find_binary("smtp-sink")
    if sink_bin is None:
        print("smtp-sink (Postfix) not found: nothing to measure against", file=sys.stderr)
        return 2
    source_bin = find_binary("smtp-source")
    notes: list[str] = []
    data = make_message()
    chosen = [c for c in CONTENDERS if (not only or c[0] in only) and c[0] not in skip]
    if source_bin is None:
        notes.append("smtp-source not found: smtp-source contenders skipped")
        chosen = [c for c in chosen if c[3] != "smtp-source"]
    node: NodeRunner | None = None
    if any(c[0] == "nodemailer-8" for c in chosen) and not args.profile:
        if args.no_node:
            node, note = None, "--no-node: nodemailer-8 skipped"
        else:
            node, note = NodeRunner.setup(data)
        notes.append(note)
        if node is None:
            chosen = [c for c in chosen if c[0] != "nodemailer-8"]
    contenders = [Contender(*c) for c in chosen]

    sink = Sink(sink_bin).start()
    env = Env(sink.port, args.messages, args.connections, data, source_bin, node)
    try:
        if args.profile:
            profile(env, args.top, args.profile)
            return 0
        print(
            f"{args.messages} messages of {len(data)} octets, 1 recipient, to smtp-sink on "
            f"127.0.0.1:{sink.port}; {args.rounds} rounds; Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs"
        )
        warm = Env(env.port, min(200, env.n), env.connections, data, None, None)
        for c in contenders:
            if c.kind != "smtp-source" and c.name != "nodemailer-8":
                c.run(warm)  # imports, first connections, caches of every kind
        for r in range(args.rounds):
            print(f"-- round {r + 1}")
            shift = r % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                print("  " + run_once(c, env, sink), flush=True)
        figures = report(contenders, env, notes)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
            print(f"figures written to {args.json}")
    finally:
        sink.remove()
        if node is not None:
            node.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
