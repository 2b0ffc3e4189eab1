"""``postillon demo``: real messages through STARTTLS and AUTH to a local capture server.

It starts a :class:`~postillon.sink.CaptureServer` on a free loopback port (STARTTLS with
its throwaway certificate, AUTH with a password made for the run), then sends with a
:class:`~postillon.Transporter` whose ``ssl_context`` trusts exactly that certificate:

1. a plain-text message;
2. an HTML message with an inline image (a PNG drawn in code, by ``cid``) and an attachment;
3. a Japanese message, subject and body in ISO-2022-JP;
4. a batch through the durable spool (``Transporter(asynchronous=True, spool=...)``),
   followed with ``email_status()`` until every message is SENT.

Each status is printed on one line; the .eml files stay in ``./demo-mail/`` (``--dir``).
The exit status is 0 only if everything was delivered.

Example::

    from postillon.demo import run_demo
    raise SystemExit(run_demo("demo-mail"))
"""

from __future__ import annotations

import secrets
import ssl
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, TextIO

from .message import Attachment, CharsetMode, Email
from .settings import Security
from .status import SendStatus, SpoolState
from .transporter import Transporter

__all__ = ["make_png", "run_demo"]

SENDER = "Postillon Demo <demo@postillon.localhost>"
RECIPIENT = "Ann Example <ann@example.com>"
#: how long the spool batch may take before the demo gives up on it
SPOOL_DEADLINE = 60.0


