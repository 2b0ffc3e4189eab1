"""security.md 1.13 / 3.5 last row: the secret scanner over every place a secret could leak.

For every AUTH mechanism (PLAIN inline, PLAIN via 334, LOGIN, CRAM-MD5, XOAUTH2,
OAUTHBEARER, SCRAM-SHA-256), on success and on failure, at DEBUG with a ``log_file``:
zero hits (raw, base64, base64 of the PLAIN blob, inside any decoded base64 token) in the
log records, the log file, ``repr()`` of the transporter and of the status, the text of
``raise_for_status()``'s exception, and the spool database files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from postillon import Security, SendStatus, SpoolState, Transporter

from support.logs import scan_for_secrets

USER = "alice"
PASSWORD = "S3cr3t-Passw0rd-q7Z"
WRONG = "Wr0ng-Passw0rd-k2X"
TOKEN = "ya29.TOKEN-abcdefghijklmnop-0123456789"
BAD_TOKEN = "ya29.EXPIRED-qrstuvwxyz-9876543210"
#: long enough that the PLAIN initial response would pass 512 octets: sent after a 334
LONG_PASSWORD = "L0ng-" + "p" * 400 + "-Z9"

# (case id, mechanism, password or None, use a token)
CASES = [
    ("PLAIN-inline", "PLAIN", PASSWORD, False),
    ("PLAIN-334", "PLAIN", LONG_PASSWORD, False),
    ("LOGIN", "LOGIN", PASSWORD, False),
    ("CRAM-MD5", "CRAM-MD5", PASSWORD, False),
    ("XOAUTH2", "XOAUTH2", None, True),
    ("OAUTHBEARER", "OAUTHBEARER", None, True),
    ("SCRAM-SHA-256", "SCRAM-SHA-256", PASSWORD, False),
]
RAW = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: s\r\nMessage-ID: <s@x.test>\r\n\r\nhi\r\n"


def _settings(
    server: Any, ctx: Any, mech: str, secret: str | None, token: bool, log: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "security": Security.STARTTLS,
        "ssl_context": ctx,
        "user": USER,
        "authentication_mode": mech,
        "log_file": str(log),
        "connection_timeout": 5,
        "send_timeout": 10,
    }
    if token:
        out["access_token"] = secret
    else:
        out["password"] = secret
    return out


def _texts(t: Transporter, st: SendStatus, log: Path) -> list[str | bytes]:
    texts: list[str | bytes] = [repr(t), repr(st), str(st), json.dumps(st.to_dict())]
    exc = st.exception()
    if exc is not None:
        texts += [str(exc), repr(exc), repr(exc.args)]
        with pytest.raises(type(exc)) as info:
            st.raise_for_status()
        texts.append(str(info.value))
    texts.append(log.read_bytes() if log.exists() else b"")
    return texts


@pytest.mark.parametrize("ok", [True, False], ids=["success", "failure"])
@pytest.mark.parametrize(("case", "mech", "password", "token"), CASES, ids=[c[0] for c in CASES])
def test_no_secret_anywhere(
    smtpd: Any, client_ssl_context: Any, log_capture: Any, tmp_path: Path,
    case: str, mech: str, password: str | None, token: bool, ok: bool,
) -> None:  # fmt: skip
    server = smtpd(
        tls="starttls",
        auth=[mech],
        credentials={USER: password or PASSWORD},
        tokens={USER: TOKEN},
    )
    good = TOKEN if token else password
    given = good if ok else (BAD_TOKEN if token else WRONG + (password or "")[len(WRONG) :])
    log = tmp_path / "smtp.log"
    t = Transporter(
        server.host, server.port, **_settings(server, client_ssl_context, mech, given, token, log)
    )
    st = t.send(RAW, from_="a@x.test", to=["b@x.test"])
    t.close()
    assert st.success is ok, st
    if ok:
        assert server.auth_attempts and server.auth_attempts[-1].mechanism == mech
    else:
        assert st.stage == "auth" and st.status >= 500, st
    assert log.read_text(), "the log file must record the session"
    if case == "PLAIN-334":  # the form that leaked in chrj/smtpd #38 is the other one
        assert "AUTH PLAIN" in server.commands, server.commands
    elif case == "PLAIN-inline":
        assert any(c.startswith("AUTH PLAIN ") for c in server.commands), server.commands
    secrets = [s for s in (good, given) if s]
    assert log_capture.records, "DEBUG logging must be on"
    hits = scan_for_secrets([log_capture.text, *_texts(t, st, log)], secrets, [USER])
    assert hits == [], hits


@pytest.mark.parametrize("ok", [True, False], ids=["success", "failure"])
@pytest.mark.parametrize(("case", "mech", "password", "token"), CASES, ids=[c[0] for c in CASES])
def test_no_secret_in_the_spool(
    smtpd: Any, client_ssl_context: Any, log_capture: Any, tmp_path: Path,
    case: str, mech: str, password: str | None, token: bool, ok: bool,
) -> None:  # fmt: skip
    server = smtpd(
        tls="starttls", auth=[mech], credentials={USER: password or PASSWORD},
        tokens={USER: TOKEN},
    )  # fmt: skip
    good = TOKEN if token else password
    given = good if ok else (BAD_TOKEN if token else WRONG)
    log = tmp_path / "smtp.log"
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    t = Transporter(
        server.host, server.port, asynchronous=True, spool=str(spool_dir / "mail.db"),
        **_settings(server, client_ssl_context, mech, given, token, log),
    )  # fmt: skip
    try:
        queued = t.send(RAW, from_="a@x.test", to=["b@x.test"])
        assert queued.mail_id is not None
        deadline = time.monotonic() + 10
        entry = t.spool.status(queued.mail_id) if t.spool else None
        while time.monotonic() < deadline:
            entry = t.spool.status(queued.mail_id) if t.spool else None
            if entry is not None and entry.state is SpoolState.SENT:
                break
            if not ok and any(not a.success for a in server.auth_attempts):
                time.sleep(0.3)  # let the worker record the refusal
                entry = t.spool.status(queued.mail_id) if t.spool else None
                break
            time.sleep(0.05)
        assert entry is not None
        assert (entry.state is SpoolState.SENT) is ok, entry
        assert ok or entry.state is SpoolState.PENDING  # a 535 is not the message's fault
        texts: list[str | bytes] = [repr(t), repr(entry), repr(queued), json.dumps(entry.to_dict())]
    finally:
        t.close()
        if t.spool is not None:
            t.spool.close()
    texts += [p.read_bytes() for p in spool_dir.iterdir() if p.is_file()]
    texts.append(log.read_bytes() if log.exists() else b"")
    hits = scan_for_secrets([log_capture.text, *texts], [s for s in (good, given) if s], [USER])
    assert hits == [], hits
