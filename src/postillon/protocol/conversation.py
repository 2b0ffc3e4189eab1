"""The SMTP client conversation, written once as generators and driven by any I/O driver.

Theory of operation
-------------------
A driver (``transport/sync.py`` with sockets, ``transport/aio.py`` with asyncio) pumps a
generator of this module. The generator yields *requests*:

- :class:`Write` -- queue these command bytes (the driver buffers; nothing blocks);
- :class:`WriteBody` -- stream these message bytes (already dot-stuffed or BDAT-framed);
- ``READ`` -- flush what is queued, then answer with the next :class:`Reply`;
- :class:`ReadUpTo` -- the same, answered with a list of the replies at hand: at least
  one, at most ``n`` (the rest of a pipelined group's answers, in one step);
- ``START_TLS`` -- flush, then run the TLS handshake on the connection;
- :class:`Done` -- a message is finished; here is its :class:`SendStatus`.

Because writes are only flushed when the conversation asks for a reply, pipelining
(RFC 2920) falls out of the order of requests: MAIL, every RCPT and DATA are yielded
before the first READ, and after a message's body the next message's envelope is queued
before the end-of-data reply is read (RFC 2920 3.1), so it all leaves in one write.

Every command written is remembered in a FIFO; every reply read is paired with the oldest
command and judged by :data:`TABLE`, the one state table of the client: for each
(state, command) it says which reply codes succeed, which continue (334), and the state
after a success or a failure. A reply code the table does not expect (354 to RCPT, 250 to
DATA) is a :class:`ProtocolError`; so is any byte left in the parser when no command is
outstanding (an unsolicited or duplicated reply must never be paired with the next
command).

One shortcut, in the hot loop of a pipelined DATA send: while the replies to a pipelined
group (the end of the previous body, then MAIL, each RCPT and DATA) are each exactly the
success its command hopes for (:data:`_HOPED`: 250 to the end of data and MAIL, 250 or
251 to RCPT, 354 to DATA with nothing after it), they are recorded at once but judged by
the table only after the next write has left (:meth:`Conversation._settle`). From the
state a group starts in, such a run of successes is what the table accepts, so every
decision taken on them (send the body, end the message) is the one the table would take;
deferring the table's bookkeeping takes it off the path between the server's last reply
and our next write. The first other reply ends the run: those waiting are judged, in
order, then it and the rest of its group one by one, so the FIFO never pairs a reply
with the wrong command and a reply the table refuses is refused before anything more is
written.

The generators never see a socket, a clock or an exception from the network: when the
driver fails (timeout, disconnect, TLS), it asks :meth:`Conversation.abort` for the
status of every message still in flight, marking ``uncertain`` those whose final dot was
sent without an answer.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import logging
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import (
    AuthenticationError,
    InvalidMessage,
    ProtocolError,
    ReplyError,
    SMTPError,
    TLSError,
)
from ..message.prepared import Prepared
from ..settings import AuthMode, Dsn, Security
from ..status import (
    FAILED_TO_SEND,
    ErrorInfo,
    RecipientStatus,
    SendStatus,
    Status,
    delivered_status,
    recipient_status,
)
from . import commands, sasl
from .capabilities import Capabilities
from .data import BdatStream, data_stream, encode_small
from .reply import Reply, ReplyParser, printable

log = logging.getLogger("postillon.protocol")

__all__ = [
    "READ",
    "START_TLS",
    "Cmd",
    "Conversation",
    "Done",
    "ReadUpTo",
    "SendOptions",
    "SessionConfig",
    "State",
    "Write",
    "WriteBody",
]


# ---------------------------------------------------------------------------- requests


class Write:
    """Queue command bytes. ``log`` is the transcript form (secrets redacted).

    Without an explicit ``log``, the transcript form is the command text itself, decoded
    only when a transcript asks for it: with no log on, a pipelined send never pays for
    it. One Write may carry several command lines (a pipelined envelope): :meth:`lines`
    gives one transcript line each.
    """

    __slots__ = ("_log", "data")

    def __init__(self, data: bytes, log: str | None = None) -> None:
        self.data = data
        self._log = log

    @property
    def log(self) -> str:
        if self._log is not None:
            return self._log
        return self.data.decode("utf-8", "replace")

    def lines(self) -> list[str]:
        """The transcript lines of this write (commands never hold a CR or LF)."""
        if self._log is not None:
            return [self._log]
        return self.data.decode("utf-8", "replace").rstrip("\r\n").split("\r\n")

    def __repr__(self) -> str:
        return f"Write({self.data!r}, {self._log!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Write):
            return NotImplemented
        return self.data == other.data and self.log == other.log

    __hash__ = None  # type: ignore[assignment]


@dataclass(slots=True)
class WriteBody:
    """Stream message bytes (already framed for the wire). ``message`` is for the log."""

    chunks: Iterable[bytes]
    message: Prepared
    #: each chunk starts with its "BDAT n [LAST]" command line (for the transcript)
    bdat: bool = False


class _Read:
    __slots__ = ()

    def __repr__(self) -> str:
        return "READ"


class _StartTLS:
    __slots__ = ()

    def __repr__(self) -> str:
        return "START_TLS"


class _Flush:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FLUSH"


class ReadUpTo:
    """Flush, then answer with a list of 1 to ``n`` replies: the next one, and those
    after it that the driver already holds (never more than ``n``, so that a reply
    nobody asked for stays in the parser, where :meth:`Conversation._took` finds it)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"ReadUpTo({self.n})"


READ = _Read()
START_TLS = _StartTLS()
#: send what is queued now; the driver then does its idle work (no reply is read)
FLUSH = _Flush()


@dataclass(slots=True)
class Done:
    """A message is finished (sent, refused or failed)."""

    status: SendStatus


