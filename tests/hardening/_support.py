"""Helpers of the hardening suite: one client over both transporters, a fault server.

:class:`Client` drives a :class:`~postillon.Transporter` or an
:class:`~postillon.AsyncTransporter` through one interface, so that every end-to-end
test is written once and run for both drivers.

:class:`FaultServer` is the raw scripted server of ``tests/support/script.py`` (replies in
"whole", "byte" or "line" chunks, STARTTLS, DATA) with one *armed* fault: at a given stage
it disconnects (FIN), resets (RST), answers 421 and closes, answers another 4xx or a 5xx,
stalls, or sends garbage, every time until :meth:`FaultServer.disarm`. It counts the
messages the server *took* (2xx after the final dot, or a fault after the final dot: the
ambiguous case where a real server may have queued the message) by Message-ID, so a test
can prove that nothing was delivered twice.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import settings

from postillon import AsyncTransporter, SendStatus, Status, Transporter

from support.script import SMTP_DEFAULTS, ScriptServer

#: stages of security.md 3.2, as the fault server names them (verbs, plus TLS and EOD)
STAGES = ("CONNECT", "EHLO", "STARTTLS", "TLS", "AUTH", "MAIL", "RCPT", "DATA", "EOD", "QUIT")
#: faults of security.md 3.2 (columns)
FAULTS = ("disconnect", "reset", "421", "4xx", "5xx", "stall", "garbage")

#: the reply each (stage, fault) sends for the reply faults; EHLO 502 exercises the HELO
#: fallback (RFC 5321 3.2), AUTH 535 is the usual bad-credentials answer
REPLY_CODES: dict[str, dict[str, int]] = {
    "4xx": {"CONNECT": 450, "STARTTLS": 454, "AUTH": 454, "DATA": 451, "EOD": 452},
    "5xx": {"CONNECT": 554, "EHLO": 502, "STARTTLS": 554, "AUTH": 535, "MAIL": 550,
            "RCPT": 550, "DATA": 554, "EOD": 554, "QUIT": 500},
}  # fmt: skip
DEFAULT_CODES = {"421": 421, "4xx": 451, "5xx": 550}

GARBAGE = b"\x00garbage\x1b[2J no code here\r\n"

EHLO_REPLY = (
    b"250-fault.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-STARTTLS\r\n"
    b"250-AUTH PLAIN\r\n250 SIZE 10240000\r\n"
)

_MSGID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


def fault_reply(stage: str, fault: str) -> bytes:
    """The bytes a reply fault sends at ``stage``."""
    code = REPLY_CODES.get(fault, {}).get(stage, DEFAULT_CODES[fault])
    enhanced = f"{code // 100}.0.0 " if code not in (502,) else ""
    return f"{code} {enhanced}injected {fault} at {stage}\r\n".encode()


class FaultServer(ScriptServer):
    """A well-behaved ESMTP server (STARTTLS, AUTH PLAIN, PIPELINING) with one armed fault.

    ``stage`` is a verb (``"MAIL"``...), ``"CONNECT"`` (the greeting), ``"TLS"`` (the
    handshake after 220 to STARTTLS) or ``"EOD"`` (the reply to the final dot).
    ``match`` narrows the fault to command lines containing it (``b"<r1@"``: one
    recipient out of several). ``garbage`` replaces the bytes of the "garbage" fault
    (any malformed reply), ``close_after`` closes the connection after them.
    Connections are served one after the other.

    Example::

        server = FaultServer("MAIL", "421", ssl_context=ctx, chunk="byte").start()
        ... send ...; server.disarm(); ... send again ...
        assert server.taken.count("<m1@x.test>") == 1
    """

    def __init__(
        self,
        stage: str,
        fault: str,
        *,
        match: bytes = b"",
        stall_seconds: float = 10.0,
        garbage: bytes = GARBAGE,
        close_after: bool = False,
        replies: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage: one of {STAGES}, not {stage!r}")
        if fault not in FAULTS:
            raise ValueError(f"fault: one of {FAULTS}, not {fault!r}")
        defaults: dict[str, Any] = dict(SMTP_DEFAULTS)
        defaults.update(
            {
                "EHLO": EHLO_REPLY,
                "STARTTLS": b"220 2.0.0 Ready to start TLS\r\n",
                "AUTH": b"235 2.7.0 Authentication successful\r\n",
            }
        )
        defaults.update(replies or {})
        kwargs.setdefault("connections", 16)
        kwargs.setdefault("byte_delay", 0.0002)
        super().__init__(default_replies=defaults, **kwargs)
        self.stage = stage
        self.fault = fault
        self.match = match
        self.stall_seconds = stall_seconds
        self.garbage = garbage
        self.close_after = close_after
        self.armed = True
        self.fired = 0
        #: Message-IDs of the messages the server took (or may have taken), in order
        self.taken: list[str] = []
        self._lock = threading.Lock()
        self._in_mail = False
        self._rcpts = 0

    def start(self) -> FaultServer:
        super().start()
        return self

    def disarm(self) -> None:
        """From now on the server behaves."""
        self.armed = False

    def _hit(self, stage: str) -> bool:
        if not self.armed or stage != self.stage:
            return False
        if self.match and (not self.lines or self.match not in self.lines[-1]):
            return False
        self.fired += 1
        return True

    def _do_fault(self, stage: str) -> bytes:
        """Carry out the armed fault; return reply bytes or end the connection (_End)."""
        fault = self.fault
        if fault in ("disconnect", "reset"):
            self._terminal("close" if fault == "disconnect" else "reset", 0)
        if fault == "stall":
            self._terminal("stall", self.stall_seconds)
        if fault == "garbage":
            if self.close_after:
                self._send(self.garbage, self.chunk)
                self._terminal("close", 0)
            return self.garbage
        reply = fault_reply(stage, fault)
        if fault == "421":
            # RFC 5321 3.8: a server that says 421 closes the channel
            self._send(reply, self.chunk)
            self._terminal("close", 0)
        return reply

    def _took(self, ambiguous: bool, reply: bytes | None) -> None:
        payload = self.data[-1] if self.data else b""
        found = _MSGID.search(payload.split(b"\r\n\r\n", 1)[0])
        msgid = found.group(1).decode("ascii", "replace") if found else "?"
        if ambiguous or (reply is not None and reply[:1] == b"2"):
            with self._lock:
                self.taken.append(msgid)

    def _reply(self, verb: str) -> bytes | None:
        if verb == "CONNECT":
            self._in_mail, self._rcpts = False, 0
        if self._hit(verb):
            if verb == "EOD":
                # after the final dot: a drop, a stall or garbage leaves the client unsure
                self._took(self.fault in ("disconnect", "reset", "stall", "garbage"), None)
                self._in_mail, self._rcpts = False, 0
            return self._do_fault(verb)
        reply = self._transaction_reply(verb)
        if reply is None:
            reply = super()._reply(verb)
        if verb == "EOD":
            self._took(False, reply)
        return reply

    def _transaction_reply(self, verb: str) -> bytes | None:
        """RFC 5321 4.1.4 / RFC 2920 3.1: a real server refuses RCPT and DATA out of order."""
        if verb == "MAIL":
            self._in_mail, self._rcpts = True, 0
        elif verb == "RCPT":
            if not self._in_mail:
                return b"503 5.5.1 Error: need MAIL command\r\n"
            self._rcpts += 1
        elif verb == "DATA" and not self._rcpts:
            return b"554 5.5.1 Error: no valid recipients\r\n"
        elif verb in ("RSET", "EOD"):
            self._in_mail, self._rcpts = False, 0
        return None

    def _starttls(self, ctx: ssl.SSLContext | None) -> None:
        if self._hit("TLS"):
            self._send(self._do_fault("TLS"), "whole")  # garbage instead of a ServerHello
            self._terminal("close", 0)
        super()._starttls(ctx)


__all__ = [
    "EHLO_REPLY",
    "FAULTS",
    "GARBAGE",
    "STAGES",
    "Client",
    "FaultServer",
    "client_kinds",
    "fault_reply",
    "fuzz_settings",
    "make_client",
]


class Client:
    """One interface over both transporters, so that each test is written once."""

    def __init__(self, kind: str, host: str, port: int, **settings: Any) -> None:
        self.kind = kind
        self.loop: asyncio.AbstractEventLoop | None = None
        if kind == "sync":
            self.t: Any = Transporter(host, port, **settings)
        elif kind == "async":
            self.loop = asyncio.new_event_loop()
            self.t = AsyncTransporter(host, port, **settings)
        else:
            raise ValueError(f"kind: 'sync' or 'async', not {kind!r}")

    def _run(self, result: Any) -> Any:
        if self.loop is None:
            return result
        return self.loop.run_until_complete(result)

    def send(self, *args: Any, **kwargs: Any) -> SendStatus:
        status = self._run(self.t.send(*args, **kwargs))
        assert isinstance(status, SendStatus)
        return status

    def send_many(self, mails: Any, **kwargs: Any) -> list[SendStatus]:
        return list(self._run(self.t.send_many(mails, **kwargs)))

    def check_connection(self) -> Status:
        status = self._run(self.t.check_connection())
        assert isinstance(status, Status)
        return status

    def close(self) -> None:
        if self.kind == "async" and self.loop is None:
            return
        self._run(self.t.close())

    def dispose(self) -> None:
        self.close()
        if self.loop is not None:
            self.loop.close()
            self.loop = None


client_kinds = ("sync", "async")


def fuzz_settings() -> settings:
    """The hypothesis profile of this run ("ci" unless HYPOTHESIS_PROFILE says otherwise)."""
    return settings(settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")))


def make_client(kinds: list[Client], kind: str) -> Callable[..., Client]:
    """A factory that remembers every client it made (closed by the fixture)."""

    def factory(host: str, port: int, **settings: Any) -> Client:
        settings.setdefault("connection_timeout", 5)
        settings.setdefault("send_timeout", 10)
        c = Client(kind, host, port, **settings)
        kinds.append(c)
        return c

    return factory
