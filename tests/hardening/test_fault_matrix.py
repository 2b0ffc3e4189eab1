"""security.md 3.2: every SMTP stage x every server fault, end to end, for both drivers.

One table-driven test. For each cell the armed :class:`FaultServer` misbehaves at that
stage on every connection during the first ``send()``; then it is disarmed and a second
``send()`` goes through the same transporter. Each cell checks:

* no exception escapes ``send()``; the status has the right code and class: temporary
  (T: the spool keeps the recipient pending), permanent (P: the spool fails it) or, for
  QUIT, success (the message was already done). The class is read with the spool's own
  decision function, so the matrix and the spool cannot disagree;
* ``uncertain`` is set exactly when the fault fell after the final dot;
* the server took each message at most once (and the first one exactly when it should);
* the connection is never reused in an unknown state: after a drop, 421, stall or
  garbage the second send opens a fresh connection; after a plain 4xx/5xx reply inside a
  transaction the same connection goes on (keep_alive);
* the reply faults also run with replies delivered one byte at a time.

The stages are the greeting (CONNECT), EHLO, STARTTLS, the TLS handshake, AUTH, MAIL,
RCPT (one recipient of two), DATA, the end of data (EOD) and QUIT.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from postillon import RawMessage, SendStatus, SpoolState
from postillon.spool._model import SpoolEntry
from postillon.spool._policy import RetryPolicy, decide

from ._support import FAULTS, STAGES, FaultServer, fault_reply

R1, R2 = "r1@x.test", "r2@x.test"
REPLY_FAULTS = ("421", "4xx", "5xx", "garbage")  # the "protocol cases" (a reply is read)
AMBIGUOUS = ("disconnect", "reset", "stall", "garbage")
MESSAGE_STAGES = ("MAIL", "RCPT", "DATA", "EOD")
STALL = 0.6  # seconds: the short timeouts of the stall column


def raw(n: int) -> RawMessage:
    body = (
        f"From: a@x.test\r\nTo: {R1}, {R2}\r\nSubject: m{n}\r\n"
        f"Message-ID: <m{n}@x.test>\r\n\r\nbody {n}\r\n"
    ).encode()
    return RawMessage(body, "a@x.test", [R1, R2])


def cells() -> list[Any]:
    out = []
    for stage in STAGES:
        for fault in FAULTS:
            if stage == "TLS" and fault in ("421", "4xx", "5xx"):
                continue  # a TLS handshake has no SMTP reply to fault
            modes = ("whole", "byte") if fault in REPLY_FAULTS else ("whole",)
            for mode in modes:
                out.append(pytest.param(stage, fault, mode, id=f"{stage}-{fault}-{mode}"))
    return out


def expected_code(stage: str, fault: str) -> int:
    if fault not in ("421", "4xx", "5xx") or stage in ("QUIT", "TLS"):
        return 0
    if stage == "EHLO" and fault == "5xx":
        return 0  # RFC 5321 3.2: HELO fallback, which offers no STARTTLS: a TLS failure
    return int(fault_reply(stage, fault)[:3])


def expected_components(stage: str, fault: str) -> set[str]:
    if stage == "EHLO" and fault == "5xx":
        return {"tls"}
    if stage == "TLS":
        return {"timeout"} if fault == "stall" else {"tls", "disconnected", "transport"}
    return {
        "disconnect": {"disconnected", "transport"},
        "reset": {"disconnected", "transport"},
        "stall": {"timeout"},
        "garbage": {"protocol"},
    }[fault]


def expected_outcome(stage: str, fault: str) -> dict[str, str]:
    """Per recipient, what the spool must record: pending (T), failed (P) or sent."""
    if stage == "QUIT":
        return {R1: "sent", R2: "sent"}
    if stage == "RCPT" and fault in ("4xx", "5xx"):
        return {R1: "pending" if fault == "4xx" else "failed", R2: "sent"}
    if stage in MESSAGE_STAGES and fault == "5xx":
        return {R1: "failed", R2: "failed"}
    return {R1: "pending", R2: "pending"}


def needs_fresh_connection(stage: str, fault: str) -> bool:
    if stage in ("CONNECT", "EHLO", "STARTTLS", "TLS", "AUTH", "QUIT"):
        return True  # the session never became usable, or was closed by QUIT
    return fault not in ("4xx", "5xx")


def spool_view(status: SendStatus) -> dict[str, str]:
    """What the spool's decision function makes of the status, per recipient."""
    entry = SpoolEntry(
        mail_id="1",
        state=SpoolState.PENDING,
        attempts=0,
        created_at=datetime.now(UTC),
        next_attempt_at=None,
        last_status=None,
        recipients={R1: "pending", R2: "pending"},
        uncertain=False,
        message_id="<m1@x.test>",
        mail_from="a@x.test",
    )
    decision = decide(entry, status, now=time.time(), policy=RetryPolicy(), rand=0.5)
    return dict(decision.recipients)


