"""Fixtures of the command-line tests: run the INSTALLED ``postillon`` command.

Helpers that tests import live in ``cli_helpers`` (a unique module name: every test
directory has a ``conftest``).

``cli(*args, env=..., input=...)`` runs it as a subprocess in a scratch directory, with a
clean environment (no ``POSTILLON_*`` of the developer's, ``HOME`` pointing at the scratch
directory so that no personal ``~/.config/postillon/config.toml`` is read).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import postillon_command


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of every run: the caller's, without POSTILLON_*, HOME in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTILLON_")}
    env["HOME"] = str(tmp_path)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args, env={...}, input="...", timeout=30)`` -> CompletedProcess (text)."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,  # noqa: A002 - subprocess's name
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(cli_env)
        full_env.update(env or {})
        return subprocess.run(
            [*postillon_command(), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=full_env,
            cwd=tmp_path,
            timeout=timeout,
            check=False,
        )

    return run
