"""Retry policy and the decision after an attempt: pure, with a fake clock (security.md 3.4)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from postillon.spool import RetryPolicy, SpoolEntry
from postillon.spool._model import Decision
from postillon.spool._policy import decide, delivered_to, failure_decision
from postillon.status import RecipientStatus, SendStatus, SpoolState

T0 = 1_700_000_000.0
DAY = 86400.0


def entry(*rcpts: str, attempts: int = 0, created: float = T0) -> SpoolEntry:
    rcpts = rcpts or ("b@example.org",)
    return SpoolEntry(
        mail_id="m1",
        state=SpoolState.PENDING,
        attempts=attempts,
        created_at=datetime.fromtimestamp(created, UTC),
        next_attempt_at=datetime.fromtimestamp(created, UTC),
        last_status=None,
        recipients=dict.fromkeys(rcpts, "pending"),
        uncertain=False,
        message_id="<m1@example.com>",
        mail_from="a@example.com",
    )


def status(
    code: int,
    stage: str | None,
    rcpts: dict[str, int] | None = None,
    *,
    success: bool | None = None,
    uncertain: bool = False,
    text: str = "text",
) -> SendStatus:
    recipients = {a: RecipientStatus(c, f"{c}", 200 <= c < 300) for a, c in (rcpts or {}).items()}
    if success is None:
        success = 200 <= code < 300 and all(r.accepted for r in recipients.values())
    return SendStatus(
        success=success, status=code, status_text=text, stage=None if success else stage,
        recipients=recipients, uncertain=uncertain,
    )  # fmt: skip


def apply(e: SpoolEntry, d: Decision) -> SpoolEntry:
    return replace(
        e, state=d.state, attempts=d.attempts, recipients=d.recipients, uncertain=d.uncertain,
        last_status=d.last_status, error=d.error,
    )  # fmt: skip


def test_backoff_follows_postfix_schedule() -> None:
    p = RetryPolicy()
    assert [p.backoff(n) / 60 for n in range(1, 7)] == [5, 5, 10, 20, 40, 4000 / 60]
    assert p.backoff(500) == 4000  # capped, no overflow
    with pytest.raises(ValueError, match="attempt"):
        p.backoff(0)


def test_jitter_stays_within_bounds() -> None:
    p = RetryPolicy()
    rng = random.Random(7)
    for n in (1, 3, 9):
        for _ in range(200):
            d = p.jittered(n, rng.random())
            assert 0.9 * p.backoff(n) <= d <= 1.1 * p.backoff(n)
    assert p.jittered(1, 0.0) == pytest.approx(270)
    assert p.jittered(1, 0.5) == pytest.approx(300)


def simulate(policy: RetryPolicy, e: SpoolEntry, statuses: object, rng: random.Random | None):
    """Run attempts on a fake clock; ``statuses(n)`` gives the n-th attempt's status."""
    now = e.created_at.timestamp()
    times = []
    d = None
    for n in range(10_000):
        times.append(now)
        d = decide(e, statuses(n), now, policy, rng.random() if rng else 0.5)  # type: ignore[operator]
        e = apply(e, d)
        if d.state is not SpoolState.PENDING:
            break
        assert d.next_attempt_at is not None and d.next_attempt_at > now
        now = d.next_attempt_at
    return times, e, d


def test_always_4xx_whole_five_day_timeline() -> None:
    always = lambda n: status(451, "rcpt", {"b@example.org": 451}, text="4.3.0 try later")  # noqa: E731
    times, e, d = simulate(RetryPolicy(), entry(), always, rng=None)
    minutes = [round((t - T0) / 60, 2) for t in times[:8]]
    assert minutes == [0, 5, 10, 20, 40, 80, 146.67, 213.33]
    # gives up at the first attempt at or after 5 days, within one max interval
    assert 5 * DAY <= times[-1] - T0 < 5 * DAY + 4000
    assert times[-2] - T0 < 5 * DAY
    assert 105 <= len(times) <= 115  # security.md: about 110 under Postfix parameters
    assert e.state is SpoolState.ERROR and e.recipients == {"b@example.org": "failed"}
    assert "4.3.0 try later" in (e.error or "") and e.attempts == len(times)
    assert d is not None and d.refused == ("b@example.org",)


def test_timeline_with_jitter_never_hot_loops() -> None:
    always = lambda n: status(0, "connect", text="connection refused")  # noqa: E731
    times, e, _ = simulate(RetryPolicy(), entry(), always, rng=random.Random(3))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.9 * 300 and max(gaps) <= 1.1 * 4000
    assert e.state is SpoolState.ERROR and 95 <= len(times) <= 125


def test_4xx_then_250_at_attempt_3() -> None:
    def script(n: int) -> SendStatus:
        return status(250 if n == 2 else 451, "data", {"b@example.org": 250})

    times, e, _ = simulate(RetryPolicy(), entry(), script, rng=None)
    assert len(times) == 3 and e.state is SpoolState.SENT and e.attempts == 3
    assert e.recipients == {"b@example.org": "sent"} and e.error is None


def test_5xx_first_attempt_is_final() -> None:
    for stage in ("mail", "data", "rcpt"):
        times, e, _ = simulate(
            RetryPolicy(), entry(), lambda n, s=stage: status(550, s, {"b@example.org": 550}), None
        )
        assert len(times) == 1 and e.state is SpoolState.ERROR, stage
        assert e.recipients == {"b@example.org": "failed"}


