"""The public face: :class:`Transporter` (4D ``SMTP New transporter``, WinDev
``EmailStartSMTPSession``).

Construction validates every setting and does no I/O. The first ``send()`` or
``check_connection()`` connects; ``keep_alive`` keeps that connection for the next call
and reopens it transparently when the server dropped it while idle.

Example::

    with Transporter("smtp.example.com", user="ann", password=secret) as t:
        status = t.send(Email(from_="ann@example.com", to="bob@example.com",
                              subject="Hello", text_body="Hi Bob"))
        print(status.success, status.status, status.status_text)
"""

from __future__ import annotations

import dataclasses
import email.message
import itertools
import logging
import os
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import testing as _testing
from .errors import (
    AuthenticationError,
    ConnectError,
    InvalidMessage,
    ReplyError,
    ServerDisconnected,
    SMTPError,
)
from .message import CharsetMode, Email, RawMessage, prepare
from .message.prepared import Prepared
from .pool import Lifetime, PoolPolicy, Throttle
from .protocol import commands
from .protocol.conversation import (
    Conversation,
    SendOptions,
    SessionConfig,
    check_status,
    failure_status,
    invalid_status,
)
from .settings import AuthMode, Dsn, IgnoreCert, Security
from .signing import sign as _sign_with
from .status import RecipientStatus, SendStatus, SpoolState, Status
from .transport import tls as _tls
from .transport.common import Endpoint
from .transport.sync import SyncConnection
from .transport.transcript import Transcript

if TYPE_CHECKING:
    from .signing import DkimSigner, SmimeSigner
    from .spool import Spool

__all__ = ["Transporter"]

log = logging.getLogger("postillon.transporter")

#: What send() accepts: our Email, a stdlib EmailMessage, a RawMessage, or raw bytes
#: (with from_= and to=).
Message = Email | email.message.EmailMessage | RawMessage | bytes

_DEFAULT_PORTS = {Security.TLS: 465, Security.STARTTLS: 587, Security.NONE: 25}


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}: must be a positive number of seconds, not {value!r}")
    return float(value)


def _no_nul(value: str | None, name: str, *, controls: bool = False) -> str | None:
    """Refuse NUL (RFC 4616: it separates the PLAIN fields); with ``controls``, also
    the rest of C0 and DEL (a user name or a token goes into AUTH lines)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string")
    if "\x00" in value:
        raise ValueError(f"{name}: must not contain a NUL character")
    if controls and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"{name}: must not contain control characters")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Every transporter setting, validated once (shared by sync and async)."""

    host: str
    port: int
    security: Security
    accept_unsecure_connection: bool
    user: str | None
    password: str | None = field(repr=False)
    authentication_mode: AuthMode | None
    access_token: Callable[[], str] | None = field(repr=False)
    connection_timeout: float
    send_timeout: float
    keep_alive: bool
    log_file: str | None
    header_charset: CharsetMode
    body_charset: CharsetMode
    ignore_errors: IgnoreCert
    ssl_context: ssl.SSLContext | None
    client_certificate: str | tuple[str, str] | None
    local_hostname: str | None
    tls: _tls.TLSSettings = field(repr=False)
    smime: SmimeSigner | None = field(repr=False)
    dkim: DkimSigner | None = field(repr=False)

    def endpoint(self) -> Endpoint:
        session = SessionConfig(
            host=self.host,
            port=self.port,
            security=self.security,
            local_hostname=self.local_hostname or "",
            accept_unsecure_connection=self.accept_unsecure_connection,
            user=self.user,
            password=self.password,
            access_token=self.access_token,
            authentication_mode=self.authentication_mode,
            tls_verified=self.tls.verified,
        )
        return Endpoint(
            self.host, self.port, self.security, self.tls, self.connection_timeout, session
        )


def make_settings(
    host: str,
    port: int | None,
    *,
    security: Security | str | None,
    accept_unsecure_connection: bool,
    user: str | None,
    password: str | None,
    authentication_mode: AuthMode | str | None,
    access_token: str | Callable[[], str] | None,
    connection_timeout: float,
    send_timeout: float,
    keep_alive: bool,
    log_file: str | os.PathLike[str] | None,
    header_charset: CharsetMode | str,
    body_charset: CharsetMode | str,
    ignore_errors: IgnoreCert,
    ssl_context: ssl.SSLContext | None,
    client_certificate: str | tuple[str, str] | None,
    local_hostname: str | None,
    smime_certificate: str | bytes | os.PathLike[str] | None,
    smime_password: str | bytes | None,
    dkim: DkimSigner | None,
) -> Settings:
    """Validate the constructor arguments; every error names its setting."""
    if not isinstance(host, str) or not host.strip():
        raise ValueError("host: must be a non-empty host name or address")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in host):
        raise ValueError("host: must not contain spaces or control characters")
    if security is not None and not isinstance(security, Security):
        try:
            security = Security(str(security).lower())
        except ValueError:
            raise ValueError(
                f"security: must be Security.TLS, STARTTLS or NONE, not {security!r}"
            ) from None
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise ValueError(f"port: must be an integer from 1 to 65535, not {port!r}")
    if security is None:
        security = Security.TLS if port == 465 else Security.STARTTLS
    if port is None:
        port = _DEFAULT_PORTS[security]
    _no_nul(user, "user", controls=True)
    _no_nul(password, "password")
    if password is not None and user is None:
        raise ValueError("password: given without user")
    mode = AuthMode.parse(authentication_mode) if authentication_mode is not None else None
    token: Callable[[], str] | None
    if access_token is None:
        token = None
    elif callable(access_token):
        token = access_token
    else:
        fixed = _no_nul(access_token, "access_token", controls=True)
        token = lambda: fixed or ""  # noqa: E731
    if (token is not None or password is not None) and user is None:
        raise ValueError("user: is needed with a password or an access_token")
    if mode in (AuthMode.XOAUTH2, AuthMode.OAUTHBEARER) and token is None:
        raise ValueError(f"access_token: is needed with authentication_mode={mode.value}")
    if not isinstance(ignore_errors, IgnoreCert):
        raise ValueError("ignore_errors: must be an IgnoreCert flag set")
    if local_hostname is not None:
        local_hostname = commands.check_ehlo_name(local_hostname)
    try:
        hc = CharsetMode(header_charset)
    except ValueError:
        raise ValueError(f"header_charset: unknown charset mode {header_charset!r}") from None
    try:
        bc = CharsetMode(body_charset)
    except ValueError:
        raise ValueError(f"body_charset: unknown charset mode {body_charset!r}") from None
    smime = None
    if smime_certificate is not None:
        from .signing import SmimeSigner

        smime = SmimeSigner(smime_certificate, smime_password)
    elif smime_password is not None:
        raise ValueError("smime_password: given without smime_certificate")
    return Settings(
        host=host.strip(),
        port=port,
        security=security,
        accept_unsecure_connection=bool(accept_unsecure_connection),
        user=user,
        password=password,
        authentication_mode=mode,
        access_token=token,
        connection_timeout=_positive(connection_timeout, "connection_timeout"),
        send_timeout=_positive(send_timeout, "send_timeout"),
        keep_alive=bool(keep_alive),
        log_file=os.fspath(log_file) if log_file is not None else None,
        header_charset=hc,
        body_charset=bc,
        ignore_errors=ignore_errors,
        ssl_context=ssl_context,
        client_certificate=client_certificate,
        local_hostname=local_hostname,
        tls=_tls.build(ssl_context, ignore_errors, client_certificate),
        smime=smime,
        dkim=dkim,
    )