Request = Write | WriteBody | _Read | ReadUpTo | _Flush | _StartTLS | Done
Flow = Generator[Request, Reply | list[Reply] | None, None]


# ----------------------------------------------------------------------- state table


class State(enum.Enum):
    CONNECTED = "connected"  # TCP (and implicit TLS) up, no greeting yet
    GREETED = "greeted"  # 220 greeting read
    TLS = "tls"  # STARTTLS accepted: handshake, then a new EHLO (RFC 3207 4.2)
    READY = "ready"  # EHLO/HELO accepted, no transaction open
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # 354 received: the body is being sent
    CLOSED = "closed"  # QUIT answered, or the server said 421

    # Members are singletons compared by identity, so the identity hash is consistent;
    # Enum's own __hash__ is Python code, and TABLE is looked up for every reply.
    __hash__ = object.__hash__


class Cmd(enum.Enum):
    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    EOD = "end of data"
    BDAT = "BDAT"
    BDAT_LAST = "BDAT LAST"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"

    __hash__ = object.__hash__  # see State


@dataclass(frozen=True, slots=True)
class Rule:
    ok: frozenset[int]  # codes that succeed
    next: State  # state after success
    fail: State  # state after a 4xx/5xx reply
    more: frozenset[int] = frozenset()  # codes that continue the command (AUTH 334)


def _rule(ok: Iterable[int], nxt: State, fail: State, more: Iterable[int] = ()) -> Rule:
    return Rule(frozenset(ok), nxt, fail, frozenset(more))


_S = State
_2XX = range(200, 260)
_IN_TRANSACTION = (_S.MAIL, _S.RCPT)

#: The client state table: (state, command) -> Rule. RFC 5321 4.3.2 gives the codes.
TABLE: dict[tuple[State, Cmd], Rule] = {
    (_S.CONNECTED, Cmd.GREETING): _rule([220], _S.GREETED, _S.CLOSED),
    (_S.GREETED, Cmd.EHLO): _rule([250], _S.READY, _S.GREETED),
    (_S.GREETED, Cmd.HELO): _rule([250], _S.READY, _S.GREETED),
    (_S.TLS, Cmd.EHLO): _rule([250], _S.READY, _S.TLS),
    (_S.READY, Cmd.STARTTLS): _rule([220], _S.TLS, _S.READY),
    (_S.READY, Cmd.AUTH): _rule([235], _S.READY, _S.READY, more=[334]),
    (_S.READY, Cmd.MAIL): _rule([250], _S.MAIL, _S.READY),
    (_S.MAIL, Cmd.RCPT): _rule([250, 251], _S.RCPT, _S.MAIL),
    (_S.RCPT, Cmd.RCPT): _rule([250, 251], _S.RCPT, _S.RCPT),
    # RCPT pipelined after a refused MAIL: only a refusal makes sense (RFC 2920 3.1).
    (_S.READY, Cmd.RCPT): _rule([], _S.READY, _S.READY),
    (_S.RCPT, Cmd.DATA): _rule([354], _S.DATA, _S.RCPT),
    # DATA pipelined after recipients that were all refused: the server must refuse it
    # (RFC 2920 3.1); a 354 anyway is answered with an empty body.
    (_S.MAIL, Cmd.DATA): _rule([354], _S.DATA, _S.MAIL),
    (_S.READY, Cmd.DATA): _rule([354], _S.DATA, _S.READY),
    (_S.DATA, Cmd.EOD): _rule([250], _S.READY, _S.READY),
    (_S.RCPT, Cmd.BDAT): _rule([250], _S.RCPT, _S.RCPT),
    (_S.RCPT, Cmd.BDAT_LAST): _rule([250], _S.READY, _S.READY),
    (_S.MAIL, Cmd.BDAT): _rule([250], _S.MAIL, _S.MAIL),
    (_S.MAIL, Cmd.BDAT_LAST): _rule([250], _S.READY, _S.READY),
    (_S.READY, Cmd.RSET): _rule([250], _S.READY, _S.READY),
    (_S.MAIL, Cmd.RSET): _rule([250], _S.READY, _S.READY),
    (_S.RCPT, Cmd.RSET): _rule([250], _S.READY, _S.READY),
    (_S.READY, Cmd.NOOP): _rule(_2XX, _S.READY, _S.READY),
    (_S.GREETED, Cmd.QUIT): _rule([221], _S.CLOSED, _S.CLOSED),
    (_S.READY, Cmd.QUIT): _rule([221], _S.CLOSED, _S.CLOSED),
    (_S.TLS, Cmd.QUIT): _rule([221], _S.CLOSED, _S.CLOSED),
}
# A failed MAIL or DATA inside a failed pipelined group can leave any transaction state.
for _state in _IN_TRANSACTION:
    TABLE.setdefault((_state, Cmd.MAIL), _rule([250], _S.MAIL, _state))
    TABLE.setdefault((_state, Cmd.QUIT), _rule([221], _S.CLOSED, _S.CLOSED))


#: The replies the hot loop may judge after its next write (see the module docstring).
_HOPED: dict[Cmd, frozenset[int]] = {
    Cmd.EOD: frozenset([250]),
    Cmd.MAIL: frozenset([250]),
    Cmd.RCPT: frozenset([250, 251]),
    Cmd.DATA: frozenset([354]),
}


class Outcome(enum.Enum):
    OK = "ok"
    MORE = "more"
    FAIL = "fail"


