"""The asyncio driver: pumps the same conversation generators as the socket driver.

It uses a small :class:`asyncio.Protocol` rather than streams: received bytes wait in a
list until the conversation asks for a reply, and ``loop.start_tls`` upgrades the same
transport, so whatever arrived before the handshake can be dropped (RFC 3207 4.2).
Message bodies whose source may touch the disk are pulled in a worker thread, in
batches, so reading an attachment never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator

from ..errors import ServerDisconnected, TimeoutError
from ..protocol.conversation import (
    Conversation,
    Done,
    Flow,
    Write,
    WriteBody,
    _Flush,
    _Read,
    _StartTLS,
)
from ..protocol.reply import Reply
from ..settings import Security
from ..status import SendStatus
from . import tls
from .common import WRITE_BUFFER, Endpoint, local_hostname, log_body, map_exceptions
from .transcript import Transcript

#: bytes of message pulled per trip to the worker thread
_BATCH = 1 << 20


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.eof = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.paused = False

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def wait_data(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        if self.paused and not self.eof:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None


def _take(it: Iterator[bytes], limit: int) -> list[bytes]:
    out: list[bytes] = []
    size = 0
    for chunk in it:
        out.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return out


class AsyncConnection:
    """One SMTP connection on the event loop."""

    def __init__(self, endpoint: Endpoint, transcript: Transcript) -> None:
        self.endpoint = endpoint
        self.transcript = transcript
        self.conversation = Conversation(endpoint.session)
        self.conversation.on_event = transcript.event
        self.transport: asyncio.Transport | None = None
        self.protocol = _Protocol()
        self.deadline = 0.0
        self.replies = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out talking to {self.endpoint.host}")
        return left

    async def _write(self, data: bytes) -> None:
        assert self.transport is not None
        if self.protocol.eof:
            raise ServerDisconnected(f"{self.endpoint.host} closed the connection")
        self.transport.write(data)
        if self.protocol.paused:
            with map_exceptions(self.endpoint.host):
                async with asyncio.timeout(self._remaining()):
                    await self.protocol.drain()

    async def _read_reply(self) -> Reply:
        parser = self.conversation.parser
        proto = self.protocol
        reply = parser.next_reply()
        while reply is None:
            if proto.chunks:
                parser.feed(proto.chunks.popleft())
            elif proto.eof:
                raise ServerDisconnected(f"{self.endpoint.host} closed the connection")
            else:
                await self._wait_data()
                continue
            reply = parser.next_reply()
        self.replies += 1
        return reply

    async def _wait_data(self) -> None:
        """Wait for bytes from the server, at most until the deadline.

        One timer per connection instead of an ``asyncio.timeout()`` per wait: the timer
        is armed at the deadline and, when it fires, re-arms itself if the deadline moved
        later meanwhile (each message gets its own time) or fails the wait if it passed.
        A pipelined bulk send waits once per message, and a context manager, a timer
        handle and its cancellation per wait cost as much as the rest of the loop's work.
        """
        loop = asyncio.get_running_loop()
        left = self._remaining()  # raises TimeoutError when the deadline has passed
        waiter: asyncio.Future[None] = loop.create_future()
        self.protocol._waiter = waiter
        when = loop.time() + left
        if self._timer is None or self._timer_at > when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(when, self._on_timer)
            self._timer_at = when
        try:
            await waiter
        finally:
            self.protocol._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self.protocol._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms a new timer
        left = self.deadline - time.monotonic()
        if left <= 0:
            waiter.set_exception(TimeoutError(f"timed out talking to {self.endpoint.host}"))
            return
        loop = asyncio.get_running_loop()
        self._timer_at = loop.time() + left
        self._timer = loop.call_at(self._timer_at, self._on_timer)

    async def connect(self, deadline: float) -> None:
        ep = self.endpoint
        self.deadline = min(deadline, time.monotonic() + ep.connection_timeout)
        loop = asyncio.get_running_loop()
        with map_exceptions(ep.host, connecting=True):
            async with asyncio.timeout(self._remaining()):
                transport, _ = await loop.create_connection(lambda: self.protocol, ep.host, ep.port)
        self.transport = transport
        name = local_hostname(ep.session.local_hostname, transport.get_extra_info("sockname"))
        if name != ep.session.local_hostname:
            self.conversation.config = dataclasses.replace(ep.session, local_hostname=name)
        self.transcript.event(f"session start {ep.host}:{ep.port} security={ep.security.value}")
        if ep.security is Security.TLS:
            await self._start_tls()
        await self.pump(self.conversation.handshake())
        self.deadline = deadline

    async def _start_tls(self) -> None:
        ep = self.endpoint
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.protocol.chunks.clear()  # never read plaintext bytes as if they came over TLS
        with map_exceptions(ep.host):
            try:
                async with asyncio.timeout(self._remaining()):
                    new = await loop.start_tls(
                        self.transport, self.protocol, ep.tls.context, server_hostname=ep.host
                    )
            except (ssl.SSLError, ssl.CertificateError) as exc:
                raise tls.describe(exc, ep.host) from exc
        if new is None:  # pragma: no cover - only when the loop cannot do TLS
            raise ServerDisconnected(f"{ep.host} closed the connection during the handshake")
        self.transport = new
        sslobj = new.get_extra_info("ssl_object")
        if ep.tls.manual_leaf_check:
            tls.verify_leaf(sslobj.getpeercert(binary_form=True), ep.host, ep.tls.ignore)
        cipher = sslobj.cipher() if sslobj is not None else None
        version = sslobj.version() if sslobj is not None else "?"
        self.transcript.event(
            f"TLS {version} cipher {cipher[0] if cipher else '?'}"
            + ("" if ep.tls.verified else " (some certificate errors ignored)")
        )

    async def pump(
        self,
        flow: Flow,
        on_done: Callable[[SendStatus], None] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Run a conversation flow to its end (see :meth:`SyncConnection.pump`)."""
        conv = self.conversation
        tr = self.transcript
        buf: list[bytes] = []
        size = 0
        answer: Reply | None = None
        send = flow.send
        while True:
            try:
                req = send(answer)
            except StopIteration:
                break
            answer = None
            kind = type(req)
            if kind is Write:
                assert isinstance(req, Write)
                buf.append(req.data)
                size += len(req.data)
                if tr.active:
                    for line in req.lines():
                        tr.sent(line)
            elif kind is _Read or kind is _Flush:
                if buf:
                    await self._write(b"".join(buf) if len(buf) > 1 else buf[0])
                    buf.clear()
                    size = 0
                    conv.idle()  # encode ahead while the server works
                    if on_sent is not None:
                        on_sent()
                if kind is _Read:
                    answer = await self._read_reply()
                    if tr.active:
                        tr.received(answer, redact=conv.stage == "auth")
            elif kind is WriteBody:
                assert isinstance(req, WriteBody)
                it = iter(req.chunks)
                while True:
                    if req.message.in_memory:
                        batch = _take(it, _BATCH)
                    else:
                        batch = await asyncio.to_thread(_take, it, _BATCH)
                    if not batch:
                        break
                    for chunk in batch:
                        if tr.body_active:
                            log_body(tr, chunk, req.bdat)
                        buf.append(chunk)
                        size += len(chunk)
                    if size >= WRITE_BUFFER:
                        await self._write(b"".join(buf))
                        buf.clear()
                        size = 0
            elif kind is Done:
                assert isinstance(req, Done)
                if on_done is not None:
                    on_done(req.status)
            else:
                assert isinstance(req, _StartTLS)
                if buf:
                    await self._write(b"".join(buf))
                    buf.clear()
                    size = 0
                await self._start_tls()
        if buf:
            await self._write(b"".join(buf))

    def is_stale(self) -> bool:
        return (
            self.transport is None
            or self.transport.is_closing()
            or self.protocol.eof
            or bool(self.protocol.chunks)
            or not self.conversation.usable
        )

    async def quit(self, deadline: float) -> None:
        if self.transport is None:
            return
        self.deadline = min(deadline, time.monotonic() + 5.0)
        # A failed QUIT never matters: the messages are already done (security.md 3.2).
        answered = False
        with contextlib.suppress(Exception):
            await self.pump(self.conversation.quit())
            answered = True
        # Polite close only after the server answered QUIT; else it is given up.
        self.close(graceful=answered and not self.protocol.eof)

    def close(self, *, graceful: bool = False) -> None:
        """Close the connection. Only after a QUIT is it closed politely: a connection
        given up (timeout, 421, I/O error, cancel) is aborted, so a stalled TLS peer
        cannot hold it open while asyncio waits for its close_notify."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()
            self.transport = None
        self.transcript.flush()