@dataclass(slots=True)
class Staged:
    """A message on its way: prepared for a server without SMTPUTF8 when possible."""

    original: object
    prepared: Prepared | None  # None: it needs SMTPUTF8
    error: InvalidMessage | None = None
    #: the renderings are final, signed already (:meth:`TransporterBase._sign_staged`):
    #: ``_final`` must not sign them again
    signed: bool = False
    #: for a message that needs SMTPUTF8 and was signed early: its signed rendering
    utf8: Prepared | None = None


class TransporterBase:
    """Settings, validation and message staging shared by Transporter and AsyncTransporter."""

    _settings: Settings

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        security: Security | str | None = None,
        accept_unsecure_connection: bool = False,
        user: str | None = None,
        password: str | None = None,
        authentication_mode: AuthMode | str | None = None,
        access_token: str | Callable[[], str] | None = None,
        connection_timeout: float = 30,
        send_timeout: float = 100,
        keep_alive: bool = True,
        log_file: str | os.PathLike[str] | None = None,
        header_charset: CharsetMode | str = CharsetMode.UTF8_QP,
        body_charset: CharsetMode | str = CharsetMode.UTF8_QP,
        ignore_errors: IgnoreCert = IgnoreCert.NONE,
        ssl_context: ssl.SSLContext | None = None,
        client_certificate: str | tuple[str, str] | None = None,
        local_hostname: str | None = None,
        smime_certificate: str | bytes | os.PathLike[str] | None = None,
        smime_password: str | bytes | None = None,
        dkim: DkimSigner | None = None,
        pool: PoolPolicy | None = None,
    ) -> None:
        if pool is not None and not isinstance(pool, PoolPolicy):
            raise ValueError(f"pool: must be a postillon.pool.PoolPolicy, not {pool!r}")
        self._settings = make_settings(
            host,
            port,
            security=security,
            accept_unsecure_connection=accept_unsecure_connection,
            user=user,
            password=password,
            authentication_mode=authentication_mode,
            access_token=access_token,
            connection_timeout=connection_timeout,
            send_timeout=send_timeout,
            keep_alive=keep_alive,
            log_file=log_file,
            header_charset=header_charset,
            body_charset=body_charset,
            ignore_errors=ignore_errors,
            ssl_context=ssl_context,
            client_certificate=client_certificate,
            local_hostname=local_hostname,
            smime_certificate=smime_certificate,
            smime_password=smime_password,
            dkim=dkim,
        )
        self._endpoint = self._settings.endpoint()
        self._pool = pool if pool is not None else PoolPolicy()
        #: one pace for every connection and thread of this transporter (and its clones)
        self._throttle = Throttle(self._pool)

    # -- readable settings (password and access_token are write-only)

    @property
    def host(self) -> str:
        """The server's name or address (4D ``host``)."""
        return self._settings.host

    @property
    def port(self) -> int:
        """The port: 465 for Security.TLS, 587 for STARTTLS, 25 for NONE unless given."""
        return self._settings.port

    @property
    def security(self) -> Security:
        """Implicit TLS, STARTTLS or none (WinDev ``Option``)."""
        return self._settings.security

    @property
    def accept_unsecure_connection(self) -> bool:
        """May the session (and credentials) go on unencrypted (4D)."""
        return self._settings.accept_unsecure_connection

    @property
    def user(self) -> str | None:
        """The login (4D ``user``); the password is never readable back."""
        return self._settings.user

    @property
    def authentication_mode(self) -> AuthMode | None:
        """The SASL mechanism asked for; None: the strongest offered."""
        return self._settings.authentication_mode

    @property
    def connection_timeout(self) -> float:
        """Seconds for TCP, TLS and the greeting (4D ``connectionTimeOut``)."""
        return self._settings.connection_timeout

    @property
    def send_timeout(self) -> float:
        """Seconds for one whole send() (4D ``sendTimeOut``)."""
        return self._settings.send_timeout

    @property
    def keep_alive(self) -> bool:
        """Keep the connection between sends (4D ``keepAlive``)."""
        return self._settings.keep_alive

    @property
    def log_file(self) -> str | None:
        """The transcript file (4D ``logFile``), or None."""
        return self._settings.log_file

    @property
    def header_charset(self) -> CharsetMode:
        """Charset mode of headers (4D ``headerCharset``)."""
        return self._settings.header_charset

    @property
    def body_charset(self) -> CharsetMode:
        """Charset mode of bodies (4D ``bodyCharset``)."""
        return self._settings.body_charset

    @property
    def ignore_errors(self) -> IgnoreCert:
        """Certificate errors ignored, each flag its own class (WinDev ``IgnoreError``)."""
        return self._settings.ignore_errors

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The caller's SSLContext, or None for the system's trust store."""
        return self._settings.ssl_context

    @property
    def client_certificate(self) -> str | tuple[str, str] | None:
        """A PEM path, or a (certificate, key) pair, presented to the server."""
        return self._settings.client_certificate

    @property
    def local_hostname(self) -> str | None:
        """The EHLO name; None: the machine's FQDN or an address literal."""
        return self._settings.local_hostname

    @property
    def dkim(self) -> DkimSigner | None:
        """The DKIM signer of every message, or None."""
        return self._settings.dkim

    @property
    def pool(self) -> PoolPolicy:
        """The connection pool policy and rate limit (:class:`postillon.pool.PoolPolicy`)."""
        return self._pool

    def __repr__(self) -> str:
        s = self._settings
        user = f", user={s.user!r}" if s.user is not None else ""
        return f"{type(self).__name__}(host={s.host!r}, port={s.port}, security={s.security}{user})"

    # -- messages

    def _stage(self, message: object, from_: str | None, to: Iterable[str] | str | None) -> Staged:
        """Coerce and prepare before any I/O; raise InvalidMessage for what cannot be sent."""
        if isinstance(message, Prepared):
            return Staged(message, message)
        if isinstance(message, (bytes, bytearray, memoryview)):
            if from_ is None:
                raise InvalidMessage("raw bytes need the envelope sender from_=", "from_")
            if to is None:
                raise InvalidMessage("raw bytes need the envelope recipients to=", "to")
            recipients = [to] if isinstance(to, str) else list(to)
            message = RawMessage(bytes(message), from_, recipients)
        elif from_ is not None or to is not None:
            raise InvalidMessage("from_= and to= go with raw bytes only", "from_")
        # A tuple, not a union: ``A | B`` builds a new object at every call, and a bulk
        # send stages every message here.
        if not isinstance(message, (Email, email.message.EmailMessage, RawMessage)):
            raise InvalidMessage(
                f"cannot send a {type(message).__name__}: give an Email, an "
                "email.message.EmailMessage, a RawMessage or bytes",
                "message",
            )
        s = self._settings
        try:
            prepared = prepare(
                message, header_charset=s.header_charset, body_charset=s.body_charset
            )
        except InvalidMessage as first:
            try:  # does it only need SMTPUTF8? Then wait for the server's answer.
                prepare(
                    message,
                    header_charset=s.header_charset,
                    body_charset=s.body_charset,
                    smtputf8=True,
                )
            except InvalidMessage:
                raise first from None
            return Staged(message, None, first)
        return Staged(message, prepared)

    def _stage_or_status(self, mail: object) -> Staged | SendStatus:
        """:meth:`_stage` for send_many(): a message that cannot be sent is its status."""
        try:
            return self._stage(mail, None, None)
        except InvalidMessage as exc:
            return _invalid(exc)

    def _final(
        self,
        staged: Staged,
        smtputf8: bool,
        smime: SmimeSigner | None = None,
        dkim: DkimSigner | None = None,
    ) -> Prepared:
        """The bytes to send once the server's capabilities are known, signed."""
        prepared = staged.prepared
        if prepared is None:
            if not smtputf8:
                assert staged.error is not None
                raise InvalidMessage(
                    f"{staged.error.message} (the server does not offer SMTPUTF8)",
                    staged.error.field,
                )
            if staged.utf8 is not None:
                return staged.utf8  # rendered and signed at staging
            s = self._settings
            prepared = prepare(
                staged.original,  # type: ignore[arg-type]
                header_charset=s.header_charset,
                body_charset=s.body_charset,
                smtputf8=True,
            )
        if staged.signed:
            return prepared  # signed at staging (asyncio, spool submit)
        if isinstance(staged.original, Prepared):
            # spooled bytes: sent exactly as stored when signed at submit
            return self._sign_stored(prepared)
        return self._sign(prepared, smime, dkim)

    def _signers(
        self, smime: SmimeSigner | None, dkim: DkimSigner | None
    ) -> tuple[SmimeSigner | None, DkimSigner | None]:
        """The signers that apply: the message's own, else the transporter's."""
        return smime or self._settings.smime, dkim or self._settings.dkim

    def _sign(
        self, prepared: Prepared, smime: SmimeSigner | None, dkim: DkimSigner | None
    ) -> Prepared:
        smime, dkim = self._signers(smime, dkim)
        if smime is None and dkim is None:
            return prepared  # nothing to sign: no call into the signing package
        return _sign_with(prepared, smime, dkim)

    def _sign_staged(
        self, staged: Staged, smime: SmimeSigner | None, dkim: DkimSigner | None
    ) -> Staged:
        """``staged`` with its renderings signed now, marked so ``_final`` keeps them.

        Blocking work: signing reads the whole message once (an attachment file from
        disk); the asyncio transporter calls this in a worker thread. A message that
        needs SMTPUTF8 gets its SMTPUTF8 rendering signed (the only one that can go). A
        :class:`Prepared` (a spooled message) is treated as in :meth:`_final`.
        """
        if staged.signed:
            return staged
        if isinstance(staged.original, Prepared):
            stored = self._sign_stored(staged.original)
            return Staged(stored, stored, signed=True)
        smime, dkim = self._signers(smime, dkim)
        if smime is None and dkim is None:
            return staged
        if staged.prepared is not None:
            return Staged(staged.original, _sign_with(staged.prepared, smime, dkim), signed=True)
        s = self._settings
        utf8 = prepare(
            staged.original,  # type: ignore[arg-type]
            header_charset=s.header_charset,
            body_charset=s.body_charset,
            smtputf8=True,
        )
        return Staged(
            staged.original,
            None,
            staged.error,
            signed=True,
            utf8=_sign_with(utf8, smime, dkim),
        )

    def _sign_stored(self, prepared: Prepared) -> Prepared:
        """A spooled message, signed by this transporter's signers unless it already is.

        ``Transporter(asynchronous=True).send()`` stores signed bytes, so that a retry
        sends the very same bytes (DKIM ``t=`` and the S/MIME signature unchanged) and
        nothing is signed twice. A message queued with ``Spool.submit()`` went through no
        transporter: it is signed here, at each delivery attempt. The header block tells
        which case this is: our own DKIM-Signature (same ``d=`` and ``s=``) means it was
        signed at submit, S/MIME before DKIM if at all; a top-level
        ``multipart/signed`` means the S/MIME signature is there already.
        """
        smime, dkim = self._settings.smime, self._settings.dkim
        if smime is None and dkim is None:
            return prepared
        from .signing._stream import crlf_chunks, parse_fields, split_message

        header, _ = split_message(crlf_chunks(prepared.chunks()))  # reads the first blocks
        fields = parse_fields(header)
        if dkim is not None and any(
            f.key == "dkim-signature" and _same_dkim_signer(f.value, dkim) for f in fields
        ):
            return prepared
        if smime is not None and any(
            f.key == "content-type" and f.value.strip().lower().startswith(b"multipart/signed")
            for f in fields
        ):
            smime = None
        if smime is None and dkim is None:
            return prepared
        log.debug("signing spooled message %s at delivery", prepared.message_id or "(no id)")
        return _sign_with(prepared, smime, dkim)

    @staticmethod
    def _smime_arg(value: object) -> SmimeSigner | None:
        if value is None:
            return None
        from .signing import SmimeSigner

        if isinstance(value, SmimeSigner):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            return SmimeSigner(value[0], value[1])
        if isinstance(value, str | bytes | os.PathLike):
            return SmimeSigner(value)
        raise ValueError("smime: a PKCS#12 path or bytes, or a (certificate, password) pair")


