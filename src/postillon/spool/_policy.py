"""Retry policy and the scheduling decision after an attempt: pure functions, no clock.

Theory of operation
-------------------
A worker claims an entry, sends it to the recipients still pending, and hands the
resulting :class:`SendStatus` to :func:`decide` together with ``now`` and a random number.
:func:`decide` returns a :class:`Decision` (new state, per-recipient map, next attempt
time), which the store writes back. Nothing here reads a clock or a random generator,
so the whole five-day timeline is tested with a fake clock in milliseconds.

Classification (security.md 3.2):

* a recipient accepted and the data taken: ``sent`` (never sent again);
* a 5xx at MAIL, RCPT (for that recipient) or DATA: ``failed`` (permanent, one attempt);
* 4xx replies, network faults (status 0), a 5xx greeting, TLS or EHLO failures, and a
  connection lost after the final dot (``uncertain``): the recipient stays ``pending``
  and the entry is retried with backoff until the policy is exhausted;
* a 535 (any 5xx) at AUTH: nothing is recorded and no attempt is burned; the worker
  pauses and logs in again later (the messages are fine, the credentials are not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..status import SendStatus, SpoolState
from ._model import (
    RECIPIENT_FAILED,
    RECIPIENT_PENDING,
    RECIPIENT_SENT,
    Decision,
    SpoolEntry,
)

__all__ = ["RetryPolicy", "decide", "delivered_to", "failure_decision"]

#: stages at which a failure says something about the server, not about the message
_SERVER_STAGES = frozenset({"connect", "greeting", "tls", "starttls", "ehlo", "helo", "auth"})
#: stages at which a 5xx refuses the message (or one recipient) for good
_MESSAGE_STAGES = frozenset({"mail", "rcpt", "data", "bdat", "size"})


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a deferred message is retried (immutable; Postfix defaults).

    The delay after the n-th failed attempt is ``min_backoff * factor ** (n - 2)``,
    clamped to ``[min_backoff, max_backoff]``, then spread by ``±jitter`` (a fraction).
    With the defaults the attempts fall at about 0, 5, 10, 20, 40, 80 minutes and then
    every ~67 minutes, like Postfix's ``clamp(age, minimal_backoff_time,
    maximal_backoff_time)``. A message still failing ``max_lifetime`` seconds after it was
    queued is given up (state ERROR); ``max_lifetime=0`` means "try once".
    ``max_attempts`` (None: no limit) caps the number of attempts as well.
    ``auth_pause`` is how long a worker waits after the server refused its login (535)
    before it logs in again; ``server_pause`` after a server-level failure (refused
    connection, TLS, 4xx/5xx greeting) before it tries that server with other messages.

    Example::

        policy = RetryPolicy(min_backoff=60, max_backoff=1800, max_lifetime=86400)
        policy.backoff(1)     # 60.0
        spool.run(transporter, retry=policy)
    """

    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    max_lifetime: float = 5 * 86400.0
    factor: float = 2.0
    jitter: float = 0.1
    max_attempts: int | None = None
    auth_pause: float = 60.0
    server_pause: float = 5.0

    def __post_init__(self) -> None:
        for name in ("min_backoff", "max_backoff", "max_lifetime", "auth_pause", "server_pause"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or math.isnan(value) or value < 0:
                raise ValueError(f"retry.{name}: must be a number >= 0, not {value!r}")
        if self.max_backoff < self.min_backoff:
            raise ValueError("retry.max_backoff: must be >= min_backoff")
        if not isinstance(self.factor, int | float) or self.factor < 1:
            raise ValueError(f"retry.factor: must be >= 1, not {self.factor!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter < 1:
            raise ValueError(f"retry.jitter: must be in [0, 1), not {self.jitter!r}")
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int) or self.max_attempts < 1
        ):
            raise ValueError(f"retry.max_attempts: must be None or >= 1, not {self.max_attempts!r}")

    def backoff(self, attempt: int) -> float:
        """Delay in seconds after the ``attempt``-th failed attempt (1-based), no jitter.

        >>> [RetryPolicy().backoff(n) / 60 for n in (1, 2, 3, 4, 5)]
        [5.0, 5.0, 10.0, 20.0, 40.0]
        """
        if attempt < 1:
            raise ValueError(f"attempt: must be >= 1, not {attempt!r}")
        # exponent capped: factor ** 1000 would overflow, and max_backoff is reached long before
        raw = self.min_backoff * self.factor ** min(max(attempt - 2, -1), 64)
        return float(min(self.max_backoff, max(self.min_backoff, raw)))

    def jittered(self, attempt: int, rand: float) -> float:
        """:meth:`backoff` spread by the jitter; ``rand`` is a number in [0, 1)."""
        return self.backoff(attempt) * (1.0 + self.jitter * (2.0 * rand - 1.0))

    def is_exhausted(self, attempts: int, age: float) -> bool:
        """True when a message that failed ``attempts`` times and is ``age`` s old is given up."""
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return True
        return age >= self.max_lifetime

    def increment(self, attempts: int, created_at: float, now: float, rand: float) -> float | None:
        """After the ``attempts``-th failure at ``now``: the next attempt time, or None (give up).

        Example: ``policy.increment(1, created_at=t0, now=t0, rand=0.5)`` is ``t0 + 300``.
        """
        if self.is_exhausted(attempts, now - created_at):
            return None
        return now + self.jittered(attempts, rand)

    def with_(self, **changes: float | int | None) -> RetryPolicy:
        """A copy with some fields changed (``policy.with_(max_lifetime=0)``)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def delivered_to(status: SendStatus) -> bool:
    """Did the message data reach the server for the recipients it accepted?

    True on success, and when the only failures were recipient refusals (the message
    then went to the others; API.md section 1).
    """
    if status.success:
        return True
    if not status.accepted or status.uncertain:
        return False
    if status.stage == "rcpt":
        return True
    return status.stage is None and 200 <= status.status < 300


def _rcpt_permanent(code: int) -> bool:
    # RFC 5321 4.5.3.1.10: a 552 to RCPT is a legacy "too many recipients": temporary
    return 500 <= code < 600 and code != 552


def failure_decision(
    entry: SpoolEntry, now: float, policy: RetryPolicy, rand: float, error: str, *, permanent: bool
) -> Decision:
    """The decision for an attempt that raised instead of returning a status.

    ``permanent`` for input the server will never take (InvalidMessage): the pending
    recipients fail at once. Otherwise the attempt counts and the entry is retried.
    """
    attempts = entry.attempts + 1
    recipients = dict(entry.recipients)
    pending = [a for a, s in recipients.items() if s == RECIPIENT_PENDING]
    nxt = None if permanent else policy.increment(attempts, _created(entry), now, rand)
    if nxt is None:
        for a in pending:
            recipients[a] = RECIPIENT_FAILED
        return Decision(
            SpoolState.ERROR, attempts, recipients, None, entry.last_status, entry.uncertain,
            error, refused=tuple(pending),
        )  # fmt: skip
    return Decision(
        SpoolState.PENDING, attempts, recipients, nxt, entry.last_status, entry.uncertain, error
    )


def _created(entry: SpoolEntry) -> float:
    return entry.created_at.timestamp()


def decide(
    entry: SpoolEntry,
    status: SendStatus,
    now: float,
    policy: RetryPolicy,
    rand: float,
) -> Decision:
    """What to record after sending ``entry`` to its pending recipients and getting ``status``.

    Pure: the same inputs give the same decision. ``rand`` in [0, 1) drives the jitter.
    ``lifetime_start`` (default: the entry's creation time) is where ``max_lifetime``
    counts from; a manual ``retry()`` of a failed entry restarts it.

    Example::

        d = decide(entry, status, now=time.time(), policy=RetryPolicy(), rand=random.random())
        d.state, d.recipients, d.next_attempt_at
    """
    pending = [a for a, s in entry.recipients.items() if s == RECIPIENT_PENDING]
    stage = status.stage or ""
    code = status.status
    if not status.success and stage == "auth" and 500 <= code < 600:
        # 535 and friends: our credentials, not the message; burn nothing (security.md 3.2)
        return Decision(
            SpoolState.PENDING, entry.attempts, dict(entry.recipients), None, entry.last_status,
            entry.uncertain, f"authentication refused: {code} {status.status_text}".strip(),
            pause_auth=True,
        )  # fmt: skip

    if not status.success and stage == "message":
        # the transporter found the message unsendable as stored (InvalidMessage)
        text = status.errors[0].message if status.errors else status.status_text
        return failure_decision(entry, now, policy, rand, text, permanent=True)
    recipients = dict(entry.recipients)
    delivered: list[str] = []
    refused: list[str] = []
    if delivered_to(status):
        for addr in pending:
            rs = status.recipients.get(addr)
            if rs is not None and rs.accepted:
                recipients[addr] = RECIPIENT_SENT
                delivered.append(addr)
            elif rs is not None and _rcpt_permanent(rs.code):
                recipients[addr] = RECIPIENT_FAILED
                refused.append(addr)
            # else: refused with 4xx or no answer: stays pending
    elif not status.uncertain and stage in _MESSAGE_STAGES and 500 <= code < 600:
        if stage == "rcpt":
            # every recipient refused (no DATA): judge each by its own reply
            for addr in pending:
                rs = status.recipients.get(addr)
                rcode = rs.code if rs is not None else code
                if _rcpt_permanent(rcode):
                    recipients[addr] = RECIPIENT_FAILED
                    refused.append(addr)
        else:
            # 5xx to MAIL FROM or to the data: the whole message is refused for good
            for addr in pending:
                recipients[addr] = RECIPIENT_FAILED
                refused.append(addr)

    still = [a for a, s in recipients.items() if s == RECIPIENT_PENDING]
    uncertain = entry.uncertain or status.uncertain
    attempts = entry.attempts + 1
    server_fault = not status.success and stage in _SERVER_STAGES
    error = None if status.success else (status.status_text or "failed")
    if not still:
        state = SpoolState.SENT if all(s == RECIPIENT_SENT for s in recipients.values()) else (
            SpoolState.ERROR
        )  # fmt: skip
        return Decision(
            state, attempts, recipients, None, status, uncertain,
            None if state is SpoolState.SENT else error,
            server_fault=server_fault, delivered=tuple(delivered), refused=tuple(refused),
        )  # fmt: skip
    nxt = policy.increment(attempts, _created(entry), now, rand)
    if nxt is None:
        for addr in still:
            recipients[addr] = RECIPIENT_FAILED
            refused.append(addr)
        return Decision(
            SpoolState.ERROR, attempts, recipients, None, status, uncertain,
            f"gave up after {attempts} attempts: {error}",
            server_fault=server_fault, delivered=tuple(delivered), refused=tuple(refused),
        )  # fmt: skip
    return Decision(
        SpoolState.PENDING, attempts, recipients, nxt, status, uncertain, error,
        server_fault=server_fault, delivered=tuple(delivered), refused=tuple(refused),
    )  # fmt: skip