class Machine:
    """Pairs replies with the commands written, in order, and applies :data:`TABLE`."""

    __slots__ = ("outstanding", "state")

    def __init__(self) -> None:
        self.state = State.CONNECTED
        self.outstanding: deque[Cmd] = deque()

    def sent(self, cmd: Cmd) -> None:
        self.outstanding.append(cmd)

    def received(self, reply: Reply) -> tuple[Cmd, Outcome]:
        if not self.outstanding:
            raise ProtocolError(f"unsolicited reply: {reply}")
        cmd = self.outstanding[0]
        rule = TABLE.get((self.state, cmd))
        if rule is None:  # a bug of ours, never the server's
            raise RuntimeError(f"{cmd.value} sent in state {self.state.value}")
        if reply.code in rule.more:
            return cmd, Outcome.MORE  # the same command goes on (AUTH challenge)
        self.outstanding.popleft()
        if reply.code in rule.ok:
            self.state = rule.next
            return cmd, Outcome.OK
        if reply.code >= 400:
            # RFC 5321 3.8: 421 means the server is closing the channel.
            self.state = State.CLOSED if reply.code == 421 else rule.fail
            return cmd, Outcome.FAIL
        raise ProtocolError(f"unexpected reply to {cmd.value}: {reply}")


# ------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What the conversation needs to open a session (no secrets in repr)."""

    host: str
    port: int
    security: Security
    local_hostname: str
    accept_unsecure_connection: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    access_token: Callable[[], str] | None = field(default=None, repr=False)
    authentication_mode: AuthMode | None = None
    tls_verified: bool = True  # False when some certificate errors are ignored


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Per-call options of send()/send_many()."""

    dsn: Dsn | None = None
    require_tls: bool = False


# ----------------------------------------------------------------- message progress


@dataclass(slots=True)
class _InFlight:
    message: Prepared
    stage: str = "mail"
    mail: Reply | None = None
    rcpts: dict[str, Reply] = field(default_factory=dict)
    #: how many of ``rcpts`` were accepted (250/251), counted as they are recorded
    accepted: int = 0
    data: Reply | None = None
    final: Reply | None = None
    body_sent: bool = False
    bdat_commands: int = 0
    #: the DATA wire bytes, encoded ahead of the 354 by :meth:`Conversation.idle`
    wire: tuple[bytes, ...] | None = None


class _Envelope:
    """The commands of one envelope (MAIL, each RCPT, and DATA unless BDAT follows),
    one by one for a session without PIPELINING, and as one write for a pipelined one."""

    __slots__ = ("cmds", "lines", "read_after_body", "read_group", "steps", "write")

    def __init__(self, lines: list[tuple[Cmd, bytes, str]]) -> None:
        self.lines = lines
        self.cmds = tuple(cmd for cmd, _, _ in lines)
        self.write = Write(b"".join(data for _, data, _ in lines))
        #: each command with the replies hoped for it, and whether it is the last (after
        #: its reply, nothing may follow: see the module docstring)
        self.steps = tuple(
            (cmd, _HOPED.get(cmd, frozenset()), i == len(lines) - 1)
            for i, cmd in enumerate(self.cmds)
        )
        #: the replies to this group, asked for in one step; and with the end of the
        #: body before it first
        self.read_group = ReadUpTo(len(lines))
        self.read_after_body = ReadUpTo(len(lines) + 1)


#: the next item of Conversation.transactions, planned: the item, and the envelope to
#: send it with or the status that takes its place
_Planned = tuple[Prepared | SendStatus, _Envelope | None, SendStatus | None]


def _shown(text: str) -> str:
    """A reply's text for a status: its lines joined by a space, controls escaped."""
    return printable(text.replace("\n", " "))


def _shown_reply(reply: Reply) -> str:
    """:func:`_shown` of a reply's text; a single line of plain ASCII (the usual
    end-of-data reply) is returned as is, without the general escaping pass."""
    lines = reply.lines
    if len(lines) == 1:
        line = lines[0]
        if len(line) <= 512 and line.isascii() and line.isprintable():
            return line
    return _shown(reply.text)


def _recipient(reply: Reply, accepted: bool) -> RecipientStatus:
    return RecipientStatus(reply.code, _shown_reply(reply), accepted)


def _finish(fl: _InFlight) -> SendStatus:
    """The status of a message whose conversation ended with a reply (no exception)."""
    msg = fl.message
    if fl.mail is None or fl.mail.code != 250:
        reply = fl.mail
        assert reply is not None
        recips = {a: _recipient(reply, False) for a in msg.recipients}
        return _reply_status(msg, reply, "mail", recips)
    rcpts = fl.rcpts
    if not fl.accepted:
        recips = {
            addr: _recipient(r, False) if (r := rcpts.get(addr)) else RecipientStatus(0, "", False)
            for addr in msg.recipients
        }
        first = next(iter(rcpts.values()))
        return _reply_status(msg, first, "rcpt", recips)
    end = fl.final if fl.final is not None else fl.data
    assert end is not None
    ok = end.code == 250
    # Every accepted recipient ends with the end-of-data reply: one (immutable) status
    # object serves them all, and a recipient's RCPT reply is only formatted if refused.
    end_text = _shown_reply(end)
    at_end = recipient_status(end.code, end_text, ok)
    everyone = fl.accepted == len(msg.recipients)
    if everyone:
        recips = dict.fromkeys(msg.recipients, at_end)
    else:
        recips = {}
        for addr in msg.recipients:
            r = rcpts.get(addr)
            if r is None:
                recips[addr] = RecipientStatus(0, "", False)
            elif r.code in (250, 251):
                recips[addr] = at_end
            else:
                recips[addr] = _recipient(r, False)
    if not ok:
        return _reply_status(msg, end, "data", recips)
    if everyone:
        return delivered_status(end.code, end_text, end.enhanced, msg.message_id, recips)
    refused = [a for a in msg.recipients if not recips[a].accepted]
    if refused:
        first_refused = fl.rcpts[refused[0]]
        return _reply_status(msg, first_refused, "rcpt", recips, success=False)
    return _reply_status(msg, end, "done", recips, success=True)


