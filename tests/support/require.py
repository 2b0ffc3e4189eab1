"""Skip on a developer's machine, fail in CI: the rule for every external test peer.

A test that needs something the machine may lack (Postfix's ``smtp-sink``, PostgreSQL,
node) calls :func:`require`. Normally the test is skipped with a visible reason; with
``POSTILLON_REQUIRE_ALL=1`` (set by ``.ci/run``) it fails instead, so CI can never go green
by skipping.

Example::

    sink = find_program("smtp-sink", "/usr/sbin/smtp-sink") or require(
        "smtp-sink", "Postfix's smtp-sink is not installed (apt-get install postfix)"
    )
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

REQUIRE_ALL_ENV = "POSTILLON_REQUIRE_ALL"


def require_all() -> bool:
    """True when every optional peer is mandatory (CI)."""
    return os.environ.get(REQUIRE_ALL_ENV, "") == "1"


def require(what: str, reason: str) -> NoReturn:
    """Skip the current test because ``what`` is missing, or fail when CI requires it.

    ``what`` names the missing thing ("smtp-sink", "PostgreSQL"); ``reason`` says why and,
    ideally, how to get it.
    """
    if not what or not reason:
        raise ValueError("require(): 'what' and 'reason' must be non-empty")
    if require_all():
        pytest.fail(f"{what} is required ({REQUIRE_ALL_ENV}=1): {reason}", pytrace=False)
    pytest.skip(f"{what} unavailable: {reason}")


def find_program(name: str, *candidates: str) -> str | None:
    """The path of program ``name``: the first existing candidate path, else ``$PATH``."""
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def require_program(name: str, *candidates: str, hint: str = "") -> str:
    """The path of program ``name``, or :func:`require` it (skip or fail)."""
    path = find_program(name, *candidates)
    if path is None:
        require(name, f"{name} not found" + (f" ({hint})" if hint else ""))
    return path


def smtp_source_path() -> str:
    """Postfix's ``smtp-source`` (the load generator of the benchmarks), or require it."""
    return require_program("smtp-source", "/usr/sbin/smtp-source", hint="apt-get install postfix")


def smtp_sink_path() -> str:
    """Postfix's ``smtp-sink``, or require it."""
    return require_program("smtp-sink", "/usr/sbin/smtp-sink", hint="apt-get install postfix")


def node_path() -> str:
    """The ``node`` interpreter, or require it."""
    return require_program("node", hint="apt-get install nodejs")
