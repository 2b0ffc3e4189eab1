"""The interoperability cases every real server runs (``TestPostfix``, ``TestExim``).

A subclass provides the ``mta`` fixture (a running :class:`_mta.MtaServer`); the
``client`` fixture runs each case with ``Transporter`` and with ``AsyncTransporter``.
Every case checks what landed in the server's Maildir, not only what the client says.
Messages carry a fresh token (in the Message-ID or the subject), so cases sharing one
server never see each other's mail.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from postillon import Attachment, AuthMode, Dsn, Email, RawMessage, Security, from_mime

from ._mta import MtaServer
from .conftest import Client

#: a log line of the transcript: RFC 3339 timestamp, then direction and text
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z (C >|S <|--) (.*)$")

ClientFactory = Callable[..., Client]


def token() -> str:
    """A fresh unique token for one test's messages."""
    return uuid.uuid4().hex


def transcript(path: Path) -> list[tuple[str, str]]:
    """The (direction, text) events of a log file; body lines are left out."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _LOG_LINE.match(line)
        if m:
            events.append((m.group(1), m.group(2)))
    return events


def sent_commands(path: Path) -> list[str]:
    """The client's lines of a log file, in order."""
    return [text for direction, text in transcript(path) if direction == "C >"]


def parse(raw: bytes) -> email.message.EmailMessage:
    """A delivered message, parsed with the stdlib (SMTPUTF8-aware policy)."""
    msg = email.parser.BytesParser(policy=email.policy.SMTPUTF8).parsebytes(raw)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def rich_email(mta: MtaServer, tok: str, **overrides: object) -> Email:
    """An Email with text and HTML parts, an attachment and a non-ASCII subject."""
    fields: dict[str, object] = {
        "from_": f"Ann Sender <{mta.address('sender')}>",
        "to": [f"Bob <{mta.address('bob')}>"],
        "cc": [mta.address("carol")],
        "subject": f"Réunion à 10 h ✓ {tok}",
        "text_body": f"Bonjour Bob,\nle café est prêt.\n{tok}\n",
        "html_body": f"<p>Bonjour <b>Bob</b>, le café est prêt.</p><p>{tok}</p>",
        "attachments": [Attachment(b"%PDF-1.4\n" + bytes(range(256)) * 8, name="rapport été.pdf")],
        "message_id": f"<{tok}@client.example.test>",
    }
    fields.update(overrides)
    return Email(**fields)  # type: ignore[arg-type]


