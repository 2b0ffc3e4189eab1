"""postillon.contrib.django.EmailBackend against a real SMTP server (aiosmtpd).

Django's own test utilities drive it: ``override_settings``, ``send_mail``,
``get_connection``, and the locmem backend's ``mail.outbox`` as the reference of what
Django itself renders.
"""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Iterator
from email import encoders
from email.mime.base import MIMEBase
from pathlib import Path
from typing import Any

import pytest
import trustme

from postillon import ConnectError, RecipientsRefused, Security, SpoolState, Transporter
from postillon.spool import Spool

from support.sink import free_port
from support.tls import write_leaf

BACKEND = "postillon.contrib.django.EmailBackend"


@pytest.fixture(autouse=True)
def _workers_stopped(django_ready: Any) -> Iterator[None]:
    yield
    from postillon.contrib.django import stop_workers

    stop_workers()


def server_settings(server: Any, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "EMAIL_BACKEND": BACKEND,
        "EMAIL_HOST": server.host,
        "EMAIL_PORT": server.port,
        "EMAIL_HOST_USER": "",
        "EMAIL_HOST_PASSWORD": "",
        "EMAIL_USE_TLS": False,
        "EMAIL_USE_SSL": False,
    }
    values.update(extra)
    return values


def test_send_mail_goes_through_the_server(smtpd: Any) -> None:
    from django.core.mail import send_mail
    from django.test.utils import override_settings

    server = smtpd()
    with override_settings(**server_settings(server)):
        sent = send_mail("Hi there", "Hello Bob", "ann@example.com", ["bob@example.com"])
    assert sent == 1
    [msg] = server.wait_for(1)
    assert msg.mail_from == "ann@example.com" and msg.rcpt_tos == ["bob@example.com"]
    parsed = msg.parsed()
    assert parsed["Subject"] == "Hi there"
    assert parsed.get_content().strip() == "Hello Bob"


def _rich_message(connection: Any = None) -> Any:
    from django.core.mail import EmailMultiAlternatives

    msg = EmailMultiAlternatives(
        subject="Report ✓",
        body="plain text, with ünïcode",
        from_email="Ann Example <ann@example.com>",
        to=["Bob <bob@example.com>"],
        cc=["carl@example.com"],
        bcc=["dan@example.com"],
        reply_to=["replies@example.com"],
        headers={"X-Campaign": "q3", "Message-ID": "<fixed@example.com>"},
        connection=connection,
    )
    msg.attach_alternative("<p>html <b>body</b></p>", "text/html")
    msg.attach("data.csv", "a,b\n1,2\n", "text/csv")
    part = MIMEBase("application", "octet-stream")
    part.set_payload(b"\x00\x01binary\xff")
    encoders.encode_base64(part)
    part.add_header("Content-Disposition", "attachment", filename="blob.bin")
    msg.attach(part)
    return msg


def test_alternatives_attachments_cc_bcc_reply_to_headers(smtpd: Any) -> None:
    from django.core import mail
    from django.test.utils import override_settings

    server = smtpd()
    with override_settings(**server_settings(server)):
        assert _rich_message().send() == 1
    [got] = server.wait_for(1)
    # the envelope has Bcc; the header does not (as Django's SMTP backend)
    assert got.mail_from == "ann@example.com"
    assert got.rcpt_tos == ["bob@example.com", "carl@example.com", "dan@example.com"]
    assert b"dan@example.com" not in got.content
    parsed = got.parsed()
    assert parsed["X-Campaign"] == "q3" and parsed["Reply-To"] == "replies@example.com"
    assert parsed["Subject"] == "Report ✓"
    kinds = [p.get_content_type() for p in parsed.walk()]
    assert "text/html" in kinds and "text/csv" in kinds and "application/octet-stream" in kinds
    blob = next(p for p in parsed.walk() if p.get_filename() == "blob.bin")
    assert blob.get_payload(decode=True) == b"\x00\x01binary\xff"

    # The same message through Django's locmem backend: what Django renders is what
    # the server received (Message-ID fixed; Date differs by the second at most).
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"):
        mail.outbox = []
        _rich_message().send()
        rendered = mail.outbox[0].message().as_bytes(linesep="\r\n")
    reference = email.message_from_bytes(rendered, policy=email.policy.default)
    for header in ("Subject", "From", "To", "Cc", "Reply-To", "X-Campaign", "Message-ID"):
        assert parsed[header] == reference[header], header
    assert [p.get_content_type() for p in parsed.walk()] == [
        p.get_content_type() for p in reference.walk()
    ]
    ref_parts = [p.get_payload(decode=True) for p in reference.walk() if not p.is_multipart()]
    got_parts = [p.get_payload(decode=True) for p in parsed.walk() if not p.is_multipart()]
    assert got_parts == ref_parts


