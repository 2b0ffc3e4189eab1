"""4D's ``SMTP New transporter`` and ``MAIL`` commands, as thin layers over postillon.

The names, keys and results are 4D's (camelCase, status dicts), so code ported from 4D
reads the same. Differences from 4D: an error that 4D raises through ``ON ERR CALL``
(an invalid mail object, an unknown key) is a Python exception here
(:class:`~postillon.InvalidMessage` or ``ValueError``, naming the field).

Example (the ``checkConnection()`` example of 4D's documentation)::

    from postillon.compat.fourd import smtp_new_transporter

    transporter = smtp_new_transporter(
        {"host": "smtp.gmail.com", "user": "test@gmail.com", "password": pw}
    )
    status = transporter.checkConnection()
    if status["success"]:
        print("SMTP connection check successful!")
    else:
        print(f"Error # {status['status']}, {status['statusText']}")
"""

from __future__ import annotations

import email.message
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidMessage
from ..message import Attachment, CharsetMode, Email, RawMessage, from_mime, to_mime
from ..settings import AuthMode, IgnoreCert
from ..status import Status
from ..transporter import Transporter

__all__ = [
    "MAIL_MODE_ISO2022JP",
    "MAIL_MODE_ISO88591",
    "MAIL_MODE_UTF8",
    "MAIL_MODE_UTF8_IN_BASE64",
    "SMTP_AUTHENTICATION_CRAM_MD5",
    "SMTP_AUTHENTICATION_LOGIN",
    "SMTP_AUTHENTICATION_OAUTH2",
    "SMTP_AUTHENTICATION_PLAIN",
    "SMTPTransporter",
    "mail_convert_from_mime",
    "mail_convert_to_mime",
    "mail_new_attachment",
    "smtp_new_transporter",
]

# 4D constants (their values are 4D's texts)
SMTP_AUTHENTICATION_CRAM_MD5 = "CRAM-MD5"
SMTP_AUTHENTICATION_LOGIN = "LOGIN"
SMTP_AUTHENTICATION_OAUTH2 = "OAUTH2"
SMTP_AUTHENTICATION_PLAIN = "PLAIN"
MAIL_MODE_ISO2022JP = CharsetMode.ISO_2022_JP.value
MAIL_MODE_ISO88591 = CharsetMode.ISO_8859_1.value
MAIL_MODE_UTF8 = CharsetMode.UTF8_QP.value
MAIL_MODE_UTF8_IN_BASE64 = CharsetMode.UTF8_B64.value

#: 4D's default SMTP port (submission)
DEFAULT_PORT = 587

#: the 4D keys of the server object, and postillon extensions (marked)
_SERVER_KEYS = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "acceptUnsecureConnection",
        "authenticationMode",
        "accessTokenOAuth2",
        "connectionTimeOut",
        "sendTimeOut",
        "keepAlive",
        "logFile",
        "headerCharset",
        "bodyCharset",
        # postillon extensions, for what 4D takes from the system
        "sslContext",
        "ignoreErrors",
    }
)


def _bool(server: Mapping[str, Any], key: str, default: bool) -> bool:
    value = server.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: must be True or False, not {value!r}")
    return value


def _seconds(server: Mapping[str, Any], key: str, default: float) -> float:
    value = server.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{key}: must be a positive number of seconds, not {value!r}")
    return float(value)


def _token(value: Any) -> str | Callable[[], str] | None:
    """accessTokenOAuth2: a text, a provider (callable), or a 4D token object."""
    if value is None or isinstance(value, str):
        return value
    if callable(value):
        provider: Callable[[], str] = value
        return provider
    if isinstance(value, Mapping):
        # 4D's OAuth2Provider.getToken() result: {"token": {"access_token": ...}}
        inner = value.get("token", value)
        if isinstance(inner, Mapping) and isinstance(inner.get("access_token"), str):
            return str(inner["access_token"])
    raise ValueError("accessTokenOAuth2: a text, a callable, or {'token': {'access_token': ...}}")


def _status_dict(status: Status) -> dict[str, Any]:
    """A postillon status as 4D's status object."""
    out: dict[str, Any] = {
        "success": status.success,
        "status": status.status,
        "statusText": status.status_text,
    }
    if status.errors:
        out["errors"] = [
            {"errCode": e.code, "message": e.message, "componentSignature": e.component}
            for e in status.errors
        ]
    return out


