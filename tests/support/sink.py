"""Postfix's ``smtp-sink`` as a test peer: a fast, strict SMTP server with fault switches.

:func:`start_sink` runs ``smtp-sink [switches] 127.0.0.1:PORT 256`` on a free loopback port
and waits until it accepts connections. With ``dump=True`` it adds ``-d DIR/%M.`` so each
mail transaction lands in its own file, which :meth:`SinkServer.messages` parses.

The switches the tests use (from smtp-sink's usage text and manual page):

=========== ===================================================================
``-q CMDS`` disconnect without a reply after one of CMDS (``MAIL,RCPT,DATA,.``)
``-Q CMDS`` send ``421`` and disconnect after one of CMDS
``-r CMDS`` reject CMDS with a soft error (``450 4.3.0``); implies ``-p``
``-f CMDS`` reject CMDS with a hard error (``500 5.3.0``); implies ``-p``
``-w S``    wait S seconds before answering DATA
``-W C:S``  wait S seconds before answering command C
``-A S``    S seconds after the 354, abort with 550 and stop reading
``-p``      do not announce PIPELINING
``-e``      do not announce ESMTP (EHLO is refused: HELO fallback)
``-8``      do not announce 8BITMIME
``-E``/``-N`` no ENHANCEDSTATUSCODES / no DSN; ``-a`` no AUTH; ``-L`` LMTP
``-b``/``-B`` the soft / hard reject reply text
=========== ===================================================================

``.`` in a command list means the end of data. smtp-sink running as root needs ``-u USER``;
it is added (``nobody``) when the tests run as root.

Example::

    sink = smtp_sink("-r", "RCPT")            # every RCPT gets 450
    sink = smtp_sink(dump=True)
    ... send ...
    [msg] = sink.wait_for(1)
    assert msg.rcpt_args == ["<b@example.org>"]
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for programs that need a number up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _is_listening(host: str, port: int) -> bool:
    """True when something listens on host:port, without connecting.

    A probe connection would count as a session for smtp-sink's ``-n``, so Linux's socket
    table is read instead; elsewhere, fall back to connecting.
    """
    try:
        table = Path("/proc/net/tcp").read_text()
    except OSError:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False
    packed = socket.inet_aton(host)
    want = f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    for line in table.splitlines()[1:]:
        cols = line.split()
        # columns: sl local_address rem_address st ...; st 0A is LISTEN
        if len(cols) > 3 and cols[1] == want and cols[3] == "0A":
            return True
    return False


@dataclass
class SinkMessage:
    """One mail transaction as smtp-sink dumped it (``-d``)."""

    helo: str | None
    mail_args: str
    rcpt_args: list[str]
    #: header and body as received (after smtp-sink undid the dot-stuffing), lines ending
    #: in LF as smtp-sink writes them; the empty line smtp-sink appends is removed
    content: bytes
    path: Path
    headers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def mail_from(self) -> str:
        """The reverse-path without its angle brackets."""
        return self.mail_args.split(" ", 1)[0].strip("<>")

    @property
    def rcpt_tos(self) -> list[str]:
        """The forward-paths without angle brackets."""
        return [arg.split(" ", 1)[0].strip("<>") for arg in self.rcpt_args]


def parse_dump(path: Path) -> SinkMessage:
    """Parse one smtp-sink dump file (format: its manual page, "DUMP FILE FORMAT")."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    fields: dict[str, list[str]] = {}
    i = 0
    # the generated records end with a three-line "Received:" header
    while i < len(lines):
        line = lines[i].decode("utf-8", "replace")
        name, _, value = line.partition(": ")
        fields.setdefault(name, []).append(value)
        i += 1
        if name == "Received":
            i += 2
            break
    body = b"\n".join(lines[i:])
    if body.endswith(b"\n\n"):
        body = body[:-1]
    return SinkMessage(
        helo=fields["X-Helo-Args"][0] if "X-Helo-Args" in fields else None,
        mail_args=(fields.get("X-Mail-Args") or [""])[0],
        rcpt_args=fields.get("X-Rcpt-Args", []),
        content=body,
        path=path,
        headers=fields,
    )


class SinkServer:
    """A running smtp-sink process: ``host``, ``port``, ``args`` (the full command line)."""

    def __init__(self, binary: str, switches: tuple[str, ...], dump: bool) -> None:
        self.binary = binary
        self.switches = switches
        self.host = "127.0.0.1"
        self.port = 0
        self.args: list[str] = []
        self.dump_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dump = dump
        self._stderr: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"<SinkServer {self.host}:{self.port} {' '.join(self.switches)}>"

    def start(self, attempts: int = 5) -> SinkServer:
        """Start smtp-sink and wait until it accepts; retries when the port was taken."""
        extra: list[str] = []
        if os.geteuid() == 0:
            extra += ["-u", "nobody"]
        if self._dump:
            # smtp-sink writes as the unprivileged user: a world-writable private dir
            self.dump_dir = Path(tempfile.mkdtemp(prefix="postillon-sink-"))
            self.dump_dir.chmod(0o1777)
            extra += ["-d", f"{self.dump_dir}/%M."]
        last_error = ""
        for _ in range(attempts):
            self.port = free_port(self.host)
            self.args = [
                self.binary,
                *extra,
                *self.switches,
                f"{self.host}:{self.port}",
                "256",
            ]
            if self._stderr is not None:
                self._stderr.close()
            # a file, not a pipe: a verbose sink (-v) must never block on a full pipe
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
            self._proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
            )
            if self._wait_listening(5.0):
                return self
            last_error = self._reap()
        raise RuntimeError(f"smtp-sink did not start: {self.args}: {last_error}")

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            if _is_listening(self.host, self.port):
                return True
            time.sleep(0.02)
        return False

    def _reap(self) -> str:
        if self._proc is None:
            return ""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(5)
        return self._stderr_text()

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()

    @property
    def alive(self) -> bool:
        """True while the process runs (``-M``/``-n`` make it exit by itself)."""
        return self._proc is not None and self._proc.poll() is None

    def dump_files(self) -> list[Path]:
        """The dump files written so far (``dump=True`` only), oldest first."""
        if self.dump_dir is None:
            raise ValueError("dump: start the sink with dump=True to capture messages")
        files = [p for p in self.dump_dir.rglob("*") if p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def messages(self) -> list[SinkMessage]:
        """Every dumped message so far."""
        return [parse_dump(p) for p in self.dump_files()]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[SinkMessage]:
        """Wait until ``n`` messages were dumped; the messages, or AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            files = self.dump_files()
            if len(files) >= n and all(p.read_bytes().endswith(b"\n\n") for p in files):
                return [parse_dump(p) for p in files]
            if time.monotonic() > deadline:
                raise AssertionError(f"{self!r}: expected {n} message(s), got {len(files)}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the process and remove the dump directory (idempotent)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)
