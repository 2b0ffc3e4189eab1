"""Transporter and AsyncTransporter against real servers on loopback.

Every test runs twice, once per driver (``client`` is parametrised): the sync socket
driver and the asyncio driver pump the same conversation and must behave alike.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from postillon import (
    AsyncTransporter,
    AuthenticationError,
    AuthMode,
    IgnoreCert,
    InvalidMessage,
    RawMessage,
    Security,
    SendStatus,
    Transporter,
)

from support.script import SMTP_DEFAULTS, close, expect, read_until, send, sleep, stall, starttls

RAW = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: hi\r\nMessage-ID: <m1@x.test>\r\n\r\nhello\r\n"


def raw(to: str | list[str] = "b@x.test", body: bytes = RAW) -> RawMessage:
    return RawMessage(body, "a@x.test", [to] if isinstance(to, str) else to)


class Client:
    """One interface over both transporters, so each test is written once."""

    def __init__(self, kind: str, host: str, port: int, **settings: Any) -> None:
        self.kind = kind
        if kind == "sync":
            self.t: Any = Transporter(host, port, **settings)
            self.loop = None
        else:
            self.loop = asyncio.new_event_loop()
            self.t = AsyncTransporter(host, port, **settings)

    def _run(self, result: Any) -> Any:
        if self.loop is None:
            return result
        return self.loop.run_until_complete(result)

    def send(self, *args: Any, **kwargs: Any) -> SendStatus:
        return self._run(self.t.send(*args, **kwargs))  # type: ignore[no-any-return]

    def send_many(self, mails: Any, **kwargs: Any) -> list[SendStatus]:
        return self._run(self.t.send_many(mails, **kwargs))  # type: ignore[no-any-return]

    def check_connection(self) -> Any:
        return self._run(self.t.check_connection())

    def close(self) -> None:
        if self.kind == "async" and self.loop is None:
            return
        self._run(self.t.close())
        if self.loop is not None:
            self.loop.close()
            self.loop = None


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def factory(host: str, port: int, **settings: Any) -> Client:
        settings.setdefault("connection_timeout", 5)
        settings.setdefault("send_timeout", 10)
        c = Client(request.param, host, port, **settings)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


# ---------------------------------------------------------------------- basics


def test_plain_send_and_per_recipient_results(smtpd: Any, client: Any) -> None:
    server = smtpd(refuse={"bad@x.test": (550, "5.1.1 no such user")})
    c = client(server.host, server.port, security=Security.NONE)
    st = c.send(raw(["b@x.test", "bad@x.test"]))
    assert not st.success and st.status == 550
    assert st.accepted == ["b@x.test"] and st.refused == ["bad@x.test"]
    assert st.message_id == "<m1@x.test>"
    st = c.send(raw())
    assert st.success and st.status == 250
    server.wait_for(2)
    assert server.messages[-1].rcpt_tos == ["b@x.test"]
    assert server.messages[-1].content.endswith(b"hello\r\n")


def test_raw_bytes_shorthand(smtpd: Any, client: Any) -> None:
    server = smtpd()
    c = client(server.host, server.port, security=Security.NONE)
    st = c.send(RAW, from_="a@x.test", to=["b@x.test"])
    assert st.success
    with pytest.raises(InvalidMessage, match="from_"):
        c.send(RAW, to=["b@x.test"])


def test_keep_alive_reuses_one_connection(smtpd: Any, client: Any) -> None:
    server = smtpd()
    c = client(server.host, server.port, security=Security.NONE)
    assert all(c.send(raw()).success for _ in range(3))
    assert server.connections == 1
    server2 = smtpd()
    c2 = client(server2.host, server2.port, security=Security.NONE, keep_alive=False)
    assert all(c2.send(raw()).success for _ in range(3))
    assert server2.connections == 3


def test_send_many_pipelined(smtpd: Any, client: Any) -> None:
    server = smtpd()
    c = client(server.host, server.port, security=Security.NONE)
    statuses = c.send_many([raw() for _ in range(20)])
    assert len(statuses) == 20 and all(s.success for s in statuses)
    server.wait_for(20)
    assert server.connections <= 1 if c.kind == "sync" else server.connections >= 1


def test_connection_refused_is_status_zero(client: Any) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = client("127.0.0.1", port, security=Security.NONE)
    st = c.send(raw())
    assert not st.success and st.status == 0 and st.status_text == "Failed to send email"
    assert st.errors[0].component == "connect"
    chk = c.check_connection()
    assert not chk.success and chk.status == 0


def test_check_connection_4d_example(
    smtpd: Any, client: Any, client_ssl_context: ssl.SSLContext
) -> None:
    # The seeds' 4D example: host, user, password; checkConnection(); success or
    # "Error # status, statusText".
    server = smtpd(tls="starttls", auth=["PLAIN", "LOGIN"], credentials={"test@x.test": "pw"})
    c = client(
        server.host, server.port, user="test@x.test", password="pw", ssl_context=client_ssl_context
    )
    status = c.check_connection()
    assert status.success is True and status.status == 250
    bad = client(
        server.host,
        server.port,
        user="test@x.test",
        password="wrong",
        ssl_context=client_ssl_context,
    )
    status = bad.check_connection()
    assert status.success is False
    assert f"Error # {status.status}, {status.status_text}".startswith("Error # 535")


# ------------------------------------------------------------------------- TLS


def test_starttls_and_implicit_tls(
    smtpd: Any, client: Any, client_ssl_context: ssl.SSLContext
) -> None:
    server = smtpd(tls="starttls", require_starttls=True)
    c = client(server.host, server.port, security=Security.STARTTLS, ssl_context=client_ssl_context)
    assert c.send(raw()).success
    assert server.messages[0].tls
    server2 = smtpd(tls="implicit")
    c2 = client(server2.host, server2.port, security=Security.TLS, ssl_context=client_ssl_context)
    assert c2.send(raw()).success
    assert server2.messages[0].tls


def test_default_context_rejects_unknown_ca(smtpd: Any, client: Any) -> None:
    server = smtpd(tls="implicit")
    c = client(server.host, server.port, security=Security.TLS)
    st = c.send(raw())
    assert st.status == 0 and st.errors[0].component == "tls"
    assert "certificate verify failed" in st.errors[0].message


def test_implicit_tls_to_plain_server_says_so(smtpd: Any, client: Any) -> None:
    server = smtpd()
    c = client(server.host, server.port, security=Security.TLS)
    st = c.send(raw())
    assert st.errors[0].component in ("tls", "timeout", "disconnected")


@pytest.mark.parametrize(
    ("maker", "ignore", "ok"),
    [
        ("expired", IgnoreCert.NONE, False),
        ("expired", IgnoreCert.EXPIRED, True),
        ("expired", IgnoreCert.INVALID_NAME, False),
        ("wrong_name", IgnoreCert.NONE, False),
        ("wrong_name", IgnoreCert.INVALID_NAME, True),
        ("wrong_name", IgnoreCert.EXPIRED, False),
        ("self_signed", IgnoreCert.NONE, False),
        ("self_signed", IgnoreCert.INVALID_CERTIFICATE, True),
        ("self_signed", IgnoreCert.INVALID_NAME, False),
        ("unknown_ca", IgnoreCert.INVALID_CERTIFICATE, True),
        ("not_yet_valid", IgnoreCert.EXPIRED, True),
    ],
)
def test_ignore_cert_flags_ignore_exactly_their_class(
    smtpd: Any,
    client: Any,
    client_ssl_context: ssl.SSLContext,
    bad_certs: Any,
    maker: str,
    ignore: IgnoreCert,
    ok: bool,
) -> None:
    server = smtpd(tls="implicit", ssl_context=getattr(bad_certs, maker)())
    c = client(
        server.host,
        server.port,
        security=Security.TLS,
        ssl_context=client_ssl_context,
        ignore_errors=ignore,
    )
    st = c.send(raw())
    assert st.success is ok, st
    if not ok:
        assert st.errors[0].component == "tls"


def test_starttls_not_offered(smtpd: Any, client: Any) -> None:
    server = smtpd()
    c = client(server.host, server.port, security=Security.STARTTLS)
    st = c.send(raw())
    assert not st.success and "STARTTLS" in st.errors[0].message
    ok = client(
        server.host, server.port, security=Security.STARTTLS, accept_unsecure_connection=True
    )
    assert ok.send(raw()).success


def test_starttls_response_injection_is_discarded(
    script_server: Any, client: Any, client_ssl_context: ssl.SSLContext
) -> None:
    # CVE-2011-0411 class (security.md 1.8): lines injected after 220 in one segment.
    server = script_server(
        [
            send(b"220 hi\r\n"),
            expect(b"EHLO"),
            send(b"250-mx\r\n250 STARTTLS\r\n"),
            expect(b"STARTTLS"),
            send(b"220 go\r\n250-SMTPUTF8 INJECTED\r\n250 AUTH PLAIN\r\n"),
            starttls(),
            expect(b"EHLO"),
            send(b"250-mx\r\n250 PIPELINING\r\n"),
            expect(b"MAIL FROM:<a@x.test>\r\n"),
            send(b"250 ok\r\n"),
            expect(b"RCPT"),
            send(b"250 ok\r\n"),
            expect(b"DATA"),
            send(b"354 go\r\n"),
            read_until(),
            send(b"250 ok\r\n"),
            expect(b"QUIT"),
            send(b"221 bye\r\n"),
            close(),
        ]
    )
    c = client(server.host, server.port, security=Security.STARTTLS, ssl_context=client_ssl_context)
    st = c.send(raw())
    assert st.success, st
    c.close()
    server.assert_ok()


# ------------------------------------------------------------------------ AUTH


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
def test_auth_each_password_mechanism(
    smtpd: Any,
    client: Any,
    client_ssl_context: ssl.SSLContext,
    mech: str,
    log_capture: Any,
    tmp_path: Path,
) -> None:
    server = smtpd(
        tls="starttls", auth=[mech], credentials={"ann": "s3cr3t-pw"}, auth_required=True
    )
    log = tmp_path / "smtp.log"
    c = client(
        server.host,
        server.port,
        user="ann",
        password="s3cr3t-pw",
        ssl_context=client_ssl_context,
        log_file=log,
    )
    st = c.send(raw())
    assert st.success, st
    assert server.messages[0].auth_user == "ann"
    c.close()
    text = log.read_text()
    assert f"AUTH chosen: {mech}" in text and "C > " in text and "S < " in text
    assert log_capture.secrets_found("s3cr3t-pw", user="ann") == []
    for secret in (
        "s3cr3t-pw",
        base64.b64encode(b"s3cr3t-pw").decode(),
        base64.b64encode(b"\0ann\0s3cr3t-pw").decode(),
    ):
        assert secret not in text
    assert "s3cr3t-pw" not in repr(c.t)


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_auth_oauth_with_token_provider(
    smtpd: Any, client: Any, client_ssl_context: ssl.SSLContext, mech: str, tmp_path: Path
) -> None:
    server = smtpd(tls="implicit", auth=[mech], tokens={"ann": "tok-123"}, auth_required=True)
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return "tok-123"

    log = tmp_path / "smtp.log"
    c = client(
        server.host,
        server.port,
        security=Security.TLS,
        user="ann",
        access_token=provider,
        ssl_context=client_ssl_context,
        log_file=log,
    )
    assert c.send(raw()).success
    assert calls == [1]
    assert "tok-123" not in log.read_text()
    bad = client(
        server.host,
        server.port,
        security=Security.TLS,
        user="ann",
        access_token="expired",
        ssl_context=client_ssl_context,
    )
    st = bad.send(raw())
    assert not st.success and st.status == 535 and st.stage == "auth"
    with pytest.raises(AuthenticationError):
        st.raise_for_status()


def test_auth_never_in_clear(smtpd: Any, client: Any) -> None:
    server = smtpd(auth=["PLAIN"], credentials={"ann": "pw"}, auth_require_tls=False)
    c = client(server.host, server.port, security=Security.NONE, user="ann", password="pw")
    st = c.send(raw())
    assert not st.success and "unencrypted" in st.errors[0].message
    assert server.auth_attempts == []
    ok = client(
        server.host,
        server.port,
        security=Security.NONE,
        user="ann",
        password="pw",
        accept_unsecure_connection=True,
    )
    assert ok.send(raw()).success


def test_windev_rule_no_known_mechanism_goes_on(
    smtpd: Any, client: Any, client_ssl_context: ssl.SSLContext
) -> None:
    server = smtpd(tls="starttls")
    c = client(server.host, server.port, user="ann", password="pw", ssl_context=client_ssl_context)
    chk = c.check_connection()
    assert chk.success and "authentication skipped" in chk.status_text


# ------------------------------------------------------------ faults: smtp-sink


@pytest.mark.parametrize(
    ("switches", "status", "stage"),
    [
        (("-q", "mail"), 0, "rcpt"),
        (("-Q", "rcpt"), 421, "rcpt"),
        (("-r", "rcpt"), 450, "rcpt"),
        (("-f", "rcpt"), 550, "rcpt"),
        (("-r", "data"), 450, "data"),
        (("-f", "."), 550, "data"),
        (("-Q", "."), 421, "data"),
        (("-Q", "mail"), 421, "rcpt"),
        (("-f", "mail"), 550, "mail"),
    ],
)
def test_smtp_sink_fault_switches(
    smtp_sink: Any, client: Any, switches: tuple[str, str], status: int, stage: str
) -> None:
    sink = smtp_sink(*switches)
    c = client(sink.host, sink.port, security=Security.NONE)
    st = c.send(raw())
    assert not st.success
    assert st.status // 100 == status // 100 if status else st.status == 0
    if st.status >= 500:
        assert st.recipients["b@x.test"].code >= 500
    # Nothing stays in an unknown state: the next send works or fails cleanly, never hangs.
    st2 = c.send(raw())
    assert isinstance(st2, SendStatus)


def test_smtp_sink_disconnect_after_end_of_data_is_uncertain(smtp_sink: Any, client: Any) -> None:
    sink = smtp_sink("-q", ".")
    c = client(sink.host, sink.port, security=Security.NONE)
    st = c.send(raw())
    assert not st.success and st.status == 0 and st.uncertain


def test_smtp_sink_many(smtp_sink: Any, client: Any) -> None:
    sink = smtp_sink(dump=True)
    c = client(sink.host, sink.port, security=Security.NONE)
    statuses = c.send_many([raw() for _ in range(50)])
    assert all(s.success for s in statuses)
    assert len(sink.wait_for(50)) == 50


# --------------------------------------------------------- faults: raw scripts


def _greet(extra: bytes = b"250-mx\r\n250 PIPELINING\r\n") -> list[Any]:
    return [send(b"220 hi\r\n"), expect(b"EHLO"), send(extra)]


@pytest.mark.parametrize("chunk", ["whole", "byte"])
@pytest.mark.parametrize(
    ("reply", "component"),
    [
        (b"25 ok\r\n", "protocol"),
        (b"2500 ok\r\n", "protocol"),
        (b"abc\r\n", "protocol"),
        (b"250-a\r\n451 b\r\n", "protocol"),
        (b"354 go\r\n", "protocol"),
        (b"250-" + b"x" * 9000 + b"\r\n", "protocol"),
    ],
)
def test_malformed_reply_to_mail(
    script_server: Any, client: Any, chunk: str, reply: bytes, component: str
) -> None:
    server = script_server(
        [*_greet(b"250 mx\r\n"), expect(b"MAIL"), send(reply), sleep(0.5), close()], chunk=chunk
    )
    # A 9,000-octet line one byte at a time takes about 9 s to trickle in (a small sleep
    # per byte): the deadline leaves room for a busy machine, the error must be the limit.
    c = client(server.host, server.port, security=Security.NONE, send_timeout=60)
    st = c.send(raw())
    assert not st.success and st.status == 0 and st.errors[0].component == component


def test_reply_without_text_and_bare_lf_accepted(script_server: Any, client: Any) -> None:
    replies = dict(SMTP_DEFAULTS)
    replies["MAIL"] = b"250\n"  # R1 + R2
    server = script_server(default_replies=replies)
    c = client(server.host, server.port, security=Security.NONE)
    assert c.send(raw()).success


def test_trickling_server_hits_the_send_deadline(script_server: Any, client: Any) -> None:
    server = script_server(
        [
            *_greet(b"250 mx\r\n"),
            expect(b"MAIL"),
            send(b"250 " + b"o" * 40 + b"\r\n", mode="byte"),
            stall(10),
        ],
    )
    c = client(server.host, server.port, security=Security.NONE, send_timeout=0.5)
    began = time.monotonic()
    st = c.send(raw())
    assert time.monotonic() - began < 5
    assert st.status == 0 and st.errors[0].component == "timeout"


def test_stalled_greeting_times_out(script_server: Any, client: Any) -> None:
    server = script_server([stall(10)])
    c = client(server.host, server.port, security=Security.NONE, connection_timeout=0.5)
    st = c.send(raw())
    assert st.status == 0 and st.errors[0].component == "timeout"


def test_idle_connection_dropped_is_reopened(script_server: Any, client: Any) -> None:
    # Each connection plays the script: one message, then "421 idle timeout" and close.
    # The second send() finds the dropped connection and reconnects transparently.
    srv = script_server(
        [
            *_greet(),
            expect(b"MAIL"), send(b"250 ok\r\n"), expect(b"RCPT"), send(b"250 ok\r\n"),
            expect(b"DATA"), send(b"354 go\r\n"), read_until(), send(b"250 queued\r\n"),
            sleep(0.2), send(b"421 idle timeout\r\n"), close(),
        ],
        connections=2,
    )  # fmt: skip
    c = client(srv.host, srv.port, security=Security.NONE)
    assert c.send(raw()).status_text == "queued"
    time.sleep(0.5)
    st = c.send(raw())
    assert st.success, st
    assert srv.connections == 2


def test_smuggling_bodies_are_canonical_and_stuffed(script_server: Any, client: Any) -> None:
    body = b"From: a@x.test\r\nTo: b@x.test\r\n\r\na\n.\nb\r.\r\nc\r\n.\r\nd\r\n..\r\n.e\r"
    server = script_server(default_replies=SMTP_DEFAULTS)
    c = client(server.host, server.port, security=Security.NONE)
    assert c.send(RawMessage(body, "a@x.test", ["b@x.test"])).success
    c.close()
    server.wait_done(3)
    wire = b"".join(server.data)
    assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")
    stripped = wire.replace(b"\r\n", b"")
    assert b"\r" not in stripped and b"\n" not in stripped


# ---------------------------------------------------------------- bad input


def test_envelope_injection_writes_nothing(script_server: Any, client: Any) -> None:
    server = script_server(default_replies=SMTP_DEFAULTS)
    c = client(server.host, server.port, security=Security.NONE)
    evil = "a@x.test>\r\nRCPT TO:<victim@evil.test>\r\nDATA\r\n.\r\nRSET"
    with pytest.raises(InvalidMessage):
        c.send(RawMessage(RAW, evil, ["b@x.test"]))
    assert b"victim" not in server.received


def test_settings_are_validated_and_secrets_hidden() -> None:
    with pytest.raises(ValueError, match="port"):
        Transporter("h", 70000)
    with pytest.raises(ValueError, match="host"):
        Transporter("bad host")
    with pytest.raises(ValueError, match="password"):
        Transporter("h", user="u", password="a\0b")
    with pytest.raises(ValueError, match="send_timeout"):
        Transporter("h", send_timeout=0)
    with pytest.raises(ValueError, match="authentication_mode"):
        Transporter("h", authentication_mode="NTLM")
    t = Transporter("h", user="u", password="hunter2", access_token="tok")
    assert "hunter2" not in repr(t) and "tok" not in repr(t)
    assert not hasattr(t, "password") and not hasattr(t, "access_token")
    assert t.port == 587 and t.security is Security.STARTTLS
    assert Transporter("h", 465).security is Security.TLS
    assert Transporter("h", security="none").port == 25
    assert (
        Transporter(
            "h", authentication_mode="OAUTH2", user="u", access_token="t"
        ).authentication_mode
        is AuthMode.XOAUTH2
    )
    assert os.environ.get("NEVER_SET_X") is None


def test_more_than_100_recipients_go_as_several_transactions(smtpd: Any, client: Any) -> None:
    # RFC 5321 4.5.3.1.8: at most 100 RCPT per transaction; one status for the message.
    rcpts = [f"u{i}@x.test" for i in range(150)]
    server = smtpd(refuse={"u120@x.test": (550, "5.1.1 no such user")})
    c = client(server.host, server.port, security=Security.NONE)
    st = c.send(raw(rcpts))
    assert not st.success and st.status == 550
    assert len(st.recipients) == 150 and st.refused == ["u120@x.test"]
    server.wait_for(2)
    assert sorted(len(m.rcpt_tos) for m in server.messages) == [49, 100]
    statuses = c.send_many([raw(rcpts[:101]), raw()])
    assert [s.success for s in statuses] == [True, True] and len(statuses[0].recipients) == 101


def test_batch_input_puts_items_back_in_order_and_errors_in_place() -> None:
    """A batch's input (_Pushback): items put back come first, in their order; an error
    met ahead is raised in its place and what came after it still follows; a long life
    of pushes does not nest the iterators."""
    from postillon.transporter import _Pushback, _Raise

    source = _Pushback(iter(["r1", "r2", "r3"]))  # type: ignore[list-item]
    assert next(source.it) == "r1"
    source.push(["a", _Raise(LookupError("met ahead")), "b"])  # type: ignore[list-item]
    assert next(source.it) == "a"
    with pytest.raises(LookupError):
        next(source.it)
    assert [*source.it] == ["b", "r2", "r3"]

    long = _Pushback(iter(range(10_000)))  # type: ignore[arg-type]
    for i in range(5_000):  # a turn per connection of a long-lived lane
        long.push([next(long.it)])
        assert next(long.it) == i
    assert next(long.it) == 5_000
    assert long.it is long._rest  # nothing in front: the input itself, not nested chains
