"""Postfix smtpd (with Dovecot SASL) as the peer: every case of :mod:`._cases`, plus
what only Postfix's log tells (see ``servers/postfix/``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from postillon import Dsn, Email, RawMessage

from ._cases import ClientFactory, InteropCases, token
from ._mta import MtaServer


class TestPostfix(InteropCases):
    """The shared cases against a private Postfix."""

    @pytest.fixture
    def mta(self, postfix: MtaServer) -> MtaServer:
        """The session's Postfix."""
        return postfix

    def test_log_shows_success_notice_for_dsn(self, mta: MtaServer, client: ClientFactory) -> None:
        tok = token()
        c = self.authed(client, mta)
        status = c.send(
            Email(
                from_=mta.address("sender"),
                to=mta.address("dave"),
                subject=f"dsn log {tok}",
                text_body="x",
            ),
            dsn=Dsn(notify=("SUCCESS",), ret="HDRS", envid="x+y"),
        )
        assert status.success, status
        qid = re.escape(mta.message_id_of(status.status_text))
        # Postfix's bounce(8) names the message whose NOTIFY=SUCCESS it answered.
        mta.wait_log(rf"{qid}: sender delivery status notification: [0-9A-F]+")
        line = mta.wait_log(rf"{qid}: to=<{re.escape(mta.address('dave'))}>.*status=sent")
        assert "dsn=2.0.0" in line.group(0)

    def test_session_counts_bdat(self, mta: MtaServer, client: ClientFactory) -> None:
        tok = token()
        before = len(re.findall(r" bdat=\d+", mta.log_text()))
        c = self.authed(client, mta)
        raw = (
            f"From: {mta.address('sender')}\r\nTo: {mta.address('dave')}\r\n"
            f"Subject: bdat {tok}\r\nMessage-ID: <{tok}@client.example.test>\r\n\r\nbody\r\n"
        ).encode()
        status = c.send(RawMessage(raw, mta.address("sender"), [mta.address("dave")]))
        c.close()
        assert status.success, status
        mta.wait_for("dave", tok.encode())
        # smtpd's end-of-session statistics count the BDAT commands (none for DATA).
        line = mta.wait_log(
            r"disconnect from \S+ ehlo=2 starttls=1 auth=1 mail=1 rcpt=1 "
            r"bdat=1 quit=1 commands=8"
        )
        assert "data=" not in line.group(0)
        assert len(re.findall(r" bdat=\d+", mta.log_text())) > before

    def test_bdat_command_is_a_client_line_of_the_log(
        self, mta: MtaServer, client: ClientFactory, tmp_path: Path
    ) -> None:
        tok = token()
        log = tmp_path / "session.log"
        c = self.authed(client, mta, log_file=log)
        raw = f"Subject: {tok}\r\nMessage-ID: <{tok}@client.example.test>\r\n\r\nx\r\n".encode()
        status = c.send(RawMessage(raw, mta.address("sender"), [mta.address("dave")]))
        c.close()
        assert status.success, status
        text = log.read_text(encoding="utf-8")
        # API.md "Log file": each line sent is logged with a timestamp and "C >".
        assert re.search(r"(?m)^\S+Z C > BDAT \d+ LAST$", text), text
