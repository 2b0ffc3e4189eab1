"""PostgreSQL for the spool tests: the DSN from ``POSTILLON_TEST_PG``, checked reachable.

Example::

    dsn = pg_dsn_or_require()              # skip (or fail in CI) without a database
    with fresh_schema(dsn) as schema_dsn:  # an empty schema, dropped afterwards
        spool = Spool(schema_dsn)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from .require import require

PG_ENV = "POSTILLON_TEST_PG"


def pg_unreachable(dsn: str) -> str | None:
    """None when ``dsn`` accepts a connection, else the reason (psycopg's error)."""
    try:
        # psycopg is an optional extra: without it the PostgreSQL tests require() it
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'postillon[postgres]')"
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot connect: {first}"
    return None


def pg_dsn_or_require() -> str:
    """The reachable DSN of ``POSTILLON_TEST_PG``, or :func:`require` PostgreSQL."""
    dsn = os.environ.get(PG_ENV, "").strip()
    if not dsn:
        require("PostgreSQL", f"{PG_ENV} is not set (e.g. postgresql://root@127.0.0.1:5432/test)")
    reason = pg_unreachable(dsn)
    if reason is not None:
        require("PostgreSQL", f"{PG_ENV}: {reason}")
    return dsn


@contextmanager
def fresh_schema(dsn: str) -> Iterator[str]:
    """A new empty schema; yields a DSN whose ``search_path`` is that schema only."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, options=f"-c search_path={name}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
