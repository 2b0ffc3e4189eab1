"""The WinDev layer: the seeds' EmailStartSMTPSession examples, the asynchronous session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postillon import Email, IgnoreCert, InvalidMessage
from postillon.compat import windev
from postillon.compat.windev import (
    EMAIL_ERROR,
    EMAIL_OPTION_DEFAULT,
    EMAIL_OPTION_SECURED_TLS,
    EMAIL_PENDING,
    EMAIL_PROTOCOL_SMTPS,
    EMAIL_SENT,
    EMAIL_SESSION_IGNORE_EXPIRED_CERTIFICATE,
    EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE,
    EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE_NAME,
    EMAIL_SESSION_IGNORE_REVOCATION,
    OPTION_SSL,
    OPTION_TLS,
    EmailSMTPSession,
    email_close_session,
    email_last_identifier,
    email_send_message,
    email_set_timeout,
    email_start_smtp_session,
    email_status,
    error_info,
)

from support import free_port

PW = "MotDePasse"


def initialise_email(n: int = 1) -> Email:
    """The seeds' ``Initialise_Email()``."""
    return Email(
        from_="monadresse@gmail.com",
        to="destinataire@example.com",
        subject=f"Message {n}",
        text_body="Bonjour",
    )


@pytest.fixture(autouse=True)
def _no_leftover_sessions() -> Iterator[None]:
    yield
    for user in list(windev._state.sessions):
        email_close_session(user)
    windev._state.timeout = None


def test_seed_plain_session_example(smtpd) -> None:
    # EmailChangeTimeOut(10)
    # SI EmailOuvreSessionSMTP(sNomUser, sMotDePasse, sServeurSMTP) = Vrai ALORS
    #     SI EmailEnvoieMessage(sNomUser) = Faux ALORS Erreur() FIN
    #     EmailFermeSession(sNomUser)
    server = smtpd()  # no AUTH offered: the session goes on without it (WinDev)
    email_set_timeout(10)
    user = "sNomUser"
    assert email_start_smtp_session(user, "sMotDePasse", "127.0.0.1", server.port) is True
    assert error_info() == ""
    mail = initialise_email()
    assert email_send_message(user, mail) is True
    assert email_close_session(user) is True
    [msg] = server.wait_for(1)
    assert not msg.tls and msg.auth_user is None
    assert mail.identifier.startswith("<")  # type: ignore[attr-defined]
    assert email_status(mail) is EMAIL_SENT


def test_seed_secured_tls_session_example(smtpd, client_ssl_context) -> None:
    # NomUser = "monadresse@gmail.com"
    # SI EmailOuvreSessionSMTP(NomUser, "MotDePasse", "smtp.gmail.com", 587, Faux,
    #                          emailOptionSécuriséTLS) = Vrai ALORS ...
    server = smtpd(
        tls="starttls", auth=["LOGIN", "PLAIN"], credentials={"monadresse@gmail.com": PW}
    )
    user = "monadresse@gmail.com"
    ok = email_start_smtp_session(
        user, PW, "localhost", server.port, False, EMAIL_OPTION_SECURED_TLS,
        ssl_context=client_ssl_context,
    )  # fmt: skip
    assert ok is True, error_info()
    assert email_send_message(user, initialise_email()) is True
    assert email_close_session(user) is True
    [msg] = server.wait_for(1)
    assert msg.tls and msg.auth_user == user


def test_implicit_tls_session(smtpd, client_ssl_context) -> None:
    server = smtpd(tls="implicit", auth=["PLAIN"], credentials={"me": PW})
    session = EmailSMTPSession(
        name="me", server_address="localhost", password=PW, port=server.port, option=OPTION_TLS
    )
    assert session.start_session(ssl_context=client_ssl_context) is True, error_info()
    assert email_send_message("me", {"from": "me@example.com", "to": "you@example.com"})
    assert server.wait_for(1)[0].tls
    assert PW not in repr(session)


def test_failed_login_fails_the_session(smtpd, client_ssl_context) -> None:
    # WinDev: the server knows LOGIN or PLAIN and authentication fails: the session fails
    server = smtpd(tls="starttls", auth=["PLAIN", "LOGIN"], credentials={"me": PW})
    ok = email_start_smtp_session(
        "me", "wrong", "localhost", server.port, option=EMAIL_PROTOCOL_SMTPS,
        ssl_context=client_ssl_context,
    )  # fmt: skip
    assert ok is False
    assert "535" in error_info()
    assert email_send_message("me", initialise_email()) is False
    assert "no SMTP session" in error_info()


