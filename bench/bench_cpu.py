"""The Python cost of a message in postillon's bulk path, without the kernel's share.

The throughput benchmark (``bench_throughput.py``) measures what users see, but on a
2-core machine most of a message's client CPU is the kernel's: the ``send`` that hands
the body to the server (and wakes it), the receive, the event loop's ``epoll_wait``.
This script swaps the network for a small SMTP server in the same process (it answers
a pipelined group the way ``smtp-sink`` does), so what is left is postillon's own work
per message: staging, the conversation, reply parsing, dot stuffing, statuses, and for
asyncio the event loop's turns. It is a profiling aid for the hot path, not a
comparison with peers; the figure is the minimum over the repeats, which a busy machine
disturbs less than a median.

The in-process server replaces ``socket.create_connection`` (sync driver) and
``BaseEventLoop.create_connection`` (asyncio driver) for this process only.

Usage::

    python bench/bench_cpu.py                         # sync, async x1, async x8
    python bench/bench_cpu.py --only async1 --messages 20000 --repeats 9
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import HELO, RECIPIENT, SENDER, make_message
from postillon import AsyncTransporter, RawMessage, Security, Transporter
from postillon.transport import sync as sync_driver

GREETING = b"220 bench ESMTP\r\n"
REPLIES = {
    b"EHLO": b"250-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n",
    b"HELO": b"250 bench\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b".": b"250 2.0.0 Ok: queued as 4XyZ12Ab3\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
}


class Server:
    """Answers what the client wrote, command by command, skipping message bodies."""

    def __init__(self) -> None:
        self.in_data = False

    def answer(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self.in_data:
                stop = data.find(b"\r\n.\r\n", pos)
                if stop < 0:
                    break  # the body goes on in the next write
                out.append(REPLIES[b"."])
                pos, self.in_data = stop + 5, False
                continue
            eol = data.find(b"\r\n", pos)
            verb = data[pos:eol].split(b" ", 1)[0].split(b":", 1)[0].upper()
            pos = eol + 2
            if verb == b"DATA":
                self.in_data = True
            out.append(REPLIES[verb])
        return b"".join(out)


class FakeSocket:
    """What the sync driver uses of a socket, answered by a :class:`Server`."""

    def __init__(self) -> None:
        self.server = Server()
        self.queue = [GREETING]
        self.pipe = os.pipe()  # a file descriptor for the driver's poll(), never ready

    def settimeout(self, timeout: float | None) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    def fileno(self) -> int:
        return self.pipe[0]

    def send(self, data: bytes | memoryview) -> int:
        self.queue.append(self.server.answer(bytes(data)))
        return len(data)

    def recv(self, size: int) -> bytes:
        out, self.queue = b"".join(self.queue), []
        return out

    def close(self) -> None:
        for fd in self.pipe:
            os.close(fd)


class FakeTransport(asyncio.Transport):
    """What the asyncio driver uses of a transport; replies arrive on the next loop turn."""

    def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.protocol, self.loop, self.server = protocol, loop, Server()
        self.closing = False
        loop.call_soon(self._deliver, GREETING)

    def _deliver(self, data: bytes) -> None:
        buf = self.protocol.get_buffer(len(data))
        buf[: len(data)] = data
        self.protocol.buffer_updated(len(data))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        answer = self.server.answer(bytes(data))
        if answer:
            self.loop.call_soon(self._deliver, answer)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "sockname" else default


async def _create_connection(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], Any], *args: Any, **kwargs: Any
) -> tuple[FakeTransport, Any]:
    protocol = factory()
    transport = FakeTransport(protocol, loop)
    protocol.connection_made(transport)
    return transport, protocol


def install() -> None:
    """Route both drivers' connections to in-process servers (this process only)."""
    sync_driver.socket.create_connection = lambda *a, **k: FakeSocket()  # type: ignore[assignment]
    asyncio.BaseEventLoop.create_connection = _create_connection  # type: ignore[assignment,method-assign]


def _messages(n: int) -> list[RawMessage]:
    data = make_message()
    return [RawMessage(data, SENDER, [RECIPIENT]) for _ in range(n)]


def run_sync(n: int) -> float:
    """CPU microseconds per message of ``Transporter.send_many``."""
    msgs = _messages(n)
    t = Transporter("127.0.0.1", 25, security=Security.NONE, local_hostname=HELO)
    began = time.process_time()
    statuses = t.send_many(msgs)
    t.close()
    spent = time.process_time() - began
    assert sum(s.success for s in statuses) == n
    return spent / n * 1e6


def run_async(n: int, connections: int) -> float:
    """CPU microseconds per message of ``AsyncTransporter.send_many``."""
    msgs = _messages(n)

    async def main() -> float:
        t = AsyncTransporter(
            "127.0.0.1", 25, security=Security.NONE, local_hostname=HELO,
            max_connections=connections,
        )  # fmt: skip
        began = time.process_time()
        statuses = await t.send_many(msgs)
        await t.close()
        spent = time.process_time() - began
        assert sum(s.success for s in statuses) == n
        return spent / n * 1e6

    return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run each contender, print minimum and median µs/msg."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=20000, help="messages per run")
    ap.add_argument("--repeats", type=int, default=7, help="runs per contender")
    ap.add_argument("--only", choices=["sync", "async1", "async8"], help="one contender")
    args = ap.parse_args(argv)
    if args.messages < 8 or args.repeats < 1:
        ap.error("--messages must be at least 8 and --repeats at least 1")
    install()
    runs: dict[str, Callable[[], float]] = {
        "sync": lambda: run_sync(args.messages),
        "async1": lambda: run_async(args.messages, 1),
        "async8": lambda: run_async(args.messages, 8),
    }
    print(f"{args.messages} messages of {len(make_message())} octets, in-process server")
    for name in [args.only] if args.only else list(runs):
        runs[name]()  # warm-up: imports, caches, the allocator
        xs = sorted(runs[name]() for _ in range(args.repeats))
        print(f"{name:7s} min {xs[0]:6.2f} us/msg  median {xs[len(xs) // 2]:6.2f} us/msg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
