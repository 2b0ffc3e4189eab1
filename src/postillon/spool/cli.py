"""``postillon spool ...``: run the spool's workers, inspect the queue.

``add_parser(subparsers)`` registers the ``spool`` command on the main parser of
:mod:`postillon.cli`; every handler returns the exit status (0 success, 1 a failure the
server or the spool reported, 2 bad usage).

Example::

    POSTILLON_PASSWORD=... postillon spool run --spool mail-spool.db \\
        --host smtp.example.com --user me --workers 4 --until-empty
    postillon spool list --state pending
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

from ..status import SpoolState
from ._policy import RetryPolicy
from ._spool import Spool
from ._worker import RunStats

__all__ = ["add_parser", "main"]

_ENV_SPOOL = "POSTILLON_SPOOL"
_ENV_PASSWORD = "POSTILLON_PASSWORD"  # noqa: S105 - the variable's name, not a secret


def _spool_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spool",
        default=os.environ.get(_ENV_SPOOL, "mail-spool.db"),
        help=f"SQLite file or postgresql:// URL (default: ${_ENV_SPOOL} or mail-spool.db)",
    )
    p.add_argument("--schema", default=None, help="PostgreSQL schema of the spool tables")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``spool run|status|list`` to the ``subparsers`` of the main parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "spool", help="the durable outgoing queue", description="The durable outgoing queue."
    )
    sub = parser.add_subparsers(dest="spool_command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="deliver queued mail (blocks; Ctrl-C stops cleanly)")
    _spool_arg(run)
    run.add_argument("--host", required=True, help="SMTP server")
    run.add_argument("--port", type=int, default=None, help="port (default from --security)")
    run.add_argument(
        "--security", choices=("tls", "starttls", "none"), default=None,
        help="tls (implicit, 465), starttls (587) or none (25)",
    )  # fmt: skip
    run.add_argument("--user", default=None, help=f"login (password from ${_ENV_PASSWORD})")
    run.add_argument(
        "--accept-unsecure", action="store_true",
        help="go on in clear text when the server offers no STARTTLS",
    )  # fmt: skip
    run.add_argument("--workers", type=int, default=4, help="parallel connections (default 4)")
    run.add_argument("--until-empty", action="store_true", help="exit once nothing is due any more")
    run.add_argument("--lease", type=float, default=None, help=argparse.SUPPRESS)
    run.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(spool_handler=_run)

    status = sub.add_parser("status", help="one message's state, or the queue's counts")
    _spool_arg(status)
    status.add_argument("mail_id", nargs="?", help="a spool id (none: counts per state)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(spool_handler=_status)

    lst = sub.add_parser("list", help="list queued messages")
    _spool_arg(lst)
    lst.add_argument("--state", choices=[s.value for s in SpoolState], default=None)
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true", help="print JSON lines")
    lst.set_defaults(spool_handler=_list)

    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    """Run the ``spool`` sub-command parsed into ``args``."""
    handler: Callable[[argparse.Namespace, TextIO], int] = args.spool_handler
    try:
        return handler(args, sys.stdout)
    except ValueError as exc:
        print(f"postillon spool: {exc}", file=sys.stderr)
        return 2


def _open(args: argparse.Namespace) -> Spool:
    return Spool(args.spool, schema=args.schema)


def _counts_line(spool: Spool, stats: RunStats | None) -> str:
    counts = spool.counts()
    head = ""
    if stats is not None:
        head = f"sent {stats.sent}, failed {stats.failed}, deferred {stats.deferred}; "
    return (
        f"{head}queue: {counts[SpoolState.PENDING]} pending, "
        f"{counts[SpoolState.SENT]} sent, {counts[SpoolState.ERROR]} error"
    )


def _transporter(args: argparse.Namespace) -> Any:
    from ..settings import Security
    from ..transporter import Transporter  # lazily: the spool commands need no SMTP stack

    kwargs: dict[str, Any] = {"keep_alive": True}
    if args.security is not None:
        kwargs["security"] = Security(args.security)
        if args.security == "none":
            kwargs["accept_unsecure_connection"] = True
    if args.accept_unsecure:
        kwargs["accept_unsecure_connection"] = True
    if args.user:
        kwargs["user"] = args.user
        password = os.environ.get(_ENV_PASSWORD)
        if password is None:
            raise ValueError(f"--user needs the password in ${_ENV_PASSWORD}")
        kwargs["password"] = password
    return Transporter(args.host, args.port, **kwargs)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.workers < 1:
        raise ValueError("--workers: at least 1")
    transporter = _transporter(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # finish the message in hand; everything else stays queued for the next run
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    with _open(args) as spool:
        last = [0.0]
        lock = threading.Lock()

        def progress(stats: RunStats) -> None:
            now = time.monotonic()
            with lock:
                if now - last[0] < 1.0:
                    return
                last[0] = now
            print(_counts_line(spool, stats), file=out, flush=True)

        try:
            stats = spool.run(
                transporter, workers=args.workers, until_empty=args.until_empty,
                retry=RetryPolicy(), stop=stop, progress=None if args.quiet else progress,
                lease=args.lease, batch=args.batch,
            )  # fmt: skip
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            with contextlib.suppress(Exception):
                transporter.close()  # the workers' clones did the sending
        if not args.quiet:
            print(_counts_line(spool, stats), file=out, flush=True)
        if stats.auth_error:
            print(f"postillon spool: {stats.auth_error}", file=sys.stderr)
            return 1
    return 0


def _status(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args) as spool:
        if args.mail_id is None:
            counts = spool.counts()
            if args.json:
                print(json.dumps({s.value: n for s, n in counts.items()}), file=out)
            else:
                print(_counts_line(spool, None), file=out)
            return 0
        entry = spool.status(args.mail_id)
        if args.json:
            print(json.dumps(entry.to_dict(), ensure_ascii=False), file=out)
            return 0
        print(f"{entry.mail_id}: {entry.state.value}, {entry.attempts} attempt(s)", file=out)
        print(f"  message-id: {entry.message_id}", file=out)
        print(f"  from: {entry.mail_from}", file=out)
        for addr, state in entry.recipients.items():
            print(f"  to {addr}: {state}", file=out)
        if entry.next_attempt_at is not None:
            print(f"  next attempt: {entry.next_attempt_at.isoformat()}", file=out)
        if entry.last_status is not None:
            ls = entry.last_status
            print(f"  last status: {ls.status} {ls.status_text}", file=out)
        if entry.uncertain:
            print("  uncertain: a connection broke after the final dot", file=out)
        if entry.error:
            print(f"  error: {entry.error}", file=out)
    return 0


def _list(args: argparse.Namespace, out: TextIO) -> int:
    if args.limit < 1:
        raise ValueError("--limit: at least 1")
    with _open(args) as spool:
        for entry in spool.entries(args.state, limit=args.limit):
            if args.json:
                print(json.dumps(entry.to_dict(), ensure_ascii=False), file=out)
            else:
                rcpts = ",".join(entry.recipients)
                print(
                    f"{entry.mail_id} {entry.state.value:<7} {entry.attempts:>3} "
                    f"{entry.created_at.isoformat(timespec='seconds')} {rcpts}",
                    file=out,
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m postillon.spool ...``: the spool commands alone."""
    parser = argparse.ArgumentParser(prog="postillon")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_parser(sub)
    args = parser.parse_args(["spool", *(sys.argv[1:] if argv is None else argv)])
    return handle(args)
