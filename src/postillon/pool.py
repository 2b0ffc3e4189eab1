"""How pooled connections live and die, and how fast a transporter may send.

Shared by :class:`~postillon.Transporter` (one connection, many threads) and
:class:`~postillon.AsyncTransporter` (up to ``max_connections``). The drivers ask the
questions; the answers live here, as small values and pure functions of a clock:

- :class:`PoolPolicy` (immutable settings, good defaults): when an idle connection is
  checked with NOOP before reuse, and when a connection has served long enough.
- :class:`Lifetime`: the bookkeeping of one connection (opened, last used, messages).
- :class:`TokenBucket`: the configured ``rate_limit``, pure, with an injectable clock.
- :class:`Throttle`: one per transporter, thread-safe: the bucket plus an adaptive
  back-off that spaces messages out when the server says it is overloaded (421, 450,
  451, 454, "too many connections") and relaxes gradually as messages go through.

Example::

    from postillon import AsyncTransporter
    from postillon.pool import PoolPolicy

    t = AsyncTransporter("smtp.example.com", max_connections=4,
                         pool=PoolPolicy(rate_limit=20, max_messages=100))
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ReplyError, SMTPError
from .status import SendStatus

log = logging.getLogger("postillon.pool")

__all__ = ["Lifetime", "PoolPolicy", "Throttle", "TokenBucket", "is_throttle_reply"]

Clock = Callable[[], float]

#: Reply codes that mean "slow down" rather than "this message is wrong": 421 (service
#: closing, RFC 5321 3.8), 450/451 (mailbox busy, local error: greylisting and rate
#: limits answer with these), 454 (temporary authentication/TLS failure, often a limit).
THROTTLE_CODES = frozenset({421, 450, 451, 454})

_TOO_MANY = re.compile(
    r"too\s+many\s+(?:concurrent\s+|simultaneous\s+|open\s+)?(?:connections|sessions)",
    re.IGNORECASE,
)

#: back-off spacing after a first throttling answer without a configured rate (seconds)
_BASE_SPACING = 0.1
#: the back-off never spaces two messages further apart than this (seconds)
_MAX_SPACING = 10.0
#: each message accepted shrinks the back-off spacing by this factor (gradual recovery)
_RECOVERY = 0.9
#: messages accepted in a row before one more concurrent connection is allowed
_CONNECTION_STREAK = 20


def is_throttle_reply(code: int, text: str) -> bool:
    """True when a reply asks the client to slow down (see :data:`THROTTLE_CODES`).

    Example::

        >>> is_throttle_reply(421, "4.7.0 Try again later")
        True
        >>> is_throttle_reply(554, "5.7.1 Too many connections from your IP")
        True
        >>> is_throttle_reply(550, "5.1.1 No such user")
        False
    """
    return code in THROTTLE_CODES or bool(_TOO_MANY.search(text or ""))


def _positive(value: object, name: str, *, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: must be {kind} > 0, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be > 0 and finite, not {value!r}")


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """When pooled connections are checked, retired, and how fast messages may go.

    ``idle_check`` (10 s): a connection idle at least this long is checked with NOOP
    (answer within ``check_timeout``, 5 s) before it carries a message; one that fails
    the check is closed silently and a new connection is used. 10 s is Postfix's
    ``smtpd_timeout`` under stress: a busy server may drop an idle client after that,
    while calls in a burst (closer than 10 s) pay no extra round trip.

    ``max_age`` (300 s, Postfix's ``smtp_connection_reuse_time_limit``) and
    ``max_messages`` (1000): past either, the connection is closed with QUIT when it is
    released, and a long batch moves to a fresh connection. Servers and load balancers
    cap session lifetimes; renewing now and then also spreads the load.

    ``rate_limit`` (messages per second, None: no limit) is shared by every connection
    and thread of one transporter; ``burst`` messages may go at once after a pause.

    Example::

        PoolPolicy(rate_limit=5)                 # at most 5 messages per second
        PoolPolicy(idle_check=2, max_messages=100)
    """

    idle_check: float = 10.0
    check_timeout: float = 5.0
    max_age: float = 300.0
    max_messages: int = 1000
    rate_limit: float | None = None
    burst: int = 1

    def __post_init__(self) -> None:
        _positive(self.idle_check, "idle_check")
        _positive(self.check_timeout, "check_timeout")
        _positive(self.max_age, "max_age")
        _positive(self.max_messages, "max_messages", integer=True)
        if self.rate_limit is not None:
            _positive(self.rate_limit, "rate_limit")
        _positive(self.burst, "burst", integer=True)

    def needs_check(self, life: Lifetime, now: float) -> bool:
        """True when an idle connection must answer NOOP before it is reused."""
        return now - life.last_used >= self.idle_check

    def worn_out(self, life: Lifetime, now: float) -> bool:
        """True when the connection has lived or served long enough (close it on release)."""
        return now - life.opened >= self.max_age or life.messages >= self.max_messages


@dataclass(slots=True)
class Lifetime:
    """The bookkeeping of one connection (times from ``time.monotonic()``)."""

    opened: float
    last_used: float
    messages: int = 0

    @classmethod
    def start(cls, now: float) -> Lifetime:
        """A connection opened at ``now``."""
        return cls(now, now)


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``capacity``.

    Pure and not thread-safe (:class:`Throttle` holds the lock); the clock is injectable
    so tests run on a fake one. The bucket starts full.

    Example::

        >>> now = [0.0]
        >>> bucket = TokenBucket(2.0, 1, clock=lambda: now[0])
        >>> bucket.try_take(), bucket.try_take(), bucket.wait_time()
        (True, False, 0.5)
        >>> now[0] = 0.5
        >>> bucket.try_take()
        True
    """

    def __init__(self, rate: float, capacity: float = 1.0, clock: Clock = time.monotonic) -> None:
        _positive(rate, "rate")
        _positive(capacity, "capacity")
        self._rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    def _refill(self) -> None:
        now = self._clock()
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = max(self._stamp, now)

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (tokens earned so far keep the old rate)."""
        _positive(rate, "rate")
        self._refill()
        self._rate = float(rate)

    def try_take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if they are there; never waits."""
        self._refill()
        if self._tokens + 1e-9 >= n:
            self._tokens -= n
            return True
        return False

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are there (0 when they are now)."""
        self._refill()
        missing = n - self._tokens
        return 0.0 if missing <= 1e-9 else missing / self._rate


class Throttle:
    """The pace of one transporter: the configured rate plus adaptive back-off.

    Thread-safe (a lock around a few arithmetic steps, never held while waiting), so
    the threads of a sync transporter, its spool workers and the tasks of an async one
    share it. Callers never sleep inside it: :meth:`try_take` answers at once and
    :meth:`delay` says how long to wait (``time.sleep`` or ``await asyncio.sleep``).

    Back-off: a throttling answer (:func:`is_throttle_reply`) doubles a minimum spacing
    between two messages (from ``2 / rate_limit``, or 0.1 s without a rate, up to 10 s),
    so the effective rate halves; every accepted message shrinks the spacing by 10 %,
    so the rate climbs back over a few dozen messages instead of jumping to full speed
    and failing again. A "too many connections" answer to a new connection also caps
    how many connections an async pool opens; the cap grows by one every 20 accepted
    messages.

    Example::

        throttle = Throttle(PoolPolicy(rate_limit=10))
        while not throttle.try_take():
            time.sleep(throttle.delay())
    """

    def __init__(self, policy: PoolPolicy | None = None, clock: Clock = time.monotonic) -> None:
        policy = policy if policy is not None else PoolPolicy()
        self._lock = threading.Lock()
        self._clock = clock
        self._rate = policy.rate_limit
        self._bucket = (
            TokenBucket(policy.rate_limit, policy.burst, clock) if policy.rate_limit else None
        )
        self._spacing = 0.0
        self._next = 0.0
        self._cap: int | None = None
        self._streak = 0

    @property
    def spacing(self) -> float:
        """The back-off spacing in force, in seconds (0: none)."""
        return self._spacing

    @property
    def effective_rate(self) -> float | None:
        """Messages per second allowed now (None: unlimited)."""
        with self._lock:
            rates = [r for r in (self._rate, 1 / self._spacing if self._spacing else None) if r]
            return min(rates) if rates else None

    def try_take(self) -> bool:
        """Take the right to send one message now; False means "wait :meth:`delay`"."""
        if not self._spacing and self._bucket is None:
            return True  # no rate, no back-off: nothing to take (read without the lock)
        with self._lock:
            now = self._clock()
            if self._spacing and now < self._next:
                return False
            if self._bucket is not None and not self._bucket.try_take():
                return False
            if self._spacing:
                self._next = now + self._spacing
            return True

    def delay(self) -> float:
        """Seconds to wait before :meth:`try_take` may succeed (0: try now)."""
        with self._lock:
            now = self._clock()
            wait = max(self._next - now, 0.0) if self._spacing else 0.0
            if self._bucket is not None:
                wait = max(wait, self._bucket.wait_time())
            return wait

    def penalize(self) -> None:
        """The server asked us to slow down: halve the effective rate."""
        with self._lock:
            base = 2.0 / self._rate if self._rate else _BASE_SPACING
            self._spacing = min(_MAX_SPACING, max(self._spacing * 2, base))
            self._next = self._clock() + self._spacing
            self._streak = 0
            log.info("server asks to slow down: %.3f s between messages", self._spacing)

    def reward(self) -> None:
        """A message went through: relax the back-off a little."""
        if not self._spacing and self._cap is None:
            return  # nothing to relax (read without the lock: a bulk send calls this a lot)
        with self._lock:
            if self._spacing:
                self._spacing *= _RECOVERY
                floor = 1.0 / self._rate if self._rate else 0.001
                if self._spacing <= floor:
                    self._spacing = 0.0
                    log.info("back-off over: full speed again")
            if self._cap is not None:
                self._streak += 1
                if self._streak >= _CONNECTION_STREAK:
                    self._streak = 0
                    self._cap += 1

    def observe(self, status: SendStatus) -> None:
        """Adapt to the outcome of one message (called for every status of a batch)."""
        if status.success:
            self.reward()
        elif is_throttle_reply(status.status, status.status_text) or any(
            r.code in THROTTLE_CODES for r in status.recipients.values()
        ):
            self.penalize()

    def observe_error(self, exc: SMTPError, open_connections: int = 0) -> bool:
        """Adapt to a failure to open or use a connection; True if it was throttling.

        ``open_connections`` (async pool): how many other connections are alive; a
        throttling refusal of a new connection caps the pool at that many (at least 1).
        """
        if not isinstance(exc, ReplyError) or not is_throttle_reply(exc.code, exc.text):
            return False
        if not open_connections:
            self.penalize()
            return True
        # The server refuses one more session while others work: fewer sessions is the
        # answer, the pace of the sessions it accepts can stay.
        with self._lock:
            self._cap = max(1, open_connections)
            self._streak = 0
        log.info("server refuses more connections: pool capped at %d", open_connections)
        return True

    def connection_cap(self, maximum: int) -> int:
        """How many connections an async pool of ``maximum`` may hold now."""
        with self._lock:
            if self._cap is None:
                return maximum
            if self._cap >= maximum:
                self._cap = None
                return maximum
            return self._cap
