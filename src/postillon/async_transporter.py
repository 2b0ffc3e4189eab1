"""``AsyncTransporter``: the same transporter on asyncio, with a connection pool.

Concurrent ``send()`` calls share up to ``max_connections`` connections; a connection is
never used by two transactions at once. A call cancelled at any point drops its
connection (its state is unknown), so a late reply can never be paired with the next
command. The protocol is the one of :mod:`postillon.protocol.conversation`, pumped by
:mod:`postillon.transport.aio`.

Example::

    async with AsyncTransporter("smtp.example.com", max_connections=4,
                                user="ann", password=secret) as t:
        statuses = await asyncio.gather(*(t.send(m) for m in mails))
        async for status in t.iter_send(more_mails):   # bulk, in bounded memory
            print(status.message_id, status.success)
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
)
from typing import TYPE_CHECKING, Any, cast

from . import testing as _testing
from .errors import InvalidMessage, SMTPError
from .message.prepared import Prepared
from .pool import Lifetime
from .protocol.conversation import Conversation, SendOptions, check_status, invalid_status
from .settings import Dsn
from .status import SendStatus, Status
from .transport.aio import AsyncConnection
from .transport.transcript import Transcript
from .transporter import (
    _EMPTY,
    Batch,
    ConnectFailed,
    Message,
    Staged,
    TransporterBase,
    _gate,
    iter_mails,
    send_options,
)

if TYPE_CHECKING:
    from .signing import DkimSigner, SmimeSigner

__all__ = ["AsyncTransporter"]

log = logging.getLogger("postillon.async_transporter")

#: an in-memory message up to this size is signed on the event loop (a few
#: milliseconds of hashing and one signature: cheaper than a trip to a worker thread);
#: anything larger, or read from files, is signed in a worker thread
SIGN_ON_LOOP_MAX = 256 * 1024


class AsyncTransporter(TransporterBase):
    """An asyncio SMTP transporter with up to ``max_connections`` pooled connections.

    Same constructor and methods as :class:`~postillon.Transporter`, as coroutines.
    """

    def __init__(
        self, host: str, port: int | None = None, *, max_connections: int = 1, **settings: Any
    ) -> None:
        super().__init__(host, port, **settings)
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError(f"max_connections: must be an integer >= 1, not {max_connections!r}")
        self._max = max_connections
        self._idle: list[AsyncConnection] = []
        self._busy: set[AsyncConnection] = set()
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: set whenever a connection leaves ``_busy`` (wakes callers waiting for room)
        self._freed: asyncio.Event | None = None
        #: connections still in their connect/greeting/AUTH phase
        self._opening = 0
        self._lives: weakref.WeakKeyDictionary[AsyncConnection, Lifetime] = (
            weakref.WeakKeyDictionary()
        )
        self._had_connection = False
        #: connections opened so far (for tests and statistics)
        self.connections_opened = 0

    @property
    def max_connections(self) -> int:
        """How many connections concurrent sends share at most."""
        return self._max

    async def __aenter__(self) -> AsyncTransporter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the pool

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots = asyncio.Semaphore(self._max)
            self._freed = asyncio.Event()
            self._loop = loop
            self._idle.clear()
        return self._slots

    def _take_idle(self, deadline: float) -> AsyncConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if self._settings.keep_alive and not conn.is_stale():
                conn.deadline = deadline
                self._busy.add(conn)
                return conn
            conn.close()
        return None

    def _new_connection(self) -> AsyncConnection:
        s = self._settings
        conn = AsyncConnection(self._endpoint, Transcript(s.log_file, f"{s.host}:{s.port}"))
        self._busy.add(conn)
        self.connections_opened += 1
        return conn

    async def _fit(self, conn: AsyncConnection, deadline: float) -> bool:
        """May this idle connection carry more mail? Worn out: QUIT; idle long: NOOP."""
        life = self._lives.get(conn)
        now = time.monotonic()
        if life is None:  # pragma: no cover - every pooled connection has one
            return True
        if self._pool.worn_out(life, now):
            await conn.quit(now + self._pool.check_timeout)
            conn.transcript.close()  # renewals must not pile up open log files
            return False
        if self._pool.needs_check(life, now):
            conn.deadline = now + self._pool.check_timeout
            try:
                await conn.pump(conn.conversation.noop())
            except SMTPError as exc:
                # The server forgot the session while it idled: a new one, silently.
                log.debug("idle connection failed its NOOP check (%s); reconnecting", exc)
                conn.close()
                return False
            life.last_used = time.monotonic()
        conn.deadline = deadline
        return True

    async def _wait_for_room(self, deadline: float) -> bool:
        """Wait until a connection is released; False when the deadline came first."""
        assert self._freed is not None
        self._freed.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            async with asyncio.timeout(left):
                await self._freed.wait()
        except TimeoutError:
            return False
        return True

    async def _acquire(self, deadline: float) -> tuple[AsyncConnection, bool]:
        """An idle connection, or a new one; on failure the SMTPError carries the stage.

        An idle connection is checked first (:meth:`_fit`). A new one is opened only
        while the pool is under the cap the server's "too many connections" set
        (:meth:`Throttle.connection_cap`); over it, the call waits for a connection to
        come back (and opens one anyway if its deadline comes first).
        """
        while True:
            conn = self._take_idle(deadline)
            if conn is not None:
                try:
                    fit = await self._fit(conn, deadline)
                except BaseException:
                    self._busy.discard(conn)
                    conn.close()
                    raise
                if fit:
                    return conn, True
                self._busy.discard(conn)
                continue
            cap = self._throttle.connection_cap(self._max)
            if len(self._busy) < cap or not await self._wait_for_room(deadline):
                break
        conn = self._new_connection()
        self._opening += 1
        try:
            await conn.connect(deadline)
        except BaseException as exc:
            self._busy.discard(conn)
            conn.close()
            if isinstance(exc, SMTPError):
                raise ConnectFailed(exc, conn.conversation.stage) from exc
            raise
        finally:
            self._opening -= 1
        self._lives[conn] = Lifetime.start(time.monotonic())
        self._had_connection = True
        return conn, False

    async def _release(self, conn: AsyncConnection, reusable: bool) -> None:
        self._busy.discard(conn)
        if self._freed is not None:
            self._freed.set()
        life = self._lives.get(conn)
        now = time.monotonic()
        worn = life is not None and self._pool.worn_out(life, now)
        if reusable and self._settings.keep_alive and conn.conversation.usable and not worn:
            if life is not None:
                life.last_used = now
            self._idle.append(conn)
        elif reusable:
            await conn.quit(now + 5.0)
            conn.transcript.close()
        else:
            conn.close()  # a 421, an I/O error or a cancel: never reused
            conn.transcript.close()

    async def open(self) -> AsyncTransporter:
        """Open one connection now; raise SMTPError on failure."""
        async with self._semaphore():
            try:
                conn, _ = await self._acquire(time.monotonic() + self._settings.send_timeout)
            except ConnectFailed as failed:
                raise failed.error from None
            await self._release(conn, True)
        return self

    async def close(self) -> None:
        """QUIT and close every idle connection; busy ones close when their call ends."""
        idle, self._idle = self._idle, []
        await asyncio.gather(
            *(c.quit(time.monotonic() + 5.0) for c in idle), return_exceptions=True
        )

    # -- public calls

    async def check_connection(self) -> Status:
        """Connect (or reuse a connection), NOOP, and return the status (4D)."""
        async with self._semaphore():
            deadline = time.monotonic() + self._settings.send_timeout
            conn: AsyncConnection | None = None
            try:
                conn, _ = await self._acquire(deadline)
                await conn.pump(conn.conversation.noop())
                status = check_status(
                    True, conn.conversation.last_reply, conn.conversation.auth_note
                )
            except ConnectFailed as failed:
                return check_status(False, None, exc=failed.error, stage=failed.stage)
            except SMTPError as exc:
                assert conn is not None
                await self._release(conn, False)
                return check_status(False, None, exc=exc, stage=conn.conversation.stage)
            except BaseException:
                if conn is not None:
                    await self._release(conn, False)
                raise
            await self._release(conn, True)
            return status

    async def send(
        self,
        mail: Message,
        *,
        from_: str | None = None,
        to: Iterable[str] | str | None = None,
        dsn: Dsn | None = None,
        require_tls: bool = False,
        smime: object = None,
        dkim: DkimSigner | None = None,
    ) -> SendStatus:
        """Send one message on a pooled connection; see :meth:`Transporter.send`."""
        staged = self._stage(mail, from_, to)
        signer = self._smime_arg(smime)
        staged = await self._sign_early(staged, signer, dkim)
        opts = SendOptions(dsn=dsn, require_tls=require_tls)
        batch = Batch(self, [staged], opts, signer, dkim)
        await self._drive(batch)
        return batch.statuses()[0]

    async def send_many(
        self,
        mails: Iterable[Message] | AsyncIterable[Message],
        *,
        dsn: Dsn | None = None,
        require_tls: bool = False,
    ) -> list[SendStatus]:
        """Send many messages over up to ``max_connections`` pipelined connections.

        Statuses come back in the order of the input, one per message; a message that
        cannot be sent as given gets a failed status (stage "message") in its place.
        Messages are pulled from the iterable only as connections are ready for them
        (as :meth:`iter_send` does), so an iterator of a million messages is never held
        in memory; the list of statuses is. ``async for s in t.iter_send(mails)`` keeps
        memory bounded whatever the number of messages.

        Example::

            statuses = await t.send_many(mails)
            failed = [s for s in statuses if not s.success]
        """
        stream = _Stream(self, mails, send_options(dsn, require_tls))
        out: list[SendStatus] = []
        try:
            while (chunk := await stream.next_chunk()) is not None:
                out += chunk
        finally:
            await stream.close()
        return out

    def iter_send(
        self,
        mails: Iterable[Message] | AsyncIterable[Message],
        *,
        dsn: Dsn | None = None,
        require_tls: bool = False,
    ) -> AsyncGenerator[SendStatus, None]:
        """:meth:`send_many`, streamed: yield each message's status, in input order.

        ``mails`` is an iterable or an async iterable of messages (Email, EmailMessage,
        RawMessage, mixed); a message that cannot be sent as given gets a failed status
        in its place and the stream goes on. The messages go over up to
        ``max_connections`` pipelined connections, and a status is yielded once the
        run of messages it was taken in (up to 64) and every message before it have
        their answers. Memory stays bounded: the input is read at most
        ``max_connections * 128`` messages ahead of what the caller has consumed, so a
        slow consumer slows the sending down. An exception raised by the input itself
        comes out after the statuses of the messages read before it.

        Stopping early (``break``, ``aclose()``, cancellation) stops the sending: the
        messages in flight get no status (they may or may not have reached the server)
        and their connections are dropped; idle ones go back to the pool, and the
        transporter stays usable. ``contextlib.aclosing`` makes that happen at once
        rather than when the generator is collected.

        Example::

            async with contextlib.aclosing(t.iter_send(messages)) as statuses:
                async for status in statuses:
                    if not status.success:
                        log_failure(status)
        """
        stream = _Stream(self, mails, send_options(dsn, require_tls))
        return _statuses(stream)

    @property
    def _stream_window(self) -> int:
        """How many messages iter_send reads ahead of its caller at most."""
        return self._max * WINDOW_PER_CONNECTION

    async def _stage_signed(self, mail: Message) -> Staged | SendStatus:
        """Staged and, when a signer applies, signed (off the loop); or a failed status."""
        staged = self._stage_or_status(mail)
        if isinstance(staged, SendStatus):
            return staged
        try:
            return await self._sign_early(staged, None, None)
        except InvalidMessage as exc:  # e.g. DKIM without a From field: this one fails
            return invalid_status(exc, staged.prepared or _EMPTY)

    async def _sign_early(
        self, staged: Staged, smime: SmimeSigner | None, dkim: DkimSigner | None
    ) -> Staged:
        """Sign at staging, before the message enters a batch, without blocking the loop.

        Signing reads the whole message once (the body hash, the S/MIME digest): for a
        file attachment that is disk I/O and for any large message seconds of hashing,
        which the batch would otherwise do on the event loop when the conversation takes
        the message. Here it runs in a worker thread (:func:`asyncio.to_thread`), and the
        result is marked signed so that ``_final`` sends it as is. The ``smtputf8=False``
        rendering is the one signed; a message that needs SMTPUTF8 gets its SMTPUTF8
        rendering signed instead.
        """
        if staged.signed:
            return staged
        s = self._settings
        # a spooled message (a Prepared): only the transporter's own signers apply
        own = isinstance(staged.original, Prepared)
        if s.smime is None and s.dkim is None and (own or (smime is None and dkim is None)):
            return staged
        p = staged.prepared
        if p is not None and p.in_memory and p.size is not None and p.size <= SIGN_ON_LOOP_MAX:
            return self._sign_staged(staged, smime, dkim)
        return await asyncio.to_thread(self._sign_staged, staged, smime, dkim)

    async def _drive(self, batch: Batch) -> None:
        """The async twin of Transporter._drive: the loop only, decisions are in Batch."""
        box = _testing.active()
        if box is not None:
            box.deliver(self, batch)  # postillon.testing.Outbox: captured, no connection
            return
        throttle = self._throttle
        async with self._semaphore():
            while batch.next_head():
                pause = throttle.delay()
                if pause > 0:
                    await asyncio.sleep(pause)
                deadline = time.monotonic() + self._settings.send_timeout
                conn: AsyncConnection | None = None
                try:
                    conn, reused = await self._acquire(deadline)
                except ConnectFailed as failed:
                    alive = len(self._busy) - self._opening + len(self._idle)
                    throttle.observe_error(failed.error, alive)
                    if batch.retry_connect(failed.error, failed.stage, self._had_connection):
                        continue
                    batch.connect_failed(failed.error, failed.stage)
                    break
                before = conn.replies
                fed = batch.fed
                life = self._lives.get(conn) or Lifetime.start(time.monotonic())
                try:
                    feed = batch.feed(conn.conversation, _gate(self._pool, throttle, life))
                    await conn.pump(
                        conn.conversation.transactions(feed, batch.opts),
                        batch.on_done(conn),
                        feed.prefetch,
                    )
                except InvalidMessage:
                    await self._release(conn, True)
                    raise
                except SMTPError as exc:
                    throttle.observe_error(exc)
                    batch.failed(conn.conversation, exc, reused, conn.replies - before)
                    await self._release(conn, False)
                    continue
                except BaseException:
                    # Cancelled (or worse) mid-conversation: the session state is unknown,
                    # so the connection is dropped, never reused.
                    await self._release(conn, False)
                    raise
                await self._release(conn, True)
                if batch.fed == fed and throttle.delay() == 0:
                    await asyncio.sleep(0.001)  # nothing went (a lost race for a token)


#: The most messages a lane takes from the stream at once: a run of contiguous input
#: positions, the ones waiting, up to this many. The lane's connection goes on with the
#: next run without waiting for the answers to this one (the pipeline drains only when
#: no message waits), and a run is the granularity at which iter_send learns statuses.
LANE_GROUP = 64

#: How far iter_send reads ahead of its caller, per connection: the run each lane has
#: in flight and the next one waiting behind it, so that a lane never idles for want of
#: input while the caller keeps up. Runs finish out of order across connections; a
#: finished run waits in the reorder buffer for the earlier ones within this same
#: budget (the input stops being read meanwhile). More buys no throughput (measured with
#: bench/bench_throughput.py) and costs memory: for 8 connections it is 1,024 messages.
WINDOW_PER_CONNECTION = 2 * LANE_GROUP


class _Stream:
    """One send_many()/iter_send() call: a producer, lanes and an in-order reorder buffer.

    Theory of operation. The producer task reads the input and appends each message to
    ``pending``; it stops reading while ``pulled`` is a window ahead of ``credited``,
    the count of statuses the caller has consumed (backpressure). ``max_connections``
    lane tasks each pipeline on one pooled connection (:meth:`AsyncTransporter._drive`)
    the messages waiting, taken in runs of contiguous input positions (up to
    :data:`LANE_GROUP`) one after the other while any wait (:class:`_LaneBatch`), and
    put each run's statuses in ``ready`` under its first position. A message is staged
    (a message that cannot be sent becomes its failed status) as the lane's
    conversation takes it, in the moment after a write while the server works
    (:meth:`Feed.prefetch`), as the synchronous transporter's slices do: staged by the
    producer, a run's worth would go back to back on the loop and hold up the replies
    that arrive meanwhile. Only when a signer applies does the producer stage, since
    signing may have to leave the loop. The caller's side, :meth:`next_chunk`, hands
    out the run that starts where the previous one ended, waiting for it if need be.
    Every piece of state is bounded by the window; nothing grows with the number of
    messages.

    The tasks start with the first :meth:`next_chunk`; :meth:`close` cancels them, which
    drops the connections of the runs in flight (``_drive`` never reuses a connection
    in an unknown state) and leaves the pool usable.
    """

    def __init__(
        self,
        owner: AsyncTransporter,
        mails: Iterable[Message] | AsyncIterable[Message],
        opts: SendOptions,
    ) -> None:
        self.owner = owner
        self.source: Iterator[Message] | AsyncIterator[Message]
        if isinstance(mails, AsyncIterable):
            self.source = aiter(mails)
        else:
            self.source = iter_mails(mails, "an iterable or async iterable")
        self.opts = opts
        self.window = owner._stream_window
        # Signing may read files or hash a large message: the producer does it, off the
        # loop (_sign_early); otherwise the lanes stage what they take.
        self.signs = owner._settings.smime is not None or owner._settings.dkim is not None
        self.pending: deque[Message | Staged | SendStatus] = deque()
        #: input items read; items taken by lanes; statuses handed out; and consumed
        self.pulled = self.taken = self.emitted = self.credited = 0
        #: ``pulled`` once the input is exhausted (or failed)
        self.total: int | None = None
        #: what the input raised: raised to the caller after the statuses before it
        self.error: Exception | None = None
        #: finished runs by first position (the reorder buffer)
        self.ready: dict[int, list[SendStatus]] = {}
        self.more = asyncio.Event()  # for lanes: messages waiting, or the input ended
        self.room = asyncio.Event()  # for the producer: the caller consumed some
        self.news = asyncio.Event()  # for the caller: a run finished, or a task died
        self.tasks: list[asyncio.Task[None]] = []

    async def next_chunk(self) -> list[SendStatus] | None:
        """The next statuses in input order; None at the end. Raises what a task raised."""
        # Asking for more means the previous chunk was consumed: it leaves the window.
        if self.credited != self.emitted:
            self.credited = self.emitted
            self.room.set()
        if not self.tasks:
            if self.total is not None:
                return None  # closed, or ended already
            self._start()
        while True:
            chunk = self.ready.pop(self.emitted, None)
            if chunk is not None:
                self.emitted += len(chunk)
                return chunk
            if self.total is not None and self.emitted >= self.total:
                if self.error is not None:
                    error, self.error = self.error, None
                    raise error
                return None
            for task in self.tasks:
                failure = task.exception() if task.done() and not task.cancelled() else None
                if failure is not None:
                    raise failure
            self.news.clear()
            await self.news.wait()

    def _start(self) -> None:
        wake: Callable[[asyncio.Task[None]], None] = lambda _: self.news.set()  # noqa: E731
        self.tasks = [asyncio.create_task(self._produce())]
        self.tasks += [asyncio.create_task(self._lane()) for _ in range(self.owner._max)]
        for task in self.tasks:
            task.add_done_callback(wake)

    async def close(self) -> None:
        """Stop every task (cancelling the runs in flight) and wait until they ended."""
        tasks, self.tasks = self.tasks, []
        if self.total is None:
            self.total = self.pulled
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _produce(self) -> None:
        owner = self.owner
        signs = self.signs
        source = self.source
        try:
            if isinstance(source, AsyncIterator):
                async for mail in source:
                    self._push(await owner._stage_signed(mail) if signs else mail)
                    while self.pulled >= self.credited + self.window:
                        self.room.clear()
                        await self.room.wait()
            else:
                for mail in source:
                    self._push(await owner._stage_signed(mail) if signs else mail)
                    while self.pulled >= self.credited + self.window:
                        self.room.clear()
                        await self.room.wait()
        except Exception as exc:  # the input failed: what was read before still goes
            self.error = exc
        self.total = self.pulled
        self.more.set()
        self.news.set()

    def _push(self, item: Message | Staged | SendStatus) -> None:
        self.pending.append(item)
        self.pulled += 1
        self.more.set()

    async def _lane(self) -> None:
        # One lane pipelines on one connection at a time (the pool's), run after run
        # for as long as messages wait (_LaneBatch); it drains only when none do.
        owner, pending = self.owner, self.pending
        while True:
            while not pending:
                if self.total is not None:
                    return
                self.more.clear()
                await self.more.wait()
            batch = _LaneBatch(self)
            await owner._drive(batch)
            batch.publish()


class _LaneBatch(Batch):
    """The messages of one lane: taken from the stream in runs while any wait, and
    pipelined on the lane's connection one run after the other without a pause; each
    run's statuses go to the reorder buffer as soon as they are all in."""

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        #: (first input position, count) of each run taken whose statuses are not out
        self.runs: deque[tuple[int, int]] = deque()
        super().__init__(stream.owner, self._take(), stream.opts, None, None)
        self.single = False  # a message this server cannot take fails alone

    def _take(self) -> Iterator[Staged | SendStatus]:
        stream = self.stream
        pending = stream.pending
        stage = None if stream.signs else stream.owner._stage_or_status
        while pending:
            # A run's input positions are contiguous: it is taken whole, without awaiting.
            n = min(len(pending), LANE_GROUP)
            self.runs.append((stream.taken, n))
            stream.taken += n
            run = [pending.popleft() for _ in range(n)]
            if stage is None:  # the producer staged and signed them
                yield from cast("list[Staged | SendStatus]", run)
            else:
                yield from map(stage, run)

    def publish(self) -> None:
        """Hand the runs whose statuses are all in to the stream, in order."""
        stream = self.stream
        runs = self.runs
        while runs:
            start, n = runs[0]
            statuses = self.pop_statuses(n)
            if statuses is None:
                return
            runs.popleft()
            stream.ready[start] = statuses
            stream.news.set()

    def on_done(self, conn: Any) -> Callable[[SendStatus], None]:
        done = super().on_done(conn)
        runs, results = self.runs, self.results

        def done_and_publish(status: SendStatus) -> None:
            done(status)
            if runs and len(results) >= runs[0][1]:  # the first run may be complete
                self.publish()

        return done_and_publish

    def failed(self, conv: Conversation, exc: SMTPError, reused: bool, replies: int) -> None:
        super().failed(conv, exc, reused, replies)
        self.publish()

    def connect_failed(self, exc: SMTPError, stage: str) -> None:
        super().connect_failed(exc, stage)
        self.publish()


async def _statuses(stream: _Stream) -> AsyncGenerator[SendStatus, None]:
    """The body of AsyncTransporter.iter_send: the stream's chunks, one status at a time."""
    try:
        while (chunk := await stream.next_chunk()) is not None:
            for status in chunk:
                yield status
    finally:
        await stream.close()