def _reply_status(
    msg: Prepared,
    reply: Reply,
    stage: str,
    recipients: dict[str, RecipientStatus],
    *,
    success: bool = False,
) -> SendStatus:
    return SendStatus(
        success=success,
        status=reply.code,
        status_text=_shown_reply(reply),
        stage=None if success else stage,
        enhanced_status=reply.enhanced,
        message_id=msg.message_id,
        recipients=recipients,
    )


def local_failure(msg: Prepared, code: int, enhanced: str, text: str, stage: str) -> SendStatus:
    """A permanent refusal decided before sending (SIZE, SMTPUTF8, 8BITMIME, REQUIRETLS)."""
    return SendStatus(
        success=False,
        status=code,
        status_text=text,
        stage=stage,
        enhanced_status=enhanced,
        message_id=msg.message_id,
        recipients={a: RecipientStatus(code, text, False) for a in msg.recipients},
        errors=[ErrorInfo(code, text, "postillon")],
    )


#: The component name of each transport failure (ErrorInfo.component; Status.exception()).
def component_of(exc: BaseException) -> str:
    from ..errors import ConnectError, ServerDisconnected, TimeoutError

    for cls, name in (
        (ConnectError, "connect"),
        (TimeoutError, "timeout"),
        (ServerDisconnected, "disconnected"),
        (TLSError, "tls"),
        (ProtocolError, "protocol"),
    ):
        if isinstance(exc, cls):
            return name
    return "transport"


def failure_status(
    exc: SMTPError, stage: str, message: Prepared | None = None, *, uncertain: bool = False
) -> SendStatus:
    """The status for a failure raised by the conversation or the driver (4D rules)."""
    recipients: dict[str, RecipientStatus] = {}
    if isinstance(exc, ReplyError) and exc.code:
        if message is not None:
            recipients = {
                a: RecipientStatus(exc.code, _shown(exc.text), False) for a in message.recipients
            }
        return SendStatus(
            success=False,
            status=exc.code,
            status_text=_shown(exc.text),
            stage=stage,
            enhanced_status=exc.enhanced_status,
            message_id=message.message_id if message else "",
            recipients=recipients,
        )
    text = printable(str(exc) or type(exc).__name__)
    component = "auth" if isinstance(exc, AuthenticationError) else component_of(exc)
    if message is not None:
        recipients = {a: RecipientStatus(0, text, False) for a in message.recipients}
    return SendStatus(
        success=False,
        status=0,
        status_text=FAILED_TO_SEND,
        errors=[ErrorInfo(0, text, component)],
        stage=stage,
        message_id=message.message_id if message else "",
        recipients=recipients,
        uncertain=uncertain,
    )


def invalid_status(exc: InvalidMessage, msg: Prepared) -> SendStatus:
    """The status of a message whose envelope cannot be sent as given."""
    text = printable(str(exc))
    return SendStatus(
        success=False,
        status=0,
        status_text=FAILED_TO_SEND,
        errors=[ErrorInfo(0, text, "message")],
        stage="message",
        message_id=msg.message_id,
        recipients={a: RecipientStatus(0, text, False) for a in msg.recipients},
    )


def check_status(
    ok: bool, reply: Reply | None, note: str = "", exc: SMTPError | None = None, stage: str = ""
) -> Status:
    """The status of check_connection()."""
    if exc is not None:
        st = failure_status(exc, stage)
        return Status(
            success=False,
            status=st.status,
            status_text=st.status_text,
            errors=st.errors,
            stage=stage,
        )
    assert reply is not None
    text = _shown_reply(reply)
    if note:
        text = f"{text} ({note})" if text else note
    return Status(success=ok, status=reply.code, status_text=text, stage=None if ok else stage)


#: largest body :meth:`Conversation.idle` encodes ahead (the driver's write block)
_AHEAD = 65536


# Command lines are pure functions of their text: a batch to the same envelope (the
# common case of bulk mail) validates each address once, not once per message. Failures
# are not cached (lru_cache lets exceptions through), so a bad address is refused every time.
@functools.lru_cache(maxsize=1024)
def _mail_line(address: str, params: tuple[str, ...], smtputf8: bool) -> bytes:
    return commands.mail_from(address, params, smtputf8=smtputf8)


@functools.lru_cache(maxsize=4096)
def _rcpt_line(address: str, params: tuple[str, ...], smtputf8: bool) -> bytes:
    return commands.rcpt_to(address, params, smtputf8=smtputf8)


