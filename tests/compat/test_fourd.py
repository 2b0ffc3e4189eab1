"""The 4D layer: the seed's ``checkConnection()`` example, ``send()``, properties, MIME."""

from __future__ import annotations

import pytest

from postillon import Attachment, InvalidMessage
from postillon.compat.fourd import (
    MAIL_MODE_ISO2022JP,
    MAIL_MODE_UTF8,
    SMTP_AUTHENTICATION_PLAIN,
    mail_convert_from_mime,
    mail_convert_to_mime,
    mail_new_attachment,
    smtp_new_transporter,
)

from support import free_port

PW = "app-password-1"


def test_seed_check_connection_example(smtpd, client_ssl_context) -> None:
    # 4D:  $options.host:=...; $options.user:=...; $options.password:=$pw
    #      $transporter:=SMTP New transporter($options)
    #      $status:=$transporter.checkConnection()
    #      If($status.success=True) ALERT("SMTP connection check successful!")
    server = smtpd(tls="starttls", auth=["PLAIN", "LOGIN"], credentials={"test@gmail.com": PW})
    options = {
        "host": "localhost",
        "port": server.port,
        "user": "test@gmail.com",
        "password": PW,
        "sslContext": client_ssl_context,  # the test CA instead of the system's
    }
    transporter = smtp_new_transporter(options)
    status = transporter.checkConnection()
    assert status == {"success": True, "status": 250, "statusText": status["statusText"]}
    assert server.auth_attempts[-1].success and server.auth_attempts[-1].user == "test@gmail.com"
    transporter.close()

    # Else: ALERT("Error # "+String($status.status)+", "+$status.statusText)
    bad = smtp_new_transporter({**options, "password": "wrong"}).checkConnection()
    assert bad["success"] is False and bad["status"] == 535
    assert "errors" not in bad  # the server answered: no 4D error stack
    assert f"Error # {bad['status']}, {bad['statusText']}".startswith("Error # 535, ")


def test_failure_without_reply_is_status_0_with_4d_errors() -> None:
    t = smtp_new_transporter({"host": "127.0.0.1", "port": free_port(), "connectionTimeOut": 3})
    status = t.checkConnection()
    assert status["success"] is False and status["status"] == 0
    [err] = status["errors"]
    assert set(err) == {"errCode", "message", "componentSignature"}
    assert "refused" in err["message"]
    sent = t.send({"from": "a@example.com", "to": "b@example.com", "subject": "x"})
    assert sent["status"] == 0 and sent["statusText"] == "Failed to send email"


def test_send_dict_mail_and_attachment(smtpd) -> None:
    server = smtpd()
    t = smtp_new_transporter(
        {"host": "127.0.0.1", "port": server.port, "acceptUnsecureConnection": True}
    )
    mail = {
        "from": "ann@example.com",
        "to": "bob@example.com",
        "subject": "Rapport",
        "textBody": "Voici le rapport.",
        "attachments": [mail_new_attachment(b"a;b\n1;2\n", "rapport.csv")],
    }
    status = t.send(mail)
    assert status["success"] is True and status["status"] == 250
    parsed = server.wait_for(1)[0].parsed()
    assert parsed["Subject"] == "Rapport"
    assert [p.get_filename() for p in parsed.iter_attachments()] == ["rapport.csv"]
    # MIME text is accepted too (4D 17 R5)
    mime = mail_convert_to_mime({**mail, "subject": "Again"})
    assert t.send(mime)["success"] is True
    assert server.wait_for(2)[1].parsed()["Subject"] == "Again"
    t.close()


def test_properties_are_4d_names_and_password_is_not_readable() -> None:
    t = smtp_new_transporter(
        {
            "host": "smtp.example.com",
            "user": "ann",
            "password": "pw",
            "authenticationMode": SMTP_AUTHENTICATION_PLAIN,
            "logFile": "smtp.log",
            "bodyCharset": MAIL_MODE_ISO2022JP,
        }
    )
    assert (t.host, t.port, t.user) == ("smtp.example.com", 587, "ann")  # 4D: 587
    assert t.acceptUnsecureConnection is False
    assert t.authenticationMode == "PLAIN"
    assert (t.connectionTimeOut, t.sendTimeOut, t.keepAlive) == (30, 100, True)
    assert t.logFile == "smtp.log"
    assert t.headerCharset == MAIL_MODE_UTF8 and t.bodyCharset == MAIL_MODE_ISO2022JP
    assert not hasattr(t, "password")
    assert "pw" not in repr(t)
    assert smtp_new_transporter({"host": "h", "authenticationMode": "OAUTH2",
                                 "user": "u", "accessTokenOAuth2": "tok"}).authenticationMode \
        == "XOAUTH2"  # fmt: skip


@pytest.mark.parametrize(
    ("server", "named"),
    [
        ({}, "host"),
        ({"host": "h", "prot": 25}, "prot"),
        ({"host": "h", "port": 0}, "port"),
        ({"host": "h", "keepAlive": "yes"}, "keepAlive"),
        ({"host": "h", "connectionTimeOut": -1}, "connectionTimeOut"),
        ({"host": "h", "headerCharset": "EBCDIC"}, "header_charset"),
        ({"host": "h", "authenticationMode": "NTLM"}, "authentication"),
        ({"host": "h", "accessTokenOAuth2": 42}, "accessTokenOAuth2"),
    ],
)
def test_bad_server_objects(server: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        smtp_new_transporter(server)


def test_invalid_mail_raises_naming_the_field(smtpd) -> None:
    server = smtpd()
    t = smtp_new_transporter({"host": "127.0.0.1", "port": server.port})
    with pytest.raises(InvalidMessage) as info:
        t.send({"from": "ann@example.com", "to": "bob@example.com", "subjekt": "x"})
    assert "subjekt" in str(info.value)
    with pytest.raises(InvalidMessage):
        t.send(42)


def test_mime_round_trip_with_options() -> None:
    mail = {"from": "a@example.com", "to": "b@example.com", "subject": "日本語",
            "textBody": "こんにちは"}  # fmt: skip
    mime = mail_convert_to_mime(
        mail, {"headerCharset": MAIL_MODE_ISO2022JP, "bodyCharset": MAIL_MODE_ISO2022JP}
    )
    assert isinstance(mime, str) and "ISO-2022-JP" in mime.upper()
    back = mail_convert_from_mime(mime)
    assert back["subject"] == "日本語"
    assert back["textBody"].strip() == "こんにちは"
    assert back["from"] == [{"name": "", "email": "a@example.com"}]
    with pytest.raises(ValueError, match="options"):
        mail_convert_to_mime(mail, {"charset": "x"})
    with pytest.raises(ValueError, match="mime"):
        mail_convert_from_mime(42)  # type: ignore[arg-type]


def test_mail_new_attachment_is_an_attachment(tmp_path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff")
    att = mail_new_attachment(str(path), cid="photo")
    assert isinstance(att, Attachment)
    assert (att.name, att.type, att.disposition, att.cid) == (
        "photo.jpg",
        "image/jpeg",
        "inline",
        "photo",
    )
    with pytest.raises(InvalidMessage):
        mail_new_attachment(str(tmp_path / "missing.pdf"))