def test_untrusted_certificate_then_ignore_error(smtpd) -> None:
    server = smtpd(tls="starttls")
    assert not email_start_smtp_session(
        "u", None, "localhost", server.port, option=EMAIL_PROTOCOL_SMTPS
    )
    assert "not trusted" in error_info()
    assert email_start_smtp_session(
        "u", None, "localhost", server.port, option=EMAIL_PROTOCOL_SMTPS,
        ignore_error=EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE,
    )  # fmt: skip


def test_unreachable_server_returns_false() -> None:
    assert email_start_smtp_session("x", None, "127.0.0.1", free_port()) is False
    assert "refused" in error_info()


def test_seed_asynchronous_session_with_email_status(smtpd, tmp_path: Path) -> None:
    server = smtpd()
    spool = tmp_path / "spool.db"
    assert email_start_smtp_session(
        "async", None, "127.0.0.1", server.port, True, spool=str(spool)
    ), error_info()
    mails = [initialise_email(n) for n in range(5)]
    for mail in mails:
        assert email_send_message("async", mail) is True
    ids = [m.identifier for m in mails]  # type: ignore[attr-defined]
    assert email_last_identifier("async") == ids[-1]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = [email_status(i) for i in ids]
        if all(s is not EMAIL_PENDING for s in states):
            break
        time.sleep(0.05)
    assert states == [EMAIL_SENT] * 5
    assert len(server.wait_for(5)) == 5
    # the spool keeps its record after the session is closed: nothing is lost on close
    assert email_close_session("async") is True
    with pytest.raises(ValueError, match="mail_id"):
        email_status(ids[0])  # no open session knows it any more


def test_async_permanent_refusal_is_email_error(smtpd, tmp_path: Path) -> None:
    server = smtpd(refuse={"destinataire@example.com": (550, "5.1.1 no such user")})
    assert email_start_smtp_session("a", None, "127.0.0.1", server.port, True,
                                    spool=str(tmp_path / "s.db"))  # fmt: skip
    mail = {"from": "a@example.com", "to": "destinataire@example.com", "subject": "x"}
    assert email_send_message("a", mail) is True  # queued
    deadline = time.monotonic() + 20
    while email_status(mail) is EMAIL_PENDING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert email_status(mail["identifier"]) is EMAIL_ERROR


def test_constants() -> None:
    assert EMAIL_OPTION_SECURED_TLS == EMAIL_PROTOCOL_SMTPS  # old name, same meaning
    assert OPTION_SSL == OPTION_TLS
    assert len({EMAIL_OPTION_DEFAULT, EMAIL_PROTOCOL_SMTPS, OPTION_TLS}) == 3
    assert EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE is IgnoreCert.INVALID_CERTIFICATE
    assert EMAIL_SESSION_IGNORE_INVALID_CERTIFICATE_NAME is IgnoreCert.INVALID_NAME
    assert EMAIL_SESSION_IGNORE_EXPIRED_CERTIFICATE is IgnoreCert.EXPIRED
    assert EMAIL_SESSION_IGNORE_REVOCATION is IgnoreCert.REVOCATION


def test_bad_arguments_raise_naming_the_field(smtpd) -> None:
    with pytest.raises(ValueError, match="option"):
        email_start_smtp_session("u", None, "h", 25, option=7)
    with pytest.raises(ValueError, match="user"):
        email_start_smtp_session("", None, "h")
    with pytest.raises(ValueError, match="port"):
        email_start_smtp_session("u", None, "h", 0)
    with pytest.raises(ValueError, match="seconds"):
        email_set_timeout(0)
    with pytest.raises(ValueError, match="mail_id"):
        email_status("")
    server = smtpd()
    assert email_start_smtp_session("u", None, "127.0.0.1", server.port)
    with pytest.raises(InvalidMessage):
        email_send_message("u", 42)
    assert email_close_session("u") is True
    assert email_close_session("u") is False and "no SMTP session" in error_info()