class SMTPTransporter:
    """4D's ``4D.SMTPTransporter``: read-only 4D properties, ``send()``, ``checkConnection()``.

    Made by :func:`smtp_new_transporter`; no I/O until the first call (4D). The password
    and the access token are not readable back.

    Example::

        t = smtp_new_transporter({"host": "smtp.example.com", "user": "ann", "password": pw})
        result = t.send({"from": "ann@example.com", "to": "bob@example.com",
                         "subject": "Hi", "textBody": "Hello"})
        print(result["success"], result["status"], result["statusText"])
    """

    def __init__(self, server: Mapping[str, Any]) -> None:
        if not isinstance(server, Mapping):
            raise ValueError(f"server: expected an object (dict), not {type(server).__name__}")
        unknown = sorted(set(server) - _SERVER_KEYS)
        if unknown:
            raise ValueError(f"server: unknown property {unknown[0]!r}")
        host = server.get("host")
        if not isinstance(host, str) or not host.strip():
            raise ValueError("host: mandatory, the name or address of the SMTP server")
        port = server.get("port", DEFAULT_PORT)
        mode = server.get("authenticationMode")
        if mode is not None and not isinstance(mode, str | AuthMode):
            raise ValueError(f"authenticationMode: a text such as 'PLAIN', not {mode!r}")
        if mode == "":
            mode = None  # 4D: an empty mode means "the most secure one offered"
        ignore = server.get("ignoreErrors", IgnoreCert.NONE)
        if isinstance(ignore, int) and not isinstance(ignore, IgnoreCert | bool):
            ignore = IgnoreCert(ignore)
        ctx = server.get("sslContext")
        if ctx is not None and not isinstance(ctx, ssl.SSLContext):
            raise ValueError("sslContext: an ssl.SSLContext")
        user = server.get("user")
        password = server.get("password")
        token = _token(server.get("accessTokenOAuth2"))
        self._transporter = Transporter(
            host,
            port,
            accept_unsecure_connection=_bool(server, "acceptUnsecureConnection", False),
            user=user if user not in (None, "") else None,
            password=password if password not in (None, "") else None,
            authentication_mode=mode,
            access_token=token,
            connection_timeout=_seconds(server, "connectionTimeOut", 30),
            send_timeout=_seconds(server, "sendTimeOut", 100),
            keep_alive=_bool(server, "keepAlive", True),
            log_file=server.get("logFile"),
            header_charset=server.get("headerCharset", MAIL_MODE_UTF8),
            body_charset=server.get("bodyCharset", MAIL_MODE_UTF8),
            ignore_errors=ignore,
            ssl_context=ctx,
        )

    def __repr__(self) -> str:
        return f"SMTPTransporter(host={self.host!r}, port={self.port}, user={self.user!r})"

    # -- 4D properties (read-only) ----------------------------------------------------

    @property
    def host(self) -> str:
        """4D ``.host``."""
        return self._transporter.host

    @property
    def port(self) -> int:
        """4D ``.port``."""
        return self._transporter.port

    @property
    def user(self) -> str:
        """4D ``.user`` ("" when none)."""
        return self._transporter.user or ""

    @property
    def acceptUnsecureConnection(self) -> bool:
        """4D ``.acceptUnsecureConnection``."""
        return self._transporter.accept_unsecure_connection

    @property
    def authenticationMode(self) -> str:
        """4D ``.authenticationMode`` ("" when the most secure offered is used)."""
        mode = self._transporter.authentication_mode
        return mode.value if mode is not None else ""

    @property
    def connectionTimeOut(self) -> int:
        """4D ``.connectionTimeOut`` (seconds)."""
        return round(self._transporter.connection_timeout)

    @property
    def sendTimeOut(self) -> int:
        """4D ``.sendTimeOut`` (seconds)."""
        return round(self._transporter.send_timeout)

    @property
    def keepAlive(self) -> bool:
        """4D ``.keepAlive``."""
        return self._transporter.keep_alive

    @property
    def logFile(self) -> str:
        """4D ``.logFile`` ("" when none)."""
        return self._transporter.log_file or ""

    @property
    def headerCharset(self) -> str:
        """4D ``.headerCharset``."""
        return self._transporter.header_charset.value

    @property
    def bodyCharset(self) -> str:
        """4D ``.bodyCharset``."""
        return self._transporter.body_charset.value

    @property
    def transporter(self) -> Transporter:
        """The postillon :class:`~postillon.Transporter` underneath."""
        return self._transporter

    # -- 4D functions ------------------------------------------------------------------

    def send(self, mail: Any) -> dict[str, Any]:
        """4D ``.send(mail)``: ``{"success", "status", "statusText"[, "errors"]}``.

        ``mail`` is a 4D Email object (a dict with ``from``, ``to``, ``subject``,
        ``textBody``...), an :class:`~postillon.Email`, a stdlib ``EmailMessage``, or MIME
        text/bytes (4D 17 R5 "MIME contents"). Raises InvalidMessage for a mail that
        cannot be sent as given (4D raises it through ON ERR CALL).
        """
        return _status_dict(self._transporter.send(_mail(mail)))

    def checkConnection(self) -> dict[str, Any]:
        """4D ``.checkConnection()``: connect, authenticate, NOOP; the status object."""
        return _status_dict(self._transporter.check_connection())

    def close(self) -> None:
        """End the session (4D does it when the object is destroyed)."""
        self._transporter.close()

    def __enter__(self) -> SMTPTransporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mail(mail: Any) -> Email | email.message.EmailMessage | RawMessage:
    if isinstance(mail, Email | email.message.EmailMessage | RawMessage):
        return mail
    if isinstance(mail, Mapping):
        return Email.from_dict(mail)
    if isinstance(mail, str | bytes | bytearray):
        return from_mime(mail)
    raise InvalidMessage(
        f"expected a mail object (dict), an Email or MIME text, not {type(mail).__name__}",
        "mail",
    )


