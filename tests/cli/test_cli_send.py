"""``postillon send`` and ``postillon check``, run as the installed command against real servers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_helpers import one_clear_line

PASSWORD = "s3cret-Pw!"


def plain(server) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--host", server.host, "--port", str(server.port), "--security", "none"]


def test_send_text_file_plain(cli, smtpd, tmp_path: Path) -> None:
    server = smtpd()
    (tmp_path / "body.txt").write_text("Hello Bob,\nsee you.\n", encoding="utf-8")
    r = cli(
        "send", *plain(server), "--from", "ann@example.com", "--to", "bob@example.com",
        "--subject", "Minutes", "--text", "body.txt",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok 250"), r.stdout
    assert "message-id: <" in r.stdout
    [msg] = server.wait_for(1)
    assert msg.rcpt_tos == ["bob@example.com"]
    parsed = msg.parsed()
    assert parsed["Subject"] == "Minutes"
    assert "see you." in parsed.get_content()


def test_send_json_and_comma_separated_recipients(cli, smtpd) -> None:
    server = smtpd()
    r = cli(
        "send", *plain(server), "--from", "ann@example.com",
        "--to", "bob@example.com,carol@example.com", "--cc", "dan@example.com",
        "--bcc", "eve@example.com", "--subject", "x", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["success"] is True and data["status"] == 250
    assert set(data["recipients"]) == {
        "bob@example.com",
        "carol@example.com",
        "dan@example.com",
        "eve@example.com",
    }
    [msg] = server.wait_for(1)
    assert "eve@example.com" in msg.rcpt_tos
    assert b"eve@example.com" not in msg.content  # Bcc never written


def test_send_starttls_auth_with_cafile_and_env_password(cli, smtpd, tls_ca_file) -> None:
    server = smtpd(tls="starttls", auth=["PLAIN", "LOGIN"], credentials={"ann": PASSWORD})
    r = cli(
        "send", "--host", "127.0.0.1", "--port", str(server.port), "--security", "starttls",
        "--cafile", str(tls_ca_file), "--user", "ann", "--from", "ann@example.com",
        "--to", "bob@example.com", "--subject", "over TLS",
        env={"POSTILLON_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = server.wait_for(1)
    assert msg.tls and msg.auth_user == "ann"
    assert PASSWORD not in r.stdout + r.stderr


def test_send_refused_login_exits_1(cli, smtpd, tls_ca_file) -> None:
    server = smtpd(tls="starttls", auth=["PLAIN"], credentials={"ann": PASSWORD})
    r = cli(
        "send", "--host", "127.0.0.1", "--port", str(server.port), "--cafile", str(tls_ca_file),
        "--user", "ann", "--from", "ann@example.com", "--to", "bob@example.com",
        env={"POSTILLON_PASSWORD": "wrong"},
    )  # fmt: skip
    assert r.returncode == 1
    assert "FAILED 535" in r.stdout
    assert server.messages == []


def test_send_untrusted_certificate_exits_1_in_plain_words(cli, smtpd) -> None:
    server = smtpd(tls="starttls")
    r = cli(
        "send", "--host", "127.0.0.1", "--port", str(server.port),
        "--from", "ann@example.com", "--to", "bob@example.com",
    )  # fmt: skip
    assert r.returncode == 1
    assert "FAILED 0" in r.stdout and "issuer is not trusted" in r.stdout


def test_send_recipient_refused_exits_1(cli, smtpd) -> None:
    server = smtpd(refuse={"nobody@example.com": (550, "5.1.1 no such user")})
    r = cli(
        "send", *plain(server), "--from", "ann@example.com",
        "--to", "bob@example.com,nobody@example.com", "--json",
    )  # fmt: skip
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["recipients"]["nobody@example.com"]["accepted"] is False
    assert data["recipients"]["bob@example.com"]["accepted"] is True


def test_send_unreachable_exits_1(cli) -> None:
    from support import free_port

    r = cli(
        "send", "--host", "127.0.0.1", "--port", str(free_port()), "--security", "none",
        "--from", "a@example.com", "--to", "b@example.com", "--timeout", "3",
    )  # fmt: skip
    assert r.returncode == 1
    assert "FAILED 0" in r.stdout and "refused" in r.stdout


def test_send_html_stdin_and_attachment(cli, smtpd, tmp_path: Path) -> None:
    server = smtpd()
    (tmp_path / "report.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (tmp_path / "text.txt").write_text("plain part", encoding="utf-8")
    r = cli(
        "send", *plain(server), "--from", "ann@example.com", "--to", "bob@example.com",
        "--subject", "Résumé", "--text", "text.txt", "--html", "-", "--attach", "report.csv",
        "--header", "X-Campaign: spring",
        input="<p>Bonjour</p>",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    parsed = server.wait_for(1)[0].parsed()
    assert parsed["Subject"] == "Résumé"
    assert parsed["X-Campaign"] == "spring"
    names = [p.get_filename() for p in parsed.iter_attachments()]
    assert names == ["report.csv"]
    html = parsed.get_body(("html",))
    assert html is not None and "Bonjour" in html.get_content()


def test_send_eml_envelope_from_headers_and_several_files(cli, smtpd, tmp_path: Path) -> None:
    server = smtpd()
    for n in (1, 2):
        (tmp_path / f"m{n}.eml").write_bytes(
            b"From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nBcc: hidden@example.com\r\n"
            b"Subject: ready " + str(n).encode() + b"\r\n\r\nbody\r\n"
        )
    r = cli("send", *plain(server), "--eml", "m1.eml", "--eml", "m2.eml")
    assert r.returncode == 0, r.stderr
    assert "m1.eml: ok 250" in r.stdout and "m2.eml: ok 250" in r.stdout
    assert "2 sent, 0 failed" in r.stdout
    msgs = server.wait_for(2)
    assert sorted(msgs[0].rcpt_tos) == ["bob@example.com", "hidden@example.com"]
    assert b"Bcc" not in msgs[0].content


def test_send_eml_with_explicit_envelope(cli, smtpd, tmp_path: Path) -> None:
    server = smtpd()
    (tmp_path / "m.eml").write_bytes(b"Subject: raw\r\n\r\nexact bytes\r\n")
    r = cli(
        "send", *plain(server), "--eml", "m.eml", "--from", "a@example.com",
        "--to", "z@example.com",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    [msg] = server.wait_for(1)
    assert msg.mail_from == "a@example.com" and msg.rcpt_tos == ["z@example.com"]
    assert msg.content.endswith(b"exact bytes\r\n")


def test_bulk_count_shows_progress(cli, smtp_sink) -> None:
    sink = smtp_sink("-c")
    r = cli(
        "send", "--host", sink.host, "--port", str(sink.port), "--security", "none",
        "--from", "a@example.com", "--to", "b@example.com", "--subject", "bulk",
        "--count", "250", "--progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "250 sent, 0 failed" in r.stdout
    assert "progress: 250/250 done, 0 failed" in r.stderr


def test_bulk_without_tty_prints_no_progress(cli, smtpd) -> None:
    server = smtpd()
    r = cli(
        "send", *plain(server), "--from", "a@example.com", "--to", "b@example.com",
        "--count", "3", "--json",
    )  # fmt: skip
    assert r.returncode == 0
    assert r.stderr == ""
    assert len(json.loads(r.stdout)) == 3
    server.wait_for(3)


# --- settings: environment, accounts, precedence ----------------------------------------


def test_settings_from_environment(cli, smtpd) -> None:
    server = smtpd()
    r = cli(
        "send", "--to", "b@example.com", "--subject", "env",
        env={
            "POSTILLON_HOST": "127.0.0.1", "POSTILLON_PORT": str(server.port),
            "POSTILLON_SECURITY": "none", "POSTILLON_FROM": "env@example.com",
        },
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert server.wait_for(1)[0].mail_from == "env@example.com"


def _write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def test_account_with_password_command(cli, smtpd, tls_ca_file, tmp_path: Path) -> None:
    server = smtpd(tls="starttls", auth=["PLAIN"], credentials={"ann": PASSWORD})
    script = tmp_path / "pw.py"
    script.write_text(f"print({PASSWORD!r})\n", encoding="utf-8")
    config = _write_config(
        tmp_path / "config.toml",
        f"""
