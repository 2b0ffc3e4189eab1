"""The SQLite store: one file, WAL, the embedded default.

Workers in several processes may share one file: a claim runs in ``BEGIN IMMEDIATE``
(the write lock is taken before the select), so two processes never claim the same
entry while its lease runs. Each thread has its own connections (sqlite3 objects are
not shared across threads): one with ``synchronous=FULL`` for submits and admin
changes, one with ``synchronous=NORMAL`` for the worker's writes (see ``_store``).
"""

# S608: the only text spliced into SQL is the table names, constants or a schema name
# checked against a plain-identifier pattern; every value goes through placeholders.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._store import Claimed, SQLStore

__all__ = ["SQLiteStore"]

log = logging.getLogger("postillon.spool")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool_entries (
    mail_id TEXT PRIMARY KEY,
    idem_key TEXT UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    mail_from TEXT NOT NULL,
    message_id TEXT NOT NULL,
    recipients TEXT NOT NULL,
    last_status TEXT,
    uncertain INTEGER NOT NULL,
    error TEXT,
    size INTEGER NOT NULL,
    nchunks INTEGER NOT NULL,
    flags INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_entries_due ON spool_entries (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS spool_chunks (
    mail_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (mail_id, seq)
);
"""

_CLAIM_COLUMNS = (
    "mail_id, state, attempts, created_at, updated_at, next_attempt_at, mail_from, "
    "message_id, recipients, last_status, uncertain, error, size, nchunks, flags"
)


class SQLiteStore(SQLStore):
    """Spool store in one SQLite file (created with mode 0600 on first use)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 60.0) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ValueError(f"spool: directory {str(self.path.parent)!r} does not exist")
        self._busy = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        # the spool holds mail: readable by its owner only (security.md 3.3); the WAL and
        # shared-memory files inherit this mode from the database file
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        conn = self._conn(durable=True)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ValueError(f"spool: {str(self.path)!r} cannot use WAL (journal mode {mode})")
        with self._tx(durable=True) as cur:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _conn(self, durable: bool) -> sqlite3.Connection:
        if self._closed:
            raise ValueError("spool: closed")
        attr = "durable" if durable else "fast"
        conn: sqlite3.Connection | None = getattr(self._local, attr, None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self._busy, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={int(self._busy * 1000)}")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            setattr(self._local, attr, conn)
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self, durable: bool) -> Iterator[Any]:
        conn = self._conn(durable)
        # IMMEDIATE: take the write lock first, so a claim's select and update are atomic
        # against workers in other processes
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
            conn.execute("COMMIT")
        except BaseException:
            # a failed COMMIT (disk full, I/O error on fsync) is reported, never retried
            # into a false success (fsyncgate, security.md 2.2)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        local = self._local
        conn = getattr(local, "fast", None) or getattr(local, "durable", None)
        if conn is None:
            conn = self._conn(durable=False)
        cur = conn.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def claim(self, owner: str, now: float, lease_until: float, limit: int) -> list[Claimed]:
        """Lease up to ``limit`` due entries to ``owner`` until ``lease_until``."""
        with self._tx(durable=False) as cur:
            cur.execute(
                f"SELECT {_CLAIM_COLUMNS}, rowid FROM spool_entries WHERE state = 'pending' "
                "AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?) "
                "ORDER BY next_attempt_at, rowid LIMIT ?",
                (now, now, limit),
            )
            rows = cur.fetchall()
            if not rows:
                return []
            cur.executemany(
                "UPDATE spool_entries SET lease_owner = ?, lease_until = ? WHERE mail_id = ?",
                [(owner, lease_until, r[0]) for r in rows],
            )
            return self._claimed(cur, rows)

    def close(self) -> None:
        """Close every connection of every thread."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
