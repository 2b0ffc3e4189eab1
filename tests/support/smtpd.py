"""A real SMTP server for integration tests: aiosmtpd in a background thread, with faults.

:func:`start_smtpd` starts one server on 127.0.0.1 and a free port, in its own event-loop
thread, and returns a :class:`SmtpServer`. The ``smtpd`` fixture of ``tests/conftest.py``
wraps it and stops every server at teardown.

What it adds to aiosmtpd:

* TLS: ``tls="starttls"`` or ``"implicit"`` (SMTPS); AUTH over implicit TLS is treated as
  encrypted (plain aiosmtpd only knows STARTTLS).
* SASL: PLAIN and LOGIN (aiosmtpd's), plus real server-side CRAM-MD5, XOAUTH2, OAUTHBEARER
  and SCRAM-SHA-256 (:mod:`support.sasl`). Each attempt is recorded in ``auth_attempts``.
* ``refuse``: per-recipient replies. ``faults``: per command (``"CONNECT"`` for the
  greeting, ``"EHLO"``, ``"STARTTLS"``, ``"AUTH"``, ``"MAIL"``, ``"RCPT"``, ``"DATA"``,
  ``"BDAT"``, ``"RSET"``, ``"QUIT"``..., and ``"EOD"`` for the reply to the end of data) a
  reply to send instead, ``"disconnect"`` (close without a reply), ``"reset"`` (TCP RST), a
  delay in seconds, or a :class:`Fault` for combinations and "only the first N times".
* Extensions aiosmtpd lacks, on request: PIPELINING (advertised by default; aiosmtpd
  already reads pipelined commands), DSN parameters, REQUIRETLS, CHUNKING/BDAT.
* Recording: every accepted message (:class:`ReceivedMessage`), every command line, the
  number of TCP connections.

Example::

    server = smtpd(tls="starttls", auth=["PLAIN"], credentials={"alice": "pw"},
                   faults={"RCPT": Fault(reply="451 4.3.0 later", times=1)})
    ... send to server.host, server.port ...
    [msg] = server.wait_for(1)
    assert msg.auth_user == "alice" and msg.tls
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import logging
import re
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal, cast

from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    auth_mechanism,
    syntax,
)

from . import sasl

# aiosmtpd logs every command at INFO and a deprecation line per AUTH at WARNING; the
# harness records what tests need itself, so keep only aiosmtpd's errors.
logging.getLogger("mail.log").setLevel(logging.ERROR)

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-256")
TlsMode = Literal["starttls", "implicit"] | None

_REPLY_RE = re.compile(r"^[2-5][0-9][0-9]([ -]|$)")
_AUTH_OK = "235 2.7.0 Authentication successful"
_AUTH_BAD = "535 5.7.8 Authentication credentials invalid"


@dataclass
class Fault:
    """What the server does instead of its normal answer to one command.

    ``delay`` seconds pass first. Then ``disconnect`` closes the connection without a reply
    (FIN), ``reset`` aborts it with a TCP RST, or ``reply`` is sent instead of the normal
    reply (a reply starting with 421 also closes the connection, as RFC 5321 3.8 says a
    server does). With only a delay, the command then proceeds normally. ``times`` limits
    the fault to its first N occurrences (None: every time). ``deliver`` (for ``"EOD"``
    only) records the message as delivered before failing: the ambiguous case where a
    server took the message but the client never learnt it.
    """

    reply: str | None = None
    disconnect: bool = False
    reset: bool = False
    delay: float = 0.0
    times: int | None = None
    deliver: bool = False
    close_after: bool | None = None

    def __post_init__(self) -> None:
        if self.reply is not None:
            first = self.reply.split("\r\n", 1)[0]
            if not _REPLY_RE.match(first):
                raise ValueError(f"Fault.reply must start with a 2xx-5xx code: {self.reply!r}")
        if self.delay < 0:
            raise ValueError("Fault.delay must be >= 0")
        if self.times is not None and self.times < 1:
            raise ValueError("Fault.times must be >= 1 or None")
        if self.close_after is None:
            self.close_after = bool(self.reply and self.reply.startswith("421"))


def as_fault(command: str, spec: object) -> Fault:
    """Normalise one ``faults`` value: a reply string, "disconnect", "reset", a delay or a Fault."""
    if isinstance(spec, Fault):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"faults[{command!r}]: a bool is not a fault")
    if isinstance(spec, int | float):
        return Fault(delay=float(spec))
    if spec == "disconnect":
        return Fault(disconnect=True)
    if spec == "reset":
        return Fault(reset=True)
    if isinstance(spec, str) and _REPLY_RE.match(spec):
        return Fault(reply=spec)
    raise ValueError(
        f"faults[{command!r}]: expected a reply like '451 4.3.0 try later', "
        f"'disconnect', 'reset', a delay in seconds or a Fault, got {spec!r}"
    )


@dataclass
class ReceivedMessage:
    """One message the server accepted (or, with ``Fault(deliver=True)``, took)."""

    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    #: the parameters of each RCPT, aligned with ``rcpt_tos``
    rcpt_options: list[list[str]]
    #: the message as received, after the server undid the dot-stuffing
    content: bytes
    auth_user: str | None
    tls: bool
    helo: str | None
    chunked: bool = False

    def parsed(self) -> EmailMessage:
        """The content parsed with the stdlib's default policy."""
        msg = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class AuthAttempt:
    """One AUTH command and how it ended."""

    mechanism: str
    success: bool
    user: str | None = None


