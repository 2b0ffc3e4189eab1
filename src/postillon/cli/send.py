"""``postillon send`` and ``postillon check``.

Example::

    postillon send --account work --to bob@example.com --subject "Report" \\
        --text body.txt --attach report.pdf
    postillon send --host 127.0.0.1 --port 2525 --eml a.eml --eml b.eml --json
    postillon check --account work
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import os
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ..message import Attachment, Email, RawMessage
from ..status import SendStatus
from ._common import EXIT_FAILED, EXIT_OK, Progress, print_json, status_line
from ._settings import (
    SETTINGS_EPILOG,
    SIGNING_EPILOG,
    UsageError,
    add_server_arguments,
    add_signing_arguments,
    resolve,
    resolve_signing,
)

__all__ = ["add_message_arguments", "add_parsers", "build_messages"]

#: messages handed to one send_many() call: pipelined over one connection
BATCH = 100
MAX_COUNT = 1_000_000

SEND_EPILOG = (
    """\
examples:
  postillon send --host smtp.example.com --user ann --from ann@example.com \\
      --to bob@example.com,carol@example.com --subject "Minutes" --text minutes.txt
  echo "Hello" | postillon send --account work --to bob@example.com --text -
  postillon send --account work --to bob@example.com --html page.html --attach a.pdf
  postillon send --host 127.0.0.1 --port 2525 --security none --eml ready.eml --json
  postillon send --account test --to sink@example.com --count 1000 --progress
  postillon send --account work --to bob@example.com --text report.txt \\
      --dkim-key dkim.pem --dkim-domain example.com --dkim-selector mail2025
  POSTILLON_SMIME_PASSWORD=... postillon send --account work --to bob@example.com \\
      --text signed.txt --smime-cert ann.p12

exit status: 0 every message accepted for every recipient, 1 the server refused
(or could not be reached), 2 bad usage (invalid address, missing file, unknown account,
a key or certificate that cannot be loaded).

"""
    + SETTINGS_EPILOG
    + SIGNING_EPILOG
)

CHECK_EPILOG = (
    """\
examples:
  postillon check --account work
  POSTILLON_PASSWORD=... postillon check --host smtp.example.com --user ann --json

connects, upgrades to TLS, authenticates and sends NOOP, as 4D's checkConnection().
exit status: 0 the server accepted us, 1 it refused or could not be reached, 2 bad usage.

