"""security.md 3.5, TLS and authentication, end to end (both drivers where it matters).

The raw scripted server records every byte the client sent, so "no credential bytes on
the wire" is checked on the capture itself, not on the client's word. Rows already
covered by tests/test_transporter.py are referenced in docs/hardening.md, not repeated.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from postillon import IgnoreCert, Security, SpoolState, Transporter

from support.logs import scan_for_secrets
from support.script import SMTP_DEFAULTS, close, expect, read_until, send, starttls

USER, PASSWORD = "alice", "S3cr3t-Passw0rd-q7Z"
RAW = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: s\r\nMessage-ID: <t@x.test>\r\n\r\nhi\r\n"


def _send(c: Any) -> Any:
    return c.send(RAW, from_="a@x.test", to=["b@x.test"])


def _no_credentials(server: Any) -> None:
    assert scan_for_secrets([bytes(server.received)], [PASSWORD], [USER]) == []
    assert not any(line.upper().startswith(b"AUTH") for line in server.lines)


@pytest.mark.parametrize(
    "ehlo",
    [b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n", b"250-mx\r\n250-AUTH PLAIN\r\n250 STARTTLZ\r\n"],
    ids=["not-offered", "stripped-by-mitm"],
)
def test_credentials_never_cross_without_starttls(
    script_server: Any, client: Any, client_ssl_context: Any, ehlo: bytes
) -> None:
    replies = dict(SMTP_DEFAULTS, EHLO=ehlo, AUTH=b"235 ok\r\n")
    server = script_server(default_replies=replies)
    c = client(server.host, server.port, user=USER, password=PASSWORD,
               ssl_context=client_ssl_context)  # fmt: skip
    st = _send(c)
    assert not st.success and st.status == 0 and st.errors[0].component == "tls", st
    c.close()
    server.wait_done(3)
    _no_credentials(server)
    assert not any(line.startswith((b"MAIL", b"STARTTLS")) for line in server.lines)


@pytest.mark.parametrize("reply", [b"454 4.7.0 TLS not available\r\n", b"554 5.7.0 no\r\n"])
def test_starttls_refused_means_no_plaintext_fallback(
    script_server: Any, client: Any, client_ssl_context: Any, reply: bytes
) -> None:
    ehlo = b"250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"
    server = script_server(default_replies=dict(SMTP_DEFAULTS, EHLO=ehlo, STARTTLS=reply))
    c = client(server.host, server.port, user=USER, password=PASSWORD,
               ssl_context=client_ssl_context)  # fmt: skip
    st = _send(c)
    assert not st.success and st.status == int(reply[:3]) and st.stage == "starttls", st
    c.close()
    server.wait_done(3)
    _no_credentials(server)
    assert not any(line.startswith(b"MAIL") for line in server.lines)


def _tls_script(injected: bytes, post_tls_ehlo: bytes) -> list[Any]:
    return [
        send(b"220 hi\r\n"), expect(b"EHLO"), send(b"250-mx\r\n250 STARTTLS\r\n"),
        expect(b"STARTTLS"), send(b"220 go\r\n" + injected), starttls(),
        expect(b"EHLO"), send(post_tls_ehlo),
        expect(b"MAIL"), send(b"250 ok\r\n"), expect(b"RCPT"), send(b"250 ok\r\n"),
        expect(b"DATA"), send(b"354 go\r\n"), read_until(), send(b"250 ok\r\n"),
        expect(b"QUIT"), send(b"221 bye\r\n"), close(),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "injected",
    [b"250-SMTPUTF8 INJECTED-MARKER ", b"250-fake\r\n250 AUTH PLAIN\r\n", b"250 AUTH PLA"],
    ids=["fragment-no-crlf", "whole-lines", "partial-line"],
)
def test_pre_tls_injection_is_discarded(
    script_server: Any, client: Any, client_ssl_context: Any, injected: bytes
) -> None:
    # Nodemailer starttls-buffer-test shape: bytes after the 220 in the same segment.
    server = script_server(_tls_script(injected, b"250-mx\r\n250 PIPELINING\r\n"))
    c = client(server.host, server.port, user=USER, password=PASSWORD,
               ssl_context=client_ssl_context)  # fmt: skip
    st = _send(c)
    assert st.success, st  # post-TLS EHLO offers no AUTH: WinDev rule, no login
    assert "authentication skipped" in st.status_text or st.status == 250
    c.close()
    server.assert_ok()
    _no_credentials(server)
    # nothing the client wrote after STARTTLS was pipelined in clear (security.md 1.8 #4)
    start = server.lines.index(next(x for x in server.lines if x.startswith(b"STARTTLS")))
    assert server.discarded_pre_tls == b"" and server.lines[start + 1].startswith(b"EHLO")


def test_re_advertised_starttls_after_tls_is_ignored(
    script_server: Any, client: Any, client_ssl_context: Any
) -> None:
    server = script_server(_tls_script(b"", b"250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n"))
    c = client(server.host, server.port, ssl_context=client_ssl_context)
    assert _send(c).success
    c.close()
    server.assert_ok()
    assert sum(1 for x in server.lines if x.startswith(b"STARTTLS")) == 1


@pytest.mark.parametrize("maker", ["expired", "wrong_name", "self_signed", "unknown_ca"])
def test_bad_certificates_fail_before_any_credential(
    smtpd: Any, client: Any, bad_certs: Any, maker: str
) -> None:
    server = smtpd(tls="implicit", ssl_context=getattr(bad_certs, maker)(),
                   auth=["PLAIN"], credentials={USER: PASSWORD})  # fmt: skip
    c = client(server.host, server.port, security=Security.TLS, user=USER, password=PASSWORD)
    st = _send(c)
    assert not st.success and st.status == 0 and st.errors[0].component == "tls", st
    assert server.auth_attempts == [] and server.messages == []


def test_ignored_certificate_errors_are_explicit_and_warned_each_time(
    smtpd: Any, bad_certs: Any, log_capture: Any
) -> None:
    server = smtpd(tls="implicit", ssl_context=bad_certs.self_signed(),
                   auth=["PLAIN"], credentials={USER: PASSWORD})  # fmt: skip
    t = Transporter(
        server.host, server.port, security=Security.TLS, user=USER, password=PASSWORD,
        ignore_errors=IgnoreCert.INVALID_CERTIFICATE, keep_alive=False, send_timeout=10,
    )  # fmt: skip
    for _ in range(2):
        assert _send(t).success
    warnings = [r for r in log_capture.records if r.levelno >= logging.WARNING]
    assert len(warnings) >= 2, [r.getMessage() for r in warnings]
    assert scan_for_secrets([log_capture.text], [PASSWORD], [USER]) == []


def test_connect_by_ip_is_checked_against_that_ip(smtpd: Any, client: Any, bad_certs: Any) -> None:
    # postillon has no separate server_hostname: the name it connects to is the one the
    # certificate must match (RFC 2595 2.4). A certificate for another name fails.
    server = smtpd(tls="implicit", ssl_context=bad_certs.wrong_name())
    c = client("127.0.0.1", server.port, security=Security.TLS)
    st = _send(c)
    assert st.status == 0 and st.errors[0].component == "tls", st


@pytest.mark.parametrize("field", ["user", "password", "access_token"])
def test_nul_in_credentials_rejected_before_connect(field: str) -> None:
    kw: dict[str, Any] = {"user": "alice", field: "a\0b"}
    with pytest.raises(ValueError, match=field):
        Transporter("127.0.0.1", 9, **kw)


def test_535_pauses_instead_of_storming(
    smtpd: Any, client_ssl_context: Any, tmp_path: Path
) -> None:
    server = smtpd(tls="starttls", auth=["PLAIN"], credentials={USER: PASSWORD})
    t = Transporter(
        server.host, server.port, user=USER, password="wrong-password-1",
        ssl_context=client_ssl_context, asynchronous=True, spool=str(tmp_path / "s.db"),
    )  # fmt: skip
    try:
        ids = [_send(t).mail_id for _ in range(5)]
        time.sleep(1.5)
        assert len(server.auth_attempts) == 1, server.auth_attempts  # one login, then pause
        assert t.spool is not None
        for mail_id in ids:
            assert mail_id is not None
            entry = t.spool.status(mail_id)
            assert entry.state is SpoolState.PENDING and entry.attempts == 0, entry
    finally:
        t.close()
        if t.spool is not None:
            t.spool.close()
