"""``postillon sink`` (the capture server, as a command and as a class) and ``postillon demo``."""

from __future__ import annotations

import email
import email.policy
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import one_clear_line, postillon_command, wait_listening

from postillon import Email, Security, Transporter
from postillon.sink import CaptureServer

from support import free_port


def _start_sink(
    tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [*postillon_command(), "sink", "--port", str(port), "--dir", "captured", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening("127.0.0.1", port)
    except AssertionError:
        proc.kill()
        raise
    return proc, port


def test_sink_command_captures_over_starttls_and_auth(cli, cli_env, tmp_path: Path) -> None:
    proc, port = _start_sink(tmp_path, cli_env, "--auth", "dev:pw-123", "--count", "2")
    try:
        cert = tmp_path / "captured" / "sink-cert.pem"
        for n in (1, 2):
            r = cli(
                "send", "--host", "127.0.0.1", "--port", str(port), "--cafile", str(cert),
                "--user", "dev", "--from", "ann@example.com", "--to", "bob@example.com",
                "--subject", f"captured {n}", env={"POSTILLON_PASSWORD": "pw-123"},
            )  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("from ann@example.com to bob@example.com subject 'captured 1'")
    assert "size " in lines[0] and ".eml" in lines[0]
    assert "listening on 127.0.0.1" in err and "STARTTLS" in err
    files = sorted((tmp_path / "captured").glob("*.eml"))
    assert len(files) == 2
    parsed = email.message_from_bytes(files[1].read_bytes(), policy=email.policy.default)
    assert parsed["Subject"] in ("captured 1", "captured 2")


def test_sink_refuses_mail_without_auth(cli, cli_env, tmp_path: Path) -> None:
    proc, port = _start_sink(tmp_path, cli_env, "--auth", "dev:pw", "--no-tls")
    try:
        r = cli(
            "send", "--host", "127.0.0.1", "--port", str(port), "--security", "none",
            "--from", "a@example.com", "--to", "b@example.com",
        )  # fmt: skip
        assert r.returncode == 1
        assert "530" in r.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    # Ctrl-C stops cleanly
    assert proc.returncode == 0
    assert "stopped after 0 message(s)" in err and "Traceback" not in err


def test_sink_bad_usage(cli) -> None:
    for args, named in (
        (("sink", "--port", "70000"), "port"),
        (("sink", "--auth", "nocolon"), "--auth"),
        (("sink", "--tls-cert", "c.pem"), "--tls-key"),
        (("sink", "--count", "zero"), "--count"),
    ):
        r = cli(*args)
        assert r.returncode == 2, args
        assert named in one_clear_line(r.stderr)


def test_sink_without_its_extra_says_how_to_install(cli_env, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['aiosmtpd'] = None\n"
        "from postillon.cli import main\n"
        "sys.exit(main(['sink', '--port', '0', '--dir', 'x']))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env, capture_output=True,
        text=True, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "pip install 'postillon[sink]'" in one_clear_line(r.stderr)


def test_capture_server_class_smtputf8_and_8bit(tmp_path: Path) -> None:
    with CaptureServer(tmp_path / "c", port=0) as server:
        assert server.cert_pem is not None and server.port > 0
        ctx = ssl.create_default_context(cadata=server.cert_pem.decode())
        with Transporter(
            "127.0.0.1", server.port, security=Security.STARTTLS, ssl_context=ctx
        ) as t:
            status = t.send(
                Email(from_="jörg@exämple.de", to="ß@example.com", subject="Grüße",
                      text_body="Grüße aus Köln"),
            )  # fmt: skip
        assert status.success, status
        [record] = server.wait_for(1)
    assert record.mail_from == "jörg@exämple.de" and record.tls
    assert record.subject == "Grüße"
    assert record.path.read_bytes().startswith(b"Date:") or b"Subject:" in record.path.read_bytes()
    assert "size" in record.line() and str(record.path) in record.line()


def test_capture_server_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        CaptureServer(tmp_path, port=70000)
    with pytest.raises(ValueError, match="auth"):
        CaptureServer(tmp_path, auth="no-colon")
    with pytest.raises(ValueError, match="cert_file"):
        CaptureServer(tmp_path, cert_file="x.pem")


def test_demo_end_to_end(cli) -> None:
    r = cli("demo", "--dir", "demo-out", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "STARTTLS, AUTH" in out
    for label in ("plain text", "HTML, inline image, file", "Japanese (ISO-2022-JP)"):
        assert any(
            line.strip().startswith(label) and " ok 250" in line for line in out.splitlines()
        )
    spool_lines = [
        line for line in out.splitlines() if line.strip().startswith("spool ") and "/20" in line
    ]
    assert len(spool_lines) == 20 and all(
        "(sent)" in line and "ok 250" in line for line in spool_lines
    )
    assert "23 message(s) stored in" in out
    assert "demo: all delivered" in out


def test_demo_messages_are_what_they_claim(tmp_path: Path) -> None:
    from postillon.demo import run_demo

    log = tmp_path / "out.txt"
    with log.open("w") as out:
        assert run_demo(tmp_path / "d", out, bulk=2) == 0
    files = sorted((tmp_path / "d").glob("*.eml"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    assert len(files) == 5
    html = email.message_from_bytes(files[1].read_bytes(), policy=email.policy.default)
    image = next(p for p in html.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<gradient>"
    assert image.get_content().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.get_filename() for p in html.iter_attachments() if p.get_filename() == "report.csv"]
    japanese = files[2].read_bytes()
    assert b"ISO-2022-JP" in japanese.upper()
    parsed = email.message_from_bytes(japanese, policy=email.policy.default)
    assert parsed["Subject"] == "日本語のテストメール"
    assert "ISO-2022-JP" in parsed.get_body(("plain",)).get_content_charset().upper()
