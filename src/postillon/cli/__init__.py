"""The ``postillon`` command line.

One module per command group, each registering its commands on the main parser
(``add_parsers(subparsers)``) with a ``handler`` returning the exit status:
0 success, 1 the server refused or could not be reached, 2 bad usage.

Bad input (an invalid address, a missing file, an unknown account, a port out of range,
an unknown option) prints ONE line naming what is wrong on stderr and exits 2; there is
no traceback unless ``--debug`` is given.

Example::

    postillon send --account work --to bob@example.com --subject Hi --text body.txt
    postillon doctor smtp.example.com:587
    postillon sink --dir ./captured
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from ..errors import SMTPError
from ._common import EXIT_FAILED, EXIT_USAGE

__all__ = ["build_parser", "main"]

MAIN_EPILOG = """\
commands:
  send      send a message built from flags, or ready .eml files
  check     check the connection and the login (4D checkConnection)
  doctor    probe a server: implicit TLS or STARTTLS, certificate, AUTH, what to configure
  spool     the durable outgoing queue: submit, run, status, list, retry, cancel, purge
  sink      a local capture server for development (stores .eml files)
  demo      send real messages through a local capture server, end to end

examples:
  postillon doctor smtp.example.com
  postillon send --account work --to bob@example.com --subject Hi --text body.txt
  postillon sink --dir ./captured &
  postillon send --host 127.0.0.1 --port 2525 --cafile captured/sink-cert.pem \\
      --from me@example.com --to you@example.com --subject test --text -

exit status: 0 success, 1 the server refused or could not be reached, 2 bad usage.
'postillon COMMAND --help' tells more.
"""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The main parser with every command registered."""
    from . import doctor, send, sink, spool

    parser = Parser(
        prog="postillon",
        description="Send email over SMTP, without ever losing a message.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="log the SMTP dialogue on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    send.add_parsers(sub)
    doctor.add_parsers(sub)
    spool.add_parsers(sub)
    sink.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``postillon`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    prog = f"postillon {args.command}"
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # UsageError, InvalidMessage and every settings error
        if debug:
            raise
        print(f"{prog}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except SMTPError as exc:
        if debug:
            raise
        print(f"{prog}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        if debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prog}:{where} {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