[accounts.work]
host = "127.0.0.1"
port = {server.port}
security = "starttls"
user = "ann"
cafile = "{tls_ca_file}"
password_command = "{sys.executable} {script}"
from = "Ann <ann@example.com>"
""",
    )
    r = cli("send", "--config", str(config), "--account", "work", "--to", "b@example.com")
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = server.wait_for(1)
    assert msg.auth_user == "ann" and msg.mail_from == "ann@example.com"
    assert PASSWORD not in r.stdout + r.stderr


def test_default_config_path_and_default_account(cli, smtpd, tmp_path: Path) -> None:
    server = smtpd()
    conf_dir = tmp_path / ".config" / "postillon"
    conf_dir.mkdir(parents=True)
    _write_config(
        conf_dir / "config.toml",
        f'default_account = "dev"\n[accounts.dev]\nhost = "127.0.0.1"\nport = {server.port}\n'
        'security = "none"\nfrom = "dev@example.com"\n',
    )
    r = cli("check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"127.0.0.1:{server.port} (none): ok 250")


def test_precedence_flags_over_env_over_account(cli, smtpd, tmp_path: Path) -> None:
    from support import free_port

    server = smtpd()
    dead = free_port()
    config = _write_config(
        tmp_path / "c.toml",
        f'[accounts.a]\nhost = "127.0.0.1"\nport = {dead}\nsecurity = "none"\n',
    )
    base = ("check", "--config", str(config), "--account", "a", "--timeout", "3")
    # the account alone points at a dead port
    assert cli(*base).returncode == 1
    # the environment wins over the account
    assert cli(*base, env={"POSTILLON_PORT": str(server.port)}).returncode == 0
    # a flag wins over the environment
    r = cli(*base, "--port", str(dead), env={"POSTILLON_PORT": str(server.port)})
    assert r.returncode == 1


def test_check_json_and_refused_login(cli, smtpd, tls_ca_file) -> None:
    server = smtpd(tls="starttls", auth=["PLAIN"], credentials={"ann": PASSWORD})
    args = ("check", "--host", "127.0.0.1", "--port", str(server.port), "--user", "ann",
            "--cafile", str(tls_ca_file), "--json")  # fmt: skip
    ok = cli(*args, env={"POSTILLON_PASSWORD": PASSWORD})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["success"] is True
    bad = cli(*args, env={"POSTILLON_PASSWORD": "nope"})
    assert bad.returncode == 1
    data = json.loads(bad.stdout)
    assert data["success"] is False and data["status"] == 535


# --- bad usage: one clear line, exit 2 ---------------------------------------------------

BAD_USAGE = [
    (("--from", "ann@@example.com", "--to", "b@example.com"), "from"),
    (("--from", "a@example.com", "--to", "b@example.com", "--text", "missing.txt"), "missing.txt"),
    (("--from", "a@example.com", "--to", "b@example.com", "--attach", "nope.pdf"), "nope.pdf"),
    (("--from", "a@example.com", "--to", "b@example.com", "--port", "70000"), "port"),
    (("--from", "a@example.com", "--to", "b@example.com", "--port", "abc"), "port"),
    (("--from", "a@example.com", "--to", "b@example.com", "--account", "ghost"), "ghost"),
    (("--from", "a@example.com", "--to", "b@example.com", "--security", "ssl"), "security"),
    (("--from", "a@example.com", "--to", "b@example.com", "--count", "0"), "--count"),
    (("--from", "a@example.com", "--to", "b@example.com", "--ignore-cert", "x"), "ignore-cert"),
    (("--from", "a@example.com", "--to", "b@example.com", "--cafile", "no.pem"), "no.pem"),
    (("--from", "a@example.com", "--to", "b@example.com", "--frobnicate"), "frobnicate"),
    (("--from", "a@example.com"), "--to"),
    (("--to", "b@example.com"), "--from"),
    (("--eml", "absent.eml"), "absent.eml"),
    (("--from", "a@example.com", "--to", "b@example.com", "--header", "nocolon"), "--header"),
    (("--from", "a@example.com", "--to", "b\r\nRCPT TO:<x@example.com>"), "to"),
]


@pytest.mark.parametrize(("args", "named"), BAD_USAGE)
def test_bad_usage_one_line_exit_2(cli, args: tuple[str, ...], named: str) -> None:
    r = cli("send", "--host", "127.0.0.1", *args, env={"POSTILLON_HOST": "127.0.0.1"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = one_clear_line(r.stderr)
    assert named in line


def test_no_server_and_no_password_are_usage_errors(cli) -> None:
    r = cli("check")
    assert r.returncode == 2 and "no server" in one_clear_line(r.stderr)
    # a user but no password, no TTY: never a hang, never a flag
    r = cli("check", "--host", "127.0.0.1", "--user", "ann")
    assert r.returncode == 2 and "POSTILLON_PASSWORD" in one_clear_line(r.stderr)
    r = cli("send", "--password", "x")
    assert r.returncode == 2 and "--password" in one_clear_line(r.stderr)


def test_account_with_clear_password_or_unknown_key_is_refused(cli, tmp_path: Path) -> None:
    config = _write_config(
        tmp_path / "c.toml",
        '[accounts.a]\nhost = "h"\npassword = "x"\n[accounts.b]\nhost = "h"\nprot = 25\n',
    )
    r = cli("check", "--config", str(config), "--account", "a")
    assert r.returncode == 2 and "password_command" in one_clear_line(r.stderr)
    r = cli("check", "--config", str(config), "--account", "b")
    assert r.returncode == 2 and "'prot'" in one_clear_line(r.stderr)
    (tmp_path / "broken.toml").write_text("[accounts\n", encoding="utf-8")
    r = cli("check", "--config", "broken.toml", "--account", "a")
    assert r.returncode == 2 and "TOML" in one_clear_line(r.stderr)


def test_failing_password_command_is_one_line(cli, tmp_path: Path) -> None:
    config = _write_config(
        tmp_path / "c.toml",
        f'[accounts.a]\nhost = "127.0.0.1"\nuser = "ann"\n'
        f'password_command = ["{sys.executable}", "-c", "import sys; sys.exit(3)"]\n',
    )
    r = cli("check", "--config", str(config), "--account", "a")
    assert r.returncode == 2
    assert "password_command failed (exit 3)" in one_clear_line(r.stderr)


def test_help_reads_well(cli) -> None:
    for args in (("--help",), ("send", "--help"), ("doctor", "--help"), ("spool", "--help"),
                 ("sink", "--help"), ("demo", "--help"), ("check", "--help")):  # fmt: skip
        r = cli(*args)
        assert r.returncode == 0, args
        assert "example" in r.stdout, args
    r = cli("send", "--help")
    assert "flags" in r.stdout and "environment" in r.stdout and "account" in r.stdout
    assert "exit status" in r.stdout
