"""``postillon spool submit|run|status|list|retry|cancel|purge``: the durable queue.

``status`` and ``list`` are the spool's own commands (:mod:`postillon.spool.cli`); ``run``
takes the server settings like ``send`` (flags, ``POSTILLON_*``, ``--account``).

Example::

    postillon spool submit --spool mail.db --from a@example.com --to b@example.com \\
        --subject Hi --text body.txt
    postillon spool run --spool mail.db --account work --until-empty
    postillon spool list --spool mail.db --state error
    postillon spool retry --spool mail.db 3f2a...
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from types import FrameType
from typing import Any

from ..spool import RetryPolicy, RunStats, Spool
from ..spool import cli as spool_cli
from ._common import EXIT_FAILED, EXIT_OK, Progress, print_json
from ._settings import (
    SETTINGS_EPILOG,
    SIGNING_EPILOG,
    UsageError,
    add_server_arguments,
    add_signing_arguments,
    resolve,
    resolve_signing,
)
from .send import _count, add_message_arguments, build_messages

__all__ = ["add_parsers"]

EPILOG = """\
examples:
  postillon spool submit --spool mail.db --from a@example.com --to b@example.com \\
      --subject "Invoice" --text invoice.txt --attach invoice.pdf
  postillon spool run --spool mail.db --account work --workers 4 --until-empty
  postillon spool status --spool mail.db            (counts per state)
  postillon spool status --spool mail.db MAIL_ID --json
  postillon spool list --spool mail.db --state error
  postillon spool retry --spool mail.db MAIL_ID
  postillon spool cancel --spool mail.db MAIL_ID
  postillon spool purge --spool mail.db --state sent --older-than 7d

