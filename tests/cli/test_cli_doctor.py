"""``postillon doctor``: implicit TLS vs STARTTLS, certificates in plain words, greeting."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from cli_helpers import one_clear_line


def test_starttls_port_with_trusted_certificate(cli, smtpd, tls_ca_file) -> None:
    server = smtpd(tls="starttls", auth=["PLAIN", "LOGIN"], size=1048576)
    r = cli("doctor", f"127.0.0.1:{server.port}", "--cafile", str(tls_ca_file))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "plain SMTP on connect" in out
    assert "STARTTLS: offered" in out
    assert "certificate: ok (chain and host name verified)" in out
    assert "AUTH: PLAIN LOGIN" in out or "AUTH: LOGIN PLAIN" in out, out
    assert "SIZE: 1048576 bytes" in out
    assert f'Transporter("127.0.0.1", {server.port}, security=Security.STARTTLS' in out
    assert f"--port {server.port} --security starttls" in out
    # doctor never logs in and never sends mail
    assert not server.auth_attempts and not server.messages


def test_implicit_tls_port(cli, smtpd, tls_ca_file) -> None:
    server = smtpd(tls="implicit")
    r = cli("doctor", f"127.0.0.1:{server.port}", "--cafile", str(tls_ca_file), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    [port] = data["ports"]
    assert port["mode"] == "tls" and port["secure"] is True
    assert port["greeting"].startswith("220")
    assert port["certificate"]["verified"] is True
    assert "127.0.0.1" in port["certificate"]["names"]
    assert data["recommendation"]["security"] == "tls"
    assert "Security.TLS" in data["recommendation"]["python"]


@pytest.mark.parametrize(
    ("maker", "words"),
    [
        ("expired", "expired: the certificate was valid until"),
        ("wrong_name", "wrong name: the certificate is for"),
        ("self_signed", "untrusted issuer: the certificate is self-signed"),
        ("unknown_ca", "untrusted issuer: issued by"),
    ],
)
def test_certificate_failures_in_plain_words(
    cli, smtpd, bad_certs, tls_ca_file, maker: str, words: str
) -> None:
    server = smtpd(tls="starttls", ssl_context=getattr(bad_certs, maker)())
    r = cli("doctor", f"127.0.0.1:{server.port}", "--cafile", str(tls_ca_file))
    assert r.returncode == 1, r.stdout
    assert f"certificate: FAILED: {words}" in r.stdout
    # the probe still goes on over TLS to read the capabilities offered after it
    assert "capabilities (after TLS)" in r.stdout
    assert "--cafile" in r.stdout  # the advice


def test_expired_and_wrong_name_are_both_reported(cli, smtpd, bad_certs, tls_ca_file) -> None:
    server = smtpd(tls="implicit", ssl_context=bad_certs.expired_and_wrong_name())
    r = cli("doctor", f"127.0.0.1:{server.port}", "--cafile", str(tls_ca_file), "--json")
    problem = json.loads(r.stdout)["ports"][0]["certificate"]["problem"]
    # OpenSSL stops at its first failure; doctor checks the other one itself
    assert "expired" in problem
    assert "wrong name" in problem or "does not match the host name" in problem


def test_untrusted_without_cafile(cli, smtpd) -> None:
    server = smtpd(tls="implicit")
    r = cli("doctor", f"127.0.0.1:{server.port}")
    assert r.returncode == 1
    assert "untrusted issuer" in r.stdout


def test_plain_server_without_starttls(cli, smtp_sink) -> None:
    sink = smtp_sink()
    r = cli("doctor", f"{sink.host}:{sink.port}")
    assert r.returncode == 0, r.stdout
    assert "STARTTLS: NOT offered" in r.stdout
    assert "clear text" in r.stdout
    assert "security=Security.NONE" in r.stdout
    assert "--insecure-accept-unencrypted" in r.stdout


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never says a word (a firewall, or the wrong port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


def test_greeting_never_received(cli, silent_server: int) -> None:
    r = cli("doctor", f"127.0.0.1:{silent_server}", "--timeout", "1")
    assert r.returncode == 1
    assert "greeting never received" in r.stdout
    assert "firewall" in r.stdout
    assert "no usable SMTP service" in r.stdout


def test_refused_port(cli) -> None:
    from support import free_port

    r = cli("doctor", f"127.0.0.1:{free_port()}", "--json")
    assert r.returncode == 1
    port = json.loads(r.stdout)["ports"][0]
    assert port["reachable"] is False and "connection refused" in port["problem"]


@pytest.mark.parametrize(
    "target", ["127.0.0.1:abc", "127.0.0.1:0", "[::1", "host name", "127.0.0.1:99999"]
)
def test_bad_target(cli, target: str) -> None:
    r = cli("doctor", target)
    assert r.returncode == 2
    one_clear_line(r.stderr)