def test_mixed_recipients_a_250_b_451_c_550() -> None:
    e = entry("a@x.org", "b@x.org", "c@x.org")
    first = status(451, "rcpt", {"a@x.org": 250, "b@x.org": 451, "c@x.org": 550})
    d = decide(e, first, T0, RetryPolicy(), 0.5)
    assert d.state is SpoolState.PENDING
    assert d.recipients == {"a@x.org": "sent", "b@x.org": "pending", "c@x.org": "failed"}
    assert d.delivered == ("a@x.org",) and d.refused == ("c@x.org",)
    assert d.next_attempt_at == T0 + 300
    e = apply(e, d)
    assert e.pending_recipients == ["b@x.org"]  # the retry's transaction holds only B
    d2 = decide(e, status(250, None, {"b@x.org": 250}), T0 + 300, RetryPolicy(), 0.5)
    # C stays failed: the entry ends in ERROR with the other two delivered
    assert d2.recipients == {"a@x.org": "sent", "b@x.org": "sent", "c@x.org": "failed"}
    assert d2.state is SpoolState.ERROR and d2.attempts == 2


def test_all_sent_is_sent() -> None:
    d = decide(entry("a@x.org"), status(250, None, {"a@x.org": 250}), T0, RetryPolicy(), 0.1)
    assert d.state is SpoolState.SENT and d.next_attempt_at is None and d.attempts == 1


def test_535_pauses_without_burning_an_attempt() -> None:
    e = entry(attempts=2)
    d = decide(e, status(535, "auth", text="5.7.8 bad credentials"), T0, RetryPolicy(), 0.5)
    assert d.pause_auth and d.state is SpoolState.PENDING and d.attempts == 2
    assert d.recipients == e.recipients and "535" in (d.error or "")
    # a 454 at AUTH is an ordinary temporary failure
    d = decide(e, status(454, "auth"), T0, RetryPolicy(), 0.5)
    assert not d.pause_auth and d.attempts == 3 and d.server_fault


def test_server_level_5xx_is_temporary() -> None:
    for stage in ("connect", "greeting", "ehlo", "tls"):
        d = decide(entry(), status(554, stage), T0, RetryPolicy(), 0.5)
        assert d.state is SpoolState.PENDING and d.server_fault, stage


def test_rcpt_552_is_temporary() -> None:
    # RFC 5321 4.5.3.1.10: a legacy 552 to RCPT means "too many recipients"
    e = entry("a@x.org", "b@x.org")
    d = decide(e, status(552, "rcpt", {"a@x.org": 250, "b@x.org": 552}), T0, RetryPolicy(), 0.5)
    assert d.recipients == {"a@x.org": "sent", "b@x.org": "pending"}


def test_uncertain_is_recorded_and_retried() -> None:
    s = status(0, "data", {"b@example.org": 250}, success=False, uncertain=True)
    assert not delivered_to(s)
    d = decide(entry(), s, T0, RetryPolicy(), 0.5)
    assert (
        d.uncertain
        and d.state is SpoolState.PENDING
        and d.recipients["b@example.org"] == ("pending")
    )
    e = apply(entry(), d)
    d2 = decide(e, status(250, None, {"b@example.org": 250}), T0 + 300, RetryPolicy(), 0.5)
    assert d2.uncertain and d2.state is SpoolState.SENT  # the flag stays: it may be a duplicate


def test_max_lifetime_zero_tries_once() -> None:
    d = decide(entry(), status(451, "mail"), T0, RetryPolicy(max_lifetime=0), 0.5)
    assert d.state is SpoolState.ERROR and d.attempts == 1


def test_max_attempts() -> None:
    p = RetryPolicy(max_attempts=3)
    times, e, _ = simulate(p, entry(), lambda n: status(451, "mail"), None)
    assert len(times) == 3 and e.state is SpoolState.ERROR


def test_clock_jump_forward_expires_only_after_an_attempt() -> None:
    # a wall clock 6 days ahead: the attempt still happens; only its failure expires it
    d = decide(entry(), status(250, None, {"b@example.org": 250}), T0 + 6 * DAY, RetryPolicy(), 0.5)
    assert d.state is SpoolState.SENT


def test_failure_decision() -> None:
    d = failure_decision(entry(), T0, RetryPolicy(), 0.5, "boom", permanent=False)
    assert d.state is SpoolState.PENDING and d.attempts == 1 and d.next_attempt_at == T0 + 300
    d = failure_decision(entry(), T0, RetryPolicy(), 0.5, "bad address", permanent=True)
    assert d.state is SpoolState.ERROR and d.recipients == {"b@example.org": "failed"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_backoff": -1}, "min_backoff"),
        ({"max_backoff": 1, "min_backoff": 5}, "max_backoff"),
        ({"factor": 0.5}, "factor"),
        ({"jitter": 1.5}, "jitter"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_lifetime": float("nan")}, "max_lifetime"),
    ],
)
def test_policy_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen_and_copyable() -> None:
    p = RetryPolicy()
    with pytest.raises(AttributeError):
        p.min_backoff = 1  # type: ignore[misc]
    q = p.with_(min_backoff=60)
    assert q.min_backoff == 60 and p.min_backoff == 300