the spool is an SQLite file (default $POSTILLON_SPOOL or mail-spool.db) or a
postgresql:// URL; it holds messages, never credentials. 'submit' signs (DKIM, S/MIME)
before it stores: the spool keeps the signed bytes and every retry sends them unchanged.
"""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parsers(sub: Any) -> None:
    """Register ``spool`` and its seven commands."""
    parser = sub.add_parser(
        "spool",
        help="the durable outgoing queue",
        description="The durable outgoing queue: nothing submitted is ever lost.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = parser.add_subparsers(dest="spool_command", metavar="COMMAND")
    cmds.required = True
    raw = argparse.RawDescriptionHelpFormatter

    submit = cmds.add_parser(
        "submit", help="queue a message (returns once it is stored)", formatter_class=raw,
        epilog="examples:\n  postillon spool submit --from a@example.com --to b@example.com "
        "--subject Hi --text body.txt\n"
        "  postillon spool submit --account work --to b@example.com --text body.txt \\\n"
        "      --dkim-key dkim.pem --dkim-domain example.com --dkim-selector mail2025\n\n"
        "a signed message is stored signed: every retry sends the same bytes.\n"
        + SIGNING_EPILOG,
    )  # fmt: skip
    spool_cli._spool_arg(submit)
    add_message_arguments(submit)
    add_signing_arguments(submit, account=True)
    submit.add_argument("--count", metavar="N", default="1", help="queue N copies")
    submit.add_argument("--idempotency-key", metavar="KEY", help="submit at most once per key")
    submit.add_argument("--json", action="store_true", help="print the ids as JSON")
    submit.set_defaults(handler=_submit)

    run = cmds.add_parser(
        "run", help="deliver queued mail (Ctrl-C stops cleanly)", formatter_class=raw,
        epilog="example:\n  postillon spool run --account work --workers 4 --until-empty\n\n"
        + SETTINGS_EPILOG,
    )  # fmt: skip
    spool_cli._spool_arg(run)
    run.add_argument("--workers", metavar="N", default="4", help="parallel connections (4)")
    run.add_argument("--until-empty", action="store_true", help="exit once nothing is due")
    run.add_argument("--progress", action="store_true", help="progress on stderr even if piped")
    run.add_argument("--quiet", action="store_true", help="no summary line")
    run.add_argument("--json", action="store_true", help="print the run's numbers as JSON")
    add_server_arguments(run)
    run.set_defaults(handler=_run)

    status = cmds.add_parser("status", help="one message's state, or the queue's counts")
    spool_cli._spool_arg(status)
    status.add_argument("mail_id", nargs="?", help="a spool id (none: counts per state)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_delegate, spool_handler=spool_cli._status)

    lst = cmds.add_parser("list", help="list queued messages")
    spool_cli._spool_arg(lst)
    lst.add_argument("--state", choices=("pending", "sent", "error"), default=None)
    lst.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    lst.add_argument("--json", action="store_true", help="print JSON lines")
    lst.set_defaults(handler=_delegate, spool_handler=spool_cli._list)

    for name, text in (
        ("retry", "make a message due now (an error goes back to pending)"),
        ("cancel", "give up a pending message"),
    ):
        p = cmds.add_parser(name, help=text)
        spool_cli._spool_arg(p)
        p.add_argument("mail_id", help="the spool id")
        p.set_defaults(handler=_retry_or_cancel, action=name)

    purge = cmds.add_parser("purge", help="delete finished entries")
    spool_cli._spool_arg(purge)
    purge.add_argument("--state", choices=("sent", "error"), default="sent")
    purge.add_argument(
        "--older-than", metavar="AGE", default="0", help="seconds, or 30m, 12h, 7d (default 0)"
    )
    purge.set_defaults(handler=_purge)


def _open(args: argparse.Namespace) -> Spool:
    return Spool(args.spool, schema=args.schema)


def _delegate(args: argparse.Namespace) -> int:
    result: int = args.spool_handler(args, sys.stdout)
    return result


def _submit(args: argparse.Namespace) -> int:
    count = _count(args.count)
    signing = resolve_signing(args)
    mails = build_messages(args, signing.default_from)
    if args.idempotency_key is not None and (count > 1 or len(mails) > 1):
        raise UsageError("--idempotency-key: one message only")
    # each copy rendered and signed on its own (its own Message-ID, Date and signature)
    items = [m for _ in range(count) for m in mails]
    smime, dkim = signing.smime, signing.dkim
    with _open(args) as spool:
        if args.idempotency_key is not None:
            key = args.idempotency_key
            ids = [spool.submit(items[0], idempotency_key=key, smime=smime, dkim=dkim)]
        else:
            ids = spool.submit_many(items, smime=smime, dkim=dkim)
    if args.json:
        print_json(ids[0] if len(ids) == 1 else ids)
    else:
        for mail_id in ids:
            print(mail_id)
    return EXIT_OK


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--workers: not a whole number: {value!r}") from None
    if not 1 <= n <= 256:
        raise UsageError(f"--workers: must be between 1 and 256, not {n}")
    return n


def _run(args: argparse.Namespace) -> int:
    workers = _workers(args.workers)
    settings = resolve(args)
    transporter = settings.transporter(keep_alive=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # finish the messages in hand; everything else stays queued for the next run
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    with _open(args) as spool:
        progress = Progress(None, force=args.progress)

        def report(stats: RunStats) -> None:
            progress.update(stats.sent + stats.failed, stats.failed)

        try:
            stats = spool.run(
                transporter, workers=workers, until_empty=args.until_empty,
                retry=RetryPolicy(), stop=stop, progress=report,
            )  # fmt: skip
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            with contextlib.suppress(Exception):
                transporter.close()
        progress.update(stats.sent + stats.failed, stats.failed, final=True)
        if args.json:
            counts = {s.value: n for s, n in spool.counts().items()}
            print_json(
                {
                    "sent": stats.sent, "failed": stats.failed, "deferred": stats.deferred,
                    "attempts": stats.attempts, "elapsed": round(stats.elapsed, 3),
                    "queue": counts, "auth_error": stats.auth_error,
                }
            )  # fmt: skip
        elif not args.quiet:
            print(spool_cli._counts_line(spool, stats), flush=True)
    if stats.auth_error:
        print(f"postillon spool run: {stats.auth_error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if stats.failed else EXIT_OK


def _retry_or_cancel(args: argparse.Namespace) -> int:
    with _open(args) as spool:
        if args.action == "retry":
            changed = spool.retry(args.mail_id)
            print(f"{args.mail_id}: " + ("due now" if changed else "nothing to retry (sent)"))
        else:
            changed = spool.cancel(args.mail_id)
            print(f"{args.mail_id}: " + ("cancelled" if changed else "not pending: unchanged"))
    return EXIT_OK if changed else EXIT_FAILED


def parse_age(value: str) -> float:
    """``90``, ``30m``, ``12h``, ``7d`` to seconds."""
    text = value.strip().lower()
    unit = 1
    if text and text[-1] in _UNITS:
        unit = _UNITS[text[-1]]
        text = text[:-1]
    try:
        seconds = float(text) * unit
    except ValueError:
        raise UsageError(f"--older-than: not an age (90, 30m, 12h, 7d): {value!r}") from None
    if seconds < 0:
        raise UsageError(f"--older-than: must not be negative: {value!r}")
    return seconds


def _purge(args: argparse.Namespace) -> int:
    age = parse_age(args.older_than)
    with _open(args) as spool:
        n = spool.purge(args.state, older_than=age)
    print(f"purged {n} {args.state} entr{'y' if n == 1 else 'ies'}")
    return EXIT_OK
