"""The PostgreSQL store: many worker processes on many machines share one queue.

Claims use ``FOR UPDATE SKIP LOCKED``: concurrent workers each take different due
entries without waiting on one another, and a lease (``lease_until``) hands the entries
of a killed worker back to the queue once it expires. ``psycopg`` (3.x, the
``postgres`` extra) is imported only when a ``postgresql://`` spool is opened.

Lease times come from the workers' clocks: keep the machines' clocks in sync (NTP) and
the lease well above the largest skew.
"""

# S608: the only text spliced into SQL is the table names, constants or a schema name
# checked against a plain-identifier pattern; every value goes through placeholders.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

from ._store import Claimed, SQLStore

__all__ = ["PostgresStore"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {s}.spool_entries (
    mail_id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    idem_key TEXT UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    mail_from TEXT NOT NULL,
    message_id TEXT NOT NULL,
    recipients TEXT NOT NULL,
    last_status TEXT,
    uncertain INTEGER NOT NULL,
    error TEXT,
    size BIGINT NOT NULL,
    nchunks INTEGER NOT NULL,
    flags INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_entries_due ON {s}.spool_entries (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS {s}.spool_chunks (
    mail_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (mail_id, seq)
);
"""

_COLUMNS = (
    "mail_id, state, attempts, created_at, updated_at, next_attempt_at, mail_from, "
    "message_id, recipients, last_status, uncertain, error, size, nchunks, flags"
)


def _redact(url: str) -> str:
    # never show a password given inside the URL
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class PostgresStore(SQLStore):
    """Spool store in a PostgreSQL database (tables created on first use).

    ``schema`` (default ``public``) keeps several spools apart in one database; it is
    created when missing.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        try:
            import psycopg  # optional dependency, loaded only when used
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ValueError(
                "spool: a postgresql:// spool needs psycopg (pip install 'postillon[postgres]')"
            ) from exc
        self._psycopg = psycopg
        schema = schema or "public"
        if not _IDENT.match(schema):
            raise ValueError(f"schema: not a plain SQL identifier: {schema!r}")
        self.url = url
        self.schema = schema
        self.entries = f'"{schema}".spool_entries'
        self.chunks = f'"{schema}".spool_chunks'
        self.order = "seq"
        self.rowcount_many = False
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []
        self._closed = False
        with self._tx(durable=True) as cur:
            # one creator at a time: concurrent CREATE ... IF NOT EXISTS can still collide
            cur.execute("SELECT pg_advisory_xact_lock(7305511601)")
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            for stmt in _SCHEMA.format(s=f'"{schema}"').split(";"):
                if stmt.strip():
                    cur.execute(stmt)

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.url)!r}, schema={self.schema!r})"

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _conn(self) -> Any:
        if self._closed:
            raise ValueError("spool: closed")
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = self._psycopg.connect(self.url, autocommit=True)
            except self._psycopg.Error as exc:
                # psycopg's message may quote the URL: show ours, redacted
                raise ValueError(
                    f"spool: cannot connect to {_redact(self.url)}: {type(exc).__name__}"
                ) from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self, durable: bool) -> Iterator[Any]:
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cur:
            if not durable:
                # see _store: losing a worker's write on power loss only causes a resend
                cur.execute("SET LOCAL synchronous_commit TO OFF")
            yield cur

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._conn().cursor() as cur:
            yield cur

    def claim(self, owner: str, now: float, lease_until: float, limit: int) -> list[Claimed]:
        """Lease up to ``limit`` due entries; entries other workers hold are skipped."""
        with self._tx(durable=False) as cur:
            cur.execute(
                f"UPDATE {self.entries} SET lease_owner = %s, lease_until = %s "
                f"WHERE mail_id IN (SELECT mail_id FROM {self.entries} "
                "WHERE state = 'pending' AND next_attempt_at <= %s "
                "AND (lease_until IS NULL OR lease_until <= %s) "
                "ORDER BY next_attempt_at, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"RETURNING {_COLUMNS}, seq",
                (owner, lease_until, now, now, limit),
            )
            rows = cur.fetchall()
            if not rows:
                return []
            return self._claimed(cur, rows)

    def drop(self) -> None:
        """Drop this spool's tables (and its schema unless ``public``): for tests."""
        with self._tx(durable=True) as cur:
            if self.schema == "public":
                cur.execute(f"DROP TABLE IF EXISTS {self.chunks}, {self.entries}")
            else:
                cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        """Close every connection of every thread."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