def _same_dkim_signer(value: bytes, dkim: DkimSigner) -> bool:
    """Is this DKIM-Signature value one of ``dkim``'s (its ``d=`` and ``s=``)?"""
    # RFC 6376 3.2: tag=value pairs separated by ";", whitespace around them ignored
    tags: dict[str, str] = {}
    for part in b"".join(value.split()).split(b";"):
        name, eq, text = part.partition(b"=")
        if eq:
            tags[name.decode("ascii", "replace")] = text.decode("ascii", "replace")
    return (
        tags.get("d", "").lower() == dkim.domain.lower()
        and tags.get("s", "").lower() == dkim.selector.lower()
    )


#: What send_many()/iter_send() refuse as ``mails``: one message is not a batch (bytes and
#: an EmailMessage are iterables, of ints and of header names).
_ONE_MESSAGE = (str, bytes, bytearray, memoryview, Email, email.message.Message, RawMessage)


def iter_mails(mails: object, kind: str = "an iterable") -> Iterator[Message]:
    """An iterator over send_many()'s ``mails``; TypeError naming the argument if none."""
    if isinstance(mails, _ONE_MESSAGE):
        raise TypeError(
            f"mails: must be {kind} of messages, not one {type(mails).__name__} "
            "(send() sends one message)"
        )
    try:
        return iter(mails)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        raise TypeError(f"mails: must be {kind} of messages, not {type(mails).__name__}") from None


