"""``postillon spool run|status|list`` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spool_helpers import make_prepared

from postillon.cli import main
from postillon.spool import Spool, SpoolState


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "POSTILLON_PASSWORD"}
    return subprocess.run(
        [sys.executable, "-c", "from postillon.cli import main; raise SystemExit(main())", *args],
        capture_output=True, text=True, timeout=120, env={**full, **(env or {})}, check=False,
    )  # fmt: skip


def test_run_until_empty_prints_progress(tmp_path: Path, smtpd_server: Callable[..., Any]) -> None:
    server = smtpd_server()
    db = str(tmp_path / "q.db")
    with Spool(db) as spool:
        ids = spool.submit_many([make_prepared() for _ in range(20)])
    r = cli("spool", "run", "--spool", db, "--host", "127.0.0.1", "--port", str(server.port),
            "--security", "none", "--workers", "2", "--until-empty")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "queue: 0 pending, 20 sent, 0 error" in r.stdout.splitlines()[-1]
    assert len(server.wait_for(20)) == 20
    r = cli("spool", "status", "--spool", db, ids[0], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "sent"
    r = cli("spool", "status", "--spool", db)
    assert "20 sent" in r.stdout
    r = cli("spool", "list", "--spool", db, "--state", "sent", "--limit", "5")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 5


def test_run_with_wrong_password_exits_1_and_keeps_mail(
    tmp_path: Path, smtpd_server: Callable[..., Any]
) -> None:
    server = smtpd_server(auth=["PLAIN"], credentials={"alice": "right"}, auth_require_tls=False)
    db = str(tmp_path / "q.db")
    with Spool(db) as spool:
        [mail_id] = spool.submit_many([make_prepared()])
    r = cli("spool", "run", "--spool", db, "--host", "127.0.0.1", "--port", str(server.port),
            "--security", "none", "--insecure-accept-unencrypted", "--user", "alice", "--until-empty",
            env={"POSTILLON_PASSWORD": "pw-that-must-not-show"})  # fmt: skip
    assert r.returncode == 1
    assert "535" in r.stderr and "pw-that-must-not-show" not in r.stderr + r.stdout
    with Spool(db) as spool:
        e = spool.status(mail_id)
        assert e.state is SpoolState.PENDING and e.attempts == 0


def test_bad_usage(tmp_path: Path, capsys: Any) -> None:
    db = str(tmp_path / "q.db")
    assert main(["spool", "status", "--spool", db, "no-such-id"]) == 2
    assert "mail_id" in capsys.readouterr().err
    assert main([]) == 2
    r = cli("spool", "run", "--spool", db)  # --host missing
    assert r.returncode == 2 and "--host" in r.stderr
    r = cli("spool", "run", "--spool", db, "--host", "h", "--user", "u")
    assert r.returncode == 2 and "POSTILLON_PASSWORD" in r.stderr
