"""A raw TCP server that plays a script, for byte-exact protocol faults (security.md 3.0 #2).

A script is a list of steps run in order on each accepted connection:

* :func:`send` ``(data, mode=None)``: write bytes. ``mode`` (else the server's ``chunk``):
  ``"whole"`` one write, ``"byte"`` one byte per write with a small sleep, ``"line"`` one
  line per write. TCP_NODELAY is set, so the client really sees fragments.
* :func:`expect` ``(prefix)``: read one line (up to LF), record it in ``lines``; the script
  fails (``errors``) when it does not start with ``prefix`` (ASCII case-insensitive).
* :func:`read_until` ``(marker=b"\\r\\n.\\r\\n")``: read raw bytes up to and including
  ``marker``, record them in ``data``.
* :func:`starttls` ``(ssl_context=None)``: TLS handshake as the server (default: the
  server's ``ssl_context``); plaintext bytes already buffered are discarded, as RFC 3207 4.2
  requires, and kept in ``discarded_pre_tls``.
* :func:`sleep` ``(s)``, :func:`half_close` (FIN, keep reading), and the terminal steps
  :func:`close` (FIN), :func:`reset` (RST via SO_LINGER 0), :func:`stall` (neither read nor
  write until the client goes away).

With ``default_replies`` (a mapping of command verb to reply bytes, or a list of replies
used in turn, the last repeated; ``"CONNECT"`` is the greeting, ``"EOD"`` the reply to the
end of data, ``"*"`` any other command; ``None`` closes the connection), the server answers
commands in a loop after the steps, reading DATA and BDAT payloads into ``data`` and doing
STARTTLS when its reply starts with 220.

Everything received is recorded in ``received`` (raw bytes, TLS payload decrypted).
Every read has a deadline (``step_timeout``), so a server ends within seconds of its
client going away, and at once at teardown.

Example::

    server = script_server([
        send(b"220 hi\\r\\n"), expect(b"EHLO"), send(b"250 ok\\r\\n"),
        expect(b"MAIL FROM:"), reset(),
    ], chunk="byte")
    ... client talks to server.port ...
    server.assert_ok()
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn

ChunkMode = Literal["whole", "byte", "line"]
CHUNK_MODES: tuple[ChunkMode, ...] = ("whole", "byte", "line")
Reply = bytes | Sequence[bytes] | None

MAX_BUFFER = 1 << 20  # a client that never sends LF cannot grow the server's memory

#: A plain, well-behaved SMTP server for ``default_replies`` (copy and override).
SMTP_DEFAULTS: dict[str, Reply] = {
    "CONNECT": b"220 script.test ESMTP\r\n",
    "EHLO": b"250-script.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n",
    "HELO": b"250 script.test\r\n",
    "MAIL": b"250 2.1.0 Ok\r\n",
    "RCPT": b"250 2.1.5 Ok\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "EOD": b"250 2.0.0 Ok: queued\r\n",
    "BDAT": b"250 2.0.0 Ok: chunk received\r\n",
    "RSET": b"250 2.0.0 Ok\r\n",
    "NOOP": b"250 2.0.0 Ok\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
    "*": b"502 5.5.2 Error: command not recognized\r\n",
}


@dataclass(frozen=True)
class Step:
    """One step of a script (made by the functions below)."""

    kind: str
    data: bytes = b""
    mode: ChunkMode | None = None
    seconds: float = 0.0
    ssl_context: ssl.SSLContext | None = None


def send(data: bytes, mode: ChunkMode | None = None) -> Step:
    """Write ``data`` (in the server's chunk mode unless ``mode`` is given)."""
    if not isinstance(data, bytes):
        raise ValueError(f"send(): data must be bytes, got {type(data).__name__}")
    if mode is not None and mode not in CHUNK_MODES:
        raise ValueError(f"send(): mode must be one of {CHUNK_MODES}, got {mode!r}")
    return Step("send", data=data, mode=mode)


def expect(prefix: bytes) -> Step:
    """Read one line; fail the script unless it starts with ``prefix``."""
    if not isinstance(prefix, bytes):
        raise ValueError("expect(): prefix must be bytes")
    return Step("expect", data=prefix)


def read_until(marker: bytes = b"\r\n.\r\n") -> Step:
    """Read raw bytes up to and including ``marker``; record them in ``data``."""
    if not marker:
        raise ValueError("read_until(): marker must not be empty")
    return Step("read_until", data=marker)


def starttls(ssl_context: ssl.SSLContext | None = None) -> Step:
    """Do the server side of a TLS handshake now."""
    return Step("starttls", ssl_context=ssl_context)


def sleep(seconds: float) -> Step:
    """Pause the script."""
    if seconds < 0:
        raise ValueError("sleep(): seconds must be >= 0")
    return Step("sleep", seconds=seconds)


def half_close() -> Step:
    """Shut down the write side (the client reads EOF); the script may still read."""
    return Step("half_close")


def close() -> Step:
    """Close the connection (FIN) and end the script."""
    return Step("close")


def reset() -> Step:
    """Abort the connection with a TCP RST and end the script."""
    return Step("reset")


def stall(max_seconds: float = 30.0) -> Step:
    """Neither read nor write until the client goes away (at most ``max_seconds``)."""
    return Step("stall", seconds=max_seconds)


class _Failed(Exception):
    """The script did not match what the client did."""


class _End(Exception):
    """A terminal step ended the connection."""


class _ClientGone(Exception):
    """The client closed the connection."""


class ScriptServer:
    """A scripted raw TCP server in a thread (see the module docstring).

    Attributes: ``host``, ``port``, ``received`` (bytearray), ``lines`` (list of lines with
    their line ends), ``data`` (DATA/BDAT payloads), ``errors`` (script mismatches),
    ``connections`` (accepted), ``discarded_pre_tls``, ``tls`` (a handshake completed).
    """

    def __init__(
        self,
        steps: Sequence[Step] = (),
        *,
        chunk: ChunkMode = "whole",
        default_replies: Mapping[str, Reply] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        connections: int = 1,
        byte_delay: float = 0.001,
        step_timeout: float = 5.0,
    ) -> None:
        if chunk not in CHUNK_MODES:
            raise ValueError(f"chunk: expected one of {CHUNK_MODES}, got {chunk!r}")
        if not all(isinstance(s, Step) for s in steps):
            raise ValueError("steps: expected Step objects (send(), expect(), ...)")
        if connections < 1:
            raise ValueError("connections: must be >= 1")
        if implicit_tls and ssl_context is None:
            raise ValueError("implicit_tls needs ssl_context")
        if default_replies is None and not steps:
            raise ValueError("steps: give a script, default_replies, or both")
        self.steps = list(steps)
        self.chunk: ChunkMode = chunk
        self.default_replies = dict(default_replies) if default_replies is not None else None
        self.ssl_context = ssl_context
        self.implicit_tls = implicit_tls
        self.max_connections = connections
        self.byte_delay = byte_delay
        self.step_timeout = step_timeout
        self.host = "127.0.0.1"
        self.received = bytearray()
        self.lines: list[bytes] = []
        self.data: list[bytes] = []
        self.errors: list[str] = []
        self.discarded_pre_tls = bytearray()
        self.connections = 0
        self.tls = False
        self._stop = threading.Event()
        self._done = threading.Event()
        self._listener = socket.create_server((self.host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="test-script", daemon=True)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._reply_index: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<ScriptServer {self.host}:{self.port} chunk={self.chunk}>"

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> ScriptServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the script now and close everything (idempotent)."""
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()

    def wait_done(self, timeout: float = 5.0) -> bool:
        """True once every expected connection was served (or the server stopped)."""
        return self._done.wait(timeout)

    def assert_ok(self, timeout: float = 5.0) -> None:
        """Wait for the end of the script and fail the test on any mismatch."""
        if not self.wait_done(timeout):
            raise AssertionError(f"{self!r}: script not finished after {timeout}s")
        if self.errors:
            raise AssertionError(f"{self!r}: script errors: {self.errors}")

    def _run(self) -> None:
        self._listener.settimeout(0.05)
        try:
            while self.connections < self.max_connections and not self._stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self.connections += 1
                self._serve(conn)
        finally:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._done.set()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(0.05)
        self._sock = conn
        self._buf = bytearray()
        self._reply_index = {}
        try:
            if self.implicit_tls:
                self._starttls(None)
            replies = self.default_replies
            if replies is not None and replies.get("CONNECT") is not None:
                self._send(self._reply("CONNECT") or b"", self.chunk)
            for step in self.steps:
                self._step(step)
            if replies is not None:
                self._default_loop()
        except (_End, _ClientGone):
            pass
        except _Failed as exc:
            self.errors.append(str(exc))
        except OSError as exc:
            self.errors.append(f"socket error: {exc!r}")
        finally:
            sock = self._sock
            self._sock = None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    # --- primitives ------------------------------------------------------------------------

    @property
    def sock(self) -> socket.socket:
        assert self._sock is not None
        return self._sock

    def _recv_more(self, deadline: float, what: str) -> None:
        while True:
            if self._stop.is_set():
                raise _Failed(f"server stopped while waiting for {what}")
            if time.monotonic() > deadline:
                raise _Failed(f"timeout waiting for {what}; buffered {bytes(self._buf[:80])!r}")
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except ConnectionResetError as exc:
                raise _ClientGone(str(exc)) from exc
            if not chunk:
                raise _ClientGone(what)
            self.received += chunk
            self._buf += chunk
            if len(self._buf) > MAX_BUFFER:
                raise _Failed(f"more than {MAX_BUFFER} bytes without {what}")
            return

    def _readline(self, what: str) -> bytes:
        deadline = time.monotonic() + self.step_timeout
        while b"\n" not in self._buf:
            self._recv_more(deadline, what)
        end = self._buf.index(b"\n") + 1
        line = bytes(self._buf[:end])
        del self._buf[:end]
        self.lines.append(line)
        return line

    def _read_until(self, marker: bytes) -> bytes:
        deadline = time.monotonic() + self.step_timeout
        while marker not in self._buf:
            self._recv_more(deadline, f"{marker!r}")
        end = self._buf.index(marker) + len(marker)
        blob = bytes(self._buf[:end])
        del self._buf[:end]
        self.data.append(blob)
        return blob

    def _read_exactly(self, size: int) -> bytes:
        deadline = time.monotonic() + self.step_timeout
        while len(self._buf) < size:
            self._recv_more(deadline, f"{size} bytes")
        blob = bytes(self._buf[:size])
        del self._buf[:size]
        self.data.append(blob)
        return blob

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientGone(str(exc)) from exc

    def _send(self, data: bytes, mode: ChunkMode) -> None:
        if mode == "whole":
            self._write(data)
            return
        pieces = (
            [data[i : i + 1] for i in range(len(data))]
            if mode == "byte"
            else data.splitlines(keepends=True)
        )
        for piece in pieces:
            if self._stop.is_set():
                raise _End()
            self._write(piece)
            time.sleep(self.byte_delay)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise _End()
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def _starttls(self, ctx: ssl.SSLContext | None) -> None:
        ctx = ctx or self.ssl_context
        if ctx is None:
            raise _Failed("starttls(): no server SSLContext")
        # RFC 3207 4.2: bytes the client sent before the handshake are not part of TLS
        self.discarded_pre_tls += self._buf
        self._buf = bytearray()
        raw = self.sock
        raw.settimeout(self.step_timeout)
        try:
            tls = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self._sock = None
            raw.close()
            raise _Failed(f"TLS handshake failed: {exc!r}") from exc
        tls.settimeout(0.05)
        self._sock = tls
        self.tls = True

    def _terminal(self, kind: str, seconds: float) -> NoReturn:
        sock = self.sock
        if kind == "reset":
            # SO_LINGER on with a zero timeout: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "close":
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        elif kind == "stall":
            self._stall(sock, seconds)
        raise _End()

    def _stall(self, sock: socket.socket, seconds: float) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            if poller.poll(50):
                return  # the client hung up

    def _step(self, step: Step) -> None:
        kind = step.kind
        if kind == "send":
            self._send(step.data, step.mode or self.chunk)
        elif kind == "expect":
            line = self._readline(f"a line starting with {step.data!r}")
            if not line.upper().startswith(step.data.upper()):
                raise _Failed(f"expected a line starting with {step.data!r}, got {line!r}")
        elif kind == "read_until":
            self._read_until(step.data)
        elif kind == "starttls":
            self._starttls(step.ssl_context)
        elif kind == "sleep":
            self._sleep(step.seconds)
        elif kind == "half_close":
            self.sock.shutdown(socket.SHUT_WR)
        elif kind in ("close", "reset", "stall"):
            self._terminal(kind, step.seconds)
        else:  # pragma: no cover - Step objects come from the functions above
            raise _Failed(f"unknown step {kind!r}")

    # --- default replies -------------------------------------------------------------------

    def _reply(self, verb: str) -> bytes | None:
        assert self.default_replies is not None
        if verb in self.default_replies:
            value = self.default_replies[verb]
        else:
            value = self.default_replies.get("*", SMTP_DEFAULTS["*"])
        if value is None or isinstance(value, bytes):
            return value
        index = self._reply_index.get(verb, 0)
        self._reply_index[verb] = index + 1
        return value[min(index, len(value) - 1)]

    def _default_loop(self) -> None:
        while True:
            try:
                line = self._readline("a command")
            except _Failed:
                if self._stop.is_set() or not self._buf:
                    return  # the client stayed idle: end quietly
                raise
            verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
            if verb == "BDAT":
                # RFC 3030 2: the chunk follows the command; one reply per BDAT, the last
                # one (BDAT ... LAST) is the reply to the whole message
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    self._read_exactly(int(parts[1]))
                last = len(parts) >= 3 and parts[2].upper() == b"LAST"
                self._send_reply("EOD" if last else "BDAT")
                continue
            reply = self._send_reply(verb)
            if verb == "DATA" and reply.startswith(b"354"):
                self._read_until(b"\r\n.\r\n")
                self._send_reply("EOD")
            elif verb == "STARTTLS" and reply.startswith(b"220"):
                self._starttls(None)
            elif verb == "QUIT":
                self._terminal("close", 0)

    def _send_reply(self, verb: str) -> bytes:
        reply = self._reply(verb)
        if reply is None:
            self._terminal("close", 0)
        self._send(reply, self.chunk)
        return reply