def send_options(dsn: object, require_tls: object) -> SendOptions:
    """The options of a send_many()/iter_send() call, checked; errors name the argument."""
    if dsn is not None and not isinstance(dsn, Dsn):
        raise ValueError(f"dsn: must be a postillon.Dsn or None, not {dsn!r}")
    return SendOptions(dsn=dsn, require_tls=bool(require_tls))


#: Transporter.iter_send() sends its input in slices of this many messages, each one
#: pipelined (RFC 2920) and drained before its statuses are yielded: a round trip of
#: idle per slice (well under 1% at bulk rates), and a bound on how far the input is read
#: ahead of the caller (a slice's messages and statuses are all it holds).
STREAM_SLICE = 1000


class _Slice:
    """Up to ``n`` messages of the input, staged as the batch pulls them.

    It never raises: an exception from the input (or from staging) ends the slice and is
    kept in ``error``, for iter_send() to raise after the statuses of what came before.
    """

    __slots__ = ("_left", "_source", "_stage", "ended", "error")

    def __init__(
        self, source: Iterator[Message], stage: Callable[[object], Staged | SendStatus], n: int
    ) -> None:
        self._source = source
        self._stage = stage
        self._left = n
        self.ended = False
        self.error: Exception | None = None

    def __iter__(self) -> _Slice:
        return self

    def __next__(self) -> Staged | SendStatus:
        if self._left <= 0 or self.ended:
            raise StopIteration
        try:
            item = self._stage(next(self._source))
        except StopIteration:
            self.ended = True
            raise
        except Exception as exc:
            self.ended = True
            self.error = exc
            raise StopIteration from None
        self._left -= 1
        return item


