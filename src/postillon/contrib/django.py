"""A Django email backend that sends with postillon (or hands mail to its spool).

Settings (``settings.py``)::

    EMAIL_BACKEND = "postillon.contrib.django.EmailBackend"
    EMAIL_HOST = "smtp.example.com"
    EMAIL_PORT = 587
    EMAIL_HOST_USER = "ann"
    EMAIL_HOST_PASSWORD = "..."
    EMAIL_USE_TLS = True            # STARTTLS; EMAIL_USE_SSL = True for implicit TLS (465)
    EMAIL_TIMEOUT = 30              # seconds (connect, and each message)
    EMAIL_SSL_CERTFILE = None       # client certificate (PEM), EMAIL_SSL_KEYFILE its key

    # postillon's own, all optional:
    POSTILLON_SPOOL = "/var/spool/myapp/mail.db"   # or "postgresql://..."; queue, don't send
    POSTILLON_SPOOL_WORKER = True   # deliver the spool from a thread of this process
    POSTILLON_OPTIONS = {"accept_unsecure_connection": True}  # more Transporter keywords

The constructor takes Django's SMTP backend keywords (``host``, ``port``, ``username``,
``password``, ``use_tls``, ``use_ssl``, ``timeout``, ``ssl_keyfile``, ``ssl_certfile``,
``fail_silently``), which override the settings as in Django, plus ``spool`` and
``options`` overriding the ``POSTILLON_*`` settings.

Without ``POSTILLON_SPOOL``, messages are sent inline, pipelined over one connection
that stays open between ``open()`` and ``close()`` (``get_connection()`` used as a
context manager). With it, ``send_messages()`` returns once every message is durably
stored in the spool; a worker thread of this process delivers them
(``POSTILLON_SPOOL_WORKER = True``, one per spool and settings, for the life of the
process), or a separate ``postillon spool run`` does (``False``): nothing is lost when
the web process stops, pending mail waits in the spool.

Errors: without ``fail_silently``, a message the server refused raises the matching
:class:`postillon.SMTPError` (``status.raise_for_status()``) after the other messages
of the call were tried; a message that cannot be sent as given raises
:class:`postillon.InvalidMessage`. ``send_messages()`` returns how many messages were
accepted (or queued).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from django.conf import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    settings,
)
from django.core.mail.backends.base import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    BaseEmailBackend,
)

from ..errors import SMTPError
from ..message import RawMessage
from ..settings import Security
from ..spool import Spool
from ..status import SendStatus
from ..transporter import Transporter

__all__ = ["EmailBackend", "stop_workers"]

# One queueing transporter (and so one worker thread) per spool and server settings in
# this process: Django makes a backend per send_mail() call, and a worker per backend
# would be started and stopped around every message.
_queues: dict[tuple[str, str], Transporter] = {}
_spools: dict[str, Spool] = {}
_registry_lock = threading.Lock()


def stop_workers() -> None:
    """Stop the spool workers this backend started in this process (pending mail stays).

    For tests, and for a clean shutdown; the next message queued starts a new one.
    """
    with _registry_lock:
        queues = list(_queues.values())
        spools = list(_spools.values())
        _queues.clear()
        _spools.clear()
    for queue in queues:
        queue.close()
    for spool in spools:
        spool.close()


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


class EmailBackend(BaseEmailBackend):  # type: ignore[misc, unused-ignore]
    """Django's ``EMAIL_BACKEND`` on postillon: inline SMTP or the durable spool.

    Example::

        from django.core.mail import get_connection, send_mail

        with get_connection("postillon.contrib.django.EmailBackend") as conn:
            send_mail("Hi", "Hello", "ann@example.com", ["bob@example.com"],
                      connection=conn)
    """

    def __init__(  # noqa: PLR0917 - Django's SMTP backend's positional order
        self,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool | None = None,
        fail_silently: bool = False,
        use_ssl: bool | None = None,
        timeout: float | None = None,
        ssl_keyfile: str | None = None,
        ssl_certfile: str | None = None,
        *,
        spool: str | None = None,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.host: str = host or settings.EMAIL_HOST
        self.port: int = int(port or settings.EMAIL_PORT)
        self.username: str = settings.EMAIL_HOST_USER if username is None else username
        self.password: str = settings.EMAIL_HOST_PASSWORD if password is None else password
        self.use_tls = bool(settings.EMAIL_USE_TLS if use_tls is None else use_tls)
        self.use_ssl = bool(settings.EMAIL_USE_SSL if use_ssl is None else use_ssl)
        self.timeout: float | None = settings.EMAIL_TIMEOUT if timeout is None else timeout
        self.ssl_keyfile = settings.EMAIL_SSL_KEYFILE if ssl_keyfile is None else ssl_keyfile
        self.ssl_certfile = settings.EMAIL_SSL_CERTFILE if ssl_certfile is None else ssl_certfile
        self.spool: str | None = _setting("POSTILLON_SPOOL", None) if spool is None else spool
        self.spool_worker = bool(_setting("POSTILLON_SPOOL_WORKER", True))
        self.options: dict[str, Any] = dict(
            _setting("POSTILLON_OPTIONS", None) or {} if options is None else options
        )
        if self.use_ssl and self.use_tls:
            raise ValueError(
                "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set "
                "one of those settings to True."
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("EMAIL_SSL_KEYFILE: given without EMAIL_SSL_CERTFILE")
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or self.timeout <= 0
        ):
            raise ValueError(f"EMAIL_TIMEOUT: a number of seconds > 0, not {self.timeout!r}")
        if self.spool is not None and not isinstance(self.spool, str):
            raise ValueError(f"POSTILLON_SPOOL: a file path or a postgresql:// URL, not {spool!r}")
        self.connection: Transporter | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        where = f"spool={self.spool!r}" if self.spool else f"{self.host}:{self.port}"
        return f"<postillon EmailBackend {where}>"

    # -- settings to a Transporter

    def _transporter_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "security": Security.TLS
            if self.use_ssl
            else Security.STARTTLS
            if self.use_tls
            else Security.NONE,
        }
        if self.username:
            kw["user"] = self.username
            kw["password"] = self.password or None
        if self.timeout is not None:
            # Django's timeout bounds each blocking step; ours bound the connection and
            # each message (the deadline restarts for every message of a batch).
            kw["connection_timeout"] = self.timeout
            kw["send_timeout"] = self.timeout
        if self.ssl_certfile:
            kw["client_certificate"] = (
                (self.ssl_certfile, self.ssl_keyfile) if self.ssl_keyfile else self.ssl_certfile
            )
        kw.update(self.options)
        return kw

    def _queue(self) -> Transporter:
        """The process-wide queueing transporter of this spool and these settings."""
        assert self.spool is not None
        kw = self._transporter_kwargs()
        key = (self.spool, repr((self.host, self.port, sorted(kw.items(), key=str))))
        with _registry_lock:
            queue = _queues.get(key)
            if queue is None:
                queue = Transporter(
                    self.host, self.port, asynchronous=True, spool=self._spool(), **kw
                )
                _queues[key] = queue
            return queue

    def _spool(self) -> Spool:
        assert self.spool is not None
        spool = _spools.get(self.spool)
        if spool is None:
            spool = _spools[self.spool] = Spool(self.spool)
        return spool

    # -- Django's backend protocol

    def open(self) -> bool | None:
        """Open the connection (inline mode); True if a new one was opened.

        In spool mode nothing is opened: the worker has its own connection.
        """
        if self.spool or self.connection is not None:
            return False
        try:
            transporter = Transporter(self.host, self.port, **self._transporter_kwargs())
            transporter.open()
        except (SMTPError, OSError, ValueError):
            if not self.fail_silently:
                raise
            return None
        self.connection = transporter
        return True

    def close(self) -> None:
        """Close the connection (QUIT); errors are ignored with ``fail_silently``."""
        if self.connection is None:
            return
        try:
            self.connection.close()
        except Exception:
            if not self.fail_silently:
                raise
        finally:
            self.connection = None

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Send (or queue) Django ``EmailMessage`` objects; return how many went."""
        if not email_messages:
            return 0
        with self._lock:
            try:
                raws = [(m, self._raw(m)) for m in email_messages if m.recipients()]
            except ValueError:
                if not self.fail_silently:
                    raise
                return 0
            if not raws:
                return 0
            if self.spool:
                return self._queue_all([raw for _, raw in raws])
            new_conn = self.open()
            if self.connection is None:
                return 0  # could not connect, and fail_silently
            try:
                statuses = self.connection.send_many(raw for _, raw in raws)
            finally:
                if new_conn:
                    self.close()
            return self._count(statuses)

    # -- internals

    @staticmethod
    def _raw(message: Any) -> RawMessage:
        # Django renders the message itself (message.message(): its MIME classes, its
        # DEFAULT_CHARSET and encoding rules, alternatives, attachments including
        # MIMEBase parts, extra headers, Reply-To, and no Bcc header): sending those
        # bytes as a RawMessage is exactly what Django's own SMTP backend puts on the
        # wire, where a mapping to our Email would drop what it has no field for
        # (arbitrary MIMEBase parts, mixed subtypes, per-message encodings). The
        # envelope comes from the EmailMessage, Bcc included, through postillon's
        # address parser (IDNA, CR/LF refused) like every other message.
        data = message.message().as_bytes(linesep="\r\n")
        return RawMessage(data, message.from_email, list(message.recipients()))

    def _queue_all(self, raws: list[RawMessage]) -> int:
        queued = 0
        try:
            if self.spool_worker:
                queue = self._queue()
                for raw in raws:
                    queue.send(raw)
                    queued += 1
            else:
                with _registry_lock:
                    spool = self._spool()
                for raw in raws:
                    spool.submit(raw)
                    queued += 1
        except Exception:
            if not self.fail_silently:
                raise
        return queued

    def _count(self, statuses: list[SendStatus]) -> int:
        # As Django's SMTP backend (smtplib's sendmail): a message counts as sent when
        # the server took it for at least one recipient; one refused for every
        # recipient raises, after the others of the call were tried.
        failed = [s for s in statuses if not s.accepted]
        if failed and not self.fail_silently:
            failed[0].raise_for_status()
        return len(statuses) - len(failed)