"""
    + SETTINGS_EPILOG
)


def add_parsers(sub: Any) -> None:
    """Register ``send`` and ``check`` on the main parser's subparsers."""
    send = sub.add_parser(
        "send",
        help="send a message (or many)",
        description="Send a message built from flags, or ready .eml files.",
        epilog=SEND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_message_arguments(send)
    o = send.add_argument_group("output")
    o.add_argument("--count", metavar="N", default="1", help="send N copies (bulk test)")
    o.add_argument("--json", action="store_true", help="print the status object(s) as JSON")
    o.add_argument("--progress", action="store_true", help="progress on stderr even if piped")
    add_server_arguments(send)
    add_signing_arguments(send)
    send.set_defaults(handler=run_send)

    check = sub.add_parser(
        "check",
        help="check the connection and the login",
        description="Check that the server can be reached and accepts the login.",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--json", action="store_true", help="print the status object as JSON")
    add_server_arguments(check)
    check.set_defaults(handler=run_check)


def add_message_arguments(parser: argparse.ArgumentParser) -> None:
    """The message flags shared by ``send`` and ``spool submit``."""
    m = parser.add_argument_group("message")
    m.add_argument("--from", dest="from_", metavar="ADDR", help="the sender (or the account's)")
    m.add_argument(
        "--to", action="append", default=[], metavar="ADDR", help="recipient (repeat, or a,b)"
    )
    m.add_argument("--cc", action="append", default=[], metavar="ADDR", help="copy (repeat)")
    m.add_argument("--bcc", action="append", default=[], metavar="ADDR", help="blind copy")
    m.add_argument("--subject", default=None, help="the subject")
    m.add_argument("--text", metavar="FILE|-", help="plain-text body from a file, - for stdin")
    m.add_argument("--html", metavar="FILE|-", help="HTML body from a file, - for stdin")
    m.add_argument(
        "--attach", action="append", default=[], metavar="FILE", help="attach a file (repeat)"
    )
    m.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra header (repeat)",
    )
    m.add_argument(
        "--eml",
        action="append",
        default=[],
        metavar="FILE",
        help="send a ready message file as is (repeat); envelope from its headers, or "
        "from --from/--to",
    )


# --- message building -------------------------------------------------------------


def _read_text(spec: str, flag: str, stdin_used: list[bool]) -> str:
    if spec == "-":
        if stdin_used[0]:
            raise UsageError(f"{flag} -: stdin is already used by another option")
        stdin_used[0] = True
        data = sys.stdin.buffer.read()
        where = "stdin"
    else:
        path = Path(spec).expanduser()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{flag}: no such file: {spec}") from None
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {spec}: {exc.strerror}") from None
        where = spec
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{flag}: {where} is not UTF-8 text") from None


def _split(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def _headers(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header: expected 'Name: value', not {value!r}")
        out.append((name.strip(), rest.strip()))
    return out


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--count: not a whole number: {value!r}") from None
    if not 1 <= n <= MAX_COUNT:
        raise UsageError(f"--count: must be between 1 and {MAX_COUNT}, not {n}")
    return n


def _eml(path_text: str, from_: str | None, to: list[str]) -> object:
    path = Path(path_text).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--eml: no such file: {path_text}") from None
    except OSError as exc:
        raise UsageError(f"--eml: cannot read {path_text}: {exc.strerror}") from None
    if not data.strip():
        raise UsageError(f"--eml: {path_text} is empty")
    if from_ is None and not to:
        # the envelope comes from the headers (Bcc is removed on the way)
        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
        assert isinstance(msg, EmailMessage)
        return msg
    if from_ is None or not to:
        headers = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            data, headersonly=True
        )
        if from_ is None:
            sender = headers.get("From")
            if sender is None:
                raise UsageError(f"--eml: {path_text} has no From header; give --from")
            from_ = str(sender)
        if not to:
            to = [str(v) for k in ("To", "Cc", "Bcc") for v in headers.get_all(k, [])]
            if not to:
                raise UsageError(f"--eml: {path_text} has no recipient header; give --to")
    return RawMessage(data, from_, to)


def build_messages(args: argparse.Namespace, default_from: str | None) -> list[object]:
    """The messages to send, in order; raises UsageError / InvalidMessage on bad input."""
    to = _split(args.to)
    if args.eml:
        mixed = [
            flag
            for flag, value in (
                ("--text", args.text),
                ("--html", args.html),
                ("--attach", args.attach),
                ("--subject", args.subject),
                ("--cc", args.cc),
                ("--bcc", args.bcc),
                ("--header", args.header),
            )
            if value
        ]
        if mixed:
            raise UsageError(f"--eml sends a ready message: {mixed[0]} cannot be added to it")
        return [_eml(p, args.from_, to) for p in args.eml]
    sender = args.from_ or os.environ.get("POSTILLON_FROM") or default_from
    if not sender:
        raise UsageError("--from: missing (or set POSTILLON_FROM, or 'from' in the account)")
    if not to and not args.cc and not args.bcc:
        raise UsageError("--to: at least one recipient is needed (--to, --cc or --bcc)")
    stdin_used = [False]
    text = _read_text(args.text, "--text", stdin_used) if args.text else None
    html = _read_text(args.html, "--html", stdin_used) if args.html else None
    attachments = []
    for spec in args.attach:
        if not Path(spec).expanduser().is_file():
            raise UsageError(f"--attach: no such file: {spec}")
        attachments.append(Attachment(os.path.expanduser(spec)))
    mail = Email(
        from_=sender,
        to=to or None,
        cc=_split(args.cc) or None,
        bcc=_split(args.bcc) or None,
        subject=args.subject or "",
        text_body=text if text is not None or html is not None else "",
        html_body=html,
        attachments=attachments,
        headers=_headers(args.header),
    )
    return [mail]


# --- commands ------------------------------------------------------------------------


def _batches(mails: list[object], count: int) -> Iterator[list[object]]:
    batch: list[object] = []
    for _ in range(count):
        for mail in mails:
            batch.append(mail)
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def run_send(args: argparse.Namespace) -> int:
    """``postillon send``: exit 0 when every message was accepted for every recipient."""
    count = _count(args.count)
    settings = resolve(args)
    # keys and certificates are loaded before anything connects: a bad one is exit 2
    signing = resolve_signing(args)
    mails = build_messages(args, settings.default_from)
    total = len(mails) * count
    transporter = settings.transporter(keep_alive=True, **signing.transporter_kwargs())
    statuses: list[SendStatus] = []
    try:
        if total == 1:
            statuses.append(transporter.send(mails[0]))
        else:
            progress = Progress(total, force=args.progress)
            failed = 0
            for batch in _batches(mails, count):
                done = transporter.send_many(batch)
                statuses.extend(done)
                failed += sum(1 for s in done if not s.success)
                progress.update(len(statuses), failed)
            progress.update(len(statuses), failed, final=True)
    finally:
        transporter.close()
    _report(args, statuses, mails, count)
    return EXIT_OK if all(s.success for s in statuses) else EXIT_FAILED


def _report(
    args: argparse.Namespace, statuses: list[SendStatus], mails: list[object], count: int
) -> None:
    if args.json:
        print_json(statuses[0].to_dict() if len(statuses) == 1 else [s.to_dict() for s in statuses])
        return
    if len(statuses) == 1:
        status = statuses[0]
        print(status_line(status))
        if status.message_id:
            print(f"message-id: {status.message_id}")
        return
    if args.eml and count == 1:
        for path, status in zip(args.eml, statuses, strict=True):
            print(status_line(status, path))
    else:
        for index, status in enumerate(statuses, 1):
            if not status.success:
                print(status_line(status, f"message {index}"))
    failed = sum(1 for s in statuses if not s.success)
    print(f"{len(statuses) - failed} sent, {failed} failed")


def run_check(args: argparse.Namespace) -> int:
    """``postillon check``: 4D checkConnection() from the command line."""
    settings = resolve(args)
    transporter = settings.transporter()
    try:
        status = transporter.check_connection()
    finally:
        transporter.close()
    if args.json:
        print_json(status.to_dict())
    else:
        print(status_line(status, settings.describe()))
    return EXIT_OK if status.success else EXIT_FAILED