def test_connection_is_reused_across_send_messages(smtpd: Any) -> None:
    from django.core.mail import EmailMessage, get_connection
    from django.test.utils import override_settings

    server = smtpd()
    with override_settings(**server_settings(server)):
        with get_connection() as conn:
            first = conn.send_messages(
                [EmailMessage(f"m{i}", "x", "a@example.com", ["b@example.com"]) for i in range(3)]
            )
            second = conn.send_messages([EmailMessage("m3", "x", "a@example.com", ["c@x.org"])])
        assert (first, second) == (3, 1)
        assert server.connections == 1
        # without open(), each call opens and closes its own connection (as Django)
        backend = get_connection()
        backend.send_messages([EmailMessage("m4", "x", "a@example.com", ["b@example.com"])])
        backend.send_messages([EmailMessage("m5", "x", "a@example.com", ["b@example.com"])])
        assert backend.connection is None
    server.wait_for(6)
    assert server.connections == 3
    assert server.commands.count("QUIT") == 3


def test_messages_without_recipients_are_skipped(smtpd: Any) -> None:
    from django.core.mail import EmailMessage, get_connection
    from django.test.utils import override_settings

    server = smtpd()
    with override_settings(**server_settings(server)):
        conn = get_connection()
        assert conn.send_messages([]) == 0
        assert conn.send_messages([EmailMessage("none", "x", "a@example.com", [])]) == 0
    assert server.connections == 0


def test_fail_silently_and_errors(smtpd: Any) -> None:
    from django.core.mail import send_mail
    from django.test.utils import override_settings

    dead = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": free_port(), "EMAIL_TIMEOUT": 5}
    with override_settings(EMAIL_BACKEND=BACKEND, **dead):
        assert send_mail("s", "b", "a@example.com", ["b@example.com"], fail_silently=True) == 0
        with pytest.raises(ConnectError):
            send_mail("s", "b", "a@example.com", ["b@example.com"])

    server = smtpd(refuse={"nobody@example.com": (550, "5.1.1 no such user")})
    with override_settings(**server_settings(server)):
        # refused for every recipient: raises; with fail_silently: counted as not sent
        with pytest.raises(RecipientsRefused):
            send_mail("s", "b", "a@example.com", ["nobody@example.com"])
        assert send_mail("s", "b", "a@example.com", ["nobody@example.com"], True) == 0
        # refused for one of two: sent to the other, counted (as smtplib's sendmail)
        assert send_mail("s", "b", "a@example.com", ["nobody@example.com", "b@x.org"]) == 1
    [msg] = server.wait_for(1)
    assert msg.rcpt_tos == ["b@x.org"]


