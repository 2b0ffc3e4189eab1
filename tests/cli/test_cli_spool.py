"""``postillon spool submit|run|status|list|retry|cancel|purge`` against a real server."""

from __future__ import annotations

import json

from cli_helpers import one_clear_line

MSG = ("--from", "ann@example.com", "--to", "bob@example.com", "--subject", "queued")


def test_submit_run_status_list_purge(cli, smtpd) -> None:
    server = smtpd()
    r = cli("spool", "submit", "--spool", "q.db", *MSG, "--count", "3", "--json")
    assert r.returncode == 0, r.stderr
    ids = json.loads(r.stdout)
    assert len(ids) == 3 and len(set(ids)) == 3

    r = cli("spool", "status", "--spool", "q.db", "--json")
    assert json.loads(r.stdout) == {"pending": 3, "sent": 0, "error": 0}
    r = cli("spool", "list", "--spool", "q.db", "--state", "pending")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3

    r = cli(
        "spool", "run", "--spool", "q.db", "--host", "127.0.0.1", "--port", str(server.port),
        "--security", "none", "--until-empty", "--workers", "2", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert run["sent"] == 3 and run["queue"] == {"pending": 0, "sent": 3, "error": 0}
    assert len(server.wait_for(3)) == 3

    r = cli("spool", "status", "--spool", "q.db", ids[0], "--json")
    entry = json.loads(r.stdout)
    assert entry["state"] == "sent" and entry["last_status"]["status"] == 250

    r = cli("spool", "purge", "--spool", "q.db", "--state", "sent", "--older-than", "0s")
    assert r.returncode == 0 and "purged 3" in r.stdout
    r = cli("spool", "list", "--spool", "q.db")
    assert r.stdout == ""


def test_run_takes_settings_from_environment(cli, smtpd) -> None:
    server = smtpd()
    assert cli("spool", "submit", *MSG, env={"POSTILLON_SPOOL": "env.db"}).returncode == 0
    env = {
        "POSTILLON_SPOOL": "env.db",
        "POSTILLON_HOST": "127.0.0.1",
        "POSTILLON_PORT": str(server.port),
        "POSTILLON_SECURITY": "none",
    }
    r = cli("spool", "run", "--until-empty", "--progress", env=env)
    assert r.returncode == 0, r.stderr
    assert "queue: 0 pending, 1 sent, 0 error" in r.stdout
    assert "progress:" in r.stderr
    server.wait_for(1)


def test_permanent_refusal_ends_in_error_and_retry_cancel(cli, smtpd) -> None:
    server = smtpd(refuse={"bob@example.com": (550, "5.1.1 unknown user")})
    mail_id = cli("spool", "submit", "--spool", "q.db", *MSG).stdout.strip()
    r = cli(
        "spool", "run", "--spool", "q.db", "--host", "127.0.0.1", "--port", str(server.port),
        "--security", "none", "--until-empty", "--quiet",
    )  # fmt: skip
    assert r.returncode == 1  # the server refused
    r = cli("spool", "status", "--spool", "q.db", mail_id)
    assert f"{mail_id}: error" in r.stdout and "550" in r.stdout

    r = cli("spool", "retry", "--spool", "q.db", mail_id)
    assert r.returncode == 0 and "due now" in r.stdout
    r = cli("spool", "cancel", "--spool", "q.db", mail_id)
    assert r.returncode == 0 and "cancelled" in r.stdout
    r = cli("spool", "cancel", "--spool", "q.db", mail_id)
    assert r.returncode == 1 and "not pending" in r.stdout


def test_spool_bad_usage(cli) -> None:
    for args, named in (
        (("spool", "status", "--spool", "q.db", "no-such-id"), "no-such-id"),
        (("spool", "retry", "--spool", "q.db", "x" * 80), "mail_id"),
        (("spool", "purge", "--spool", "q.db", "--older-than", "soon"), "--older-than"),
        (("spool", "submit", "--spool", "q.db", "--from", "a@@b", "--to", "c@d.e"), "from"),
        (("spool", "run", "--spool", "q.db", "--workers", "0", "--host", "h"), "--workers"),
        (("spool", "frobnicate"), "frobnicate"),
    ):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert named in one_clear_line(r.stderr), args