def smtp_new_transporter(server: Mapping[str, Any]) -> SMTPTransporter:
    """4D ``SMTP New transporter(server)``: validates the keys, does no I/O.

    Keys: ``host`` (mandatory), ``port`` (587), ``user``, ``password``,
    ``acceptUnsecureConnection`` (False), ``authenticationMode``, ``accessTokenOAuth2``,
    ``connectionTimeOut`` (30), ``sendTimeOut`` (100), ``keepAlive`` (True), ``logFile``,
    ``headerCharset`` / ``bodyCharset`` ("US-ASCII_UTF8_QP"). postillon adds
    ``sslContext`` and ``ignoreErrors`` (an :class:`~postillon.IgnoreCert`).

    Example::

        t = smtp_new_transporter({"host": "smtp.example.com", "port": 465,
                                  "user": "ann", "password": pw})
    """
    return SMTPTransporter(server)


def mail_convert_to_mime(mail: Any, options: Mapping[str, Any] | None = None) -> str:
    """4D ``MAIL Convert to MIME(mail; options)``: the MIME text of a mail object.

    ``options``: ``headerCharset`` and ``bodyCharset`` (4D's mail mode texts).

    Example::

        mime = mail_convert_to_mime({"from": "a@example.com", "to": "b@example.com",
                                     "subject": "Hi", "textBody": "Hello"})
    """
    options = options or {}
    if not isinstance(options, Mapping):
        raise ValueError("options: an object with headerCharset and bodyCharset")
    unknown = sorted(set(options) - {"headerCharset", "bodyCharset"})
    if unknown:
        raise ValueError(f"options: unknown property {unknown[0]!r}")
    message = _mail(mail)
    if not isinstance(message, Email):
        raise InvalidMessage("expected a mail object (dict) or an Email", "mail")
    try:
        header = CharsetMode(options.get("headerCharset", MAIL_MODE_UTF8))
        body = CharsetMode(options.get("bodyCharset", MAIL_MODE_UTF8))
    except ValueError as exc:
        raise ValueError(f"options: unknown mail mode ({exc})") from None
    # MIME built with these modes is 7-bit; ISO-8859-1 bodies may carry 8-bit octets
    return to_mime(message, header, body).decode("utf-8", "surrogateescape")


def mail_convert_from_mime(mime: str | bytes) -> dict[str, Any]:
    """4D ``MAIL Convert from MIME(mime)``: the 4D Email object (a dict) of MIME text.

    Example::

        mail = mail_convert_from_mime(open("message.eml", "rb").read())
        print(mail["subject"], mail.get("textBody"))
    """
    if not isinstance(mime, str | bytes | bytearray):
        raise ValueError(f"mime: text or bytes, not {type(mime).__name__}")
    return from_mime(mime).to_dict()


def mail_new_attachment(
    source: Any,
    name: str | None = None,
    cid: str | None = None,
    type: str | None = None,  # noqa: A002 - 4D's parameter name
    disposition: str | None = None,
) -> Attachment:
    """4D ``MAIL New attachment(path|blob; name; cid; type; disposition)``.

    Example::

        att = mail_new_attachment("report.pdf")
        mail = {"from": ..., "to": ..., "attachments": [att]}
    """
    return Attachment(source, name=name, cid=cid, type=type, disposition=disposition)