class Transporter(TransporterBase):
    """A synchronous SMTP transporter (4D ``SMTPTransporter``, WinDev SMTP session).

    Construction does no I/O. ``send()`` and ``check_connection()`` return status objects
    and never raise for what happens on the wire; ``send()`` raises
    :class:`~postillon.InvalidMessage` for a message that cannot be sent as given.

    Example::

        t = Transporter("smtp.example.com", 587, user="ann", password="...")
        status = t.send(Email(from_="ann@example.com", to="bob@example.com",
                              subject="Hi", text_body="Hello"))
        status.raise_for_status()
        t.close()
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        asynchronous: bool = False,
        spool: Spool | str | os.PathLike[str] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(host, port, **settings)
        self._conn: SyncConnection | None = None
        self._life = Lifetime.start(0.0)  # of self._conn
        self._had_connection = False
        self._lock = threading.RLock()
        #: iter_send() generators running: they keep the connection even without keep_alive
        self._streams = 0
        self._asynchronous = bool(asynchronous)
        self._spool: Spool | None = None
        self._worker: Any = None
        if asynchronous:
            if spool is None:
                raise ValueError("spool: asynchronous=True needs a spool (a path or a Spool)")
            from .spool import Spool

            self._spool = spool if isinstance(spool, Spool) else Spool(spool)
        elif spool is not None:
            raise ValueError("spool: given without asynchronous=True")

    @property
    def asynchronous(self) -> bool:
        """True when send() queues into the spool (WinDev asynchronous mode)."""
        return self._asynchronous

    @property
    def spool(self) -> Spool | None:
        """The spool of asynchronous mode, or None."""
        return self._spool

    # -- connection management

    def __enter__(self) -> Transporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def open(self) -> Transporter:
        """Connect now (WinDev opens the session at once); raise SMTPError on failure."""
        with self._lock:
            deadline = time.monotonic() + self._settings.send_timeout
            try:
                self._connection(deadline)
            except ConnectFailed as failed:
                raise failed.error from None
        return self

    def close(self) -> None:
        """Send QUIT and close the connection; stop the spool worker (pending mail stays)."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.quit(time.monotonic() + self._settings.send_timeout)
                conn.transcript.close()
            if self._worker is not None:
                worker, self._worker = self._worker, None
                worker.stop()

    def _connection(self, deadline: float) -> tuple[SyncConnection, bool]:
        """The live connection (reused if still good) or a new one; raises SMTPError."""
        conn = self._conn
        if conn is not None:
            kept = self._settings.keep_alive or self._streams > 0
            if kept and not conn.is_stale() and self._fit(conn):
                conn.deadline = deadline
                return conn, True
            conn.close()
            self._conn = None
        s = self._settings
        transcript = Transcript(s.log_file, f"{s.host}:{s.port}")
        conn = SyncConnection(self._endpoint, transcript)
        try:
            conn.connect(deadline)
        except SMTPError as exc:
            conn.close()
            raise ConnectFailed(exc, conn.conversation.stage) from exc
        self._conn = conn
        self._life = Lifetime.start(time.monotonic())
        self._had_connection = True
        return conn, False

    def _fit(self, conn: SyncConnection) -> bool:
        """May the kept connection carry more mail? Worn out: QUIT; idle long: NOOP check."""
        now = time.monotonic()
        if self._pool.worn_out(self._life, now):
            conn.quit(now + self._pool.check_timeout)
            conn.transcript.close()  # renewals must not pile up open log files
            return False
        if self._pool.needs_check(self._life, now):
            conn.deadline = now + self._pool.check_timeout
            try:
                conn.pump(conn.conversation.noop())
            except SMTPError as exc:
                # The server forgot the session while it idled: a new one, silently.
                log.debug("idle connection failed its NOOP check (%s); reconnecting", exc)
                return False
            self._life.last_used = time.monotonic()
        return True

    def _done(self) -> None:
        conn = self._conn
        if conn is None:
            return
        now = time.monotonic()
        kept = self._settings.keep_alive or self._streams > 0
        if not kept or self._pool.worn_out(self._life, now):
            self._conn = None
            conn.quit(now + 5.0)
            conn.transcript.close()
        else:
            self._life.last_used = now

    # -- public calls

    def check_connection(self) -> Status:
        """Connect (or reuse the connection), authenticate, NOOP; return the status (4D)."""
        with self._lock:
            deadline = time.monotonic() + self._settings.send_timeout
            try:
                conn, _ = self._connection(deadline)
            except ConnectFailed as failed:
                return check_status(False, None, exc=failed.error, stage=failed.stage)
            conv = conn.conversation
            try:
                conn.pump(conv.noop())
                status = check_status(True, conv.last_reply, conv.auth_note)
            except SMTPError as exc:
                status = check_status(False, None, exc=exc, stage=conv.stage)
                self._drop()
            self._done()
            return status

    def send(
        self,
        mail: Message,
        *,
        from_: str | None = None,
        to: Iterable[str] | str | None = None,
        dsn: Dsn | None = None,
        require_tls: bool = False,
        smime: object = None,
        dkim: DkimSigner | None = None,
    ) -> SendStatus:
        """Send one message; return its :class:`SendStatus` (never raises for the wire).

        ``mail`` is an :class:`Email`, a stdlib ``EmailMessage``, a :class:`RawMessage`, or
        raw bytes with ``from_=`` and ``to=``. ``dsn`` asks for delivery notifications
        (RFC 3461), ``require_tls`` for REQUIRETLS (RFC 8689).
        """
        staged = self._stage(mail, from_, to)
        signer = self._smime_arg(smime)
        if self._asynchronous:
            return self._submit(staged, signer, dkim)
        opts = SendOptions(dsn=dsn, require_tls=require_tls)
        return self._run([staged], opts, signer, dkim)[0]

    def send_many(
        self,
        mails: Iterable[Message],
        *,
        dsn: Dsn | None = None,
        require_tls: bool = False,
    ) -> list[SendStatus]:
        """Send many messages pipelined over one connection; one status per message, in order.

        A message that cannot be sent as given gets a failed status (stage "message")
        instead of stopping the batch. This is ``list(t.iter_send(mails))``: the input is
        read as it is sent, the statuses are collected.

        Example::

            statuses = t.send_many(mails)
            refused = [s for s in statuses if not s.success]
        """
        return list(self.iter_send(mails, dsn=dsn, require_tls=require_tls))

    def iter_send(
        self,
        mails: Iterable[Message],
        *,
        dsn: Dsn | None = None,
        require_tls: bool = False,
    ) -> Generator[SendStatus, None, None]:
        """:meth:`send_many`, streamed: yield each message's status, in input order.

        The input is sent in slices of 1,000 messages, each pipelined over the one
        connection (RFC 2920); a slice's statuses are yielded once it is answered, and
        the next slice is read only when the caller asks for more. So memory stays
        bounded whatever the number of messages, and a slow consumer slows the sending.
        The connection is held across the whole iteration, also with
        ``keep_alive=False`` (then it closes when the iteration ends or the generator is
        closed). A message that cannot be sent gets a failed status in its place, and a
        server that cannot be reached fails every message left, as in ``send_many``; an
        exception raised by the input itself comes out after the statuses of the
        messages read before it. The lock is not held between slices: other threads may
        send meanwhile. With ``asynchronous=True``, each message is queued in the spool
        as it is read and its submission's status yielded.

        Example::

            for status in t.iter_send(read_messages_from_db()):
                record(status.message_id, status.success)
        """
        source = iter_mails(mails)
        opts = send_options(dsn, require_tls)
        if self._asynchronous:
            return self._iter_submit(source)
        return self._iter_send(source, opts)

    @property
    def _stream_window(self) -> int:
        """How many messages iter_send reads ahead of its caller at most."""
        return STREAM_SLICE

    def _iter_send(
        self, source: Iterator[Message], opts: SendOptions
    ) -> Generator[SendStatus, None, None]:
        # The lock is taken per slice, never across a yield: a generator abandoned by its
        # caller (or closed from another thread by the collector) must not hold it.
        with self._lock:
            self._streams += 1
        failure: tuple[SMTPError, str] | None = None
        try:
            while True:
                part = _Slice(source, self._stage_or_status, STREAM_SLICE)
                batch = _SliceBatch(self, part, opts, None, None)
                if failure is None:
                    statuses = self._drive(batch)
                    failure = batch.failure
                else:
                    # The server could not be reached: what is left fails alike, at once,
                    # as in one batch (no connection timeout to wait out per slice).
                    batch.connect_failed(*failure)
                    statuses = batch.statuses()
                yield from statuses
                if part.error is not None:
                    raise part.error
                if part.ended:
                    return
        finally:
            with self._lock:
                self._streams -= 1
                self._done()

    def _iter_submit(self, source: Iterator[Message]) -> Generator[SendStatus, None, None]:
        for mail in source:
            staged = self._stage_or_status(mail)
            yield staged if isinstance(staged, SendStatus) else self._submit(staged, None, None)

    def email_status(self, mail_id: str) -> SpoolState:
        """The spool state of a message sent with ``asynchronous=True`` (WinDev EmailStatus)."""
        if self._spool is None:
            raise ValueError("mail_id: email_status() needs Transporter(asynchronous=True)")
        return self._spool.status(mail_id).state

    # -- internals

    def _submit(
        self, staged: Staged, smime: SmimeSigner | None, dkim: DkimSigner | None
    ) -> SendStatus:
        assert self._spool is not None
        # Signed once, here: the spool stores the signed bytes, so a retry sends them
        # unchanged (the worker's _sign_stored() sees our signature and adds none).
        staged = self._sign_staged(staged, smime, dkim)
        prepared = staged.prepared if staged.prepared is not None else staged.utf8
        mail_id = self._spool.submit(prepared if prepared is not None else staged.original)
        with self._lock:
            if self._worker is None:
                self._worker = self._spool.start(self, workers=1)
        return SendStatus(
            success=True,
            status=0,
            status_text="queued in the spool",
            message_id=prepared.message_id if prepared is not None else "",
            mail_id=mail_id,
            state=SpoolState.PENDING,
        )

    def _clone(self) -> Transporter:
        """A fresh, unconnected transporter with the same settings (one per worker)."""
        other = Transporter.__new__(Transporter)
        other._settings = self._settings
        other._endpoint = self._endpoint
        other._pool = self._pool
        other._throttle = self._throttle  # the rate limit binds the workers together
        other._conn = None
        other._life = Lifetime.start(0.0)
        other._had_connection = False
        other._lock = threading.RLock()
        other._streams = 0
        other._asynchronous = False
        other._spool = None
        other._worker = None
        return other

    def _send_prepared(self, prepared: Prepared) -> SendStatus:
        """Send a spooled message (the spool's path: no re-render, never signed twice).

        Bytes signed at submit go exactly as stored; a message queued unsigned with
        ``Spool.submit()`` is signed by this transporter's signers
        (``_final`` -> :meth:`_sign_stored`, as for the batches of ``send_many``).
        """
        return self._run([Staged(prepared, prepared)], SendOptions(), None, None)[0]

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(
        self,
        items: Iterable[Staged | SendStatus],
        opts: SendOptions,
        smime: SmimeSigner | None,
        dkim: DkimSigner | None,
    ) -> list[SendStatus]:
        return self._drive(Batch(self, items, opts, smime, dkim))

    def _drive(self, batch: Batch) -> list[SendStatus]:
        """Send a batch on this transporter's connection; the decisions are in Batch."""
        box = _testing.active()
        if box is not None:
            box.deliver(self, batch)  # postillon.testing.Outbox: captured, no connection
            return batch.statuses()
        throttle = self._throttle
        with self._lock:
            while batch.next_head():
                pause = throttle.delay()
                if pause > 0:
                    time.sleep(pause)
                deadline = time.monotonic() + self._settings.send_timeout
                try:
                    conn, reused = self._connection(deadline)
                except ConnectFailed as failed:
                    throttle.observe_error(failed.error)
                    if batch.retry_connect(failed.error, failed.stage, self._had_connection):
                        continue
                    batch.connect_failed(failed.error, failed.stage)
                    break
                before = conn.replies
                fed = batch.fed
                feed = batch.feed(conn.conversation, _gate(self._pool, throttle, self._life))
                try:
                    conn.pump(
                        conn.conversation.transactions(feed, batch.opts),
                        batch.on_done(conn),
                        feed.prefetch,
                    )
                except InvalidMessage:
                    raise  # send() of a message this server cannot take; nothing was sent
                except SMTPError as exc:
                    throttle.observe_error(exc)
                    batch.failed(conn.conversation, exc, reused, conn.replies - before)
                    self._drop()
                    continue
                if batch.fed == fed and throttle.delay() == 0:
                    time.sleep(0.001)  # nothing went (a lost race for a token): no busy loop
            self._done()
        return batch.statuses()


