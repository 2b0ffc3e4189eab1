"""WinDev's email functions (``EmailStartSMTPSession``...), as thin layers over postillon.

Sessions are named by the user string, as in WinDev: ``email_start_smtp_session(user,
...)`` opens one, ``email_send_message(user, email)`` sends through it,
``email_close_session(user)`` ends it. Failures return False and ``error_info()`` tells
why (WinDev's ``ErrorInfo()``). In asynchronous mode the mail goes to postillon's durable
spool (unlike WinDev's spooler, closing the program loses nothing) and
``email_status(id)`` answers ``EMAIL_PENDING``, ``EMAIL_SENT`` or ``EMAIL_ERROR``; the id
is the Email's ``identifier`` after the send (also ``email_last_identifier(user)``).

Example (WinDev's second ``EmailStartSMTPSession`` example)::

    from postillon.compat.windev import *

    email_set_timeout(10)
    user = "myaddress@gmail.com"
    if email_start_smtp_session(user, "Password", "smtp.gmail.com", 587, False,
                                EMAIL_PROTOCOL_SMTPS):
        if not email_send_message(user, mail):
            print(error_info())
        email_close_session(user)
    else:
        print("Unable to connect", error_info())
"""

from __future__ import annotations

import collections
import email.message
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidMessage, SMTPError
from ..message import Email, RawMessage
from ..settings import IgnoreCert, Security
from ..status import SpoolState
from ..transporter import Transporter

__all__ = [
    "EMAIL_ASYNCHRONOUS",
    "EMAIL_ERROR",
    "EMAIL_OPTION_DEFAULT",
    "EMAIL_OPTION_SECURED_TLS",
    "EMAIL_PENDING",
    "EMAIL_PROTOCOL_SMTPS",
    "EMAIL_SENT",
    "EMAIL_SESSION_IGNORE_EXPIRED_CERTIFICATE",
    "EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE",
    "EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE_NAME",
    "EMAIL_SESSION_IGNORE_REVOCATION",
    "EMAIL_SYNCHRONOUS",
    "OPTION_SSL",
    "OPTION_TLS",
    "EmailSMTPSession",
    "email_close_session",
    "email_last_identifier",
    "email_send_message",
    "email_set_timeout",
    "email_start_smtp_session",
    "email_status",
    "error_info",
]

#: ``emailOptionDefault``: no TLS (port 25)
EMAIL_OPTION_DEFAULT = 0
#: ``emailProtocolSMTPS``: plain connect, then STARTTLS (port 587)
EMAIL_PROTOCOL_SMTPS = 1
#: ``optionTLS``: implicit TLS from the first byte (port 465)
OPTION_TLS = 2
#: the names before version 28 Update 4, still accepted by WinDev
EMAIL_OPTION_SECURED_TLS = EMAIL_PROTOCOL_SMTPS
OPTION_SSL = OPTION_TLS

_SECURITY = {
    EMAIL_OPTION_DEFAULT: Security.NONE,
    EMAIL_PROTOCOL_SMTPS: Security.STARTTLS,
    OPTION_TLS: Security.TLS,
}

#: ``emailSynchronous`` / ``emailAsynchronous``
EMAIL_SYNCHRONOUS = False
EMAIL_ASYNCHRONOUS = True

#: ``IgnoreError`` constants (combine with ``|``)
EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE = IgnoreCert.INVALID_CERTIFICATE
EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE_NAME = IgnoreCert.INVALID_NAME
EMAIL_SESSION_IGNORE_EXPIRED_CERTIFICATE = IgnoreCert.EXPIRED
EMAIL_SESSION_IGNORE_REVOCATION = IgnoreCert.REVOCATION

#: ``EmailStatus`` answers: ``emailPending``, ``emailSent``, ``emailError``
EMAIL_PENDING = SpoolState.PENDING
EMAIL_SENT = SpoolState.SENT
EMAIL_ERROR = SpoolState.ERROR

#: the spool of asynchronous sessions when none is given
DEFAULT_SPOOL = "mail-spool.db"
#: results of synchronous sends kept for email_status()
_SYNC_RESULTS = 10_000


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.sessions: dict[str, Transporter] = {}
        self.last_ids: dict[str, str] = {}
        self.sync_results: collections.OrderedDict[str, SpoolState] = collections.OrderedDict()
        self.timeout: float | None = None
        self.local = threading.local()


_state = _State()