@dataclass
class SmtpdOptions:
    """The validated options of one test server (see :func:`start_smtpd`)."""

    tls: TlsMode = None
    require_starttls: bool = False
    auth: list[str] = field(default_factory=list)
    credentials: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    auth_required: bool = False
    auth_require_tls: bool = True
    smtputf8: bool = False
    size: int | None = None
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    ehlo_extra_lines: list[str] = field(default_factory=list)
    pipelining: bool = True
    eightbitmime: bool = True
    dsn: bool = False
    requiretls: bool = False
    chunking: bool = False
    hostname: str = "localhost"


class _State:
    """Shared between the loop thread (writer) and the test thread (reader)."""

    def __init__(self, options: SmtpdOptions) -> None:
        self.options = options
        self.cond = threading.Condition()
        self.messages: list[ReceivedMessage] = []
        self.commands: list[str] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.connections = 0
        self.protocols: set[_HarnessSMTP] = set()
        self._fault_counts: dict[str, int] = {}

    def take_fault(self, command: str) -> Fault | None:
        fault = self.options.faults.get(command)
        if fault is None:
            return None
        used = self._fault_counts.get(command, 0)
        if fault.times is not None and used >= fault.times:
            return None
        self._fault_counts[command] = used + 1
        return fault

    def record(self, message: ReceivedMessage) -> None:
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()


class _HarnessEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.rcpt_option_lists: list[list[str]] = []
        self.pending_extra: list[str] = []
        self.bdat_chunks: list[bytes] = []


