"""The one store suite, run on SQLite and on PostgreSQL (each PG test in its own schema)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from spool_helpers import make_prepared

from postillon.errors import InvalidMessage
from postillon.spool import Spool, SpoolState
from postillon.spool._model import Decision
from postillon.status import SendStatus

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_submit_and_status(spool: Spool) -> None:
    p = make_prepared(to=("b@example.org", "c@example.org"))
    mail_id = spool.submit(p)
    e = spool.status(mail_id)
    assert e.state is SpoolState.PENDING and e.attempts == 0
    assert e.recipients == {"b@example.org": "pending", "c@example.org": "pending"}
    assert e.message_id == p.message_id and e.mail_from == "ann@example.com"
    assert e.size == p.size and e.last_status is None and not e.uncertain
    assert e.next_attempt_at is not None and e.created_at.tzinfo is not None


def test_reopen_keeps_everything(open_spool: Callable[..., Spool]) -> None:
    first = open_spool()
    ids = first.submit_many([make_prepared() for _ in range(5)])
    first.close()
    again = open_spool()
    assert [e.mail_id for e in again.entries()] == ids
    assert again.counts()[SpoolState.PENDING] == 5


def test_idempotency_key(spool: Spool) -> None:
    a = spool.submit(make_prepared(), idempotency_key="order-1")
    b = spool.submit(make_prepared(), idempotency_key="order-1")
    c = spool.submit(make_prepared(), idempotency_key="order-2")
    assert a == b != c
    ids = spool.submit_many(
        [make_prepared(), make_prepared(), make_prepared()],
        idempotency_keys=["order-3", "order-3", "order-1"],
    )
    assert ids[0] == ids[1] and ids[2] == a
    assert len(spool.entries()) == 3


def test_bad_input_names_the_field(spool: Spool) -> None:
    with pytest.raises(InvalidMessage, match="mail"):
        spool.submit(None)
    with pytest.raises(InvalidMessage, match="to"):
        spool.submit(make_prepared(to=()))
    with pytest.raises(ValueError, match="idempotency_key"):
        spool.submit(make_prepared(), idempotency_key="")
    with pytest.raises(ValueError, match="mail_id"):
        spool.status("nope")
    with pytest.raises(ValueError, match="state"):
        spool.entries(state="lost")
    with pytest.raises(ValueError, match="state"):
        spool.purge(SpoolState.PENDING)
    # one bad message in a batch: nothing of the batch is stored
    with pytest.raises(InvalidMessage, match=r"mails\[1\]"):
        spool.submit_many([make_prepared(), make_prepared(to=())])
    assert spool.entries() == []


def test_large_message_is_chunked_and_streamed(spool: Spool) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17).hex().encode()[: 3 * 1024 * 1024 + 17] + b"\r\n"
    p = make_prepared(body, chunk=100_000)
    mail_id = spool.submit(p)
    store = spool._store
    [claimed] = store.claim("w1", T0 * 2, T0 * 2 + 60, 10)
    assert claimed.entry.mail_id == mail_id and claimed.entry.size == p.size
    it = iter(claimed.source())
    first = next(it)
    assert len(first) == 256 * 1024  # one stored block at a time, never the whole message
    assert first + b"".join(it) == p.read()
    # re-iterable: the same bytes on every retry
    assert b"".join(claimed.prepared().chunks()) == p.read()


def test_claim_lease_is_exclusive_and_expires(open_spool: Callable[..., Spool]) -> None:
    clock = Clock()
    spool = open_spool(clock=clock)
    ids = spool.submit_many([make_prepared() for _ in range(3)])
    store = spool._store
    got1 = store.claim("w1", T0, T0 + 60, 2)
    got2 = store.claim("w2", T0, T0 + 60, 10)
    assert [c.entry.mail_id for c in got1] == ids[:2]
    assert [c.entry.mail_id for c in got2] == ids[2:]
    assert store.claim("w3", T0 + 59, T0 + 120, 10) == []
    # w1 was killed: after its lease, another worker takes its mail
    got3 = store.claim("w3", T0 + 61, T0 + 120, 10)
    assert sorted(c.entry.mail_id for c in got3) == sorted(ids)  # w2's lease expired too
    # the stale owner can no longer record a result
    d = Decision(SpoolState.SENT, 1, {"bob@example.org": "sent"}, None, None, False, None)
    assert not store.complete(ids[0], "w1", d, T0 + 62)
    assert store.complete(ids[0], "w3", d, T0 + 62)
    assert spool.status(ids[0]).state is SpoolState.SENT


def test_release_and_extend(spool: Spool) -> None:
    [mail_id] = spool.submit_many([make_prepared()])
    store = spool._store
    now = spool._clock()
    assert len(store.claim("w1", now, now + 60, 5)) == 1
    store.extend([mail_id], "w1", now + 600)
    assert store.claim("w2", now + 100, now + 200, 5) == []
    store.release([mail_id], "w1")
    [again] = store.claim("w2", now + 100, now + 200, 5)
    assert again.entry.attempts == 0  # a release burns no attempt


def test_complete_records_progress_and_schedule(open_spool: Callable[..., Spool]) -> None:
    clock = Clock()
    spool = open_spool(clock=clock)
    mail_id = spool.submit(make_prepared(to=("a@x.org", "b@x.org")))
    store = spool._store
    store.claim("w", T0, T0 + 60, 1)
    last = SendStatus(success=False, status=451, status_text="later", stage="rcpt")
    d = Decision(
        SpoolState.PENDING, 1, {"a@x.org": "sent", "b@x.org": "pending"}, T0 + 300, last,
        True, "later",
    )  # fmt: skip
    assert store.complete(mail_id, "w", d, T0 + 1)
    e = spool.status(mail_id)
    assert e.attempts == 1 and e.uncertain and e.error == "later"
    assert e.recipients == {"a@x.org": "sent", "b@x.org": "pending"}
    assert e.next_attempt_at is not None and e.next_attempt_at.timestamp() == T0 + 300
    assert e.last_status is not None and e.last_status.status == 451
    assert store.next_due() == T0 + 300
    assert store.claim("w", T0 + 299, T0 + 400, 5) == []
    [c] = store.claim("w", T0 + 300, T0 + 400, 5)
    assert c.prepared().recipients == ("b@x.org",)  # only the pending recipient


def test_retry_cancel_purge(open_spool: Callable[..., Spool]) -> None:
    clock = Clock()
    spool = open_spool(clock=clock)
    a, b, c = spool.submit_many([make_prepared() for _ in range(3)])
    store = spool._store
    store.claim("w", T0, T0 + 60, 3)
    fail = Decision(SpoolState.ERROR, 4, {"bob@example.org": "failed"}, None, None, False, "x")
    sent = Decision(SpoolState.SENT, 1, {"bob@example.org": "sent"}, None, None, False, None)
    later = Decision(SpoolState.PENDING, 1, {"bob@example.org": "pending"}, T0 + 999, None,
                     False, "y")  # fmt: skip
    store.complete(a, "w", fail, T0)
    store.complete(b, "w", sent, T0)
    store.complete(c, "w", later, T0)
    clock.t = T0 + 10
    assert spool.retry(c) and spool.status(c).next_attempt_at.timestamp() == T0 + 10  # type: ignore[union-attr]
    assert spool.retry(a)
    e = spool.status(a)
    assert e.state is SpoolState.PENDING and e.attempts == 0
    assert e.recipients == {"bob@example.org": "pending"}
    assert not spool.retry(b)  # already sent
    assert spool.cancel(a) and not spool.cancel(b)
    e = spool.status(a)
    assert e.state is SpoolState.ERROR and e.error == "cancelled"
    clock.t = T0 + 100
    assert spool.purge(SpoolState.SENT, older_than=1000) == 0
    assert spool.purge(SpoolState.SENT, older_than=50) == 1
    assert spool.purge("error") == 1
    assert [x.mail_id for x in spool.entries()] == [c]
    assert spool.counts() == {SpoolState.PENDING: 1, SpoolState.SENT: 0, SpoolState.ERROR: 0}


def test_concurrent_claims_never_overlap(spool: Spool) -> None:
    ids = spool.submit_many([make_prepared() for _ in range(200)])
    store = spool._store
    now = spool._clock()
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        mine: list[str] = []
        try:
            while batch := store.claim(name, now, now + 600, 7):
                mine += [c.entry.mail_id for c in batch]
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)
        got[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    claimed = [m for ms in got.values() for m in ms]
    assert sorted(claimed) == sorted(ids)  # each exactly once


def test_submit_many_rolls_back_on_failure(spool: Spool) -> None:
    def broken_source():  # type: ignore[no-untyped-def]
        yield b"Subject: x\r\n\r\n"
        raise OSError("attachment vanished")

    good = make_prepared()
    bad = make_prepared()
    bad = type(bad)(bad.mail_from, bad.recipients, bad.message_id, broken_source, None)
    with pytest.raises(OSError, match="vanished"):
        spool.submit_many([good, bad])
    assert spool.entries() == []  # no torn entry, no half batch


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    with Spool(path) as sp:
        sp.submit(make_prepared())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sqlite_bad_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        Spool(tmp_path / "missing" / "x.db")
    with pytest.raises(ValueError, match="location"):
        Spool(":memory:")
    with pytest.raises(ValueError, match="schema"):
        Spool(tmp_path / "x.db", schema="s")


def test_postgres_bad_schema(spool_pg_url: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        Spool(spool_pg_url, schema='x"; DROP TABLE y; --')


def test_postgres_repr_hides_password() -> None:
    from postillon.spool._postgres import _redact

    assert _redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