def _fail(message: str) -> bool:
    _state.local.error = " ".join(message.split())
    return False


def _ok() -> None:
    _state.local.error = ""


def error_info() -> str:
    """WinDev ``ErrorInfo()``: the last error of this thread ("" after a success)."""
    return str(getattr(_state.local, "error", ""))


def email_set_timeout(seconds: float) -> None:
    """WinDev ``EmailChangeTimeOut``: the timeout of sessions started from now on.

    It is the connection timeout; one send may take at least 100 seconds or this long.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise ValueError(f"seconds: must be a positive number, not {seconds!r}")
    with _state.lock:
        _state.timeout = float(seconds)


def _user(user: object) -> str:
    if not isinstance(user, str) or not user:
        raise ValueError(f"user: the session name, a non-empty string, not {user!r}")
    return user


def email_start_smtp_session(  # noqa: PLR0917 - WinDev's positional order
    user: str,
    password: str | None,
    server: str,
    port: int = 25,
    asynchronous: bool = False,
    option: int = EMAIL_OPTION_DEFAULT,
    *,
    ignore_error: IgnoreCert = IgnoreCert.NONE,
    ssl_context: ssl.SSLContext | None = None,
    spool: str | os.PathLike[str] | None = None,
) -> bool:
    """WinDev ``EmailStartSMTPSession``: open the session named ``user``; True if opened.

    A ``password`` makes the session authenticated: if the server offers LOGIN or PLAIN
    and the login fails, the session fails; if it offers no mechanism postillon knows,
    the session goes on without authentication (WinDev). ``option`` is
    ``EMAIL_OPTION_DEFAULT`` (clear text, port 25), ``EMAIL_PROTOCOL_SMTPS`` (STARTTLS,
    587) or ``OPTION_TLS`` (implicit TLS, 465). ``asynchronous=True`` hands each mail to
    the durable spool at ``spool`` (default ``$POSTILLON_SPOOL`` or ``mail-spool.db``).
    ``ignore_error`` is WinDev's ``IgnoreError``; ``ssl_context`` a postillon addition.
    Bad arguments raise ValueError; a server that cannot be used returns False.

    Example::

        if not email_start_smtp_session("me", pw, "smtp.example.com", 587,
                                        option=EMAIL_PROTOCOL_SMTPS):
            print(error_info())
    """
    name = _user(user)
    if option not in _SECURITY:
        raise ValueError(
            f"option: EMAIL_OPTION_DEFAULT, EMAIL_PROTOCOL_SMTPS or OPTION_TLS, not {option!r}"
        )
    if asynchronous not in (True, False):
        raise ValueError(f"asynchronous: True or False, not {asynchronous!r}")
    if password is not None and not isinstance(password, str):
        raise ValueError("password: a string")
    timeout = _state.timeout
    kwargs: dict[str, Any] = {
        "security": _SECURITY[option],
        # WinDev's default option is a clear-text session: its login goes in clear too
        "accept_unsecure_connection": option == EMAIL_OPTION_DEFAULT,
        "ignore_errors": ignore_error,
        "ssl_context": ssl_context,
    }
    if password:
        kwargs["user"] = name
        kwargs["password"] = password
    if timeout is not None:
        kwargs["connection_timeout"] = timeout
        kwargs["send_timeout"] = max(timeout, 100.0)
    if asynchronous:
        kwargs["asynchronous"] = True
        kwargs["spool"] = spool or os.environ.get("POSTILLON_SPOOL") or DEFAULT_SPOOL
    elif spool is not None:
        raise ValueError("spool: goes with asynchronous=True")
    transporter = Transporter(server, port, **kwargs)
    try:
        transporter.open()
    except SMTPError as exc:
        transporter.close()
        return _fail(f"cannot open the SMTP session with {server}:{port}: {exc}")
    with _state.lock:
        previous = _state.sessions.pop(name, None)
        _state.sessions[name] = transporter
    if previous is not None:
        previous.close()
    _ok()
    return True


def _session(user: str) -> Transporter | None:
    with _state.lock:
        return _state.sessions.get(_user(user))


def _message(mail: Any) -> Email | email.message.EmailMessage | RawMessage:
    if isinstance(mail, Email | email.message.EmailMessage | RawMessage):
        return mail
    if isinstance(mail, Mapping):
        return Email.from_dict({k: v for k, v in mail.items() if k != "identifier"})
    raise InvalidMessage(
        f"expected an Email, a dict or an EmailMessage, not {type(mail).__name__}", "email"
    )


def email_send_message(user: str, email: Any) -> bool:
    """WinDev ``EmailSendMessage``: send ``email`` through the session ``user``.

    True when the server took it for every recipient (synchronous), or when it is
    stored in the spool (asynchronous). The id for :func:`email_status` is set on the
    email afterwards: ``email.identifier`` (an Email) or ``email["identifier"]`` (a dict).

    Example::

        ok = email_send_message("me", Email(from_="me@example.com", to="you@example.com",
                                            subject="Hi", text_body="Hello"))
    """
    transporter = _session(user)
    if transporter is None:
        return _fail(f"no SMTP session is open for {user!r} (email_start_smtp_session)")
    message = _message(email)
    status = transporter.send(message)
    ident = status.mail_id or status.message_id
    if ident:
        with _state.lock:
            _state.last_ids[user] = ident
            if status.mail_id is None:
                _state.sync_results[ident] = EMAIL_SENT if status.success else EMAIL_ERROR
                while len(_state.sync_results) > _SYNC_RESULTS:
                    _state.sync_results.popitem(last=False)
        if isinstance(email, Email):
            # WinDev reads the id back from the Email variable
            object.__setattr__(email, "identifier", ident)
        elif isinstance(email, dict):
            email["identifier"] = ident
    if not status.success:
        detail = "; ".join(e.message for e in status.errors) or status.status_text
        return _fail(f"the email was not sent: {status.status} {detail}")
    _ok()
    return True


def email_last_identifier(user: str) -> str | None:
    """The id of the last email sent through the session ``user`` (for email_status)."""
    with _state.lock:
        return _state.last_ids.get(_user(user))


def email_status(mail_id: Any) -> SpoolState:
    """WinDev ``EmailStatus``: ``EMAIL_PENDING``, ``EMAIL_SENT`` or ``EMAIL_ERROR``.

    ``mail_id`` is the identifier set by :func:`email_send_message` (or the Email or
    dict that carries it). Raises ValueError for an id no session knows.

    Example::

        while email_status(mail) is EMAIL_PENDING:
            time.sleep(1)
    """
    if isinstance(mail_id, Email):
        mail_id = getattr(mail_id, "identifier", None)
    elif isinstance(mail_id, Mapping):
        mail_id = mail_id.get("identifier")
    if not isinstance(mail_id, str) or not mail_id:
        raise ValueError("mail_id: the identifier of an email sent with email_send_message")
    with _state.lock:
        known = _state.sync_results.get(mail_id)
        sessions = list(_state.sessions.values())
    if known is not None:
        return known
    for transporter in sessions:
        spool = transporter.spool
        if spool is None:
            continue
        try:
            return spool.status(mail_id).state
        except ValueError:
            continue
    raise ValueError(f"mail_id: no open session knows the email {mail_id!r}")


def email_close_session(user: str) -> bool:
    """WinDev ``EmailCloseSession``: QUIT and forget the session (pending mail stays queued)."""
    with _state.lock:
        transporter = _state.sessions.pop(_user(user), None)
    if transporter is None:
        return _fail(f"no SMTP session is open for {user!r}")
    transporter.close()
    spool = transporter.spool
    if spool is not None:
        spool.close()
    _ok()
    return True


@dataclass
class EmailSMTPSession:
    """WinDev's ``emailSMTPSession`` type: the properties, then ``start_session()``.

    Example::

        session = EmailSMTPSession(name="me", password=pw, server_address="smtp.example.com",
                                   port=587, option=EMAIL_PROTOCOL_SMTPS)
        if session.start_session():
            email_send_message(session.name, mail)
    """

    name: str
    server_address: str
    password: str | None = None
    port: int = 25
    option: int = EMAIL_OPTION_DEFAULT
    asynchronous: bool = False
    ignore_error: IgnoreCert = IgnoreCert.NONE

    def __repr__(self) -> str:
        return (
            f"EmailSMTPSession(name={self.name!r}, server_address={self.server_address!r}, "
            f"port={self.port}, option={self.option})"
        )

    def start_session(self, **extra: Any) -> bool:
        """``<emailSMTPSession>.StartSession()``: open the session named ``name``."""
        return email_start_smtp_session(
            self.name, self.password, self.server_address, self.port, self.asynchronous,
            self.option, ignore_error=self.ignore_error, **extra,
        )  # fmt: skip