class InteropCases:
    """Feature cases against one real server; subclasses provide the ``mta`` fixture."""

    @pytest.fixture
    def mta(self) -> MtaServer:  # pragma: no cover - always overridden
        """The server under test (each subclass overrides this fixture)."""
        raise NotImplementedError

    def authed(self, client: ClientFactory, mta: MtaServer, **settings: object) -> Client:
        """A STARTTLS + AUTH client of ``mta``."""
        return client(mta, user=mta.user, password=mta.password, **settings)

    # -- plain and TLS sessions

    def test_plain_send_arrives(self, mta: MtaServer, client: ClientFactory) -> None:
        tok = token()
        c = client(mta, security=Security.NONE)
        status = c.send(
            Email(
                from_=mta.address("sender"),
                to=mta.address("bob"),
                subject=f"plain {tok}",
                text_body="hello over plain SMTP",
                message_id=f"<{tok}@client.example.test>",
            )
        )
        assert status.success, status
        assert status.status == 250
        assert status.recipients[mta.address("bob")].accepted
        [raw] = mta.wait_for("bob", tok.encode())
        got = from_mime(raw)
        assert got.subject == f"plain {tok}"
        assert got.message_id == f"<{tok}@client.example.test>"
        assert (got.text_body or "").strip() == "hello over plain SMTP"

    def test_starttls_with_test_ca(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        c = client(mta, security=Security.STARTTLS, log_file=log)
        status = c.send(
            Email(
                from_=mta.address("sender"),
                to=mta.address("bob"),
                subject=f"tls {tok}",
                text_body="hello over STARTTLS",
            )
        )
        c.close()
        assert status.success, status
        [raw] = mta.wait_for("bob", tok.encode())
        assert from_mime(raw).subject == f"tls {tok}"
        events = transcript(log)
        texts = [text for _, text in events]
        assert "STARTTLS" in texts
        tls_events = [t for d, t in events if d == "--" and t.startswith("TLS ")]
        assert tls_events and "TLSv1." in tls_events[0], events
        # The server saw the message arrive over TLS (its Received header says so).
        received = parse(raw).get_all("Received") or []
        assert any(re.search(r"ESMTPS|esmtps|TLS", r) for r in received), received

    # -- AUTH

    @pytest.mark.parametrize("mode", [AuthMode.PLAIN, AuthMode.LOGIN, AuthMode.CRAM_MD5])
    def test_auth_mechanism(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path, mode: AuthMode
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        c = self.authed(client, mta, authentication_mode=mode, log_file=log)
        status = c.send(
            Email(
                from_=mta.address("sender"),
                to=mta.address("dave"),
                subject=f"auth {mode.value} {tok}",
                text_body="authenticated",
            )
        )
        c.close()
        assert status.success, status
        [raw] = mta.wait_for("dave", tok.encode())
        # The server's own word on the mechanism of the session that carried this message.
        assert mta.auth_mechanism(status.status_text) == mode.value
        commands = sent_commands(log)
        assert f"AUTH {mode.value}" in " ".join(commands)
        text = log.read_text(encoding="utf-8")
        assert mta.password not in text
        assert "[redacted]" in text
        assert from_mime(raw).subject == f"auth {mode.value} {tok}"

    def test_auth_wrong_password_refused(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        c = client(mta, user=mta.user, password="not-the-password", log_file=log)
        status = c.send(
            Email(
                from_=mta.address("sender"),
                to=mta.address("dave"),
                subject=f"bad auth {tok}",
                text_body="must not arrive",
            )
        )
        c.close()
        assert not status.success
        assert status.status == 535, status
        assert "not-the-password" not in log.read_text(encoding="utf-8")
        mta.assert_none("dave", tok.encode())

    def test_check_connection_authenticates(self, mta: MtaServer, client: ClientFactory) -> None:
        status = self.authed(client, mta).check_connection()
        assert status.success, status
        assert status.status == 250

    # -- SMTPUTF8

    def test_smtputf8_local_part_and_subject(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        c = self.authed(client, mta, log_file=log)
        rcpt = mta.address("jürgen")
        subject = f"Grüße aus Köln ✉ {tok}"
        status = c.send(
            Email(
                from_=mta.address("sender"),
                to=f"Jürgen <{rcpt}>",
                subject=subject,
                text_body="Grüße!",
            )
        )
        c.close()
        assert status.success, status
        assert status.recipients[rcpt].accepted
        [raw] = mta.wait_for("jürgen", tok.encode())
        msg = parse(raw)
        assert msg["Subject"] == subject
        assert rcpt in str(msg["To"])
        got = from_mime(raw)
        assert got.subject == subject
        assert [a.email for a in got.to] == [rcpt]
        mail_cmd = next(t for t in sent_commands(log) if t.startswith("MAIL FROM:"))
        assert "SMTPUTF8" in mail_cmd.split()
        assert any(t.startswith(f"RCPT TO:<{rcpt}>") for t in sent_commands(log))

    # -- PIPELINING

    def test_pipelining_send_many(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        c = self.authed(client, mta, log_file=log)
        mails = [
            Email(
                from_=mta.address("sender"),
                to=mta.address("bob"),
                subject=f"bulk {i} {tok}",
                text_body=f"message {i}",
            )
            for i in range(50)
        ]
        statuses = c.send_many(mails)
        c.close()
        assert len(statuses) == 50
        assert all(s.success for s in statuses), [s for s in statuses if not s.success][:3]
        arrived = mta.wait_for("bob", tok.encode(), count=50, timeout=30)
        subjects = sorted(from_mime(raw).subject for raw in arrived)
        assert subjects == sorted(f"bulk {i} {tok}" for i in range(50))
        # RFC 2920 3.1: MAIL and every RCPT leave before their replies are read; find the
        # runs of client lines between two server replies.
        groups: list[list[str]] = []
        run: list[str] = []
        for direction, text in transcript(log):
            if direction == "C >":
                run.append(text)
            elif direction == "S <" and run:
                groups.append(run)
                run = []
        pipelined = [g for g in groups if any(t.startswith("MAIL FROM:") for t in g)]
        assert len(pipelined) == 50
        assert all(any(t.startswith("RCPT TO:") for t in g) for g in pipelined), pipelined[:3]
        # One session carried them all (one EHLO after STARTTLS, one AUTH).
        assert sum(1 for t in sent_commands(log) if t.startswith("AUTH ")) == 1

    # -- CHUNKING

    def test_chunking_byte_identical(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        lines = [
            "Date: Mon, 02 Jun 2025 10:00:00 +0000",
            f"From: {mta.address('sender')}",
            f"To: {mta.address('carol')}",
            f"Subject: chunking {tok}",
            f"Message-ID: <{tok}@client.example.test>",
            "MIME-Version: 1.0",
            'Content-Type: text/plain; charset="utf-8"',
            "Content-Transfer-Encoding: 8bit",
            "",
            ".a line that starts with a dot",
            "..two dots",
            ".",
            "8-bit text: déjà vu, naïve, Ωmega",
        ]
        # ~120 kB: several BDAT chunks of postillon's size, under the servers' limit.
        lines += [f"{i:05d} {'x' * 70} ende" for i in range(1500)]
        raw = ("\r\n".join(lines) + "\r\n").encode("utf-8")
        c = self.authed(client, mta, log_file=log)
        status = c.send(RawMessage(raw, mta.address("sender"), [mta.address("carol")]))
        c.close()
        assert status.success, status
        [got] = mta.wait_for("carol", tok.encode())
        # Maildir stores lines with LF; the server only prepends its trace headers.
        assert got.endswith(raw.replace(b"\r\n", b"\n"))
        head = got[: len(got) - len(raw.replace(b"\r\n", b"\n"))]
        assert all(
            line.split(b":", 1)[0]
            in {b"Return-Path", b"Return-path", b"X-Original-To", b"Delivered-To", b"Received"}
            for line in head.splitlines()
            if line and not line[:1].isspace()
        ), head
        text = log.read_text(encoding="utf-8")
        assert re.search(r"BDAT \d+ LAST", text), "BDAT LAST not in the log file"
        assert "DATA" not in sent_commands(log)
        # RFC 6152: 8-bit content is declared (both servers offer 8BITMIME).
        mail_cmd = next(t for t in sent_commands(log) if t.startswith("MAIL FROM:"))
        assert "BODY=8BITMIME" in mail_cmd.split(), mail_cmd

    # -- DSN

    def test_dsn_parameters_and_success_notice(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        c = self.authed(client, mta, log_file=log)
        mail = Email(
            from_=mta.address("sender"),
            to=mta.address("carol"),
            subject=f"dsn {tok}",
            text_body="please confirm delivery",
            message_id=f"<{tok}@client.example.test>",
        )
        status = c.send(mail, dsn=Dsn(notify=("SUCCESS",), ret="HDRS", envid="x+y"))
        c.close()
        assert status.success, status
        commands = sent_commands(log)
        mail_cmd = next(t for t in commands if t.startswith("MAIL FROM:"))
        rcpt_cmd = next(t for t in commands if t.startswith("RCPT TO:"))
        # RFC 3461 4: ENVID is xtext ("+" is "+2B"); NOTIFY goes with each RCPT.
        assert "RET=HDRS" in mail_cmd.split()
        assert "ENVID=x+2By" in mail_cmd.split()
        assert "NOTIFY=SUCCESS" in rcpt_cmd.split()
        mta.wait_for("carol", tok.encode())
        # The server's success notice comes back to the envelope sender (RET=HDRS: the
        # original headers, with our Message-ID, are in it).
        [notice] = mta.wait_for("sender", tok.encode(), timeout=20)
        report = parse(notice)
        assert report.get_content_type() == "multipart/report"
        assert report.get_param("report-type") == "delivery-status"
        text = notice.decode("utf-8", "replace")
        # Postfix prints the ENVID decoded ("x+y"), Exim as received (xtext "x+2By").
        assert re.search(r"(?im)^Original-Envelope-Id: x\+(?:2B)?y\s*$", text), text
        assert re.search(r"(?im)^Action: delivered", text), text
        assert re.search(rf"(?im)^Final-Recipient: rfc822; ?{mta.address('carol')}", text)
        assert "please confirm delivery" not in text  # headers only (RET=HDRS)

    # -- SIZE

    def test_size_limit_refused_before_data(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        c = self.authed(client, mta, log_file=log)
        big = Email(
            from_=mta.address("sender"),
            to=mta.address("dave"),
            subject=f"too big {tok}",
            text_body="see attachment",
            attachments=[Attachment(b"\x00\xff" * (mta.size_limit // 2 + 1000), name="big.bin")],
        )
        status = c.send(big)
        c.close()
        assert not status.success
        assert status.status == 552, status
        assert not status.recipients[mta.address("dave")].accepted
        commands = sent_commands(log)
        assert not any(t == "DATA" or t.startswith("BDAT") for t in commands), commands
        # The limit compared with is the one the server announced (RFC 1870).
        assert f"S < 250-SIZE {mta.size_limit}" in log.read_text(encoding="utf-8")
        assert not re.search(r"^BDAT ", log.read_text(encoding="utf-8"), re.M)
        mta.assert_none("dave", tok.encode())

    # -- refused recipient

    def test_refused_recipient_per_recipient_status(
        self, mta: MtaServer, client: ClientFactory
    ) -> None:
        tok = token()
        c = self.authed(client, mta)
        good = mta.address("bob")
        bad = f"nobody-{tok[:8]}@{mta.domain}"
        status = c.send(
            Email(
                from_=mta.address("sender"),
                to=[good, bad],
                subject=f"partial {tok}",
                text_body="one of two",
            )
        )
        assert not status.success  # not accepted for every recipient
        assert status.recipients[good].accepted
        assert status.recipients[good].code == 250
        assert not status.recipients[bad].accepted
        assert status.recipients[bad].code == 550, status.recipients[bad]
        assert status.accepted == [good]
        assert status.refused == [bad]
        [raw] = mta.wait_for("bob", tok.encode())
        assert from_mime(raw).subject == f"partial {tok}"

    # -- a full Email round trip

    def test_email_round_trip_through_server(self, mta: MtaServer, client: ClientFactory) -> None:
        tok = token()
        mail = rich_email(mta, tok)
        c = self.authed(client, mta)
        status = c.send(mail)
        assert status.success, status
        assert sorted(status.recipients) == sorted([mta.address("bob"), mta.address("carol")])
        [raw_bob] = mta.wait_for("bob", tok.encode())
        [raw_carol] = mta.wait_for("carol", tok.encode())
        for raw in (raw_bob, raw_carol):
            got = from_mime(raw)
            assert got.subject == mail.subject
            assert got.message_id == mail.message_id
            assert [(a.name, a.email) for a in got.from_] == [(a.name, a.email) for a in mail.from_]
            assert [a.email for a in got.to] == [a.email for a in mail.to]
            assert [a.name for a in got.to] == ["Bob"]
            assert [a.email for a in got.cc] == [a.email for a in mail.cc]
            assert (got.text_body or "").replace("\r\n", "\n").rstrip("\n") == (
                mail.text_body or ""
            ).rstrip("\n")
            assert (got.html_body or "").strip() == (mail.html_body or "").strip()
            [att] = got.attachments
            [sent_att] = mail.attachments
            assert att.name == sent_att.name
            assert att.type == "application/pdf"
            assert att.get_content() == sent_att.get_content()
            assert parse(raw).get("Bcc") is None
