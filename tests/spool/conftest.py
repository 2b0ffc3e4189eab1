"""Fixtures of the spool tests: both stores, servers, messages, a fake sender.

``spool`` (and ``store_url``) are parametrised over SQLite and PostgreSQL so the one store
suite runs on both; every PostgreSQL test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for `support`

from spool_helpers import FakeSender, make_prepared, ok_status, transporter_for  # noqa: F401

from postillon.spool import Spool

from support.require import require, smtp_sink_path

DEFAULT_PG = "postgresql://root@127.0.0.1:5432/test"


def _pg_available(url: str) -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'postillon[postgres]')"
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"cannot connect to {url.rsplit('@', maxsplit=1)[-1]}: {type(exc).__name__}"
    return None


@pytest.fixture(scope="session")
def spool_pg_url() -> str:
    """The test PostgreSQL URL ($POSTILLON_TEST_PG, else the local default), or skip/fail."""
    url = os.environ.get("POSTILLON_TEST_PG") or DEFAULT_PG
    problem = _pg_available(url)
    if problem is not None:
        require("PostgreSQL", f"set POSTILLON_TEST_PG to a test database URL ({problem})")
    return url


@pytest.fixture
def pg_schema(spool_pg_url: str) -> Iterator[str]:
    """A fresh schema name, dropped after the test."""
    name = f"spool_t_{uuid.uuid4().hex[:12]}"
    yield name
    import psycopg

    with psycopg.connect(spool_pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_spool(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Spool]]:
    """A factory opening (again) the same spool of this test: ``open_spool(clock=...)``."""
    opened: list[Spool] = []
    if store_kind == "sqlite":
        location: str = str(tmp_path / "spool.db")
        schema: str | None = None
    else:
        location = request.getfixturevalue("spool_pg_url")
        schema = request.getfixturevalue("pg_schema")

    def factory(**kwargs: Any) -> Spool:
        sp = Spool(location, schema=schema, **kwargs)
        opened.append(sp)
        return sp

    yield factory
    for sp in opened:
        sp.close()


@pytest.fixture
def spool(open_spool: Callable[..., Spool]) -> Spool:
    return open_spool()


@pytest.fixture
def smtpd_server() -> Iterator[Callable[..., Any]]:
    """Start aiosmtpd test servers (``support.smtpd``); all stopped at teardown."""
    from support.smtpd import start_smtpd

    servers: list[Any] = []

    def factory(**options: Any) -> Any:
        server = start_smtpd(**options)
        servers.append(server)
        return server

    yield factory
    for s in servers:
        s.stop()


@pytest.fixture
def sink_server() -> Iterator[Callable[..., Any]]:
    """Start Postfix smtp-sink processes with switches; all stopped at teardown."""
    from support.sink import SinkServer

    binary = smtp_sink_path()
    servers: list[Any] = []

    def factory(*switches: str, dump: bool = False) -> Any:
        server = SinkServer(binary, tuple(switches), dump).start()
        servers.append(server)
        return server

    yield factory
    for s in servers:
        s.stop()
