"""The spool's workers: threads that claim due entries, send them, and record the outcome.

Theory of operation
-------------------
Each worker thread owns one clone of the caller's Transporter (one SMTP connection,
kept alive across messages) and a lease owner name unique to the run. It claims a small
batch of due entries (a lease that expires, so a killed worker's mail returns to the
queue), sends each to its pending recipients with the very bytes stored at submit, and
writes back the pure :func:`._policy.decide` of the result, one entry at a time, so a
kill can duplicate at most the message whose final dot was already sent.

* A 535 at AUTH releases the batch untouched (no attempt burned), logs a clear error,
  and pauses the worker for ``RetryPolicy.auth_pause`` before it logs in again.
* A server-level failure (refused connection, TLS, greeting, EHLO) counts for the
  message that met it, releases the rest of the batch and pauses the worker for
  ``RetryPolicy.server_pause``: the queue does not burn attempts against a dead server.
* A message that makes the send raise (a "poison" message) is recorded as failed for
  that message only (permanent for InvalidMessage, else retried with backoff); the
  worker goes on with the others.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidMessage
from ..message.prepared import Prepared
from ..status import SendStatus, SpoolState
from ._model import Decision
from ._policy import RetryPolicy, decide, failure_decision
from ._store import Claimed, Store

__all__ = ["RunStats", "SpoolHandle", "Worker"]

log = logging.getLogger("postillon.spool")


class SenderLike(Protocol):
    """What a worker needs from a Transporter (one clone per worker thread)."""

    def _clone(self) -> SenderLike: ...
    def _send_prepared(self, prepared: Prepared) -> SendStatus: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class RunStats:
    """What a ``spool.run()`` did (a snapshot; ``progress`` callbacks get one too).

    ``sent``: entries delivered to every recipient; ``failed``: entries that ended in
    ERROR; ``deferred``: attempts that left the entry waiting for a retry; ``attempts``:
    sends tried; ``uncertain``: attempts whose connection broke after the final dot;
    ``auth_pauses``: times a worker paused after its login was refused.
    """

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    attempts: int = 0
    uncertain: int = 0
    auth_pauses: int = 0
    elapsed: float = 0.0
    #: the last authentication error text (the server's words; never a credential)
    auth_error: str | None = None


class _Counters:
    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.deferred = 0
        self.attempts = 0
        self.uncertain = 0
        self.auth_pauses = 0
        self.auth_error: str | None = None


class Worker:
    """Internal: one run of the spool (``Spool.run`` / ``Spool.start``): N worker threads."""

    def __init__(
        self,
        store: Store,
        transporter: SenderLike,
        *,
        workers: int,
        until_empty: bool,
        retry: RetryPolicy,
        stop: threading.Event,
        progress: Callable[[RunStats], None] | None,
        clock: Callable[[], float],
        lease: float,
        batch: int,
        idle_poll: float,
        wakeup: threading.Condition,
        pipeline: bool = True,
    ) -> None:
        self.store = store
        self.transporter = transporter
        self.workers = workers
        self.until_empty = until_empty
        self.retry = retry
        self.stop = stop
        self.progress = progress
        self.clock = clock
        self.lease = lease
        self.batch = batch
        self.idle_poll = idle_poll
        self.wakeup = wakeup
        self.pipeline = pipeline
        self.done = threading.Event()
        self.run_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._busy = 0
        self._c = _Counters()
        self._rng = random.Random()
        self._started = time.monotonic()
        self._error: BaseException | None = None
        self.threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads."""
        for i in range(self.workers):
            th = threading.Thread(
                target=self._thread, args=(i,), name=f"postillon-spool-{i}", daemon=True
            )
            self.threads.append(th)
            th.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads to end; True when they all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for th in self.threads:
            th.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(th.is_alive() for th in self.threads)

    def request_stop(self) -> None:
        """Ask the threads to stop after the message each is sending."""
        self.stop.set()
        with self.wakeup:
            self.wakeup.notify_all()

    def stats(self) -> RunStats:
        """A snapshot of the counters."""
        c = self._c
        with self._lock:
            return RunStats(
                c.sent, c.failed, c.deferred, c.attempts, c.uncertain, c.auth_pauses,
                time.monotonic() - self._started, c.auth_error,
            )  # fmt: skip

    def raise_error(self) -> None:
        """Re-raise the store failure that ended an ``until_empty`` run, if any."""
        if self._error is not None:
            raise self._error

    # -- the thread ---------------------------------------------------------------

    def _finished(self) -> bool:
        return self.stop.is_set() or self.done.is_set()

    def _idle(self, until: float) -> None:
        """Sleep until ``until`` (store clock), a submit's notification, or a stop."""
        delay = max(0.0, min(until - self.clock(), self.idle_poll))
        deadline = time.monotonic() + delay
        while not self._finished():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with self.wakeup:
                # short slices: a caller's own stop Event cannot notify us
                if self.wakeup.wait(min(remaining, 0.25)):
                    return

    def _thread(self, index: int) -> None:
        owner = f"{self.run_id}:{index}"
        sender = self.transporter._clone()
        paused_until = 0.0
        try:
            while not self._finished():
                now = self.clock()
                if paused_until > now:
                    self._idle(paused_until)
                    continue
                with self._lock:
                    self._busy += 1
                try:
                    claimed = self.store.claim(owner, now, now + self.lease, self.batch)
                    if claimed:
                        paused_until = self._work(sender, owner, claimed)
                except Exception as exc:
                    log.exception("spool worker %s: store failure", owner)
                    if self.until_empty:
                        self._error = exc
                        self.done.set()
                        break
                    paused_until = self.clock() + self.retry.server_pause
                    continue
                finally:
                    with self._lock:
                        self._busy -= 1
                if claimed:
                    continue
                if self.until_empty and self._drained():
                    self.done.set()
                    with self.wakeup:
                        self.wakeup.notify_all()
                    break
                nxt = self.store.next_due()
                self._idle(nxt if nxt is not None else self.clock() + self.idle_poll)
        except Exception as exc:  # pragma: no cover - defensive: a worker never dies silently
            log.exception("spool worker %s stopped", owner)
            self._error = exc
            self.done.set()
        finally:
            try:
                sender.close()
            except Exception:  # pragma: no cover - closing is best effort
                log.debug("spool worker %s: close failed", owner, exc_info=True)

    def _drained(self) -> bool:
        # nothing due now and no worker of this run holding a batch
        with self._lock:
            if self._busy:
                return False
        nxt = self.store.next_due()
        return nxt is None or nxt > self.clock()

    def _work(self, sender: SenderLike, owner: str, claimed: Sequence[Claimed]) -> float:
        """Send a claimed batch; return the time until which this worker pauses (0: none)."""
        if self.stop.is_set():
            self.store.release([c.entry.mail_id for c in claimed], owner)
            return 0.0
        send_many = getattr(sender, "send_many", None)
        if self.pipeline and len(claimed) > 1 and callable(send_many):
            try:
                # RFC 2920 3.1: the whole batch pipelined over one connection, as fast as
                # direct sending; a kill now may duplicate the batch's delivered messages
                statuses: list[SendStatus] = send_many([c.prepared() for c in claimed])
            except Exception as exc:
                # a message of the batch makes the send raise: isolate it, one at a time
                log.info("spool: batch send raised %s; sending one by one", type(exc).__name__)
                self._close(sender)
            else:
                if len(statuses) == len(claimed):
                    return self._settle(sender, owner, claimed, statuses)
                log.warning("spool: batch send returned %d statuses", len(statuses))
        lease_end = self.clock() + self.lease
        for i, c in enumerate(claimed):
            rest = [x.entry.mail_id for x in claimed[i:]]
            if self.stop.is_set():
                self.store.release(rest, owner)
                return 0.0
            now = self.clock()
            if lease_end - now < self.lease / 2:
                lease_end = now + self.lease
                self.store.extend(rest, owner, lease_end)
            decision = self._attempt(sender, c)
            if decision.pause_auth:
                self.store.release(rest, owner)
                return self._auth_pause(sender, decision, len(rest))
            self._record(owner, [(c, decision)])
            if decision.server_fault and decision.last_status is not None:
                # the server, not the message, failed: the rest of the batch is deferred
                # with the same status without being tried (Postfix defers a dead site's
                # whole queue), and this worker leaves the server alone for a moment
                status = decision.last_status
                self._record(
                    owner,
                    [
                        (o, decide(o.entry, status, self.clock(), self.retry, self._rng.random()))
                        for o in claimed[i + 1 :]
                    ],
                )
                self._close(sender)
                return self.clock() + self.retry.server_pause
        return 0.0

    def _settle(
        self,
        sender: SenderLike,
        owner: str,
        claimed: Sequence[Claimed],
        statuses: Sequence[SendStatus],
    ) -> float:
        """Record the statuses of a pipelined batch in one transaction."""
        now = self.clock()
        decisions = [
            (c, decide(c.entry, s, now, self.retry, self._rng.random()))
            for c, s in zip(claimed, statuses, strict=True)
        ]
        paused = [d for _, d in decisions if d.pause_auth]
        if paused:
            # a refused login fails every message of the connection alike: give them back
            self.store.release([c.entry.mail_id for c, d in decisions if d.pause_auth], owner)
            self._record(owner, [(c, d) for c, d in decisions if not d.pause_auth])
            return self._auth_pause(sender, paused[0], len(paused))
        self._record(owner, decisions)
        if any(d.server_fault for _, d in decisions):
            self._close(sender)
            return self.clock() + self.retry.server_pause
        return 0.0

    def _auth_pause(self, sender: SenderLike, decision: Decision, queued: int) -> float:
        with self._lock:
            self._c.auth_pauses += 1
            self._c.auth_error = decision.error
        log.error(
            "spool: the server refused our login (%s); sending paused for %.0f s, "
            "%d message(s) stay queued",
            decision.error, self.retry.auth_pause, queued,
        )  # fmt: skip
        self._close(sender)
        if self.until_empty:
            self.done.set()
        return self.clock() + self.retry.auth_pause

    @staticmethod
    def _close(sender: SenderLike) -> None:
        try:
            sender.close()  # the connection is in an unknown state: never reuse it
        except Exception:
            log.debug("spool: close after failure failed", exc_info=True)

    def _attempt(self, sender: SenderLike, c: Claimed) -> Decision:
        entry = c.entry
        rand = self._rng.random()
        try:
            status = sender._send_prepared(c.prepared())
        except InvalidMessage as exc:
            # the server will never take it as it is: fail it now, the others go on
            log.warning("spool: mail %s cannot be sent: %s", entry.mail_id, exc)
            return failure_decision(entry, self.clock(), self.retry, rand, str(exc), permanent=True)
        except Exception as exc:
            # a poison message must not stop the worker: count the attempt, back off
            log.warning(
                "spool: sending mail %s raised %s: %s", entry.mail_id, type(exc).__name__, exc
            )
            self._close(sender)
            return failure_decision(
                entry, self.clock(), self.retry, rand, f"{type(exc).__name__}: {exc}",
                permanent=False,
            )  # fmt: skip
        return decide(entry, status, self.clock(), self.retry, rand)

    def _record(self, owner: str, results: Sequence[tuple[Claimed, Decision]]) -> None:
        if not results:
            return
        done = self.store.complete_many(
            owner, [(c.entry.mail_id, d) for c, d in results], self.clock()
        )
        if done != len(results):
            log.warning("spool: %d lease(s) lost before the result was recorded",
                        len(results) - done)  # fmt: skip
        with self._lock:
            for c, d in results:
                mail_id = c.entry.mail_id
                self._c.attempts += 1
                if d.state is SpoolState.SENT:
                    self._c.sent += 1
                    log.debug("spool: mail %s sent", mail_id)
                elif d.state is SpoolState.ERROR:
                    self._c.failed += 1
                    log.warning("spool: mail %s failed: %s", mail_id, d.error)
                else:
                    self._c.deferred += 1
                    log.info("spool: mail %s deferred (attempt %d): %s", mail_id, d.attempts,
                             d.error)  # fmt: skip
                if d.last_status is not None and d.last_status.uncertain:
                    self._c.uncertain += 1
        if self.progress is not None:
            try:
                self.progress(self.stats())
            except Exception:
                log.exception("spool: progress callback failed")


class SpoolHandle:
    """Background workers started by ``Spool.start()``; ``stop()`` ends them.

    Pending mail stays in the store for the next run (unlike WinDev's spooler, closing
    loses nothing).

    Example::

        handle = spool.start(transporter, workers=2)
        ...
        handle.stop(timeout=30)
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    @property
    def running(self) -> bool:
        """True while a worker thread is alive."""
        return any(th.is_alive() for th in self._worker.threads)

    def stats(self) -> RunStats:
        """What the workers did so far."""
        return self._worker.stats()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the messages being sent; True when every thread ended in time."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout: must be >= 0, not {timeout!r}")
        self._worker.request_stop()
        return self._worker.join(timeout)

    def __repr__(self) -> str:
        return f"<SpoolHandle workers={len(self._worker.threads)} running={self.running}>"