class _Handler:
    """aiosmtpd hooks; the work is done by the protocol object (``server``)."""

    async def handle_EHLO(
        self,
        server: _HarnessSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        return server.ehlo_lines(session, hostname, responses)

    async def handle_MAIL(
        self,
        server: _HarnessSMTP,
        session: Session,
        envelope: _HarnessEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options + envelope.pending_extra)
        envelope.pending_extra = []
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: _HarnessSMTP,
        session: Session,
        envelope: _HarnessEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refused = server.state.options.refuse.get(address.lower())
        extra, envelope.pending_extra = envelope.pending_extra, []
        if refused is not None:
            code, text = refused
            return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_option_lists.append(rcpt_options + extra)
        envelope.rcpt_options.extend(rcpt_options + extra)
        return "250 2.1.5 Ok"

    async def handle_DATA(
        self, server: _HarnessSMTP, session: Session, envelope: _HarnessEnvelope
    ) -> str:
        return await server.end_of_data(envelope, chunked=False)


class _HarnessSMTP(SMTP):
    """aiosmtpd's SMTP with faults, more SASL mechanisms, DSN/REQUIRETLS/BDAT, recording."""

    def __init__(self, state: _State, **kwargs: Any) -> None:
        # set before aiosmtpd's __init__, which inspects every attribute of self
        self.state = state
        self.implicit_tls = False
        self.sasl_user: str | None = None
        self._close_after_push = False
        opts = state.options
        excluded = [m for m in MECHANISMS if m not in opts.auth]
        with warnings.catch_warnings():
            # auth_required without auth_require_tls is a deliberate test setting
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(
                _Handler(),
                hostname=opts.hostname,
                data_size_limit=opts.size,
                enable_SMTPUTF8=opts.smtputf8,
                auth_required=opts.auth_required,
                auth_require_tls=opts.auth_require_tls,
                auth_exclude_mechanism=excluded,
                authenticator=self._check_password,
                timeout=60,
                **kwargs,
            )
        if not opts.chunking:
            self._smtp_methods.pop("BDAT", None)
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._wrap(name, method)

    # --- plumbing --------------------------------------------------------------------------

    def _create_envelope(self) -> _HarnessEnvelope:
        return _HarnessEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        if first:
            self.state.protocols.add(self)
            if transport.get_extra_info("ssl_object") is not None:
                # SMTPS: the whole session is encrypted, so AUTH may be offered and
                # STARTTLS must not be (aiosmtpd only knows about STARTTLS).
                self.implicit_tls = True
                self._auth_require_tls = False
                self.require_starttls = False
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.state.protocols.discard(self)
        super().connection_lost(error)

    @property
    def is_tls(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    async def push(self, status: Any) -> None:
        await super().push(status)
        if self._close_after_push and self.transport is not None:
            self._close_after_push = False
            self.transport.close()

    def drop(self, reset: bool = False) -> None:
        """Close the connection now: FIN, or RST with ``reset``."""
        if self.transport is None:
            return
        transport = cast(asyncio.Transport, self.transport)
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout turns close() into a TCP RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        elif self.is_tls:
            transport.abort()  # no close_notify: a server that just goes away
        else:
            transport.close()

    async def _apply(self, fault: Fault) -> bool:
        """Carry out a fault; True when it replaced the normal handling."""
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.disconnect or fault.reset:
            self.drop(reset=fault.reset)
            # connection_lost() cancels this task; the bound keeps teardown finite
            await asyncio.sleep(30)
            return True
        if fault.reply is not None:
            self._close_after_push = bool(fault.close_after)
            await self.push(fault.reply)
            return True
        return False

    def _wrap(self, name: str, method: Any) -> Any:
        async def wrapped(arg: str | None) -> None:
            self.state.commands.append(name if arg is None else f"{name} {arg}")
            fault = self.state.take_fault(name)
            if fault is not None and await self._apply(fault):
                return
            await method(arg)

        return wrapped

    async def _handle_client(self) -> None:
        fault = self.state.take_fault("CONNECT")
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.disconnect or fault.reset:
                self.drop(reset=fault.reset)
                return
            if fault.reply is not None:
                # a greeting other than 220: RFC 5321 3.1 lets the server close after it
                await self.push(fault.reply)
                if self.transport is not None:
                    self.transport.close()
                return
        await super()._handle_client()

    # --- EHLO, MAIL/RCPT parameters --------------------------------------------------------

    def ehlo_lines(self, session: Session, hostname: str, responses: list[str]) -> list[str]:
        opts = self.state.options
        session.host_name = hostname
        lines = [r[4:] for r in responses]  # without the "250-" / "250 "
        lines = [ln for ln in lines if ln.strip() not in ("AUTH", "HELP")]
        if not opts.eightbitmime:
            lines = [ln for ln in lines if ln != "8BITMIME"]
        if opts.pipelining:
            lines.append("PIPELINING")
        if opts.dsn:
            lines.append("DSN")
        if opts.chunking:
            lines.append("CHUNKING")
        if opts.requiretls and self.is_tls:
            lines.append("REQUIRETLS")  # RFC 8689 2: only offered over TLS
        lines.extend(opts.ehlo_extra_lines)
        return [f"250-{ln}" for ln in lines[:-1]] + [f"250 {lines[-1]}"]

    def _split_extra(self, arg: str | None, keyword: str, keys: set[str]) -> str | None:
        """Take the parameters aiosmtpd would refuse (DSN, REQUIRETLS) out of ``arg``."""
        assert isinstance(self.envelope, _HarnessEnvelope)
        self.envelope.pending_extra = []
        if not arg or not keys:
            return arg
        stripped = self._strip_command_keyword(keyword, arg)
        if stripped is None:
            return arg
        address, rest = self._getaddr(stripped)
        if not address or not rest or not arg.endswith(rest):
            return arg
        keep: list[str] = []
        extra: list[str] = []
        for param in rest.split():
            (extra if param.split("=", 1)[0].upper() in keys else keep).append(param)
        self.envelope.pending_extra = extra
        return " ".join([arg[: len(arg) - len(rest)].rstrip(), *keep])

    async def smtp_MAIL(self, arg: str | None) -> None:
        keys = set()
        if self.state.options.dsn:
            keys |= {"RET", "ENVID"}
        if self.state.options.requiretls:
            keys.add("REQUIRETLS")
        await super().smtp_MAIL(self._split_extra(arg, "FROM:", keys))

    async def smtp_RCPT(self, arg: str | None) -> None:
        keys = {"NOTIFY", "ORCPT"} if self.state.options.dsn else set()
        await super().smtp_RCPT(self._split_extra(arg, "TO:", keys))

    # --- BDAT (RFC 3030) -------------------------------------------------------------------

    @syntax("BDAT size [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        parts = (arg or "").split()
        if (
            not 1 <= len(parts) <= 2
            or not parts[0].isdigit()
            or (len(parts) == 2 and parts[1].upper() != "LAST")
        ):
            await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
            return
        size, last = int(parts[0]), len(parts) == 2
        # RFC 3030 2: the chunk follows the command whatever the reply will be
        chunk = await self._reader.readexactly(size)
        if await self.check_helo_needed() or await self.check_auth_needed("BDAT"):
            return
        env = self.envelope
        assert isinstance(env, _HarnessEnvelope)
        if not env.mail_from or not env.rcpt_tos:
            await self.push("503 5.5.1 Error: need MAIL and RCPT before BDAT")
            return
        env.bdat_chunks.append(chunk)
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        content = b"".join(env.bdat_chunks)
        env.content = env.original_content = content
        status = await self.end_of_data(env, chunked=True)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    # --- end of data -----------------------------------------------------------------------

    def _record(self, env: _HarnessEnvelope, chunked: bool) -> None:
        assert self.session is not None
        content = env.original_content if env.original_content is not None else b""
        self.state.record(
            ReceivedMessage(
                mail_from=env.mail_from or "",
                mail_options=list(env.mail_options),
                rcpt_tos=list(env.rcpt_tos),
                rcpt_options=[list(o) for o in env.rcpt_option_lists],
                content=bytes(content),
                auth_user=self.sasl_user,
                tls=self.is_tls,
                helo=self.session.host_name,
                chunked=chunked,
            )
        )

    async def end_of_data(self, env: _HarnessEnvelope, chunked: bool) -> str:
        fault = self.state.take_fault("EOD")
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.deliver:
                self._record(env, chunked)
            if fault.disconnect or fault.reset:
                self.drop(reset=fault.reset)
                await asyncio.sleep(30)
                return "421 4.3.0 closing"  # not reached: the connection is gone
            if fault.reply is not None:
                self._close_after_push = bool(fault.close_after)
                return fault.reply
        self._record(env, chunked)
        return f"250 2.0.0 Ok: queued as {len(self.state.messages)}"

    # --- AUTH ------------------------------------------------------------------------------

    def _check_password(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        user = data.login.decode("utf-8", "replace")
        expected = self.state.options.credentials.get(user)
        if expected is not None and expected.encode() == data.password:
            self.sasl_user = user
            return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    async def smtp_AUTH(self, arg: str) -> None:
        assert self.session is not None
        mechanism = (arg or "").split(" ", 1)[0].upper()
        known = mechanism in self._auth_methods
        before = self.session.authenticated
        await super().smtp_AUTH(arg)
        if known and not before:
            ok = bool(self.session.authenticated)
            self.state.auth_attempts.append(
                AuthAttempt(mechanism, ok, self.sasl_user if ok else None)
            )

    async def _initial_or_challenge(self, args: list[str], challenge: bytes) -> bytes | None:
        """The client's first SASL message: the initial response, or the answer to a 334."""
        if len(args) > 1:
            if args[1] == "=":  # RFC 4954 4: an empty initial response
                return b""
            try:
                return base64.b64decode(args[1], validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return None
        answer = await self.challenge_auth(challenge)
        return None if not isinstance(answer, bytes) else answer

    def _ok(self, user: str) -> AuthResult:
        self.sasl_user = user
        return AuthResult(success=True, message=_AUTH_OK)

    @staticmethod
    def _bad(message: str = _AUTH_BAD) -> AuthResult:
        return AuthResult(success=False, handled=False, message=message)

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, _: object, args: list[str]) -> AuthResult:
        if len(args) > 1:
            return self._bad("501 5.5.2 CRAM-MD5 takes no initial response")
        challenge = sasl.cram_md5_challenge(self.state.options.hostname)
        answer = await self.challenge_auth(challenge)
        if not isinstance(answer, bytes):
            return AuthResult(success=False, handled=True)
        try:
            user = sasl.cram_md5_verify(challenge, answer, self.state.options.credentials)
        except sasl.SaslError:
            return self._bad("501 5.5.2 Malformed CRAM-MD5 response")
        return self._ok(user) if user else self._bad()

    async def _bearer(self, args: list[str], parse: Any, error_challenge: bytes) -> AuthResult:
        payload = await self._initial_or_challenge(args, b"")
        if payload is None:
            return AuthResult(success=False, handled=True)
        try:
            user, token = parse(payload)
        except (sasl.SaslError, UnicodeDecodeError):
            return self._bad("501 5.5.2 Malformed bearer token message")
        if sasl.token_valid(self.state.options.tokens, user, token):
            return self._ok(user)
        # RFC 7628 3.2.2 / Google XOAUTH2: a JSON error challenge, the client answers
        # with an empty (or ^A) response, then the final failure
        await self.challenge_auth(error_challenge)
        return self._bad("535 5.7.8 Username and Password not accepted (invalid token)")

    @auth_mechanism("XOAUTH2")
    async def auth_XOAUTH2(self, _: object, args: list[str]) -> AuthResult:
        return await self._bearer(args, sasl.parse_xoauth2, sasl.XOAUTH2_ERROR)

    @auth_mechanism("OAUTHBEARER")
    async def auth_OAUTHBEARER(self, _: object, args: list[str]) -> AuthResult:
        return await self._bearer(args, sasl.parse_oauthbearer, sasl.OAUTHBEARER_ERROR)

    @auth_mechanism("SCRAM-SHA-256")
    async def auth_SCRAM_SHA_256(self, _: object, args: list[str]) -> AuthResult:
        scram = sasl.ScramServer(self.state.options.credentials)
        first = await self._initial_or_challenge(args, b"")
        if first is None:
            return AuthResult(success=False, handled=True)
        try:
            final = await self.challenge_auth(scram.first(first))
            if not isinstance(final, bytes):
                return AuthResult(success=False, handled=True)
            server_final = scram.final(final)
        except (sasl.SaslError, UnicodeDecodeError, ValueError):
            return self._bad("501 5.5.2 Malformed SCRAM message")
        if server_final is None:
            return self._bad()
        # RFC 4954 4: the server's last SASL data goes in a 334; the client answers empty
        answer = await self.challenge_auth(server_final)
        if not isinstance(answer, bytes):
            return AuthResult(success=False, handled=True)
        return self._ok(scram.user or "")


class SmtpServer:
    """A running test SMTP server (made by :func:`start_smtpd` / the ``smtpd`` fixture).

    Attributes: ``host``, ``port``, ``options``; live views ``messages`` (list of
    :class:`ReceivedMessage`), ``commands`` (every command line dispatched, as
    ``"VERB arg"``), ``auth_attempts`` (list of :class:`AuthAttempt`), ``connections``
    (TCP connections accepted, including those whose TLS handshake failed).
    """

    def __init__(self, options: SmtpdOptions, ssl_context: ssl.SSLContext | None) -> None:
        self.options = options
        self.host = "127.0.0.1"
        self.port = 0
        self._state = _State(options)
        self._ssl_context = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-smtpd", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._stopped = False

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self._state.messages

    @property
    def commands(self) -> list[str]:
        return self._state.commands

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        return self._state.auth_attempts

    @property
    def connections(self) -> int:
        return self._state.connections

    def __repr__(self) -> str:
        return f"<SmtpServer {self.host}:{self.port} tls={self.options.tls}>"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> SmtpServer:
        self._thread.start()
        starttls_ctx = self._ssl_context if self.options.tls == "starttls" else None
        implicit_ctx = self._ssl_context if self.options.tls == "implicit" else None

        def factory() -> _HarnessSMTP:
            # asyncio calls the factory on every TCP accept, before any TLS handshake, so
            # connections that fail the handshake are counted too
            self._state.connections += 1
            return _HarnessSMTP(
                self._state,
                tls_context=starttls_ctx,
                require_starttls=self.options.require_starttls,
                loop=self._loop,
            )

        async def serve() -> asyncio.base_events.Server:
            return await self._loop.create_server(
                factory, host=self.host, port=0, ssl=implicit_ctx, reuse_address=True
            )

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def wait_for(self, n: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Wait until at least ``n`` messages arrived; the messages, or AssertionError."""
        deadline = time.monotonic() + timeout
        with self._state.cond:
            while len(self._state.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self!r}: expected {n} message(s) within {timeout}s, "
                        f"got {len(self._state.messages)}"
                    )
                self._state.cond.wait(left)
            return list(self._state.messages)

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop thread (idempotent)."""
        if self._stopped:
            return
        self._stopped = True

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for proto in list(self._state.protocols):
                if proto.transport is not None:
                    cast(asyncio.Transport, proto.transport).abort()
            await asyncio.sleep(0.01)
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()


def _mechanisms(
    auth: Iterable[str] | None, credentials: Mapping[str, str], tokens: Mapping[str, str]
) -> list[str]:
    if auth is None:
        default = (["PLAIN", "LOGIN"] if credentials else []) + (["XOAUTH2"] if tokens else [])
        return default
    if isinstance(auth, str):
        raise ValueError("auth: expected a list of mechanism names, not a string")
    mechs = [m.upper() for m in auth]
    unknown = [m for m in mechs if m not in MECHANISMS]
    if unknown:
        raise ValueError(f"auth: unknown mechanism(s) {unknown}; known: {list(MECHANISMS)}")
    return mechs


def make_options(
    *,
    tls: TlsMode = None,
    require_starttls: bool = False,
    auth: Iterable[str] | None = None,
    credentials: Mapping[str, str] | None = None,
    tokens: Mapping[str, str] | None = None,
    auth_required: bool = False,
    auth_require_tls: bool = True,
    smtputf8: bool = False,
    size: int | None = None,
    refuse: Mapping[str, tuple[int, str]] | None = None,
    faults: Mapping[str, object] | None = None,
    ehlo_extra_lines: Iterable[str] = (),
    pipelining: bool = True,
    eightbitmime: bool = True,
    dsn: bool = False,
    requiretls: bool = False,
    chunking: bool = False,
    hostname: str = "localhost",
) -> SmtpdOptions:
    """Validate the ``smtpd(**options)`` keywords; ValueError names the bad one."""
    if tls not in (None, "starttls", "implicit"):
        raise ValueError(f"tls: expected None, 'starttls' or 'implicit', got {tls!r}")
    if require_starttls and tls != "starttls":
        raise ValueError("require_starttls needs tls='starttls'")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise ValueError(f"size: expected a positive int or None, got {size!r}")
    credentials = dict(credentials or {})
    tokens = dict(tokens or {})
    refuse_norm: dict[str, tuple[int, str]] = {}
    for rcpt, reply in (refuse or {}).items():
        code, text = reply
        if not 400 <= int(code) <= 599:
            raise ValueError(f"refuse[{rcpt!r}]: code must be 4xx or 5xx, got {code}")
        refuse_norm[rcpt.lower()] = (int(code), text)
    fault_map = {cmd.upper(): as_fault(cmd, spec) for cmd, spec in (faults or {}).items()}
    for line in ehlo_extra_lines:
        if "\r" in line or "\n" in line:
            raise ValueError(f"ehlo_extra_lines: no CR/LF inside a line: {line!r}")
    return SmtpdOptions(
        tls=tls,
        require_starttls=require_starttls,
        auth=_mechanisms(auth, credentials, tokens),
        credentials=credentials,
        tokens=tokens,
        auth_required=auth_required,
        auth_require_tls=auth_require_tls,
        smtputf8=smtputf8,
        size=size,
        refuse=refuse_norm,
        faults=fault_map,
        ehlo_extra_lines=list(ehlo_extra_lines),
        pipelining=pipelining,
        eightbitmime=eightbitmime,
        dsn=dsn,
        requiretls=requiretls,
        chunking=chunking,
        hostname=hostname,
    )


def start_smtpd(ssl_context: ssl.SSLContext | None = None, **options: Any) -> SmtpServer:
    """Start a test SMTP server on 127.0.0.1 and a free port (see the module docstring).

    ``ssl_context`` is the server context for ``tls="starttls"`` / ``"implicit"`` (the
    fixture passes the trusted test certificate, or one of ``bad_certs``).
    """
    opts = make_options(**options)
    if opts.tls is not None and ssl_context is None:
        raise ValueError("ssl_context: a server SSLContext is needed when tls is set")
    return SmtpServer(opts, ssl_context).start()
