"""Self-tests of the test harness, with the stdlib's smtplib as the client.

postillon's own client is written in parallel; these keep the servers and fixtures honest
so that a failing integration test points at postillon, not at its peers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest

from support import (
    SMTP_DEFAULTS,
    BadCerts,
    Fault,
    LogCapture,
    ScriptServer,
    SinkServer,
    SmtpServer,
    close,
    expect,
    read_until,
    require,
    reset,
    send,
    stall,
    starttls,
)
from support.sasl import ScramServer, cram_md5_verify, scram_client_proof

SmtpdFactory = Callable[..., SmtpServer]
SinkFactory = Callable[..., SinkServer]
ScriptFactory = Callable[..., ScriptServer]

MSG = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"


def client(server: Any, timeout: float = 5) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=timeout)


# --- smtpd: modes ---------------------------------------------------------------------------


def test_smtpd_plain_message_recorded(smtpd: SmtpdFactory) -> None:
    server = smtpd()
    with client(server) as c:
        assert c.sendmail("a@example.org", ["b@example.org", "c@example.org"], MSG) == {}
    [msg] = server.wait_for(1)
    assert msg.mail_from == "a@example.org"
    assert msg.rcpt_tos == ["b@example.org", "c@example.org"]
    # smtplib stuffed the leading dot; the server undid it (RFC 5321 4.5.2)
    assert msg.content == MSG
    assert msg.tls is False and msg.auth_user is None
    assert msg.parsed()["Subject"] == "hi"
    assert server.connections == 1
    assert [c.split(" ")[0] for c in server.commands] == [
        "EHLO",
        "MAIL",
        "RCPT",
        "RCPT",
        "DATA",
        "QUIT",
    ]


def test_smtpd_starttls(smtpd: SmtpdFactory, client_ssl_context: ssl.SSLContext) -> None:
    server = smtpd(tls="starttls", require_starttls=True)
    with client(server) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        # RFC 3207 4: the server refuses mail before TLS when TLS is required
        assert c.mail("a@example.org")[0] == 530
        c.starttls(context=client_ssl_context)
        c.ehlo()
        assert not c.has_extn("starttls")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    [msg] = server.wait_for(1)
    assert msg.tls is True


def test_smtpd_implicit_tls(smtpd: SmtpdFactory, client_ssl_context: ssl.SSLContext) -> None:
    server = smtpd(tls="implicit", auth=["PLAIN"], credentials={"alice": "pw-implicit"})
    with smtplib.SMTP_SSL(server.host, server.port, context=client_ssl_context, timeout=5) as c:
        c.ehlo()
        assert not c.has_extn("starttls")
        # implicit TLS counts as encrypted: AUTH is offered although auth_require_tls
        assert "PLAIN" in c.esmtp_features["auth"]
        c.login("alice", "pw-implicit")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    [msg] = server.wait_for(1)
    assert msg.tls is True and msg.auth_user == "alice"


def test_smtpd_auth_hidden_without_tls(smtpd: SmtpdFactory) -> None:
    server = smtpd(auth=["PLAIN"], credentials={"alice": "pw"})
    with client(server) as c:
        c.ehlo()
        assert not c.has_extn("auth")
        assert c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0pw").decode())[0] == 538


# --- smtpd: AUTH ----------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_smtpd_auth_password_mechanisms(
    smtpd: SmtpdFactory, client_ssl_context: ssl.SSLContext, mechanism: str
) -> None:
    server = smtpd(tls="starttls", auth=[mechanism], credentials={"alice": "s3cret-pw"})
    with client(server) as c:
        c.starttls(context=client_ssl_context)
        c.ehlo()
        assert c.esmtp_features["auth"].split() == [mechanism]
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            c.login("alice", "wrong")
        assert info.value.smtp_code == 535
        c.login("alice", "s3cret-pw")
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    [msg] = server.wait_for(1)
    assert msg.auth_user == "alice"
    assert [(a.mechanism, a.success) for a in server.auth_attempts] == [
        (mechanism, False),
        (mechanism, True),
    ]


def test_smtpd_auth_required(smtpd: SmtpdFactory) -> None:
    server = smtpd(
        auth=["PLAIN"], credentials={"u": "p"}, auth_required=True, auth_require_tls=False
    )
    with client(server) as c:
        c.ehlo()
        assert c.mail("a@example.org")[0] == 530
        c.login("u", "p")
        assert c.mail("a@example.org")[0] == 250


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_smtpd_bearer_tokens(smtpd: SmtpdFactory, mechanism: str) -> None:
    server = smtpd(
        auth=[mechanism], tokens={"alice@example.org": "tok-good"}, auth_require_tls=False
    )

    def payload(token: str) -> str:
        if mechanism == "XOAUTH2":
            return f"user=alice@example.org\x01auth=Bearer {token}\x01\x01"
        return f"n,a=alice@example.org,\x01host=localhost\x01auth=Bearer {token}\x01\x01"

    challenges: list[bytes] = []

    def bad(challenge: bytes | None = None) -> str:
        if challenge is None:
            return payload("tok-bad")
        challenges.append(challenge)
        return "\x01" if mechanism == "OAUTHBEARER" else ""

    with client(server) as c:
        c.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            c.auth(mechanism, bad)
        assert info.value.smtp_code == 535
        [err] = challenges
        assert json.loads(err)["schemes"] == "bearer"
        code, _ = c.auth(mechanism, lambda challenge=None: payload("tok-good"))
        assert code == 235
    assert [(a.mechanism, a.success, a.user) for a in server.auth_attempts] == [
        (mechanism, False, None),
        (mechanism, True, "alice@example.org"),
    ]


def test_smtpd_scram_sha_256(smtpd: SmtpdFactory) -> None:
    server = smtpd(
        auth=["SCRAM-SHA-256"], credentials={"alice": "scram-pw"}, auth_require_tls=False
    )
    nonce = base64.b64encode(secrets.token_bytes(12))
    state: dict[str, bytes] = {}

    def scram(challenge: bytes | None = None) -> str:
        if challenge is None:
            return "n,,n=alice,r=" + nonce.decode()
        if challenge.startswith(b"r="):
            _, final, expected = scram_client_proof("alice", "scram-pw", nonce, challenge)
            state["expected"] = expected
            return final.decode()
        state["server_final"] = challenge
        return ""

    with client(server) as c:
        c.ehlo()
        assert c.auth("SCRAM-SHA-256", scram)[0] == 235
    # the server proved it knows the password too (RFC 5802 3: ServerSignature)
    assert state["server_final"] == state["expected"]


def test_sasl_units() -> None:
    scram = ScramServer({"alice": "pw"})
    first = scram.first(b"n,,n=alice,r=abc")
    _, final, _ = scram_client_proof("alice", "not-pw", b"abc", first)
    assert scram.final(final) is None
    challenge = b"<1.2@localhost>"
    digest = hmac.new(b"pw", challenge, hashlib.md5).hexdigest().encode()
    assert cram_md5_verify(challenge, b"alice " + digest, {"alice": "pw"}) == "alice"
    assert cram_md5_verify(challenge, b"alice " + digest, {"alice": "other"}) is None


# --- smtpd: refusals, faults, extensions --------------------------------------------------------


def test_smtpd_refused_recipient(smtpd: SmtpdFactory) -> None:
    server = smtpd(refuse={"Bad@Example.org": (550, "5.1.1 no such user")})
    with client(server) as c:
        refused = c.sendmail("a@example.org", ["good@example.org", "bad@example.org"], MSG)
    assert refused == {"bad@example.org": (550, b"5.1.1 no such user")}
    [msg] = server.wait_for(1)
    assert msg.rcpt_tos == ["good@example.org"]


def test_smtpd_fault_reply_once(smtpd: SmtpdFactory) -> None:
    server = smtpd(faults={"RCPT": Fault(reply="451 4.3.0 try later", times=1)})
    with client(server) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            c.sendmail("a@example.org", ["b@example.org"], MSG)
        assert info.value.recipients["b@example.org"][0] == 451
        c.rset()
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert len(server.wait_for(1)) == 1


@pytest.mark.parametrize("spec", ["disconnect", "reset"])
def test_smtpd_fault_disconnect_at_mail(smtpd: SmtpdFactory, spec: str) -> None:
    server = smtpd(faults={"MAIL": spec})
    c = client(server)
    c.ehlo()
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionResetError)):
        c.mail("a@example.org")
    c.close()
    assert server.messages == []


def test_smtpd_fault_eod_421_closes(smtpd: SmtpdFactory) -> None:
    server = smtpd(faults={"EOD": "421 4.3.2 shutting down"})
    c = client(server)
    with pytest.raises(smtplib.SMTPDataError) as info:
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert info.value.smtp_code == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.noop()
    assert server.messages == []


def test_smtpd_fault_eod_disconnect_after_delivery(smtpd: SmtpdFactory) -> None:
    # the ambiguous case: the server took the message, the client never heard back
    server = smtpd(faults={"EOD": Fault(disconnect=True, deliver=True)})
    c = client(server)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert len(server.wait_for(1)) == 1


def test_smtpd_fault_delay_and_greeting(smtpd: SmtpdFactory) -> None:
    server = smtpd(faults={"DATA": 0.3})
    with client(server) as c:
        start = time.monotonic()
        c.sendmail("a@example.org", ["b@example.org"], MSG)
        assert time.monotonic() - start >= 0.3
    refusing = smtpd(faults={"CONNECT": "554 5.3.2 not now"})
    with pytest.raises(smtplib.SMTPConnectError) as info:
        client(refusing)
    assert info.value.smtp_code == 554


def test_smtpd_options_validated(smtpd: SmtpdFactory) -> None:
    with pytest.raises(ValueError, match="tls"):
        smtpd(tls="ssl")
    with pytest.raises(ValueError, match="faults"):
        smtpd(faults={"MAIL": "oops"})
    with pytest.raises(ValueError, match="auth"):
        smtpd(auth=["NTLM"])


def test_smtpd_extensions(smtpd: SmtpdFactory) -> None:
    server = smtpd(
        smtputf8=True,
        size=1000,
        dsn=True,
        chunking=True,
        ehlo_extra_lines=["ENHANCEDSTATUSCODES", "X-TEST 1"],
        eightbitmime=False,
    )
    with client(server) as c:
        c.ehlo()
        for ext in ("smtputf8", "dsn", "chunking", "pipelining", "enhancedstatuscodes", "x-test"):
            assert c.has_extn(ext), ext
        assert not c.has_extn("8bitmime")
        assert c.esmtp_features["size"] == "1000"
        # SIZE: refused up front when declared too large (RFC 1870)
        assert c.mail("a@example.org", ["SIZE=5000"])[0] == 552
        c.sendmail(
            "jörg@example.org",
            ["b@example.org"],
            MSG,
            mail_options=["SMTPUTF8", "RET=HDRS", "ENVID=x1"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.org"],
        )
        # BDAT (RFC 3030): two chunks, the last one answered for the whole message
        assert c.mail("a@example.org")[0] == 250
        assert c.rcpt("b@example.org")[0] == 250
        c.send(b"BDAT 10\r\nSubject: x")
        assert c.getreply()[0] == 250
        c.send(b"BDAT 10 LAST\r\n\r\n\r\nbody\r\n")
        assert c.getreply()[0] == 250
    first, second = server.wait_for(2)
    assert first.mail_from == "jörg@example.org"
    assert "RET=HDRS" in first.mail_options and "SMTPUTF8" in first.mail_options
    # DSN parameters keep their case (ENVID and ORCPT are case-sensitive xtext)
    assert first.rcpt_options == [["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.org"]]
    assert "ENVID=x1" in first.mail_options
    assert second.chunked and second.content == b"Subject: x\r\n\r\nbody\r\n"


# --- TLS material ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "verify_message"),
    [
        ("expired", "certificate has expired"),
        ("not_yet_valid", "certificate is not yet valid"),
        ("wrong_name", "Hostname mismatch"),
        ("self_signed", "self-signed certificate"),
        ("unknown_ca", "unable to get local issuer certificate"),
    ],
)
def test_bad_certs_fail_exactly_their_check(
    smtpd: SmtpdFactory,
    bad_certs: BadCerts,
    client_ssl_context: ssl.SSLContext,
    kind: str,
    verify_message: str,
) -> None:
    server = smtpd(tls="implicit", ssl_context=getattr(bad_certs, kind)())
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        smtplib.SMTP_SSL("localhost", server.port, context=client_ssl_context, timeout=5)
    assert verify_message in info.value.verify_message
    assert server.connections == 1  # counted although the handshake failed


# --- smtp-sink ------------------------------------------------------------------------------


def test_sink_receives_and_dumps(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink(dump=True)
    with client(sink) as c:
        c.ehlo()
        assert c.has_extn("pipelining") and c.has_extn("dsn") and c.has_extn("8bitmime")
        c.sendmail(
            "a@example.org", ["b@example.org", "c@example.org"], MSG, rcpt_options=["NOTIFY=NEVER"]
        )
    [msg] = sink.wait_for(1)
    assert msg.mail_from == "a@example.org"
    assert msg.rcpt_tos == ["b@example.org", "c@example.org"]
    assert msg.rcpt_args[0] == "<b@example.org> NOTIFY=NEVER"
    assert msg.content == MSG.replace(b"\r\n", b"\n")
    assert sink.args[-2:] == [f"127.0.0.1:{sink.port}", "256"]


@pytest.mark.parametrize(
    ("switches", "ext", "present"),
    [(("-p",), "pipelining", False), (("-8",), "8bitmime", False), ((), "pipelining", True)],
)
def test_sink_announce_switches(
    smtp_sink: SinkFactory, switches: tuple[str, ...], ext: str, present: bool
) -> None:
    sink = smtp_sink(*switches)
    with client(sink) as c:
        c.ehlo()
        assert c.has_extn(ext) is present


def test_sink_no_esmtp(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink("-e")
    with client(sink) as c:
        assert c.ehlo()[0] >= 500
        assert c.helo()[0] == 250


def test_sink_soft_and_hard_rejects(smtp_sink: SinkFactory) -> None:
    soft = smtp_sink("-r", "RCPT")
    with client(soft) as c:
        c.ehlo()
        assert not c.has_extn("pipelining")  # -r implies -p
        c.mail("a@example.org")
        assert c.rcpt("b@example.org")[0] == 450
    hard = smtp_sink("-f", "MAIL,DATA")
    with client(hard) as c:
        c.ehlo()
        assert c.mail("a@example.org")[0] == 500


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA", "."])
def test_sink_disconnect_after(smtp_sink: SinkFactory, command: str) -> None:
    sink = smtp_sink("-q", command)
    c = client(sink)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    c.close()


def test_sink_421_after(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink("-Q", "RCPT")
    c = client(sink)
    c.ehlo()
    c.mail("a@example.org")
    code, _ = c.rcpt("b@example.org")
    assert code == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.noop()


def test_sink_delay_and_abort(smtp_sink: SinkFactory) -> None:
    slow = smtp_sink("-w", "1")
    c = client(slow)
    c.ehlo()
    c.mail("a@example.org")
    c.rcpt("b@example.org")
    start = time.monotonic()
    assert c.docmd("DATA")[0] == 354
    assert time.monotonic() - start >= 0.9
    c.close()  # mid-DATA: a QUIT now would only be message text
    aborting = smtp_sink("-A", "0")
    c = client(aborting)
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPServerDisconnected)):
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    c.close()


# --- script server --------------------------------------------------------------------------


def _session_script() -> list[Any]:
    return [
        send(b"220 script.test ESMTP\r\n"),
        expect(b"EHLO"),
        send(b"250-script.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
        expect(b"MAIL FROM:<a@example.org>"),
        send(b"250 ok\r\n"),
        expect(b"RCPT TO:<b@example.org>"),
        send(b"250 ok\r\n"),
        expect(b"DATA"),
        send(b"354 go\r\n"),
        read_until(b"\r\n.\r\n"),
        send(b"250 queued\r\n"),
        expect(b"QUIT"),
        send(b"221 bye\r\n"),
    ]


@pytest.mark.parametrize("chunk", ["whole", "byte", "line"])
def test_script_full_session(script_server: ScriptFactory, chunk: str) -> None:
    server = script_server(_session_script(), chunk=chunk)
    with client(server) as c:
        assert c.sendmail("a@example.org", ["b@example.org"], MSG) == {}
        assert c.has_extn("pipelining")
    server.assert_ok()
    assert server.data == [MSG.replace(b"\r\n.leading", b"\r\n..leading") + b".\r\n"]
    assert server.lines[0].endswith(b"\r\n")
    assert bytes(server.received).startswith(b"ehlo ")


def test_script_mismatch_recorded(script_server: ScriptFactory) -> None:
    server = script_server([send(b"220 hi\r\n"), expect(b"HELO"), send(b"250 ok\r\n")])
    c = client(server)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.ehlo_or_helo_if_needed()  # the server gives up on the mismatch
    c.close()
    assert server.wait_done(5)
    assert server.errors and "HELO" in server.errors[0]


def test_script_starttls(script_server: ScriptFactory, client_ssl_context: ssl.SSLContext) -> None:
    server = script_server(
        [
            send(b"220 hi\r\n"),
            expect(b"EHLO"),
            send(b"250-hi\r\n250 STARTTLS\r\n"),
            expect(b"STARTTLS"),
            send(b"220 go ahead\r\n"),
            starttls(),
            expect(b"EHLO"),
            send(b"250 hi again\r\n"),
            expect(b"QUIT"),
            send(b"221 bye\r\n"),
        ]
    )
    with client(server) as c:
        c.starttls(context=client_ssl_context)
        c.ehlo()
    server.assert_ok()
    assert server.tls


def test_script_reset_and_close(script_server: ScriptFactory) -> None:
    server = script_server([send(b"220 hi\r\n"), expect(b"EHLO"), reset()])
    c = client(server)
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionResetError)):
        c.ehlo()
    c.close()
    server.assert_ok()
    closing = script_server([send(b"220 hi\r\n"), close()])
    c = client(closing)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.ehlo()
    c.close()
    closing.assert_ok()


def test_script_stall_ends_when_client_leaves(script_server: ScriptFactory) -> None:
    server = script_server([send(b"220 hi\r\n"), stall(max_seconds=10)])
    c = client(server, timeout=0.3)
    with pytest.raises((TimeoutError, socket.timeout, smtplib.SMTPServerDisconnected)):
        c.ehlo()
    c.close()
    start = time.monotonic()
    server.assert_ok(timeout=3)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("chunk", ["whole", "byte"])
def test_script_default_replies(script_server: ScriptFactory, chunk: str) -> None:
    replies = dict(SMTP_DEFAULTS)
    replies["RCPT"] = [b"250 ok\r\n", b"550 5.1.1 nobody\r\n"]
    server = script_server(default_replies=replies, chunk=chunk)
    with client(server) as c:
        refused = c.sendmail("a@example.org", ["b@example.org", "c@example.org"], MSG)
    assert refused == {"c@example.org": (550, b"5.1.1 nobody")}
    server.assert_ok()
    assert len(server.data) == 1
    assert [line.split(b" ")[0].strip().upper() for line in server.lines] == [
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"RCPT",
        b"DATA",
        b"QUIT",
    ]


# --- logs, require, PostgreSQL ------------------------------------------------------------


def test_log_capture_finds_secrets(log_capture: LogCapture) -> None:
    logger = logging.getLogger("postillon.selftest")
    logger.debug("C > EHLO client.example")
    assert log_capture.secrets_found("hunter2-pw", user="alice") == []
    plain = base64.b64encode(b"\0alice\0hunter2-pw").decode()
    logger.debug("C > AUTH PLAIN %s", plain)
    xoauth = base64.b64encode(b"user=alice\x01auth=Bearer tok-123456\x01\x01").decode()
    logger.debug("C > %s", xoauth)
    hits = log_capture.secrets_found("hunter2-pw", "tok-123456", user="alice")
    assert any("base64(\\0alice\\0secret)" in h for h in hits)
    assert any("secret #2" in h and "decoded base64" in h for h in hits)
    assert all("hunter2" not in h for h in hits)  # the report never repeats a secret
    assert log_capture.secrets_found("zzz-other", extra=["repr: zzz-other"]) != []


def test_require_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTILLON_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception, match="widget"):
        require("widget", "not installed")
    monkeypatch.setenv("POSTILLON_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="widget is required"):
        require("widget", "not installed")


def test_pg_schema(pg_schema_dsn: str) -> None:
    import psycopg

    with psycopg.connect(pg_schema_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE probe (id int)")
        row = conn.execute("SELECT current_schema()").fetchone()
    assert row is not None and row[0].startswith("t_")


def test_smtp_source_found(smtp_source: str) -> None:
    assert smtp_source.endswith("smtp-source")


def test_smtpd_requiretls_only_over_tls(
    smtpd: SmtpdFactory, client_ssl_context: ssl.SSLContext
) -> None:
    server = smtpd(tls="starttls", requiretls=True, faults={"AUTH": "454 4.7.0 not now"})
    with client(server) as c:
        c.ehlo()
        assert not c.has_extn("requiretls")  # RFC 8689 2: offered over TLS only
        c.starttls(context=client_ssl_context)
        c.ehlo()
        assert c.has_extn("requiretls")
        assert c.docmd("AUTH", "PLAIN AGEAYg==")[0] == 454  # a fault on any command
        c.sendmail("a@example.org", ["b@example.org"], MSG, mail_options=["REQUIRETLS"])
    [msg] = server.wait_for(1)
    assert msg.mail_options == ["REQUIRETLS"] and msg.tls