# ---------------------------------------------------------------------- conversation


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Conversation:
    """One SMTP client session, sans I/O. Drivers pump its generators."""

    def __init__(self, config: SessionConfig, parser: ReplyParser | None = None) -> None:
        self.config = config
        self.parser = parser or ReplyParser()
        self.machine = Machine()
        self.capabilities = Capabilities.from_helo(Reply(250, ("",)))
        self.tls_active = config.security is Security.TLS
        self.stage = "connect"
        #: why the session went on without authentication (WinDev rule), else ""
        self.auth_note = ""
        self.auth_mechanism: AuthMode | None = None
        self.last_reply: Reply | None = None
        self._inflight: list[_InFlight] = []
        #: called with the transcript events that are not wire lines
        self.on_event: Callable[[str], None] = lambda _text: None
        #: a message whose envelope is on its way and whose body may be encoded ahead
        self._encode_ahead: _InFlight | None = None
        #: messages whose final reply is read and whose status is not yet reported: a
        #: pipelined send builds those statuses after its next write, while the server
        #: works, rather than between the server's replies and that write
        self._unreported: list[_InFlight] = []
        #: hoped-for replies, recorded and not yet judged by the table (see _settle)
        self._unjudged: list[Reply] = []
        #: the item transactions() took from its input ahead of time, or the error taking
        #: it raised (see untaken)
        self._ahead: _Planned | None = None
        self._ahead_error: Exception | None = None

    # -- low-level steps

    def _write(self, cmd: Cmd, data: bytes, log_text: str | None = None) -> Write:
        self.machine.sent(cmd)
        return Write(data, log_text)

    def _took(self, reply: Reply | None, exact: bool = True) -> tuple[Cmd, Outcome]:
        """Judge a reply just read (the bookkeeping half of :meth:`_read`)."""
        assert reply is not None
        if self._unjudged:
            self._settle()  # the replies before this one are judged first, in order
        self.last_reply = reply
        machine = self.machine
        cmd, outcome = machine.received(reply)
        if exact and not machine.outstanding and self.parser.has_data():
            # Every outstanding command is answered, yet bytes remain: a duplicated or
            # unsolicited reply. Pairing it with the next command would desynchronise
            # the session (security.md 1.12), so the connection is given up.
            raise ProtocolError("the server sent a reply nobody asked for")
        return cmd, outcome

    def _settle(self) -> None:
        """Judge the hoped-for replies the hot loop recorded without judging, in order.

        They are a run of successes from the state their group started in (module
        docstring), which the table accepts: this only moves the state and the FIFO on.
        """
        unjudged = self._unjudged
        if not unjudged:
            return
        received = self.machine.received
        for reply in unjudged:
            received(reply)
        self.last_reply = unjudged[-1]
        unjudged.clear()

    def _read(
        self, *, exact: bool = True
    ) -> Generator[Request, Reply | None, tuple[Cmd, Outcome, Reply]]:
        reply = yield READ
        cmd, outcome = self._took(reply, exact)
        assert reply is not None
        return cmd, outcome, reply

    def _command(
        self, cmd: Cmd, data: bytes, log_text: str | None = None
    ) -> Generator[Request, Reply | None, tuple[Outcome, Reply]]:
        yield self._write(cmd, data, log_text)
        _, outcome, reply = yield from self._read()
        return outcome, reply

    # -- session opening

    def handshake(self) -> Flow:
        """Greeting, EHLO (HELO fallback), STARTTLS and EHLO again, AUTH."""
        self.stage = "greeting"
        self.machine.sent(Cmd.GREETING)
        _, outcome, reply = yield from self._read()
        if outcome is not Outcome.OK:
            raise ReplyError(reply.code, reply.text, reply.enhanced)
        self.stage = "ehlo"
        yield from self._ehlo()
        if self.config.security is Security.STARTTLS:
            yield from self._starttls()
        if self.config.user is not None:
            self.stage = "auth"
            yield from self._authenticate()
        self.stage = "ready"

    def _ehlo(self) -> Flow:
        name = self.config.local_hostname
        outcome, reply = yield from self._command(Cmd.EHLO, commands.ehlo(name))
        if outcome is Outcome.OK:
            self.capabilities = Capabilities.from_ehlo(reply)
            self.on_event(f"capabilities: {' '.join(sorted(self.capabilities.keywords))}")
            return
        if reply.code in (500, 501, 502, 504, 550) and self.machine.state is State.GREETED:
            # RFC 5321 3.2: a server that does not know EHLO gets HELO.
            outcome, reply = yield from self._command(Cmd.HELO, commands.helo(name))
            if outcome is Outcome.OK:
                self.capabilities = Capabilities.from_helo(reply)
                return
        raise ReplyError(reply.code, reply.text, reply.enhanced)

    def _starttls(self) -> Flow:
        if self.capabilities.starttls:
            self.stage = "starttls"
            yield self._write(Cmd.STARTTLS, commands.STARTTLS)
            # Bytes after the 220 are dropped below, not judged as a stray reply.
            _, outcome, reply = yield from self._read(exact=False)
            if outcome is not Outcome.OK:
                raise ReplyError(reply.code, reply.text, reply.enhanced)
            # RFC 3207 4.2 / CVE-2011-0411: nothing read before the handshake may count.
            dropped = self.parser.discard()
            if dropped:
                log.warning("discarded %d bytes received before the TLS handshake", dropped)
                self.on_event(f"discarded {dropped} bytes received before the TLS handshake")
            self.stage = "tls"
            yield START_TLS
            self.tls_active = True
            self.capabilities = Capabilities.from_helo(Reply(250, ("",)))
            self.stage = "ehlo"
            yield from self._ehlo()
        elif self.config.accept_unsecure_connection:
            log.warning("%s does not offer STARTTLS: going on unencrypted", self.config.host)
            self.on_event("STARTTLS not offered: going on unencrypted (accept_unsecure_connection)")
        else:
            raise TLSError(
                "the server does not offer STARTTLS; refusing to go on unencrypted "
                "(set accept_unsecure_connection=True to allow it)"
            )

    def _authenticate(self) -> Flow:
        cfg = self.config
        offered = self.capabilities.auth
        self.on_event(f"AUTH offered: {' '.join(offered) or '(none)'}")
        mode = sasl.choose_mechanism(
            offered,
            requested=cfg.authentication_mode,
            have_password=cfg.password is not None,
            have_token=cfg.access_token is not None,
        )
        if mode is None:
            if cfg.authentication_mode is not None:
                raise AuthenticationError(
                    0,
                    f"the server does not offer {cfg.authentication_mode.value} "
                    f"(offered: {' '.join(offered) or 'none'})",
                )
            # WinDev rule: nothing we know is offered, so the session goes on without AUTH.
            self.auth_note = "authentication skipped: the server offers no known mechanism"
            self.on_event(self.auth_note)
            return
        if not self.tls_active and not cfg.accept_unsecure_connection:
            raise AuthenticationError(
                0,
                "refusing to send credentials over an unencrypted connection "
                "(set accept_unsecure_connection=True to allow it)",
            )
        if not cfg.tls_verified:
            log.warning("sending credentials over TLS whose certificate errors are ignored")
        self.auth_mechanism = mode
        self.on_event(f"AUTH chosen: {mode.value}")
        token = cfg.access_token() if cfg.access_token is not None else None
        flow = sasl.flow_for(
            mode,
            user=cfg.user or "",
            password=cfg.password,
            token=token,
            host=cfg.host,
            port=cfg.port,
        )
        initial = next(flow)
        arg = None if initial is sasl.NO_INITIAL else _b64(initial)
        delayed: str | None = None
        if arg is not None and not commands.auth_fits(mode.value, arg):
            # RFC 4954 4: an initial response that would make the line longer than 512
            # octets (a long OAuth token) goes after an empty 334 instead.
            arg, delayed = None, arg
        outcome, reply = yield from self._command(
            Cmd.AUTH,
            commands.auth(mode.value, arg),
            f"AUTH {mode.value}" + (" [redacted]" if arg is not None else ""),
        )
        answered = 0
        while outcome is Outcome.MORE:
            line: bytes | None = None
            if delayed is not None:
                line, delayed = commands.auth_response(delayed), None
            else:
                try:
                    challenge = base64.b64decode(
                        reply.lines[0] if reply.lines else "", validate=True
                    )
                    line = commands.auth_response(_b64(flow.send(challenge)))
                    answered += 1
                except (binascii.Error, ValueError, StopIteration):
                    line = None
            # RFC 4954 4: "*" cancels an exchange we cannot go on with.
            yield Write(line or commands.SASL_CANCEL, "[redacted]" if line else "*")
            _, outcome, reply = yield from self._read()
        flow.close()
        if outcome is not Outcome.OK:
            raise AuthenticationError(reply.code, reply.text, reply.enhanced)
        if mode is AuthMode.SCRAM_SHA_256 and answered < 2:
            # RFC 5802 5: the server proves it knows the password in its final message;
            # a server that skips it may be an impostor.
            raise AuthenticationError(0, "the server accepted SCRAM without proving itself")

    # -- utility commands

    def noop(self) -> Flow:
        outcome, reply = yield from self._command(Cmd.NOOP, commands.NOOP)
        if outcome is not Outcome.OK:
            raise ReplyError(reply.code, reply.text, reply.enhanced)

    def reset(self) -> Flow:
        outcome, reply = yield from self._command(Cmd.RSET, commands.RSET)
        if outcome is not Outcome.OK:
            raise ReplyError(reply.code, reply.text, reply.enhanced)

    def quit(self) -> Flow:
        if self.machine.state in (State.CLOSED, State.CONNECTED):
            return
        self.machine.outstanding.clear()
        self.stage = "quit"
        yield from self._command(Cmd.QUIT, commands.QUIT)

    @property
    def usable(self) -> bool:
        """True when a new transaction may start on this session."""
        return self.machine.state is State.READY and not self.machine.outstanding

    # -- transactions

    def idle(self) -> None:
        """Work to do while the server answers (drivers call it after a write leaves).

        The body of the message whose envelope was just sent is dot-stuffed now, so that
        when the 354 comes it goes at once: this moves the encoding off the path between
        the server's replies and our next write. Only small bodies held in memory (no
        file to read, bounded size); anything else is encoded as it is sent. Calling it
        is optional: the bytes on the wire are the same either way.
        """
        fl = self._encode_ahead
        if fl is None:
            return
        self._encode_ahead = None
        msg = fl.message
        if fl.wire is None and msg.in_memory and msg.size is not None and msg.size <= _AHEAD:
            try:
                fl.wire = encode_small(msg.source())
            except Exception:  # met again, in its place, when it is sent lazily
                fl.wire = None

    def _precheck(self, msg: Prepared, opts: SendOptions) -> SendStatus | None:
        caps = self.capabilities
        limit = caps.size
        if limit and msg.size is not None and msg.size > limit:
            return local_failure(
                msg, 552, "5.3.4",
                f"message of {msg.size} bytes exceeds the server's limit of {limit} (SIZE)",
                "mail",
            )  # fmt: skip
        if msg.needs_smtputf8 and not caps.smtputf8:
            return local_failure(
                msg, 553, "5.6.7",
                "the message needs SMTPUTF8, which the server does not offer", "mail",
            )  # fmt: skip
        if msg.eight_bit and not caps.eightbitmime:
            return local_failure(
                msg, 554, "5.6.3",
                "the message has 8-bit data and the server does not offer 8BITMIME", "mail",
            )  # fmt: skip
        if opts.require_tls and not (self.tls_active and caps.requiretls):
            return local_failure(
                msg, 530, "5.7.10", "REQUIRETLS was asked for and the server does not offer it",
                "mail",
            )  # fmt: skip
        return None

    def _envelope(self, msg: Prepared, opts: SendOptions) -> list[tuple[Cmd, bytes, str]]:
        caps = self.capabilities
        utf8 = msg.needs_smtputf8
        params: list[str] = []
        if caps.has("SIZE") and msg.size is not None:
            params.append(commands.esmtp_param("SIZE", str(msg.size)))
        if msg.eight_bit or (utf8 and caps.eightbitmime):
            # RFC 6531 3.4: UTF-8 headers are 8-bit content, declared as such.
            params.append(commands.esmtp_param("BODY", "8BITMIME"))
        if utf8:
            params.append(commands.esmtp_param("SMTPUTF8"))
        if opts.require_tls:
            params.append(commands.esmtp_param("REQUIRETLS"))
        dsn = opts.dsn if caps.dsn else None
        if dsn is not None:
            if dsn.ret:
                params.append(commands.esmtp_param("RET", dsn.ret))
            if dsn.envid:
                params.append(commands.esmtp_param("ENVID", commands.xtext(dsn.envid)))
        out = [(Cmd.MAIL, _mail_line(msg.mail_from, tuple(params), utf8), "")]
        rparams: list[str] = []
        if dsn is not None and dsn.notify:
            rparams.append(commands.esmtp_param("NOTIFY", ",".join(dsn.notify)))
        for i, rcpt in enumerate(msg.recipients):
            extra = list(rparams)
            if dsn is not None and rcpt.isascii():
                extra.append(commands.esmtp_param("ORCPT", "rfc822;" + commands.xtext(rcpt)))
            try:
                line = _rcpt_line(rcpt, tuple(extra), utf8)
            except InvalidMessage as exc:
                raise InvalidMessage(exc.message, f"to[{i}]") from None
            out.append((Cmd.RCPT, line, ""))
        return out

    def transactions(self, messages: Iterable[Prepared | SendStatus], opts: SendOptions) -> Flow:
        """Send each message in turn, yielding :class:`Done` for each, in order.

        A :class:`SendStatus` among the messages (one that failed before the wire) is
        passed through in its place, so that results stay in the order of the input.

        With PIPELINING the envelope of a message leaves in one write, and the next
        message's envelope follows its body before the end-of-data reply is read. That
        next message is taken from ``messages`` and its envelope planned while the server
        reads the one before; when the session breaks first, :meth:`untaken` gives it
        back.
        """
        caps = self.capabilities
        pipelining = caps.pipelining
        chunking = caps.chunking
        # The capabilities do not change during the transactions: what the checks of
        # every message read from them is read once here (some are parsed properties).
        size_limit = caps.size
        has_size = caps.has("SIZE")
        smtputf8_ok = caps.smtputf8
        eightbit_ok = caps.eightbitmime
        requiretls_ok = self.tls_active and caps.requiretls
        # Envelopes already built in this call, by everything they depend on (the options
        # are the same for the whole call): a bulk send to one envelope builds it once.
        envelopes: dict[tuple[object, ...], _Envelope] = {}

        def plan(item: Prepared | SendStatus) -> _Planned:
            """The envelope of a message to send, or the status of one that is not."""
            if isinstance(item, SendStatus):
                return item, None, item
            if (
                (size_limit and item.size is not None and item.size > size_limit)
                or (item.needs_smtputf8 and not smtputf8_ok)
                or (item.eight_bit and not eightbit_ok)
                or (opts.require_tls and not requiretls_ok)
            ):
                return item, None, self._precheck(item, opts)  # builds the refusal
            key = (
                item.mail_from,
                item.recipients,
                item.size if has_size else None,
                item.eight_bit,
                item.needs_smtputf8,
            )
            env = envelopes.get(key)
            if env is None:
                try:
                    lines = self._envelope(item, opts)
                except InvalidMessage as exc:
                    # In a batch, one bad envelope fails alone; the others go on.
                    return item, None, invalid_status(exc, item)
                if not chunking:
                    lines.append((Cmd.DATA, commands.DATA, ""))
                env = _Envelope(lines)
                if len(envelopes) >= 256:
                    envelopes.clear()
                envelopes[key] = env
            return item, env, None

        source = iter(messages)
        ended = False
        self._ahead = self._ahead_error = None
        pending: _InFlight | None = None
        while True:
            ahead = self._ahead
            if ahead is not None:
                self._ahead = None
            elif self._ahead_error is not None:
                error, self._ahead_error = self._ahead_error, None
                raise error  # met while looking ahead: raised where it was due
            elif ended:
                break
            else:
                try:
                    ahead = plan(next(source))
                except StopIteration:
                    break
            item, env, status = ahead
            if env is None:
                assert status is not None
                if pending is not None:
                    yield from self._end(pending)
                    pending = None
                yield from self._report()
                yield Done(status)
                continue
            msg = item
            assert isinstance(msg, Prepared)
            fl = _InFlight(msg)
            self._inflight.append(fl)
            self.stage = "mail"
            if pipelining:
                # RFC 2920 3.1: MAIL, every RCPT and DATA go as one group, in one write
                # queued behind the previous body.
                sent = self.machine.sent
                for cmd in env.cmds:
                    sent(cmd)
                yield env.write
                if not chunking:
                    self._encode_ahead = fl
                # Every reply of this group so far was the success hoped for, from the
                # state a group starts in (READY, or DATA behind the body before): only
                # then may the next one wait to be judged (see _settle).
                hoped = not chunking
                # The replies come in one step when they are at hand (ReadUpTo): the end
                # of the body before, then this group's; any still missing one by one.
                at_hand: list[Reply] = []
                taken = 0
                if pending is not None:
                    if self._unreported or self._unjudged:
                        # The body before and this envelope leave now; the replies of
                        # the message before are judged and the statuses of earlier
                        # messages built while the server reads them.
                        yield FLUSH
                        self._settle()
                        yield from self._report()
                        # And the next message is taken and planned now rather than
                        # after these replies: its envelope is ready to follow this body.
                        try:
                            self._ahead = plan(next(source))
                        except StopIteration:
                            ended = True
                        except Exception as exc:
                            self._ahead_error = exc
                    if chunking:
                        yield from self._end(pending, defer=True)
                    else:
                        at_hand = yield env.read_after_body  # type: ignore[assignment]
                        reply = at_hand[0]
                        taken = 1
                        if reply.code in _HOPED[Cmd.EOD]:
                            self._unjudged.append(reply)
                        else:
                            hoped = False
                            self._took(reply)
                        self._ended(pending, reply)
                    pending = None
                elif not chunking:
                    at_hand = yield env.read_group  # type: ignore[assignment]
                # The replies are read here rather than through _envelope_reply: this is
                # the hot loop of a bulk send, and each nested generator costs a frame.
                for cmd, hoped_codes, last in env.steps:
                    if taken < len(at_hand):
                        reply = at_hand[taken]
                        taken += 1
                    else:
                        reply = yield READ  # type: ignore[assignment]
                    if (
                        hoped
                        and reply.code in hoped_codes
                        and not (last and self.parser.has_data())
                    ):
                        self._unjudged.append(reply)
                    else:
                        hoped = False
                        self._took(reply)
                    self._record(fl, cmd, reply)
            else:
                if pending is not None:  # pragma: no cover - only pipelined sends leave one
                    yield from self._end(pending)
                    pending = None
                for cmd, data, _ in env.lines:
                    if cmd is Cmd.DATA and not fl.accepted:
                        break
                    yield self._write(cmd, data)
                    yield from self._envelope_reply(fl, cmd)
                    if cmd is Cmd.MAIL and fl.mail is not None and fl.mail.code != 250:
                        break
            if chunking:
                if fl.accepted:
                    fl.stage = "data"
                    stream = BdatStream(msg.chunks())
                    yield WriteBody(stream, msg, bdat=True)
                    fl.body_sent = True
                    fl.bdat_commands = stream.commands
                    for _ in range(stream.commands - 1):
                        self.machine.sent(Cmd.BDAT)
                    self.machine.sent(Cmd.BDAT_LAST)
                    pending = fl
                    if not pipelining:
                        yield from self._end(pending)
                        pending = None
                    continue
            elif fl.data is not None and fl.data.code == 354:
                fl.stage = "data"
                if fl.accepted:
                    wire = fl.wire
                    yield WriteBody(wire if wire is not None else data_stream(msg.chunks()), msg)
                else:  # RFC 2920 3.1: DATA accepted with no recipient: end it empty.
                    yield Write(b".\r\n", ".")
                fl.body_sent = True
                self.machine.sent(Cmd.EOD)
                pending = fl
                if not pipelining:
                    yield from self._end(pending)
                    pending = None
                continue
            # The transaction failed before the body: close it before the next one.
            self._settle()
            if self.machine.state in _IN_TRANSACTION:
                outcome, reply = yield from self._command(Cmd.RSET, commands.RSET)
                if outcome is not Outcome.OK:
                    raise ReplyError(reply.code, reply.text, reply.enhanced)
            self._inflight.remove(fl)
            yield from self._report()
            yield Done(_finish(fl))
        if pending is not None:
            yield from self._end(pending)
        self._settle()
        yield from self._report()

    def _envelope_reply(self, fl: _InFlight, cmd: Cmd) -> Flow:
        _, _outcome, reply = yield from self._read()
        self._record(fl, cmd, reply)

    def _record(self, fl: _InFlight, cmd: Cmd, reply: Reply) -> None:
        """Store the reply to one envelope command of ``fl`` (421: the session ends)."""
        if cmd is Cmd.MAIL:
            fl.mail = reply
            fl.stage = "rcpt"
        elif cmd is Cmd.RCPT:
            fl.rcpts[fl.message.recipients[len(fl.rcpts)]] = reply
            if reply.code in (250, 251):
                fl.accepted += 1
        else:
            fl.data = reply
        if reply.code == 421:
            self._closing(reply)

    def _end(self, fl: _InFlight, *, defer: bool = False) -> Flow:
        """Read the end-of-data (or every BDAT) reply of a message and report it.

        With ``defer`` the report waits for :meth:`_report` (after the next write).
        """
        final: Reply | None = None
        for _ in range(max(fl.bdat_commands, 1)):
            reply: Reply = yield READ  # type: ignore[assignment]
            self._took(reply)
            if final is None or final.code == 250:
                final = reply  # the first failure wins, else the last success
            if reply.code == 421:
                break
        assert final is not None
        self._ended(fl, final)
        if not defer:
            yield from self._report()

    def _ended(self, fl: _InFlight, final: Reply) -> None:
        """A message's final reply is in: it waits for :meth:`_report` (421 ends all)."""
        fl.final = final
        self._inflight.remove(fl)
        self._unreported.append(fl)
        if final.code == 421:
            self._closing(final)  # abort() reports it, with the others

    def _report(self) -> Flow:
        """Report the messages whose final reply is read, in order."""
        unreported = self._unreported
        while unreported:
            yield Done(_finish(unreported.pop(0)))

    def _closing(self, reply: Reply) -> None:
        # The server is closing (421): every message still in flight ends with this reply.
        self.machine.state = State.CLOSED
        raise ReplyError(reply.code, reply.text, reply.enhanced)

    def untaken(self) -> Iterator[Prepared | SendStatus]:
        """What :meth:`transactions` took from its input ahead of time and never sent
        (or the error it met taking it), to go to the next connection in its place."""
        ahead, self._ahead = self._ahead, None
        error, self._ahead_error = self._ahead_error, None
        if ahead is not None:
            yield ahead[0]
        if error is not None:
            raise error

    def abort(self, exc: SMTPError) -> list[SendStatus]:
        """Statuses for every message still in flight when the session failed.

        Messages already answered but not yet reported come first, with their answer.
        """
        # Replies recorded and not yet judged changed only the table's state, which ends
        # here: their messages' records already hold them.
        self._unjudged.clear()
        out = [_finish(fl) for fl in self._unreported]
        self._unreported.clear()
        for fl in self._inflight:
            if isinstance(exc, ReplyError) and exc.code:
                st = failure_status(exc, fl.stage, fl.message)
            else:
                # After the final dot and before the answer, the server may have the
                # message: the spool must know a retry may duplicate it.
                st = failure_status(exc, fl.stage, fl.message, uncertain=fl.body_sent)
            known = {
                a: _recipient(r, False) for a, r in fl.rcpts.items() if r.code not in (250, 251)
            }
            if known:
                recips = dict(st.recipients)
                recips.update(known)
                st = _replace_recipients(st, recips)
            out.append(st)
        self._inflight.clear()
        self._encode_ahead = None
        self.machine.state = State.CLOSED
        return out


def _replace_recipients(st: SendStatus, recipients: dict[str, RecipientStatus]) -> SendStatus:
    from dataclasses import replace

    return replace(st, recipients=recipients)