def _gate(policy: PoolPolicy, throttle: Throttle, life: Lifetime) -> Callable[[], bool]:
    """May one more message go on this connection now? (its budget, then the rate)"""

    def gate() -> bool:
        if life.messages >= policy.max_messages or not throttle.try_take():
            return False
        life.messages += 1
        return True

    return gate


#: RFC 5321 4.5.3.1.8: a server must take at least 100 recipients per transaction, and
#: may refuse more; a message to more goes as several transactions of at most 100.
MAX_RECIPIENTS = 100


def split_recipients(item: Staged | SendStatus) -> list[Staged | SendStatus]:
    """A message to more than :data:`MAX_RECIPIENTS` as several transactions."""
    if isinstance(item, Staged) and item.prepared is not None:
        rcpts = item.prepared.recipients
        if len(rcpts) > MAX_RECIPIENTS:
            return [
                Staged(
                    item.original,
                    item.prepared.with_recipients(rcpts[i : i + MAX_RECIPIENTS]),
                    signed=item.signed,  # one signature for every part, made once
                )
                for i in range(0, len(rcpts), MAX_RECIPIENTS)
            ]
    return [item]


def _folded(sizes: list[int], results: list[SendStatus]) -> list[SendStatus]:
    """One status per item, the ``sizes[i]`` transactions of item ``i`` folded."""
    if len(sizes) == len(results):
        return results
    out: list[SendStatus] = []
    i = 0
    for n in sizes:
        out.append(fold(results[i : i + n]))
        i += n
    return out