def make_png(width: int = 24, height: int = 24) -> bytes:
    """A small RGB gradient as a PNG file, drawn in code (no image library needed)."""
    if not (0 < width <= 256 and 0 < height <= 256):
        raise ValueError("width, height: 1 to 256 pixels")

    def chunk(kind: bytes, data: bytes) -> bytes:
        # PNG spec 5.3: length, type, data, CRC over type and data
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type 0 for each scanline
        for x in range(width):
            row += bytes((x * 255 // width, y * 255 // height, 200))
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def _line(label: str, status: SendStatus) -> str:
    head = "ok" if status.success else "FAILED"
    text = " ".join(status.status_text.split())
    if not status.success and status.errors:
        text = "; ".join(e.message for e in status.errors)
    enhanced = f" {status.enhanced_status}" if status.enhanced_status else ""
    return f"  {label:<28} {head} {status.status}{enhanced} {text}"


def _messages() -> list[tuple[str, Email]]:
    html = (
        "<html><body><h1>Hello from postillon</h1>"
        '<p>An image sent inline: <img src="cid:gradient" alt="gradient"></p>'
        "<p>And a small report, attached.</p></body></html>"
    )
    return [
        (
            "plain text",
            Email(
                from_=SENDER,
                to=RECIPIENT,
                subject="Plain text from postillon",
                text_body="Hello Ann,\n\nthis message went through STARTTLS and AUTH.\n",
            ),
        ),
        (
            "HTML, inline image, file",
            Email(
                from_=SENDER,
                to=RECIPIENT,
                subject="HTML with an inline image and an attachment",
                text_body="Hello Ann (the HTML part has an image).",
                html_body=html,
                attachments=[
                    Attachment(make_png(), name="gradient.png", cid="gradient"),
                    Attachment(b"month,sent\nJanuary,42\n", name="report.csv"),
                ],
            ),
        ),
    ]


def _japanese() -> Email:
    return Email(
        from_=SENDER,
        to="山田 花子 <hanako@example.jp>",
        subject="日本語のテストメール",
        text_body="こんにちは。\nこれは ISO-2022-JP で送られたメールです。\n",
    )


def run_demo(
    directory: str | Path = "demo-mail",
    out: TextIO | None = None,
    *,
    bulk: int = 20,
    use_spool: bool = True,
) -> int:
    """Run the demo; return 0 when every message was delivered, else 1 (2: sink missing)."""
    from .sink import CaptureServer, SinkUnavailable

    out = out or sys.stdout
    if not isinstance(bulk, int) or not 0 <= bulk <= 10_000:
        raise ValueError(f"bulk: 0 to 10000 messages, not {bulk!r}")
    user, password = "demo", secrets.token_urlsafe(16)
    server = CaptureServer(directory, "127.0.0.1", 0, tls=True, auth=(user, password))
    try:
        server.start()
    except SinkUnavailable as exc:
        print(f"postillon demo: {exc}", file=sys.stderr)
        return 2
    ok = True
    expected = 0
    try:
        assert server.cert_pem is not None
        # trust exactly the capture server's throwaway certificate, host name checked
        ctx = ssl.create_default_context(cadata=server.cert_pem.decode("ascii"))
        settings: dict[str, Any] = {
            "security": Security.STARTTLS,
            "user": user,
            "password": password,
            "ssl_context": ctx,
        }
        print(
            f"capture server on 127.0.0.1:{server.port} (STARTTLS, AUTH as {user!r})",
            file=out,
        )
        with Transporter("127.0.0.1", server.port, **settings) as t:
            for label, mail in _messages():
                status = t.send(mail)
                expected += 1
                ok &= status.success
                print(_line(label, status), file=out)
        with Transporter(
            "127.0.0.1",
            server.port,
            header_charset=CharsetMode.ISO_2022_JP,
            body_charset=CharsetMode.ISO_2022_JP,
            **settings,
        ) as t:
            status = t.send(_japanese())
            expected += 1
            ok &= status.success
            print(_line("Japanese (ISO-2022-JP)", status), file=out)
        if bulk and use_spool:
            sent, total = _spool_batch(server.port, settings, bulk, out)
            expected += sent
            ok &= sent == total
        try:
            server.wait_for(expected, timeout=5)
        except TimeoutError:
            ok = False
    finally:
        server.stop()
    stored = len(server.messages)
    print(f"{stored} message(s) stored in {Path(directory).resolve()}/", file=out)
    if server.cert_path is not None:
        print(f"its certificate: {server.cert_path} (postillon send --cafile ...)", file=out)
    print("demo: all delivered" if ok else "demo: NOT everything was delivered", file=out)
    return 0 if ok else 1


def _spool_batch(port: int, settings: dict[str, Any], bulk: int, out: TextIO) -> tuple[int, int]:
    """Send ``bulk`` messages through the spool; return (delivered, bulk)."""
    try:
        import postillon.spool  # noqa: F401
    except ImportError:  # pragma: no cover - the spool ships with postillon
        print("  spool batch: skipped (the spool is not available)", file=out)
        return 0, 0
    with tempfile.TemporaryDirectory(prefix="postillon-demo-") as tmp:
        spool_path = Path(tmp) / "demo-spool.db"
        t = Transporter("127.0.0.1", port, asynchronous=True, spool=str(spool_path), **settings)
        try:
            ids = []
            for n in range(1, bulk + 1):
                mail = Email(
                    from_=SENDER,
                    to=RECIPIENT,
                    subject=f"Spooled message {n} of {bulk}",
                    text_body=f"Message {n}, queued durably, then delivered by a worker.\n",
                )
                queued = t.send(mail)
                assert queued.mail_id is not None
                ids.append(queued.mail_id)
            print(f"  spool: {bulk} messages queued in {spool_path.name}", file=out)
            deadline = time.monotonic() + SPOOL_DEADLINE
            states: dict[str, SpoolState] = {}
            while time.monotonic() < deadline:
                states = {i: t.email_status(i) for i in ids}
                if all(s is not SpoolState.PENDING for s in states.values()):
                    break
                time.sleep(0.05)
            spool = t.spool
            assert spool is not None
            delivered = 0
            for n, mail_id in enumerate(ids, 1):
                entry = spool.status(mail_id)
                last = entry.last_status
                if entry.state is SpoolState.SENT:
                    delivered += 1
                label = f"spool {n:>2}/{bulk} ({entry.state.value})"
                if last is not None:
                    print(_line(label, last), file=out)
                else:
                    print(
                        f"  {label:<28} FAILED 0 {entry.error or 'not attempted in time'}", file=out
                    )
            return delivered, bulk
        finally:
            t.close()
            if t.spool is not None:
                t.spool.close()