#: async + stall after TLS: AsyncConnection.close() closes a TLS transport gracefully,
#: which waits for the stalled peer's close_notify (asyncio: up to 30 s), so the dead
#: connection stays open and the next connection is not served in time.
@pytest.mark.parametrize(("stage", "fault", "mode"), cells())
def test_fault_matrix(
    request: pytest.FixtureRequest, client: Any, server_ssl_context: Any,
    client_ssl_context: Any, stage: str, fault: str, mode: str,
) -> None:  # fmt: skip
    server = FaultServer(
        stage,
        fault,
        chunk=mode,
        ssl_context=server_ssl_context,
        match=b"<r1@" if stage == "RCPT" else b"",
        stall_seconds=10,
    ).start()
    try:
        short = fault == "stall"
        c = client(
            server.host,
            server.port,
            user="ann",
            password="pw-secret",
            ssl_context=client_ssl_context,
            local_hostname="client.test",
            connection_timeout=STALL if short else 10,
            send_timeout=STALL if short else 10,
        )
        began = time.monotonic()
        first = c.send(raw(1))
        if stage == "QUIT":
            c.close()  # keep_alive: QUIT leaves at close(), which must not raise either
        elapsed = time.monotonic() - began
        conns_after_first = server.connections
        assert server.fired >= 1, "the fault never fired"
        bound = 4 * STALL + 5.5 if short else 15  # async close() gives QUIT 5 s
        assert elapsed < bound, f"first send took {elapsed:.1f}s"

        # --- the first message: status code, class, certainty
        if stage == "QUIT":
            assert first.success, first
        else:
            assert not first.success, first
            assert first.status == expected_code(stage, fault), first
            if first.status == 0:
                assert first.status_text == "Failed to send email"
                assert first.errors and first.errors[0].component in expected_components(
                    stage, fault
                ), first.errors
        assert set(first.recipients) == {R1, R2}
        assert spool_view(first) == expected_outcome(stage, fault), first
        assert first.uncertain is (stage == "EOD" and fault in AMBIGUOUS), first
        if first.status and not first.success:
            # raise_for_status() agrees with the status (the class is in the exception)
            exc = first.exception()
            assert exc is not None and getattr(exc, "code", first.status) == first.status

        # --- the same transporter works again once the server behaves
        server.disarm()
        second = c.send(raw(2))
        assert second.success, (second, server.errors)
        fresh = server.connections - conns_after_first
        if needs_fresh_connection(stage, fault):
            assert fresh == 1, f"expected a fresh connection, {fresh} opened"
        else:
            assert fresh == 0, "a connection in a known state should have been reused"

        # --- nothing taken twice; the first message exactly when it should be
        c.close()
        taken_first = 1 if (stage == "QUIT" or "sent" in expected_outcome(stage, fault).values()
                            or first.uncertain) else 0  # fmt: skip
        assert server.taken.count("<m1@x.test>") == taken_first, server.taken
        assert server.taken.count("<m2@x.test>") == 1, server.taken
    finally:
        server.stop()


def test_matrix_covers_every_cell_of_security_md() -> None:
    """The table above is the whole of security.md 3.2 (rows x columns), nothing skipped."""
    ids = {(p.values[0], p.values[1]) for p in cells()}
    rows = {"CONNECT", "EHLO", "STARTTLS", "TLS", "AUTH", "MAIL", "RCPT", "DATA", "EOD", "QUIT"}
    assert {s for s, _ in ids} == rows
    for stage in rows - {"TLS"}:
        assert {f for s, f in ids if s == stage} == set(FAULTS)
    assert {f for s, f in ids if s == "TLS"} == {"disconnect", "reset", "stall", "garbage"}
    byte = {(p.values[0], p.values[1]) for p in cells() if p.values[2] == "byte"}
    assert byte == {(s, f) for s, f in ids if f in REPLY_FAULTS}
