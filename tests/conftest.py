"""Shared fixtures: real SMTP peers on loopback, TLS material, log capture, PostgreSQL.

Fixtures (helpers live in ``tests/support``; ``from support import ...``):

* ``tls_ca`` (session): the test ``trustme.CA``; ``tls_ca_file``: its PEM file.
* ``server_cert`` (session): a leaf for "localhost" and "127.0.0.1";
  ``server_ssl_context`` (session): the server context presenting it.
* ``client_ssl_context``: a fresh client context trusting ``tls_ca``, host names checked.
* ``bad_certs`` (session): :class:`support.BadCerts`; ``.expired()``, ``.not_yet_valid()``,
  ``.wrong_name()``, ``.self_signed()``, ``.unknown_ca()`` give server contexts.
* ``smtpd``: factory ``smtpd(**options) -> SmtpServer`` (aiosmtpd in a thread).
* ``smtp_sink``: factory ``smtp_sink(*switches, dump=False) -> SinkServer`` (Postfix).
* ``smtp_source``: path of Postfix's ``smtp-source``.
* ``script_server``: factory ``script_server(steps, **kw) -> ScriptServer`` (raw TCP).
* ``log_capture``: the ``postillon`` logger at DEBUG, with ``secrets_found()``.
* ``pg_dsn``: ``POSTILLON_TEST_PG`` checked reachable; ``pg_schema_dsn``: a DSN on a fresh,
  empty schema dropped after the test.

Every server binds 127.0.0.1 on a free port and is stopped at teardown. Missing peers skip
the test, or fail it when ``POSTILLON_REQUIRE_ALL=1`` (CI).
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

# The helpers import as ``support`` whatever pytest's import mode or rootdir layout is.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from support import (  # noqa: E402
    BadCerts,
    LogCapture,
    ScriptServer,
    SinkServer,
    SmtpServer,
    Step,
    client_context,
    fresh_schema,
    pg_dsn_or_require,
    server_context,
    smtp_sink_path,
    smtp_source_path,
    start_smtpd,
)

# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The certificate authority of this test session."""
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA's certificate as a PEM file (for ``cafile=`` style settings)."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def server_cert(tls_ca: trustme.CA) -> trustme.LeafCert:
    """The good server certificate, for "localhost" and "127.0.0.1"."""
    return tls_ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture(scope="session")
def server_ssl_context(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server context presenting ``server_cert``."""
    return server_context(server_cert)


@pytest.fixture
def client_ssl_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A client context trusting only the test CA, with host-name checks on."""
    return client_context(tls_ca)


@pytest.fixture(scope="session")
def bad_certs(tls_ca: trustme.CA) -> BadCerts:
    """Makers of broken server certificates (expired, wrong name, self-signed...)."""
    return BadCerts(tls_ca)


# --- servers -----------------------------------------------------------------------------


@pytest.fixture
def smtpd(server_ssl_context: ssl.SSLContext) -> Iterator[Callable[..., SmtpServer]]:
    """Factory: ``smtpd(**options)`` starts an aiosmtpd-based server (see support.smtpd).

    Options: ``tls`` (None, "starttls", "implicit"), ``ssl_context`` (default: the good
    test certificate), ``require_starttls``, ``auth`` (mechanism names), ``credentials``,
    ``tokens``, ``auth_required``, ``auth_require_tls``, ``smtputf8``, ``size``, ``refuse``,
    ``faults``, ``ehlo_extra_lines``, ``pipelining``, ``eightbitmime``, ``dsn``,
    ``requiretls``, ``chunking``.
    """
    servers: list[SmtpServer] = []

    def factory(**options: Any) -> SmtpServer:
        ctx = options.pop("ssl_context", None) or server_ssl_context
        server = start_smtpd(ssl_context=ctx, **options)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., SinkServer]]:
    """Factory: ``smtp_sink(*switches, dump=False)`` runs Postfix's smtp-sink on loopback."""
    binary = smtp_sink_path()
    sinks: list[SinkServer] = []

    def factory(*switches: str, dump: bool = False) -> SinkServer:
        for switch in switches:
            if not isinstance(switch, str):
                raise ValueError(f"smtp_sink(): switches must be strings, got {switch!r}")
        sink = SinkServer(binary, tuple(switches), dump)
        sinks.append(sink)
        return sink.start()

    yield factory
    for sink in sinks:
        sink.stop()


@pytest.fixture
def smtp_source() -> str:
    """The path of Postfix's smtp-source (load generator)."""
    return smtp_source_path()


@pytest.fixture
def script_server(
    server_ssl_context: ssl.SSLContext,
) -> Iterator[Callable[..., ScriptServer]]:
    """Factory: ``script_server(steps, chunk=..., default_replies=..., ...)`` (raw TCP).

    ``ssl_context`` defaults to the good test certificate (for ``starttls()`` steps).
    """
    servers: list[ScriptServer] = []

    def factory(steps: list[Step] | tuple[Step, ...] = (), **kwargs: Any) -> ScriptServer:
        kwargs.setdefault("ssl_context", server_ssl_context)
        server = ScriptServer(steps, **kwargs)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.stop()


# --- logs --------------------------------------------------------------------------------


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    """Every record of the ``postillon`` logger at DEBUG, plus ``secrets_found()``."""
    capture = LogCapture().attach("postillon")
    try:
        yield capture
    finally:
        capture.detach()


# --- PostgreSQL --------------------------------------------------------------------------


@pytest.fixture
def pg_dsn() -> str:
    """``POSTILLON_TEST_PG``, checked reachable; else skip (or fail in CI)."""
    return pg_dsn_or_require()


@pytest.fixture
def pg_schema_dsn(pg_dsn: str) -> Iterator[str]:
    """A DSN whose search_path is a new empty schema, dropped after the test."""
    with fresh_schema(pg_dsn) as dsn:
        yield dsn


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say up front whether missing peers skip or fail."""
    mode = "fail" if os.environ.get("POSTILLON_REQUIRE_ALL") == "1" else "skip"
    return [f"postillon: missing test peers {mode} (POSTILLON_REQUIRE_ALL)"]
