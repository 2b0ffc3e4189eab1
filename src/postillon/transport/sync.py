"""The blocking socket driver: pumps the conversation generators over one connection.

All protocol decisions live in :mod:`postillon.protocol.conversation`; this module only
moves bytes, keeps the deadline, and runs the TLS handshake when asked. The deadline is
absolute (``time.monotonic()``): every read and write gets the time that remains, so a
server that trickles one byte at a time cannot stretch a call past it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import NoReturn

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

#: what a non-blocking socket raises when it must wait (TLS: for either direction)
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_poll = getattr(select, "poll", None)


def _reraise(exc: BaseException, host: str) -> NoReturn:
    """Raise ``exc`` as the postillon exception that stands for it (map_exceptions)."""
    with map_exceptions(host):
        raise exc
    raise AssertionError("unreachable")  # pragma: no cover - map_exceptions always raises


class SyncConnection:
    """One SMTP connection: a socket, its conversation, and its transcript."""

    def __init__(self, endpoint: Endpoint, transcript: Transcript) -> None:
        self.endpoint = endpoint
        self.transcript = transcript
        self.conversation = Conversation(endpoint.session)
        self.conversation.on_event = transcript.event
        self.sock: socket.socket | None = None
        self.deadline = 0.0
        #: replies read so far (a reused connection that failed before its first reply
        #: may be retried on a fresh one: nothing of the call reached the server's queue)
        self.replies = 0

    # -- I/O primitives

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out talking to {self.endpoint.host}")
        return left

    # The socket is non-blocking once connected: a send or a receive is tried first and
    # only waits (poll, within the deadline) when the kernel says it would block. A
    # socket with a timeout would cost three system calls per operation instead of one
    # (settimeout's ioctl, poll, then the call), and a bulk send does two per message.

    def _wait(self, sock: socket.socket, write: bool) -> None:
        """Wait until ``sock`` is readable (or writable), at most until the deadline."""
        left = self._remaining()
        try:
            if _poll is not None:
                poller = _poll()
                poller.register(sock, select.POLLOUT if write else select.POLLIN)
                ready = bool(poller.poll(math.ceil(left * 1000)))
            else:  # pragma: no cover - platforms without poll()
                r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], left)
                ready = bool(r or w)
        except (OSError, ValueError) as exc:  # a socket closed under us
            _reraise(exc, self.endpoint.host)
        if not ready:
            raise TimeoutError(f"timed out talking to {self.endpoint.host}")

    def _sendall(self, data: bytes) -> None:
        sock = self.sock
        assert sock is not None
        view = memoryview(data)
        # try/except rather than ``with map_exceptions()`` on every call: entering a
        # context manager costs more than the send itself on a pipelined bulk run; the
        # mapping is the same, applied only when something failed.
        try:
            while True:
                try:
                    sent = sock.send(view)
                except _WOULD_BLOCK as exc:
                    # TLS may need to read before it can write (a renegotiation)
                    self._wait(sock, not isinstance(exc, ssl.SSLWantReadError))
                    continue
                if sent == len(view):
                    return
                view = view[sent:]
                if time.monotonic() >= self.deadline:  # a reader that takes a byte a time
                    raise TimeoutError(f"timed out talking to {self.endpoint.host}")
        except (OSError, EOFError) as exc:
            _reraise(exc, self.endpoint.host)

    def _read_reply(self) -> Reply:
        parser = self.conversation.parser
        reply = parser.next_reply()
        sock = self.sock
        assert sock is not None
        while reply is None:
            try:
                data = sock.recv(READ_SIZE)
            except _WOULD_BLOCK as exc:
                self._wait(sock, isinstance(exc, ssl.SSLWantWriteError))
                continue
            except (OSError, EOFError) as exc:
                _reraise(exc, self.endpoint.host)
            if not data:
                raise ServerDisconnected(f"{self.endpoint.host} closed the connection")
            parser.feed(data)
            reply = parser.next_reply()
            if reply is None and time.monotonic() >= self.deadline:
                # bytes keep coming and never make a reply: the deadline still holds
                raise TimeoutError(f"timed out talking to {self.endpoint.host}")
        self.replies += 1
        return reply

    # -- connection

    def connect(self, deadline: float) -> None:
        """TCP connect, implicit TLS if asked, then the handshake flow (greeting to AUTH)."""
        ep = self.endpoint
        self.deadline = min(deadline, time.monotonic() + ep.connection_timeout)
        with map_exceptions(ep.host, connecting=True):
            sock = socket.create_connection((ep.host, ep.port), timeout=self._remaining())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(0.0)  # non-blocking from here on (see _wait)
        self.sock = sock
        name = local_hostname(ep.session.local_hostname, sock.getsockname())
        if name != ep.session.local_hostname:
            self.conversation.config = dataclasses.replace(ep.session, local_hostname=name)
        self.transcript.event(f"session start {ep.host}:{ep.port} security={ep.security.value}")
        if ep.security is Security.TLS:
            self._start_tls()
        self.pump(self.conversation.handshake())
        self.deadline = deadline

    def _start_tls(self) -> None:
        ep = self.endpoint
        assert self.sock is not None
        with map_exceptions(ep.host):
            self.sock.settimeout(self._remaining())
            try:
                wrapped = ep.tls.context.wrap_socket(self.sock, server_hostname=ep.host)
            except (ssl.SSLError, ssl.CertificateError) as exc:
                raise tls.describe(exc, ep.host) from exc
        wrapped.settimeout(0.0)  # the handshake had the deadline; non-blocking again
        self.sock = wrapped
        if ep.tls.manual_leaf_check:
            tls.verify_leaf(wrapped.getpeercert(binary_form=True), ep.host, ep.tls.ignore)
        cipher = wrapped.cipher()
        self.transcript.event(
            f"TLS {wrapped.version()} cipher {cipher[0] if cipher else '?'}"
            + ("" if ep.tls.verified else " (some certificate errors ignored)")
        )

    def pump(
        self,
        flow: Flow,
        on_done: Callable[[SendStatus], None] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Run a conversation flow to its end; I/O errors propagate as SMTPError.

        Writes are queued until the conversation asks for a reply, so what a pipelined
        send queues (a body, the next envelope) leaves in one ``sendall``. ``on_sent`` is
        called after each such write, before waiting for the answer: work done there
        overlaps the server's (the batch stages its next message).
        """
        conv = self.conversation
        tr = self.transcript
        logging_on = tr.active
        bodies_on = tr.body_active
        buf: list[bytes] = []
        size = 0
        answer: Reply | list[Reply] | None = None
        send = flow.send
        while True:
            try:
                req = send(answer)
            except StopIteration:
                break
            answer = None
            # Requests by frequency: READ and FLUSH are singletons, the others are
            # told apart by their exact type (cheaper than isinstance, and mypy narrows).
            if req is READ or req is FLUSH or type(req) is ReadUpTo:
                if buf:
                    self._sendall(b"".join(buf) if len(buf) > 1 else buf[0])
                    buf.clear()
                    size = 0
                    conv.idle()  # encode ahead while the server works
                    if on_sent is not None:
                        on_sent()
                if req is not FLUSH:
                    reply = self._read_reply()
                    if logging_on:
                        tr.received(reply, redact=conv.stage == "auth")
                    if type(req) is ReadUpTo:
                        answer = replies_at_hand(conv, reply, req.n, tr)
                        self.replies += len(answer) - 1
                    else:
                        answer = reply
            elif type(req) is Write:
                buf.append(req.data)
                size += len(req.data)
                if logging_on:
                    for line in req.lines():
                        tr.sent(line)
            elif type(req) is Done:
                if on_done is not None:
                    on_done(req.status)
            elif type(req) is WriteBody:
                for chunk in req.chunks:
                    if bodies_on:
                        log_body(tr, chunk, req.bdat)
                    if size + len(chunk) >= WRITE_BUFFER:
                        if buf:
                            buf.append(chunk)
                            self._sendall(b"".join(buf))
                            buf.clear()
                        else:
                            self._sendall(chunk)
                        size = 0
                    else:
                        buf.append(chunk)
                        size += len(chunk)
            else:  # START_TLS
                if buf:
                    self._sendall(b"".join(buf))
                    buf.clear()
                    size = 0
                self._start_tls()
        if buf:
            self._sendall(b"".join(buf))

    def is_stale(self) -> bool:
        """True when an idle connection was closed or spoke out of turn (keep_alive reuse)."""
        if self.sock is None or not self.conversation.usable:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        # Anything readable on an idle connection is EOF, a 421 timeout notice, or
        # unsolicited bytes: none of it may be paired with our next command.
        return bool(readable)

    def quit(self, deadline: float) -> None:
        """Say QUIT politely, ignoring every failure (the message is already done)."""
        if self.sock is None:
            return
        self.deadline = min(deadline, time.monotonic() + 5.0)
        # A failed QUIT never matters: the messages are already done (security.md 3.2).
        with contextlib.suppress(Exception):
            self.pump(self.conversation.quit())
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
        self.transcript.flush()
