"""The asyncio driver: pumps the same conversation generators as the socket driver.

It uses a small :class:`asyncio.BufferedProtocol` rather than streams: received bytes wait in a
list until the conversation asks for a reply, and ``loop.start_tls`` upgrades the same
transport, so whatever arrived before the handshake can be dropped (RFC 3207 4.2).
Message bodies whose source may touch the disk are pulled in a worker thread, in
batches, so reading an attachment never blocks the event loop. While the conversation
waits for the server, ``buffer_updated`` advances it directly (see :meth:`pump`), so a
pipelined bulk send costs one turn of the loop per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ServerDisconnected, TimeoutError
from ..protocol.conversation import (
    FLUSH,
    READ,
    Conversation,
    Done,
    Flow,
    ReadUpTo,
    Write,
    WriteBody,
    _StartTLS,
)
from ..protocol.reply import Reply
from ..settings import Security
from ..status import SendStatus
from . import tls
from .common import (
    READ_SIZE,
    WRITE_BUFFER,
    Endpoint,
    local_hostname,
    log_body,
    map_exceptions,
    replies_at_hand,
)
from .transcript import Transcript

#: bytes of message pulled per trip to the worker thread
_BATCH = 1 << 20


#: the receive buffer of the connections of this thread (see _Protocol)
_received = threading.local()


def _receive_buffer() -> memoryview:
    view: memoryview | None = getattr(_received, "view", None)
    if view is None:
        view = _received.view = memoryview(bytearray(READ_SIZE))
    return view


class _Protocol(asyncio.BufferedProtocol):
    """Receives into a buffer we own (``recv_into``), then copies out what came.

    A plain :class:`asyncio.Protocol` gets each read as a new ``bytes`` that asyncio
    allocates at 256 KiB and then shrinks: past the allocator's mmap threshold, that
    costs several times the read itself (about 15 us against 2 us for a 64 KiB buffer,
    per read, and a pipelined send reads once per message). asyncio calls get_buffer()
    and buffer_updated() back to back in one callback (plain and TLS transports alike),
    and the bytes are copied out at once, so the connections of one thread (one event
    loop) share one buffer: no memory per connection.
    """

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.eof = False
        self.error: BaseException | None = None
        self._drain: asyncio.Future[None] | None = None
        self.paused = False
        #: while set, called for every event instead of waking the waiter: the pump
        #: runs the conversation right here in the callback (see AsyncConnection.pump)
        self.on_event: Callable[[], None] | None = None

    def _wake(self) -> None:
        if self.on_event is not None:
            self.on_event()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.chunks.append(bytes(_received.view[:nbytes]))
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

    async def drain(self) -> None:
        if self.paused and not self.eof:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None


#: what _advance returns when it needs bytes that have not arrived
_WAIT = object()
#: what _advance returns when the transport's write buffer is full
_DRAIN = object()


@dataclass(slots=True)
class _Pump:
    """The state of one pump() between its steps."""

    send: Callable[[Reply | list[Reply] | None], object]
    on_done: Callable[[SendStatus], None] | None
    on_sent: Callable[[], None] | None
    pending: object = None  # a request to handle again (after waiting or draining)
    buf: list[bytes] = field(default_factory=list)


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
        self._st: _Pump | None = None
        self._driver: asyncio.Future[Any] | None = None

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

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._driver
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms a new timer
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.protocol.on_event = None
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
        """Run a conversation flow to its end (see :meth:`SyncConnection.pump`).

        The flow is advanced by :meth:`_advance`, which runs as far as it can without
        waiting. When it needs bytes from the server, it is advanced again from the
        protocol's ``buffer_updated`` callback, not by waking this coroutine: in a
        pipelined bulk send each message then costs one turn of the event loop instead
        of two (the wake-up of a task is as dear as the rest of the work). The coroutine
        only wakes for what must be awaited: a body read in a worker thread, a full
        write buffer, the TLS handshake, the end, or an error.
        """
        self._st = _Pump(flow.send, on_done, on_sent)
        try:
            while True:
                result = self._advance()
                if result is _WAIT:
                    result = await self._driven()
                if result is None:
                    return
                await self._await(result)
        finally:
            self._st = None

    def _advance(self) -> object:
        """Run the flow until it ends (None), needs bytes that are not here (_WAIT), or
        needs something awaited (a request for :meth:`_await`)."""
        st = self._st
        assert st is not None
        conv = self.conversation
        tr = self.transcript
        proto = self.protocol
        transport = self.transport
        assert transport is not None
        buf = st.buf
        send = st.send
        parser = conv.parser
        chunks = proto.chunks
        # A request left pending (waiting for bytes, a drain) is handled again first; the
        # answer to the flow is only ever what this call read (a reply, or the replies of
        # a ReadUpTo), so it is a local.
        req = st.pending
        st.pending = None
        answer: Reply | list[Reply] | None = None
        while True:
            if req is None:
                try:
                    req = send(answer)
                except StopIteration:
                    if buf:
                        transport.write(b"".join(buf))
                        buf.clear()
                    return None
                answer = None
            # Requests by frequency (see SyncConnection.pump).
            if req is READ or req is FLUSH or type(req) is ReadUpTo:
                if buf:
                    if proto.eof:
                        raise ServerDisconnected(f"{self.endpoint.host} closed the connection")
                    transport.write(b"".join(buf) if len(buf) > 1 else buf[0])
                    buf.clear()
                    conv.idle()  # encode ahead while the server works
                    if st.on_sent is not None:
                        st.on_sent()
                    if proto.paused:
                        st.pending = req  # handled again once the buffer drained
                        return _DRAIN
                if req is not FLUSH:
                    reply = parser.next_reply()
                    while reply is None and chunks:
                        parser.feed(chunks.popleft())
                        reply = parser.next_reply()
                    if reply is None:
                        if proto.eof:
                            raise ServerDisconnected(f"{self.endpoint.host} closed the connection")
                        st.pending = req
                        return _WAIT
                    self.replies += 1
                    if tr.active:
                        tr.received(reply, redact=conv.stage == "auth")
                    if type(req) is ReadUpTo:
                        answer = replies_at_hand(conv, reply, req.n, tr)
                        self.replies += len(answer) - 1
                    else:
                        answer = reply
            elif type(req) is Write:
                buf.append(req.data)
                if tr.active:
                    for line in req.lines():
                        tr.sent(line)
            elif type(req) is Done:
                if st.on_done is not None:
                    st.on_done(req.status)
            elif type(req) is WriteBody:
                body = req.message
                if not body.in_memory or body.size is None or body.size > _BATCH:
                    # From disk, or large (a signed 20 MB message is in memory): read in
                    # a worker thread and written a block at a time by _await, so no
                    # callback joins and copies the whole of it on the loop.
                    return req
                for chunk in req.chunks:
                    if tr.body_active:
                        log_body(tr, chunk, req.bdat)
                    buf.append(chunk)
            else:  # START_TLS
                if buf:
                    transport.write(b"".join(buf))
                    buf.clear()
                return req
            req = None

    async def _driven(self) -> object:
        """Let the protocol's callbacks advance the flow until it stops waiting."""
        loop = asyncio.get_running_loop()
        left = self._remaining()  # raises TimeoutError when the deadline has passed
        done: asyncio.Future[object] = loop.create_future()

        def on_event() -> None:
            if done.done():
                return
            try:
                result = self._advance()
            except BaseException as exc:
                self.protocol.on_event = None
                done.set_exception(exc)
                return
            if result is not _WAIT:
                self.protocol.on_event = None
                done.set_result(result)

        self._driver = done
        when = loop.time() + left
        if self._timer is None or self._timer_at > when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(when, self._on_timer)
            self._timer_at = when
        self.protocol.on_event = on_event
        try:
            return await done
        finally:
            self.protocol.on_event = None
            self._driver = None

    async def _await(self, request: object) -> None:
        """What the flow cannot do in a callback: drain, a body from disk, TLS."""
        st = self._st
        assert st is not None
        if request is _DRAIN:
            with map_exceptions(self.endpoint.host):
                async with asyncio.timeout(self._remaining()):
                    await self.protocol.drain()
        elif isinstance(request, WriteBody):
            tr = self.transcript
            it = iter(request.chunks)
            while True:
                batch = await asyncio.to_thread(_take, it, _BATCH)
                if not batch:
                    break
                for chunk in batch:
                    if tr.body_active:
                        log_body(tr, chunk, request.bdat)
                    st.buf.append(chunk)
                if sum(len(c) for c in st.buf) >= WRITE_BUFFER:
                    await self._write(b"".join(st.buf))
                    st.buf.clear()
        else:
            assert isinstance(request, _StartTLS)
            await self._start_tls()

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