def test_settings_map_to_the_transporter(tmp_path: Path, tls_ca: trustme.CA) -> None:
    from django.core.mail import get_connection
    from django.test.utils import override_settings

    from postillon.contrib.django import EmailBackend

    client = write_leaf(tls_ca.issue_cert("client.example.com"), tmp_path, "client")
    with override_settings(
        EMAIL_BACKEND=BACKEND,
        EMAIL_HOST="mail.example.com",
        EMAIL_PORT=465,
        EMAIL_HOST_USER="ann",
        EMAIL_HOST_PASSWORD="s3cret-pw",
        EMAIL_USE_SSL=True,
        EMAIL_TIMEOUT=12,
        EMAIL_SSL_CERTFILE=str(client.cert),
        EMAIL_SSL_KEYFILE=str(client.key),
    ):
        backend = get_connection()
        assert isinstance(backend, EmailBackend)
        kw = backend._transporter_kwargs()
        t = Transporter(backend.host, backend.port, **kw)  # constructs: files load
        assert t.security is Security.TLS and t.port == 465 and t.user == "ann"
        assert t.connection_timeout == 12 and t.send_timeout == 12
        assert t.client_certificate == (str(client.cert), str(client.key))
        assert "s3cret-pw" not in repr(backend) and "s3cret-pw" not in repr(t)
        # constructor keywords override the settings, as in Django's SMTP backend
        other = get_connection(host="127.0.0.2", port=2525, use_ssl=False, use_tls=True)
        assert (other.host, other.port) == ("127.0.0.2", 2525)
        assert other._transporter_kwargs()["security"] is Security.STARTTLS
        with pytest.raises(ValueError, match="mutually exclusive"):
            get_connection(use_tls=True)
        with pytest.raises(ValueError, match="EMAIL_TIMEOUT"):
            get_connection(timeout=-1)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_settings_against_a_tls_server(
    smtpd: Any, client_ssl_context: ssl.SSLContext, mode: str
) -> None:
    from django.core.mail import send_mail
    from django.test.utils import override_settings

    server = smtpd(tls=mode, auth=["PLAIN"], credentials={"ann": "pw"}, auth_required=True)
    extra = {"EMAIL_USE_TLS": mode == "starttls", "EMAIL_USE_SSL": mode == "implicit"}
    with override_settings(
        **server_settings(
            server,
            EMAIL_HOST="localhost",  # the name in the test certificate
            EMAIL_HOST_USER="ann",
            EMAIL_HOST_PASSWORD="pw",
            POSTILLON_OPTIONS={"ssl_context": client_ssl_context},
            **extra,
        )
    ):
        assert send_mail("tls", "b", "ann@example.com", ["bob@example.com"]) == 1
    [msg] = server.wait_for(1)
    assert msg.tls and msg.auth_user == "ann"


def test_spool_option_survives_a_worker_restart(smtpd: Any, tmp_path: Path) -> None:
    from django.core.mail import send_mail
    from django.test.utils import override_settings

    server = smtpd()
    spool_path = str(tmp_path / "django-spool.db")
    with override_settings(
        **server_settings(server), POSTILLON_SPOOL=spool_path, POSTILLON_SPOOL_WORKER=False
    ):
        assert send_mail("queued", "later", "ann@example.com", ["bob@example.com"]) == 1
    # no worker ran: nothing reached the server, the message waits in the spool
    assert server.connections == 0 and server.messages == []
    from postillon.contrib.django import stop_workers

    stop_workers()  # the web process goes away
    spool = Spool(spool_path)
    [entry] = spool.entries()
    assert entry.state is SpoolState.PENDING
    stats = spool.run(
        Transporter(server.host, server.port, security=Security.NONE), until_empty=True
    )
    assert stats.sent == 1
    [msg] = server.wait_for(1)
    assert msg.parsed()["Subject"] == "queued"
    assert spool.status(entry.mail_id).state is SpoolState.SENT
    spool.close()


def test_spool_option_with_the_in_process_worker(smtpd: Any, tmp_path: Path) -> None:
    from django.core.mail import EmailMessage, get_connection
    from django.test.utils import override_settings

    server = smtpd()
    with override_settings(**server_settings(server), POSTILLON_SPOOL=str(tmp_path / "s.db")):
        # one backend per call (as send_mail does): one worker for the process all the same
        for i in range(3):
            conn = get_connection()
            assert conn.send_messages([EmailMessage(f"m{i}", "x", "a@x.org", ["b@x.org"])]) == 1
            conn.close()
        msgs = server.wait_for(3, timeout=10)
    assert sorted(m.parsed()["Subject"] for m in msgs) == ["m0", "m1", "m2"]
