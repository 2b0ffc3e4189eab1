"""What the sync and async drivers share: exception mapping, EHLO name, settings."""

from __future__ import annotations

import builtins
import contextlib
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ConnectError,
    InvalidMessage,
    ServerDisconnected,
    SMTPError,
    TimeoutError,
    TransportError,
)
from ..protocol import commands
from ..protocol.conversation import Conversation, SessionConfig
from ..protocol.reply import Reply
from ..settings import Security
from . import tls

#: bytes queued before a write is forced, so that a long body does not pile up
WRITE_BUFFER = 256 * 1024
#: bytes asked of the socket in one read
READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: everything a driver needs besides the conversation."""

    host: str
    port: int
    security: Security
    tls: tls.TLSSettings
    connection_timeout: float
    session: SessionConfig


@contextlib.contextmanager
def map_exceptions(host: str, *, connecting: bool = False) -> Iterator[None]:
    """Turn socket and ssl errors into the postillon tree (httpcore's map_exceptions)."""
    try:
        yield
    except SMTPError:
        raise
    except builtins.TimeoutError as exc:  # socket.timeout is this builtin
        raise TimeoutError(f"timed out talking to {host}") from exc
    except ssl.SSLError as exc:
        raise tls.describe(exc, host) from exc
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, EOFError) as exc:
        raise ServerDisconnected(f"{host} closed the connection") from exc
    except OSError as exc:
        if connecting:
            raise ConnectError(f"cannot connect to {host}: {exc.strerror or exc}") from exc
        raise TransportError(f"connection to {host} failed: {exc.strerror or exc}") from exc


@functools.cache
def _fqdn() -> str:
    return socket.getfqdn()


def local_hostname(configured: str | None, sockname: object) -> str:
    """The EHLO name: the configured one, the machine's FQDN, else an address literal."""
    if configured:
        return configured
    name = _fqdn()
    if "." in name:
        try:
            return commands.check_ehlo_name(name)
        except InvalidMessage:
            pass
    # RFC 5321 4.1.3: an address literal when no usable domain name is known.
    addr = sockname[0] if isinstance(sockname, tuple) and sockname else "127.0.0.1"
    ip = ipaddress.ip_address(str(addr).split("%")[0])
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


def replies_at_hand(conv: Conversation, first: Reply, most: int, transcript: Any) -> list[Reply]:
    """The answer to :class:`~postillon.protocol.conversation.ReadUpTo`: ``first`` and
    the replies after it that the parser already holds, ``most`` in all at the most
    (each logged as it is taken, as the drivers log ``first``)."""
    out = [first]
    parser = conv.parser
    while len(out) < most and (reply := parser.next_reply()) is not None:
        if transcript.active:
            transcript.received(reply, redact=conv.stage == "auth")
        out.append(reply)
    return out


def log_body(transcript: Any, chunk: bytes, bdat: bool) -> None:
    """Record message bytes; with CHUNKING each chunk's BDAT line is a client line."""
    if bdat:
        line, _, chunk = chunk.partition(b"\r\n")
        transcript.sent(line.decode("ascii", "replace"))
    transcript.body(chunk)
