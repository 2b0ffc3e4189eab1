"""``postillon sink`` (the local capture server) and ``postillon demo``: tools for development.

Example::

    postillon sink --dir ./captured --auth dev:secret
    postillon demo --dir ./demo-mail
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from types import FrameType
from typing import Any

from ._common import EXIT_OK, EXIT_USAGE, print_json
from ._settings import UsageError, parse_port

__all__ = ["add_parsers"]

SINK_EPILOG = """\
examples:
  postillon sink                                   (127.0.0.1:2525, STARTTLS, ./sink-mail)
  postillon sink --dir captured --auth dev:secret  (AUTH PLAIN/LOGIN required)
  postillon sink --port 0 --no-tls --count 1       (any free port, clear text, one message)

then, in another terminal:
  postillon send --host 127.0.0.1 --port 2525 --cafile sink-mail/sink-cert.pem \\
      --from me@example.com --to you@example.com --subject test --text -

STARTTLS uses a throwaway self-signed certificate made at start and written to
DIR/sink-cert.pem: give it to clients as --cafile (or ssl_context), never switch
verification off. One line per message: from, to, subject, size, file. Ctrl-C stops.
Needs: pip install 'postillon[sink]'
"""

DEMO_EPILOG = """\
example:
  postillon demo --dir demo-mail

sends, through STARTTLS and AUTH to a capture server on a free loopback port: a plain
text message, an HTML message with an inline image and an attachment, a Japanese
message in ISO-2022-JP, and a batch through the durable spool followed with
email_status() until SENT. Exit status 0 only if everything was delivered.
"""


def add_parsers(sub: Any) -> None:
    """Register ``sink`` and ``demo``."""
    raw = argparse.RawDescriptionHelpFormatter
    sink = sub.add_parser(
        "sink",
        help="a local capture server for development (stores .eml files)",
        description="A local SMTP server that stores what it receives as .eml files.",
        epilog=SINK_EPILOG,
        formatter_class=raw,
    )
    sink.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    sink.add_argument("--port", default="2525", help="port (0: any free port; default 2525)")
    sink.add_argument("--dir", default="sink-mail", help="where to store (default ./sink-mail)")
    sink.add_argument(
        "--tls-cert", default="auto", metavar="auto|PEM", help="certificate (auto: throwaway)"
    )
    sink.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert PEM")
    sink.add_argument("--no-tls", action="store_true", help="no STARTTLS")
    sink.add_argument("--auth", metavar="USER:PASS", help="require AUTH with this login")
    sink.add_argument("--count", metavar="N", help="exit after N messages")
    sink.add_argument("--json", action="store_true", help="one JSON object per message")
    sink.set_defaults(handler=run_sink)

    demo = sub.add_parser(
        "demo",
        help="send real messages through a local capture server, end to end",
        description="Send real messages through STARTTLS and AUTH to a local capture server.",
        epilog=DEMO_EPILOG,
        formatter_class=raw,
    )
    demo.add_argument("--dir", default="demo-mail", help="where the .eml files go (demo-mail)")
    demo.add_argument("--bulk", default="20", metavar="N", help="messages through the spool")
    demo.set_defaults(handler=run_demo)


def _whole(value: str, flag: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{flag}: not a whole number: {value!r}") from None
    if not low <= n <= high:
        raise UsageError(f"{flag}: must be between {low} and {high}, not {n}")
    return n


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_sink(args: argparse.Namespace) -> int:
    """``postillon sink``: serve until Ctrl-C (or ``--count`` messages)."""
    from ..sink import CaptureServer, SinkUnavailable

    port = 0 if args.port.strip() == "0" else parse_port(args.port)
    count = _whole(args.count, "--count", 1, 1_000_000) if args.count is not None else None
    cert_file = key_file = None
    if not args.no_tls and args.tls_cert != "auto":
        if not args.tls_key:
            raise UsageError("--tls-cert PEM needs --tls-key PEM (or --tls-cert auto)")
        cert_file, key_file = args.tls_cert, args.tls_key
    elif args.tls_key:
        raise UsageError("--tls-key goes with --tls-cert PEM")
    if args.auth is not None and ":" not in args.auth:
        raise UsageError("--auth: expected USER:PASS")
    if not _is_loopback(args.host):
        print(
            f"postillon sink: warning: listening on {args.host}, not loopback: "
            "other machines can send to it",
            file=sys.stderr,
        )
    done = threading.Event()
    lock = threading.Lock()
    seen = [0]

    def on_message(record: Any) -> None:
        with lock:
            seen[0] += 1
            if args.json:
                print_json(record.to_dict())
            else:
                print(record.line(), flush=True)
            if count is not None and seen[0] >= count:
                done.set()

    try:
        server = CaptureServer(
            args.dir, args.host, port, tls=not args.no_tls, auth=args.auth,
            cert_file=cert_file, key_file=key_file, on_message=on_message,
        )  # fmt: skip
        server.start()
    except SinkUnavailable as exc:
        print(f"postillon sink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}") from None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    features = ["STARTTLS" if server.tls else "no TLS"]
    if server.auth_user:
        features.append(f"AUTH as {server.auth_user!r}")
    print(
        f"postillon sink: listening on {server.host}:{server.port} ({', '.join(features)}), "
        f"storing in {server.dir}/",
        file=sys.stderr,
        flush=True,
    )
    if server.cert_path is not None:
        print(
            f"postillon sink: certificate {server.cert_path} (clients: --cafile)", file=sys.stderr
        )
    try:
        while not done.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        server.stop()
    print(f"postillon sink: stopped after {len(server.messages)} message(s)", file=sys.stderr)
    return EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    """``postillon demo``."""
    from ..demo import run_demo as demo

    return demo(args.dir, bulk=_whole(args.bulk, "--bulk", 0, 10_000))
