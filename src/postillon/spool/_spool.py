"""The public :class:`Spool`: a durable outgoing queue (WinDev asynchronous mode).

Unlike WinDev's spooler, which empties itself when its administrator closes, a message
submitted here waits in the store (an SQLite file, or PostgreSQL for many machines)
until a worker delivers it or gives it up: not lost when the process is killed, the
server drops, or the machine restarts. Delivery is at-least-once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from ..errors import InvalidMessage
from ..message.prepared import Prepared
from ..signing import DkimSigner, SmimeSigner, sign
from ..status import SpoolState
from ._model import NewEntry, SpoolEntry
from ._policy import RetryPolicy
from ._store import Store
from ._worker import RunStats, SenderLike, SpoolHandle, Worker

__all__ = ["Spool"]

log = logging.getLogger("postillon.spool")

#: 4D's default charset mode ("US-ASCII_UTF8_QP"), also postillon's
_DEFAULT_CHARSET = "US-ASCII_UTF8_QP"
_MAX_KEY = 255
_MAX_WORKERS = 256


def _is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _check_id(mail_id: object) -> str:
    if not isinstance(mail_id, str) or not mail_id or len(mail_id) > 64:
        raise ValueError(f"mail_id: not a spool id: {mail_id!r}")
    return mail_id


class Spool:
    """A durable queue of outgoing mail, and the workers that drain it.

    ``location`` is a path to an SQLite file (created on first use) or a
    ``postgresql://`` URL (``schema`` then names the PostgreSQL schema of its tables).
    Nothing secret is ever stored: only the messages and their envelopes; the server
    settings and credentials come with the Transporter given to :meth:`run`.

    Example::

        spool = Spool("mail-spool.db")
        mail_id = spool.submit(Email(from_="a@example.com", to="b@example.com", subject="hi"))
        spool.run(Transporter("smtp.example.com", user="a", password=pw), until_empty=True)
        spool.status(mail_id).state        # SpoolState.SENT
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        schema: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(location, str | os.PathLike):
            raise ValueError(f"location: a file path or a postgresql:// URL, not {location!r}")
        text = os.fspath(location)
        if not text or text == ":memory:":
            raise ValueError("location: the spool needs a file (or a postgresql:// URL)")
        self._clock: Callable[[], float] = clock or time.time
        self._wakeup = threading.Condition()
        self._store: Store
        if _is_postgres(text):
            from ._postgres import PostgresStore  # psycopg loaded lazily

            self._store = PostgresStore(text, schema=schema)
            self._desc = f"Spool({self._store!r})"
        else:
            if schema is not None:
                raise ValueError("schema: only for a postgresql:// spool")
            from ._sqlite import SQLiteStore

            self._store = SQLiteStore(text)
            self._desc = f"Spool({text!r})"
        self._handles: list[SpoolHandle] = []

    def __repr__(self) -> str:
        return self._desc

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit -------------------------------------------------------------------

    @staticmethod
    def _prepare(mail: Any, header_charset: Any, body_charset: Any) -> Prepared:
        if mail is None:
            raise InvalidMessage("no message given", "mail")
        if isinstance(mail, Prepared):
            prepared = mail
        else:
            from ..message import prepare

            try:
                prepared = prepare(
                    mail, header_charset=header_charset, body_charset=body_charset,
                    smtputf8=False,
                )  # fmt: skip
            except InvalidMessage as first:
                # maybe it only needs SMTPUTF8 (RFC 6531): keep it, the server decides
                try:
                    prepared = prepare(
                        mail, header_charset=header_charset, body_charset=body_charset,
                        smtputf8=True,
                    )  # fmt: skip
                except InvalidMessage:
                    raise first from None
        if not prepared.recipients:
            raise InvalidMessage("the message has no recipient", "to")
        return prepared

    def submit(
        self,
        mail: Any,
        *,
        idempotency_key: str | None = None,
        header_charset: Any = _DEFAULT_CHARSET,
        body_charset: Any = _DEFAULT_CHARSET,
        smime: SmimeSigner | None = None,
        dkim: DkimSigner | None = None,
    ) -> str:
        """Queue one message; return its ``mail_id`` once it is durably stored.

        ``mail`` is an ``Email``, a stdlib ``EmailMessage`` or a ``RawMessage``. The MIME
        is built once, here, and signed here when ``smime``/``dkim`` are given: every
        retry sends the same bytes (Message-ID and signatures stay stable). Unsigned
        messages are signed at delivery by the signers of the transporter that sends
        them, at each attempt. A caller that retries ``submit`` with the same
        ``idempotency_key`` gets the same ``mail_id`` and still one entry.
        Raises ``InvalidMessage`` (a ValueError naming the field) for a message that
        cannot be sent.

        Example: ``mail_id = spool.submit(mail, idempotency_key="order-1234-receipt")``
        """
        return self.submit_many(
            [mail],
            idempotency_keys=[idempotency_key],
            header_charset=header_charset,
            body_charset=body_charset,
            smime=smime,
            dkim=dkim,
        )[0]

    def submit_many(
        self,
        mails: Iterable[Any],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        header_charset: Any = _DEFAULT_CHARSET,
        body_charset: Any = _DEFAULT_CHARSET,
        smime: SmimeSigner | None = None,
        dkim: DkimSigner | None = None,
    ) -> list[str]:
        """Queue a batch in one durable transaction (one fsync); return the ids in order.

        Every message is checked before anything is stored: one invalid message raises
        ``InvalidMessage`` and none of the batch is queued.

        Example: ``ids = spool.submit_many(mails)``
        """
        if isinstance(mails, str | bytes) or not isinstance(mails, Iterable):
            raise ValueError("mails: an iterable of messages")
        items = list(mails)
        keys: list[str | None]
        if idempotency_keys is None:
            keys = [None] * len(items)
        else:
            keys = list(idempotency_keys)
            if len(keys) != len(items):
                raise ValueError("idempotency_keys: one per message (None for none)")
        for key in keys:
            if key is not None and (not isinstance(key, str) or not key or len(key) > _MAX_KEY):
                raise ValueError(f"idempotency_key: a string of 1 to {_MAX_KEY} characters")
        now = self._clock()
        entries: list[NewEntry] = []
        for index, (mail, key) in enumerate(zip(items, keys, strict=True)):
            try:
                prepared = self._prepare(mail, header_charset, body_charset)
                if smime is not None or dkim is not None:
                    prepared = sign(prepared, smime, dkim)
            except InvalidMessage as exc:
                if len(items) == 1:
                    raise
                raise InvalidMessage(exc.message, f"mails[{index}].{exc.field or 'mail'}") from None
            entries.append(NewEntry(uuid.uuid4().hex, key, prepared, now))
        if not entries:
            return []
        ids = self._store.submit(entries)
        with self._wakeup:
            self._wakeup.notify_all()
        return ids

    # -- inspection and administration -------------------------------------------

    def status(self, mail_id: str) -> SpoolEntry:
        """The entry of ``mail_id`` (state, attempts, last status, next attempt time).

        Raises ValueError for an id the spool does not hold.
        """
        entry = self._store.get(_check_id(mail_id))
        if entry is None:
            raise ValueError(f"mail_id: no such message in the spool: {mail_id!r}")
        return entry

    def entries(self, state: SpoolState | str | None = None, limit: int = 1000) -> list[SpoolEntry]:
        """Entries, oldest first, optionally only those in ``state``."""
        if state is not None and not isinstance(state, SpoolState):
            try:
                state = SpoolState(str(state).lower())
            except ValueError:
                raise ValueError(f"state: one of pending, sent, error; not {state!r}") from None
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit: must be a positive integer, not {limit!r}")
        return self._store.list_entries(state, limit)

    def counts(self) -> dict[SpoolState, int]:
        """How many entries are in each state."""
        return self._store.counts()

    def retry(self, mail_id: str) -> bool:
        """Make an entry due now; an ERROR entry goes back to PENDING for its failed recipients.

        Returns False when there is nothing to retry (the message was sent).
        """
        self.status(mail_id)
        changed = self._store.retry(mail_id, self._clock())
        if changed:
            with self._wakeup:
                self._wakeup.notify_all()
        return changed

    def cancel(self, mail_id: str) -> bool:
        """Give up a PENDING entry (state ERROR, error "cancelled"); False if not pending.

        A message a worker is sending at that very moment may still be delivered.
        """
        self.status(mail_id)
        return self._store.cancel(mail_id, self._clock())

    def purge(
        self, state: SpoolState | str = SpoolState.SENT, older_than: float | timedelta = 0
    ) -> int:
        """Delete finished entries (SENT or ERROR) unchanged for ``older_than`` (seconds).

        Pending entries are never purged. Returns how many were deleted.
        """
        if not isinstance(state, SpoolState):
            try:
                state = SpoolState(str(state).lower())
            except ValueError:
                raise ValueError(f"state: sent or error, not {state!r}") from None
        if state is SpoolState.PENDING:
            raise ValueError("state: pending entries are never purged (cancel them first)")
        age = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        if not isinstance(age, int | float) or age < 0:
            raise ValueError(f"older_than: seconds >= 0 or a timedelta, not {older_than!r}")
        return self._store.purge(state, self._clock() - age)

    # -- workers ------------------------------------------------------------------

    def _worker(
        self,
        transporter: Any,
        *,
        workers: int,
        until_empty: bool,
        retry: RetryPolicy | None,
        stop: threading.Event | None,
        progress: Callable[[RunStats], None] | None,
        lease: float | None,
        batch: int,
        idle_poll: float,
    ) -> Worker:
        if not callable(getattr(transporter, "_clone", None)):
            raise ValueError("transporter: a postillon Transporter")
        if (
            isinstance(workers, bool)
            or not isinstance(workers, int)
            or not (1 <= workers <= _MAX_WORKERS)
        ):
            raise ValueError(f"workers: 1 to {_MAX_WORKERS}, not {workers!r}")
        retry = RetryPolicy() if retry is None else retry
        if not isinstance(retry, RetryPolicy):
            raise ValueError(f"retry: a RetryPolicy, not {type(retry).__name__}")
        if stop is not None and not isinstance(stop, threading.Event):
            raise ValueError("stop: a threading.Event")
        if progress is not None and not callable(progress):
            raise ValueError("progress: a callable taking RunStats")
        if lease is None:
            # a lease outlives the longest single send (the Transporter's deadline)
            send_timeout = getattr(transporter, "send_timeout", 100)
            lease = max(300.0, 3.0 * float(send_timeout or 100))
        if not isinstance(lease, int | float) or lease <= 0:
            raise ValueError(f"lease: seconds > 0, not {lease!r}")
        if not isinstance(batch, int) or not 1 <= batch <= 1000:
            raise ValueError(f"batch: 1 to 1000, not {batch!r}")
        if not isinstance(idle_poll, int | float) or idle_poll <= 0:
            raise ValueError(f"idle_poll: seconds > 0, not {idle_poll!r}")
        sender: SenderLike = transporter
        return Worker(
            self._store, sender, workers=workers, until_empty=until_empty, retry=retry,
            stop=stop or threading.Event(), progress=progress, clock=self._clock,
            lease=float(lease), batch=batch, idle_poll=float(idle_poll), wakeup=self._wakeup,
        )  # fmt: skip

    def run(  # noqa: PLR0917 - API.md's positional order
        self,
        transporter: Any,
        workers: int = 4,
        until_empty: bool = False,
        retry: RetryPolicy | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[RunStats], None] | None = None,
        *,
        lease: float | None = None,
        batch: int = 8,
        idle_poll: float = 1.0,
    ) -> RunStats:
        """Deliver queued mail with ``workers`` threads; block until stopped; return the stats.

        Each thread uses its own clone of ``transporter`` (one kept-alive connection).
        ``until_empty``: return once nothing is due now (messages waiting for a later
        retry stay queued for the next run). Otherwise run until ``stop`` (a
        ``threading.Event``) is set. ``progress`` is called with a :class:`RunStats`
        after every attempt. ``lease`` (seconds, default ``max(300, 3 * send_timeout)``)
        is how long a claimed message is reserved: if this process dies, other workers
        take it over after that. ``batch`` messages are claimed at a time.

        Example::

            stats = spool.run(transporter, workers=4, until_empty=True)
            print(stats.sent, stats.failed, stats.deferred)
        """
        worker = self._worker(
            transporter, workers=workers, until_empty=until_empty, retry=retry, stop=stop,
            progress=progress, lease=lease, batch=batch, idle_poll=idle_poll,
        )  # fmt: skip
        worker.start()
        try:
            while not worker.join(0.5):
                pass
        except BaseException:
            # Ctrl-C: let the threads finish the message in hand; the rest stays queued
            worker.request_stop()
            worker.join()
            raise
        worker.raise_error()
        return worker.stats()

    def start(
        self,
        transporter: Any,
        workers: int = 1,
        retry: RetryPolicy | None = None,
        *,
        progress: Callable[[RunStats], None] | None = None,
        lease: float | None = None,
        batch: int = 8,
        idle_poll: float = 1.0,
    ) -> SpoolHandle:
        """Start workers in background threads (``Transporter(asynchronous=True)``).

        Example::

            handle = spool.start(transporter)
            ...
            handle.stop(timeout=30)   # pending mail stays queued
        """
        worker = self._worker(
            transporter, workers=workers, until_empty=False, retry=retry, stop=None,
            progress=progress, lease=lease, batch=batch, idle_poll=idle_poll,
        )  # fmt: skip
        worker.start()
        handle = SpoolHandle(worker)
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        """Stop background workers started here (pending mail stays) and close the store."""
        for handle in self._handles:
            handle.stop(timeout=30)
        self._handles.clear()
        self._store.close()
