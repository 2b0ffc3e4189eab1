"""The storage behind the spool: a small ``Store`` protocol and the SQL both stores share.

Two implementations pass one test suite: :mod:`._sqlite` (one file, the default) and
:mod:`._postgres` (many workers on many machines share one queue). Everything the worker
needs is here: submit (durable before it returns), claim with a lease that expires,
complete, release, extend, and the admin operations.

Durability, argued once for both stores:

* ``submit`` commits with full durability (SQLite ``synchronous=FULL`` in WAL mode,
  PostgreSQL ``synchronous_commit=on``): when it returns, the message survives a crash
  of the process, of the machine, or a power loss.
* The worker's own writes (claim, per-recipient progress, retry schedule) commit with
  relaxed durability (SQLite ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``).
  They survive the death of the process (SIGKILL) exactly like the others; only an OS
  crash or power loss may roll the last ones back, and rolling back a worker's write can
  only cause a resend (at-least-once) or a re-claim after the lease, never a loss. This
  is what lets the drain rate keep up with direct sending: one fsync per submitted
  batch, none per delivered message.

Message bytes live in the database itself, in a ``chunks`` table of fixed-size blocks,
rather than in files beside it: one transaction then makes the entry and its bytes
visible together (no torn entry can ever be claimed, security.md 3.3 I3, without the
temp-file / fsync / rename / directory-fsync protocol files would need), a backup is
one file (or one database), and PostgreSQL workers on other machines can read the bytes
without a shared filesystem. Blocks are written and read one at a time, so a large
message is never held whole in memory.
"""

# S608: the only text spliced into SQL is the table names, constants or a schema name
# checked against a plain-identifier pattern; every value goes through placeholders.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from ..message.prepared import Prepared
from ..status import SpoolState
from ._model import (
    RECIPIENT_FAILED,
    RECIPIENT_PENDING,
    Decision,
    NewEntry,
    SpoolEntry,
    dump_recipients,
    dump_status,
    from_ts,
    load_recipients,
    load_status,
    rechunk,
    stored_source,
)

__all__ = ["CHUNK_SIZE", "Claimed", "SQLStore", "Store"]

#: size of one stored block of message bytes
CHUNK_SIZE = 256 * 1024
#: flush buffered block rows to the database past this many bytes (bounds submit memory)
_FLUSH_BYTES = 8 * 1024 * 1024

_FLAG_SMTPUTF8 = 1
_FLAG_8BIT = 2

_COLUMNS = (
    "mail_id, state, attempts, created_at, updated_at, next_attempt_at, mail_from, "
    "message_id, recipients, last_status, uncertain, error, size, nchunks, flags"
)


@dataclass(frozen=True)
class Claimed:
    """Internal: a claimed entry and the re-iterable source of its stored bytes."""

    entry: SpoolEntry
    source: Callable[[], Iterable[bytes]]

    def prepared(self) -> Prepared:
        """The message for the recipients still pending (same bytes as at submit)."""
        e = self.entry
        return Prepared(
            e.mail_from,
            tuple(e.pending_recipients),
            e.message_id,
            self.source,
            e.size,
            e.needs_smtputf8,
            e.eight_bit,
        )


class Store(Protocol):
    """What the spool needs from a storage backend. Times are POSIX seconds."""

    def submit(self, entries: Sequence[NewEntry]) -> list[str]: ...
    def get(self, mail_id: str) -> SpoolEntry | None: ...
    def list_entries(self, state: SpoolState | None, limit: int) -> list[SpoolEntry]: ...
    def claim(self, owner: str, now: float, lease_until: float, limit: int) -> list[Claimed]: ...
    def complete(self, mail_id: str, owner: str, decision: Decision, now: float) -> bool: ...
    def complete_many(
        self, owner: str, results: Sequence[tuple[str, Decision]], now: float
    ) -> int: ...
    def release(self, mail_ids: Sequence[str], owner: str) -> None: ...
    def extend(self, mail_ids: Sequence[str], owner: str, lease_until: float) -> None: ...
    def retry(self, mail_id: str, now: float) -> bool: ...
    def cancel(self, mail_id: str, now: float) -> bool: ...
    def purge(self, state: SpoolState, before: float) -> int: ...
    def next_due(self) -> float | None: ...
    def counts(self) -> dict[SpoolState, int]: ...
    def close(self) -> None: ...


