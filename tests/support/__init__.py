"""Test harness of postillon: real SMTP peers on loopback, TLS material, log scanning.

The fixtures of ``tests/conftest.py`` wrap these helpers; import the helpers directly
when a test needs more than a fixture gives (``from support import Fault, send, expect``).
``tests/`` is on ``sys.path`` during the test run (``conftest.py`` sits there), so the
package imports as ``support``.

Modules:

* :mod:`support.require`: ``require()`` (skip, or fail in CI), program lookup.
* :mod:`support.tls`: server/client ``SSLContext`` helpers and :class:`BadCerts`.
* :mod:`support.smtpd`: aiosmtpd-based server with faults and every SASL mechanism.
* :mod:`support.sasl`: the server side of CRAM-MD5, XOAUTH2, OAUTHBEARER, SCRAM-SHA-256.
* :mod:`support.sink`: Postfix ``smtp-sink`` runner and dump reader.
* :mod:`support.script`: raw scripted TCP server for byte-exact faults.
* :mod:`support.logs`: capture of the ``postillon`` logger and the secret scanner.
* :mod:`support.pg`: the PostgreSQL DSN of the tests.
"""

from __future__ import annotations

from .logs import LogCapture, scan_for_secrets
from .pg import PG_ENV, fresh_schema, pg_dsn_or_require
from .require import (
    find_program,
    node_path,
    require,
    require_all,
    require_program,
    smtp_sink_path,
    smtp_source_path,
)
from .script import (
    SMTP_DEFAULTS,
    ScriptServer,
    Step,
    close,
    expect,
    half_close,
    read_until,
    reset,
    send,
    sleep,
    stall,
    starttls,
)
from .sink import SinkMessage, SinkServer, free_port, parse_dump
from .smtpd import MECHANISMS, AuthAttempt, Fault, ReceivedMessage, SmtpServer, start_smtpd
from .tls import SERVER_NAMES, BadCerts, PemFiles, client_context, server_context, write_leaf

__all__ = [
    "MECHANISMS",
    "PG_ENV",
    "SERVER_NAMES",
    "SMTP_DEFAULTS",
    "AuthAttempt",
    "BadCerts",
    "Fault",
    "LogCapture",
    "PemFiles",
    "ReceivedMessage",
    "ScriptServer",
    "SinkMessage",
    "SinkServer",
    "SmtpServer",
    "Step",
    "client_context",
    "close",
    "expect",
    "find_program",
    "free_port",
    "fresh_schema",
    "half_close",
    "node_path",
    "parse_dump",
    "pg_dsn_or_require",
    "read_until",
    "require",
    "require_all",
    "require_program",
    "reset",
    "scan_for_secrets",
    "send",
    "server_context",
    "sleep",
    "smtp_sink_path",
    "smtp_source_path",
    "stall",
    "start_smtpd",
    "starttls",
    "write_leaf",
]