def fold(parts: list[SendStatus]) -> SendStatus:
    """The status of one message sent as several transactions: every recipient's
    outcome; successful only if every part was; else the first failure's reply."""
    if len(parts) == 1:
        return parts[0]
    recipients: dict[str, RecipientStatus] = {}
    for part in parts:
        recipients.update(part.recipients)
    failed = [p for p in parts if not p.success]
    base = failed[0] if failed else parts[-1]
    return dataclasses.replace(
        base,
        success=not failed,
        recipients=recipients,
        uncertain=any(p.uncertain for p in parts),
    )


class ConnectFailed(Exception):
    """Internal: a connection could not be opened; carries the stage that failed.

    Both transporters raise it from their connection step, so that the failure's
    status names the stage (connect, greeting, tls, auth...) where it happened.
    """

    def __init__(self, error: SMTPError, stage: str) -> None:
        super().__init__(error)
        self.error = error
        self.stage = stage


class Batch:
    """The orchestration of a send()/send_many() call, shared by both drivers.

    It owns the input, the results in input order, and the decisions after a failure:
    the messages in flight get their status from :meth:`Conversation.abort`, unless an
    idle connection died before the server answered anything (then they are retried
    once on a new connection); a connection that cannot be made fails all that is left.
    """

    def __init__(
        self,
        owner: TransporterBase,
        items: Iterable[Staged | SendStatus],
        opts: SendOptions,
        smime: SmimeSigner | None,
        dkim: DkimSigner | None,
    ) -> None:
        self.owner = owner
        self.single = isinstance(items, list) and len(items) == 1
        #: how many transactions each input item became (see :func:`split_recipients`)
        self.sizes: list[int] = []
        self.source = _Pushback(self._expand(items))
        self.opts = opts
        self.smime = smime
        self.dkim = dkim
        self.results: list[SendStatus] = []
        self.retried = False
        self.connect_retried = False
        #: messages handed to a conversation so far (the drivers' progress counter)
        self.fed = 0
        #: the messages already sent again after a broken connection (weakly held: an
        #: id would do until the message is gone and another one gets its address)
        self.requeued: weakref.WeakSet[Prepared] = weakref.WeakSet()
        self._feed: Feed | None = None

    def _expand(self, items: Iterable[Staged | SendStatus]) -> Iterator[Staged | SendStatus]:
        sizes = self.sizes
        for item in items:
            if (
                type(item) is Staged
                and item.prepared is not None
                and len(item.prepared.recipients) > MAX_RECIPIENTS
            ):
                parts = split_recipients(item)
                sizes.append(len(parts))
                yield from parts
            else:
                sizes.append(1)
                yield item

    def statuses(self) -> list[SendStatus]:
        """One status per input item: the transactions of a split message folded."""
        return _folded(self.sizes, self.results)

    def pop_statuses(self, items: int) -> list[SendStatus] | None:
        """The statuses of the first ``items`` input items, taken out of the batch once
        every transaction of theirs has one (else None), so that a long batch can hand
        them out as it goes (:class:`AsyncTransporter`'s lanes)."""
        sizes = self.sizes
        # every item has at least one transaction: the sum is only taken when it may do
        if len(sizes) < items or len(self.results) < items:
            return None
        count = sum(sizes[:items])
        if len(self.results) < count:
            return None
        out = _folded(sizes[:items], self.results[:count])
        del sizes[:items], self.results[:count]
        return out

    def next_head(self) -> bool:
        """Pass through leading statuses; True while a message is left to send."""
        for head in self.source.it:
            if isinstance(head, SendStatus):
                self.results.append(head)
                continue
            self.source.push([head])
            return True
        return False

    def connect_failed(self, exc: SMTPError, stage: str) -> None:
        # The server cannot be reached: every message left fails alike.
        for item in self.source.it:
            if isinstance(item, SendStatus):
                self.results.append(item)
            else:
                prepared = item if isinstance(item, Prepared) else item.prepared
                self.results.append(failure_status(exc, stage, prepared))

    def feed(self, conv: Conversation, gate: Callable[[], bool] | None = None) -> Feed:
        """The messages for ``conv``, finalised for its capabilities (see :class:`Feed`).

        ``gate`` (the connection's message budget and the transporter's rate) is asked
        before each message is handed over; when it says no, the feed ends and the
        message stays first in line for the driver's next turn.
        """
        self._feed = Feed(self, conv.capabilities.smtputf8, gate)
        return self._feed

    def prepared(self, smtputf8: bool) -> Iterator[Prepared | SendStatus]:
        """Every message left, finalised (the in-process outbox's path; no gate)."""
        while True:
            try:
                yield self._next(smtputf8)
            except StopIteration:
                return

    def retry_connect(self, exc: SMTPError, stage: str, refill: bool) -> bool:
        """Try once more after a failed connect? (then the caller loops instead of failing)

        Only when ``refill``: a connection of this transporter worked before, so this is
        a pool slot being reopened, and a refusal at connect or greeting (a restart, a
        "421 too many connections") is likely brief. A first connection that fails, a
        timeout (it would double the wait), TLS and authentication failures, and 5xx
        replies fail at once.
        """
        if self.connect_retried or not refill or stage not in ("connect", "greeting", "ehlo"):
            return False
        transient = isinstance(exc, ConnectError | ServerDisconnected) or (
            isinstance(exc, ReplyError)
            and exc.is_transient
            and not isinstance(exc, AuthenticationError)
        )
        if transient:
            self.connect_retried = True
            log.debug("connection failed at %s (%s); trying a fresh one", stage, exc)
        return transient

    def _next(self, smtputf8: bool) -> Prepared | SendStatus:
        item = next(self.source.it)
        if isinstance(item, SendStatus | Prepared):
            return item  # a status to pass through, or a retry of an untouched message
        try:
            return self.owner._final(item, smtputf8, self.smime, self.dkim)
        except InvalidMessage as exc:
            if self.single:
                raise
            return invalid_status(exc, item.prepared or _EMPTY)

    def on_done(self, conn: SyncConnection | Any) -> Callable[[SendStatus], None]:
        timeout = self.owner._settings.send_timeout
        observe = self.owner._throttle.observe

        def done(status: SendStatus) -> None:
            self.results.append(status)
            observe(status)
            conn.deadline = time.monotonic() + timeout  # each message gets its own time

        return done

    def failed(self, conv: Conversation, exc: SMTPError, reused: bool, replies: int) -> None:
        """After a failure with ``replies`` read on this call's connection."""
        # A reused idle connection that died before the server answered anything, or
        # whose first answer was 421 (it timed the idle session out): nothing reached
        # the server's queue, so the messages go again, once, on a new connection.
        feed, self._feed = self._feed, None
        if feed is not None:
            # What the conversation had not sent yet goes back in front of the rest: the
            # message it had taken ahead, then what the feed had fetched ahead.
            self.source.push([*_drained(conv.untaken()), *_drained(feed.unread())])
        closing = isinstance(exc, ReplyError) and exc.code == 421 and replies == 1
        if reused and (replies == 0 or closing) and not self.retried:
            self.retried = True
            again = [fl.message for fl in conv._inflight]
            conv._inflight.clear()
            self.source.push(again)
            return
        # A message whose body never left cannot be on the server: it goes once more on
        # a new connection instead of failing with its neighbour (the connection broke,
        # not the message). Others, and second failures, get their status.
        retry = []
        if isinstance(exc, ServerDisconnected) or (isinstance(exc, ReplyError) and exc.code == 421):
            retry = [
                fl for fl in conv._inflight if not fl.body_sent and fl.message not in self.requeued
            ]
        conv._inflight = [fl for fl in conv._inflight if fl not in retry]
        self.results.extend(conv.abort(exc))
        if retry:
            self.requeued.update(fl.message for fl in retry)
            self.source.push([fl.message for fl in retry])