class SQLStore:
    """The SQL both stores share; subclasses provide connections and transactions.

    SQL is written with ``?`` placeholders; :meth:`_q` adapts it to the driver.
    """

    entries = "spool_entries"
    chunks = "spool_chunks"
    #: insertion order, the tie-break between entries queued in the same batch
    order = "rowid"
    #: the driver's executemany() rowcount is the total of the rows changed
    rowcount_many = True

    # -- provided by subclasses -------------------------------------------------------

    def _tx(self, durable: bool) -> contextlib.AbstractContextManager[Any]:
        """A write transaction yielding a cursor (``durable``: full fsync at commit)."""
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor for reads outside a write transaction."""
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql

    def _blob(self, value: Any) -> bytes:
        return bytes(value)

    def _insert_entry_sql(self) -> str:
        return (
            f"INSERT INTO {self.entries} (mail_id, idem_key, state, attempts, created_at, "
            "updated_at, next_attempt_at, mail_from, message_id, recipients, uncertain, size, "
            "nchunks, flags) VALUES (?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) "
            "ON CONFLICT (idem_key) DO NOTHING"
        )

    # -- submit -------------------------------------------------------------------

    def submit(self, entries: Sequence[NewEntry]) -> list[str]:
        """Store every entry and its bytes in one durable transaction; return the ids.

        An entry whose idempotency key is already stored (now or earlier in the batch)
        is not stored again: its id is the one stored first.
        """
        ids: list[str] = []
        with self._tx(durable=True) as cur:
            seen: dict[str, str] = {}
            rows: list[tuple[str, int, bytes]] = []
            buffered = 0
            insert_chunk = self._q(
                f"INSERT INTO {self.chunks} (mail_id, seq, data) VALUES (?, ?, ?)"
            )
            insert_entry = self._q(self._insert_entry_sql())
            entry_rows: list[tuple[Any, ...]] = []
            for new in entries:
                key = new.idempotency_key
                if key is not None:
                    if key in seen:
                        ids.append(seen[key])
                        continue
                    cur.execute(
                        self._q(f"SELECT mail_id FROM {self.entries} WHERE idem_key = ?"), (key,)
                    )
                    row = cur.fetchone()
                    if row is not None:
                        seen[key] = row[0]
                        ids.append(row[0])
                        continue
                    seen[key] = new.mail_id
                p = new.prepared
                size = 0
                seq = 0
                for block in rechunk(p.chunks(), CHUNK_SIZE):
                    rows.append((new.mail_id, seq, block))
                    seq += 1
                    size += len(block)
                    buffered += len(block)
                    if buffered >= _FLUSH_BYTES:
                        cur.executemany(insert_chunk, rows)
                        rows.clear()
                        buffered = 0
                flags = (_FLAG_SMTPUTF8 if p.needs_smtputf8 else 0) | (
                    _FLAG_8BIT if p.eight_bit else 0
                )
                recipients = dump_recipients(dict.fromkeys(p.recipients, RECIPIENT_PENDING))
                entry_rows.append(
                    (new.mail_id, key, new.created_at, new.created_at, new.created_at,
                     p.mail_from, p.message_id, recipients, size, seq, flags)
                )  # fmt: skip
                ids.append(new.mail_id)
            if rows:
                cur.executemany(insert_chunk, rows)
            if entry_rows:
                cur.executemany(insert_entry, entry_rows)
        return ids

    # -- reads --------------------------------------------------------------------

    def _entry(self, row: Sequence[Any]) -> SpoolEntry:
        (mail_id, state, attempts, created, updated, nxt, mail_from, message_id, rcpts,
         last, uncertain, error, size, _nchunks, flags) = row[:15]  # fmt: skip
        created_dt = from_ts(created)
        assert created_dt is not None
        return SpoolEntry(
            mail_id=mail_id,
            state=SpoolState(state),
            attempts=int(attempts),
            created_at=created_dt,
            next_attempt_at=from_ts(nxt) if state == SpoolState.PENDING.value else None,
            last_status=load_status(last),
            recipients=load_recipients(rcpts),
            uncertain=bool(uncertain),
            message_id=message_id,
            mail_from=mail_from,
            error=error,
            size=int(size),
            needs_smtputf8=bool(flags & _FLAG_SMTPUTF8),
            eight_bit=bool(flags & _FLAG_8BIT),
            updated_at=from_ts(updated),
        )

    def get(self, mail_id: str) -> SpoolEntry | None:
        """The entry, or None when the spool has no such id."""
        with self._read() as cur:
            cur.execute(
                self._q(f"SELECT {_COLUMNS} FROM {self.entries} WHERE mail_id = ?"), (mail_id,)
            )
            row = cur.fetchone()
        return None if row is None else self._entry(row)

    def list_entries(self, state: SpoolState | None, limit: int) -> list[SpoolEntry]:
        """Entries, oldest first, optionally of one state."""
        with self._read() as cur:
            if state is None:
                cur.execute(
                    self._q(
                        f"SELECT {_COLUMNS} FROM {self.entries} ORDER BY created_at, {self.order} "
                        "LIMIT ?"
                    ),
                    (limit,),
                )
            else:
                cur.execute(
                    self._q(
                        f"SELECT {_COLUMNS} FROM {self.entries} WHERE state = ? "
                        f"ORDER BY created_at, {self.order} LIMIT ?"
                    ),
                    (state.value, limit),
                )
            return [self._entry(r) for r in cur.fetchall()]

    def counts(self) -> dict[SpoolState, int]:
        """How many entries are in each state."""
        out = dict.fromkeys(SpoolState, 0)
        with self._read() as cur:
            cur.execute(f"SELECT state, COUNT(*) FROM {self.entries} GROUP BY state")
            for state, n in cur.fetchall():
                out[SpoolState(state)] = int(n)
        return out

    def next_due(self) -> float | None:
        """The earliest time a pending entry may become claimable (None: nothing pending)."""
        with self._read() as cur:
            cur.execute(
                f"SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at "
                f"THEN lease_until ELSE next_attempt_at END) FROM {self.entries} "
                "WHERE state = 'pending'"
            )
            row = cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # -- claims -------------------------------------------------------------------

    def _fetch_chunk(self, mail_id: str, seq: int) -> bytes:
        with self._read() as cur:
            cur.execute(
                self._q(f"SELECT data FROM {self.chunks} WHERE mail_id = ? AND seq = ?"),
                (mail_id, seq),
            )
            row = cur.fetchone()
        if row is None:
            # the format guarantees every block exists; a hole is corruption, not a retry
            raise RuntimeError(f"spool entry {mail_id}: block {seq} is missing")
        return self._blob(row[0])

    def _claimed(self, cur: Any, rows: Sequence[Sequence[Any]]) -> list[Claimed]:
        """Rows of ``_COLUMNS`` plus the order column, to Claimed in queue order."""
        rows = sorted(rows, key=lambda r: (r[5], r[15]))
        entries = [self._entry(r) for r in rows]
        nchunks = {r[0]: int(r[13]) for r in rows}
        small = [e.mail_id for e in entries if nchunks[e.mail_id] == 1]
        first: dict[str, bytes] = {}
        if small:
            marks = ", ".join("?" for _ in small)
            cur.execute(
                self._q(
                    f"SELECT mail_id, data FROM {self.chunks} WHERE seq = 0 "
                    f"AND mail_id IN ({marks})"
                ),
                small,
            )
            first = {m: self._blob(d) for m, d in cur.fetchall()}
        out = []
        for e in entries:
            mid = e.mail_id
            out.append(
                Claimed(
                    e,
                    stored_source(first.get(mid), nchunks[mid], partial(self._fetch_chunk, mid)),
                )
            )
        return out

    def complete(self, mail_id: str, owner: str, decision: Decision, now: float) -> bool:
        """Write back one attempt's decision and drop the lease; False if the lease was lost."""
        return self.complete_many(owner, [(mail_id, decision)], now) == 1

    def complete_many(self, owner: str, results: Sequence[tuple[str, Decision]], now: float) -> int:
        """Write back several decisions in one transaction; return how many were recorded.

        An entry whose lease ``owner`` lost (it expired and another worker took it) is
        left alone: the new owner's result counts.
        """
        if not results:
            return 0
        sql = self._q(
            f"UPDATE {self.entries} SET state = ?, attempts = ?, recipients = ?, "
            "next_attempt_at = ?, last_status = ?, uncertain = ?, error = ?, "
            "updated_at = ?, lease_owner = NULL, lease_until = NULL "
            "WHERE mail_id = ? AND lease_owner = ? AND state = 'pending'"
        )
        rows = [
            (
                d.state.value,
                d.attempts,
                dump_recipients(d.recipients),
                d.next_attempt_at if d.next_attempt_at is not None else now,
                dump_status(d.last_status),
                1 if d.uncertain else 0,
                d.error,
                now,
                mail_id,
                owner,
            )
            for mail_id, d in results
        ]
        with self._tx(durable=False) as cur:
            if self.rowcount_many:
                cur.executemany(sql, rows)
                return int(cur.rowcount)
            done = 0
            for row in rows:
                cur.execute(sql, row)
                done += cur.rowcount
            return done

    def release(self, mail_ids: Sequence[str], owner: str) -> None:
        """Give claimed entries back untouched (no attempt counted)."""
        if not mail_ids:
            return
        with self._tx(durable=False) as cur:
            cur.executemany(
                self._q(
                    f"UPDATE {self.entries} SET lease_owner = NULL, lease_until = NULL "
                    "WHERE mail_id = ? AND lease_owner = ?"
                ),
                [(m, owner) for m in mail_ids],
            )

    def extend(self, mail_ids: Sequence[str], owner: str, lease_until: float) -> None:
        """Push the lease of entries still held by ``owner``."""
        if not mail_ids:
            return
        with self._tx(durable=False) as cur:
            cur.executemany(
                self._q(
                    f"UPDATE {self.entries} SET lease_until = ? "
                    "WHERE mail_id = ? AND lease_owner = ?"
                ),
                [(lease_until, m, owner) for m in mail_ids],
            )

    # -- admin --------------------------------------------------------------------

    def retry(self, mail_id: str, now: float) -> bool:
        """Make an entry due now; an ERROR entry goes back to PENDING for its failed recipients.

        An ERROR entry starts afresh: attempts 0, and ``created_at`` (where
        ``max_lifetime`` counts from) becomes the time of the retry.
        """
        entry = self.get(mail_id)
        if entry is None or entry.state is SpoolState.SENT:
            return False
        recipients = {
            a: (RECIPIENT_PENDING if s == RECIPIENT_FAILED else s)
            for a, s in entry.recipients.items()
        }
        with self._tx(durable=True) as cur:
            cur.execute(
                self._q(
                    f"UPDATE {self.entries} SET state = 'pending', next_attempt_at = ?, "
                    "recipients = ?, attempts = CASE WHEN state = 'error' THEN 0 "
                    "ELSE attempts END, error = NULL, updated_at = ?, created_at = CASE WHEN "
                    "state = 'error' THEN ? ELSE created_at END "
                    "WHERE mail_id = ? AND state <> 'sent'"
                ),
                (now, dump_recipients(recipients), now, now, mail_id),
            )
            return bool(cur.rowcount == 1)

    def cancel(self, mail_id: str, now: float) -> bool:
        """Stop a PENDING entry: state ERROR, pending recipients failed ("cancelled")."""
        entry = self.get(mail_id)
        if entry is None or entry.state is not SpoolState.PENDING:
            return False
        recipients = {
            a: (RECIPIENT_FAILED if s == RECIPIENT_PENDING else s)
            for a, s in entry.recipients.items()
        }
        with self._tx(durable=True) as cur:
            cur.execute(
                self._q(
                    f"UPDATE {self.entries} SET state = 'error', error = 'cancelled', "
                    "recipients = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL "
                    "WHERE mail_id = ? AND state = 'pending'"
                ),
                (dump_recipients(recipients), now, mail_id),
            )
            return bool(cur.rowcount == 1)

    def purge(self, state: SpoolState, before: float) -> int:
        """Delete finished entries of ``state`` last changed before ``before``; return the count."""
        if state is SpoolState.PENDING:
            raise ValueError("state: pending entries are never purged (cancel them first)")
        with self._tx(durable=True) as cur:
            cur.execute(
                self._q(
                    f"DELETE FROM {self.chunks} WHERE mail_id IN (SELECT mail_id FROM "
                    f"{self.entries} WHERE state = ? AND updated_at < ?)"
                ),
                (state.value, before),
            )
            cur.execute(
                self._q(f"DELETE FROM {self.entries} WHERE state = ? AND updated_at < ?"),
                (state.value, before),
            )
            return int(cur.rowcount)