class _Raise:
    """An error met ahead, waiting in a :class:`_Pushback` at the place it was met."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Pushback:
    """A batch's input, with the items put back in front of it.

    ``it`` is where the next item comes from: the input itself while nothing waits in
    front (a bulk send takes each message without a Python call of its own), else a
    chain of the items put back and the input. Each push chains over the input, not
    over the chain before: nested chains would deepen with every turn and failure of a
    long-lived batch (a lane outlives thousands of connections), and every item would
    then pass through all of them.
    """

    __slots__ = ("_front", "_rest", "it")

    def __init__(self, rest: Iterator[Staged | SendStatus]) -> None:
        self._front: deque[Staged | SendStatus | Prepared | _Raise] = deque()
        self._rest: Iterator[Staged | SendStatus | Prepared] = rest
        self.it: Iterator[Staged | SendStatus | Prepared] = rest

    def push(self, items: Sequence[Staged | SendStatus | Prepared | _Raise]) -> None:
        """Put ``items`` back in front, in their order."""
        self._front.extendleft(reversed(items))
        self.it = itertools.chain(self._drain(), self._rest)

    def _drain(self) -> Iterator[Staged | SendStatus | Prepared]:
        front = self._front
        while front:
            item = front.popleft()
            if type(item) is _Raise:
                # raised in its place; what was put back after it still comes first
                self.it = itertools.chain(self._drain(), self._rest)
                raise item.error
            yield item  # type: ignore[misc]
        self.it = self._rest  # nothing in front any more: the input directly


def _drained(
    items: Iterator[Prepared | SendStatus],
) -> list[Staged | SendStatus | Prepared | _Raise]:
    """What ``items`` yields, and the error it raises (if any) in its place."""
    out: list[Staged | SendStatus | Prepared | _Raise] = []
    try:
        out.extend(items)
    except Exception as exc:
        out.append(_Raise(exc))
    return out


class Feed:
    """The messages of a batch as one conversation takes them, with one of lookahead.

    The drivers call :meth:`prefetch` right after a pipelined write has left: while the
    server reads the body and the next envelope, the message after them is staged,
    finalised and signed here, so that work is off the path between the server's
    replies and our next write (about a third of the per-message time of a bulk send).
    An item fetched ahead and not taken when the connection fails goes back to the
    batch (:meth:`unread`); an error met ahead is raised where the conversation would
    have met it, when it takes that item.
    """

    __slots__ = ("_ahead", "_batch", "_error", "_gate", "_smtputf8", "_stopped")

    def __init__(
        self, batch: Batch, smtputf8: bool, gate: Callable[[], bool] | None = None
    ) -> None:
        self._batch = batch
        self._smtputf8 = smtputf8
        self._gate = gate
        self._stopped = False
        self._ahead: list[Prepared | SendStatus] = []
        self._error: Exception | None = None

    def __iter__(self) -> Feed:
        return self

    def __next__(self) -> Prepared | SendStatus:
        if self._stopped:
            raise StopIteration
        if self._ahead:
            item = self._ahead.pop()
        elif self._error is not None:
            error, self._error = self._error, None
            raise error
        else:
            item = self._batch._next(self._smtputf8)
        batch = self._batch
        if self._gate is not None and isinstance(item, Prepared) and not self._gate():
            # Held back (budget or rate): first in line for the driver's next turn, and
            # this conversation takes nothing more (nor fetches ahead).
            self._stopped = True
            batch.source.push([item])
            raise StopIteration
        batch.fed += 1
        return item

    def prefetch(self) -> None:
        """Fetch the next message now, if none is waiting (the drivers' idle moment)."""
        if self._ahead or self._error is not None or self._stopped:
            return
        try:
            self._ahead.append(self._batch._next(self._smtputf8))
        except StopIteration:
            pass
        except Exception as exc:  # kept for the conversation to meet in turn
            self._error = exc

    def unread(self) -> Iterator[Prepared | SendStatus]:
        """What was fetched ahead and not taken (or the error met ahead), to read again."""
        ahead, self._ahead = self._ahead, []
        error, self._error = self._error, None
        yield from ahead
        if error is not None:
            raise error


_EMPTY = Prepared("", (), "", lambda: iter(()))


def _invalid(exc: InvalidMessage) -> SendStatus:
    return invalid_status(exc, _EMPTY)


class _SliceBatch(Batch):
    """The batch of one iter_send() slice; it remembers a connection that failed."""

    failure: tuple[SMTPError, str] | None = None

    def connect_failed(self, exc: SMTPError, stage: str) -> None:
        self.failure = (exc, stage)
        super().connect_failed(exc, stage)
