"""Real mail servers on loopback for the interoperability tests: Postfix and Exim.

Each server is a private instance: a fresh directory under the system temp dir holds its
configuration (filled from ``servers/*/*.in``), its queue or spool, its logs and the
Maildirs it delivers to. Nothing of the machine's own mail setup is read or touched.

* :func:`start_postfix`: Postfix ``master`` run directly (``master -c DIR -d``: the
  ``postfix`` command refuses a config directory that the system ``main.cf`` does not list
  in ``alternate_config_directories``), with a private Dovecot as its SASL server.
* :func:`start_exim`: ``exim4 -C FILE -bdf -oX PORT``; with ``-C`` Exim gives up root and
  runs as its own user, so its directories belong to that user.

Both deliver ``LOCAL@example.test`` for each of :data:`LOCAL_PARTS` into
``ROOT/mail/LOCAL/`` (a Maildir) and refuse any other recipient at RCPT. Both need root
(Postfix's master starts as root; Exim's binary looks up its user), which CI has.

Example::

    server = start_postfix(cert_pem, key_pem)
    ... send to bob@example.test on server.port ...
    [raw] = server.wait_for("bob", b"<token@example.test>")
    server.stop()
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SERVERS_DIR = Path(__file__).resolve().parent / "servers"

#: The mailboxes every server delivers (``LOCAL@example.test``); others are refused.
LOCAL_PARTS = ("bob", "carol", "dave", "sender", "jürgen")
DOMAIN = "example.test"
#: The SASL account of every server.
USER = "ann"
PASSWORD = "s3cret-Interop-pw"
#: message_size_limit of every server, in bytes (Exim's "200K" is 204800 bytes).
SIZE_LIMIT = 200 * 1024

#: Where .ci/interop-setup unpacks Exim (its package conflicts with Postfix's).
EXIM_CANDIDATES = (
    os.path.join(
        os.environ.get("POSTILLON_INTEROP_ROOT", "/opt/postillon-interop"),
        "exim4/usr/sbin/exim4",
    ),
    "/usr/sbin/exim4",
)
EXIM_USER = "Debian-exim"
POSTFIX_MASTER_CANDIDATES = ("/usr/lib/postfix/sbin/master", "/usr/libexec/postfix/master")
DOVECOT_CANDIDATES = ("/usr/sbin/dovecot",)


class ServerMissing(Exception):
    """A server cannot run on this machine (not installed, not root): skip or fail."""


class ServerFailed(Exception):
    """A server was there but did not start: a broken setup, never skipped."""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _first_executable(candidates: tuple[str, ...]) -> str | None:
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _user_ids(name: str) -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _fill(template: Path, values: dict[str, str]) -> str:
    text = template.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError(f"{template.name}: unfilled fields {sorted(set(left))}")
    return text


def _make_root(prefix: str) -> Path:
    # Not pytest's tmp_path: its parents are root-only (0700), and the servers' own users
    # (postfix, nobody, Debian-exim) must reach their directories.
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    root.chmod(0o755)
    return root


def _mkdir(path: Path, mode: int, uid: int = -1, gid: int = -1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


@dataclass
class MtaServer:
    """A running private mail server: where it listens, its mailboxes, its logs."""

    name: str
    port: int
    root: Path
    log_files: tuple[Path, ...]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD
    size_limit: int = SIZE_LIMIT
    domain: str = DOMAIN
    #: the server's message id in its final reply text (group 1)
    id_in_reply: str = ""
    #: the log line naming the SASL mechanism of the session of message ``{id}``
    #: (group "mech"); servers differ in how they say it
    auth_log_pattern: str = ""
    #: the log's mechanism names -> SASL names (Exim logs its authenticator's name)
    mech_names: dict[str, str] = field(default_factory=dict)

    # -- mailboxes

    def address(self, local: str) -> str:
        """``local@example.test``, checked to be one of the server's mailboxes."""
        if local not in LOCAL_PARTS:
            raise ValueError(f"no mailbox {local!r} on the test servers: {LOCAL_PARTS}")
        return f"{local}@{self.domain}"

    def messages(self, local: str) -> list[bytes]:
        """Every message delivered to ``local`` so far (Maildir new/ and cur/), by time."""
        box = self.root / "mail" / local
        files = [p for sub in ("new", "cur") for p in (box / sub).glob("*") if p.is_file()]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def wait_for(
        self, local: str, token: bytes, count: int = 1, timeout: float = 15.0
    ) -> list[bytes]:
        """The messages of ``local`` containing ``token``, once ``count`` have arrived.

        Raises AssertionError (with the server's log tail) when they do not arrive in time.
        """
        found: list[bytes] = []

        def enough() -> bool:
            nonlocal found
            found = [m for m in self.messages(local) if token in m]
            return len(found) >= count

        if not _wait(enough, timeout, 0.1):
            raise AssertionError(
                f"{self.name}: {len(found)} of {count} message(s) with {token!r} reached "
                f"{local!r} in {timeout}s\n--- log tail ---\n{self.log_tail()}"
            )
        return found

    def assert_none(self, local: str, token: bytes, settle: float = 1.5) -> None:
        """Check that no message with ``token`` reaches ``local`` within ``settle`` s."""
        if _wait(lambda: any(token in m for m in self.messages(local)), settle, 0.1):
            raise AssertionError(f"{self.name}: a message with {token!r} reached {local!r}")

    # -- logs

    def log_text(self) -> str:
        """Every log file of the server, concatenated."""
        parts = []
        for path in self.log_files:
            try:
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
            except FileNotFoundError:
                continue
        return "\n".join(parts)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the logs (for failure messages)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first match of ``pattern`` in the logs, waiting up to ``timeout`` s."""
        rx = re.compile(pattern)
        match: re.Match[str] | None = None

        def seen() -> bool:
            nonlocal match
            match = rx.search(self.log_text())
            return match is not None

        if not _wait(seen, timeout, 0.1):
            raise AssertionError(
                f"{self.name}: no log line matching {pattern!r} in {timeout}s\n"
                f"--- log tail ---\n{self.log_tail()}"
            )
        assert match is not None
        return match

    def message_id_of(self, reply_text: str) -> str:
        """The server's queue id of a message, from its final reply (``queued as X``)."""
        m = re.search(self.id_in_reply, reply_text)
        if m is None:
            raise AssertionError(f"{self.name}: no queue id in the reply {reply_text!r}")
        return m.group(1)

    def auth_mechanism(self, reply_text: str) -> str:
        """The SASL mechanism the server logged for the message of that final reply."""
        qid = re.escape(self.message_id_of(reply_text))
        mech = self.wait_log(self.auth_log_pattern.replace("{id}", qid)).group("mech")
        return self.mech_names.get(mech, mech)

    # -- lifecycle

    def stop(self) -> None:
        """Stop every process of the server, then remove its directory."""
        for proc in reversed(self.processes):
            _terminate(proc)
        self.processes.clear()
        if os.environ.get("POSTILLON_INTEROP_KEEP") != "1":
            shutil.rmtree(self.root, ignore_errors=True)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process (a session leader we started), then its whole group if needed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    # Children left behind (a delivery agent, Exim's delivery process) share the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, ended as one at stop()
        )


def _write_tls(root: Path, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    tls = _mkdir(root / "tls", 0o755)
    cert = tls / "cert.pem"
    key = tls / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    cert.chmod(0o644)
    # A throwaway test key; the server's unprivileged user must read it (Exim).
    key.chmod(0o644)
    return cert, key


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ServerMissing("the private mail servers start as root (run the tests as root)")


# --- Postfix + Dovecot -------------------------------------------------------------------

_POSTFIX_QUEUE_DIRS = (
    "active",
    "bounce",
    "corrupt",
    "defer",
    "deferred",
    "flush",
    "hold",
    "incoming",
    "private",
    "saved",
    "trace",
)


def postfix_programs() -> tuple[str, str]:
    """Postfix's ``master`` and ``dovecot``, or raise :class:`ServerMissing`."""
    _require_root()
    master = _first_executable(POSTFIX_MASTER_CANDIDATES)
    if master is None:
        raise ServerMissing("Postfix is not installed (bash .ci/interop-setup)")
    dovecot = _first_executable(DOVECOT_CANDIDATES)
    if dovecot is None:
        raise ServerMissing("Dovecot is not installed (bash .ci/interop-setup)")
    for user in ("postfix", "dovecot", "dovenull"):
        if _user_ids(user) is None:
            raise ServerMissing(f"system user {user!r} is missing (bash .ci/interop-setup)")
    return master, dovecot


def start_postfix(cert_pem: bytes, key_pem: bytes, timeout: float = 15.0) -> MtaServer:
    """Start a private Postfix (with Dovecot SASL) on a free loopback port."""
    master, dovecot = postfix_programs()
    postfix_ids = _user_ids("postfix")
    mail_ids = _user_ids("nobody")
    postdrop = _group_id("postdrop")
    assert postfix_ids is not None
    if mail_ids is None:
        raise ServerMissing("system user 'nobody' is missing")
    root = _make_root("postillon-postfix-")
    port = free_port()
    auth_socket = root / "dovecot" / "auth"
    etc = _mkdir(root / "etc", 0o755)
    logs = _mkdir(root / "log", 0o755)
    cert, key = _write_tls(root, cert_pem, key_pem)
    values = {
        "ROOT": str(root),
        "LISTEN": f"127.0.0.1:{port}",
        "SIZE_LIMIT": str(SIZE_LIMIT),
        "MAIL_UID": str(mail_ids[0]),
        "MAIL_GID": str(mail_ids[1]),
        "CERT": str(cert),
        "KEY": str(key),
        "AUTH_SOCKET": str(auth_socket),
    }
    src = SERVERS_DIR / "postfix"
    (etc / "main.cf").write_text(_fill(src / "main.cf.in", values), encoding="utf-8")
    (etc / "master.cf").write_text(_fill(src / "master.cf.in", values), encoding="utf-8")
    (etc / "dovecot.conf").write_text(_fill(src / "dovecot.conf.in", values), encoding="utf-8")
    (etc / "vmailbox").write_text(
        "".join(f"{lp}@{DOMAIN} {lp}/\n" for lp in LOCAL_PARTS), encoding="utf-8"
    )
    users = etc / "dovecot-users"
    users.write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n", encoding="utf-8")
    dovecot_ids = _user_ids("dovecot")
    assert dovecot_ids is not None
    os.chown(users, *dovecot_ids)  # read by Dovecot's auth process, which runs as "dovecot"
    users.chmod(0o600)
    # The queue tree that "postfix start" would create (post-install create-missing).
    queue = _mkdir(root / "queue", 0o755)
    for name in _POSTFIX_QUEUE_DIRS:
        _mkdir(queue / name, 0o700, postfix_ids[0], -1)
    _mkdir(queue / "maildrop", 0o730, postfix_ids[0], postdrop)
    _mkdir(queue / "public", 0o710, postfix_ids[0], postdrop)
    _mkdir(queue / "pid", 0o755)
    _mkdir(root / "data", 0o700, postfix_ids[0], -1)
    mail = _mkdir(root / "mail", 0o755, *mail_ids)
    for lp in LOCAL_PARTS:
        # Maildirs made in advance: virtual(8) does not create the parents as "nobody".
        for sub in ("", "new", "cur", "tmp"):
            _mkdir(mail / lp / sub, 0o755, *mail_ids)
    _mkdir(root / "dovecot" / "run", 0o755)
    _mkdir(root / "dovecot" / "state", 0o755)

    postfix_log = logs / "postfix.log"
    server = MtaServer(
        name="postfix",
        port=port,
        root=root,
        log_files=(postfix_log, logs / "dovecot.log", logs / "dovecot.out"),
        id_in_reply=r"queued as ([0-9A-F]+)",
        auth_log_pattern=r"{id}: client=\S+, sasl_method=(?P<mech>[A-Z0-9-]+),",
    )
    try:
        server.processes.append(
            _spawn([dovecot, "-F", "-c", str(etc / "dovecot.conf")], logs / "dovecot.out")
        )
        if not _wait(auth_socket.exists, timeout):
            raise ServerFailed(f"Dovecot's auth socket did not appear\n{server.log_tail()}")
        server.processes.append(_spawn([master, "-c", str(etc), "-d"], postfix_log))
        if not _wait(lambda: _listening(port), timeout):
            raise ServerFailed(f"Postfix did not listen on {port}\n{server.log_tail()}")
    except BaseException:
        server.stop()
        raise
    return server


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ServerMissing(f"system group {name!r} is missing (Postfix's package)") from None


# --- Exim --------------------------------------------------------------------------------


def exim_program() -> str:
    """The Exim binary, or raise :class:`ServerMissing`."""
    _require_root()
    override = os.environ.get("POSTILLON_EXIM")
    exim = _first_executable((override,) if override else EXIM_CANDIDATES)
    if exim is None:
        where = f"POSTILLON_EXIM={override}" if override else " or ".join(EXIM_CANDIDATES)
        raise ServerMissing(f"no Exim binary at {where} (bash .ci/interop-setup)")
    if _user_ids(EXIM_USER) is None:
        raise ServerMissing(f"system user {EXIM_USER!r} is missing (bash .ci/interop-setup)")
    return exim


def start_exim(cert_pem: bytes, key_pem: bytes, timeout: float = 15.0) -> MtaServer:
    """Start a private Exim on a free loopback port."""
    exim = exim_program()
    ids = _user_ids(EXIM_USER)
    assert ids is not None
    root = _make_root("postillon-exim-")
    port = free_port()
    etc = _mkdir(root / "etc", 0o755)
    logs = _mkdir(root / "log", 0o755, *ids)
    _mkdir(root / "spool", 0o750, *ids)
    mail = _mkdir(root / "mail", 0o755, *ids)
    for lp in LOCAL_PARTS:
        _mkdir(mail / lp, 0o755, *ids)
    cert, key = _write_tls(root, cert_pem, key_pem)
    values = {
        "ROOT": str(root),
        "EXIM": exim,
        "PORT": str(port),
        "SIZE_LIMIT": str(SIZE_LIMIT),
        "CERT": str(cert),
        "KEY": str(key),
        "LOCAL_PARTS": " : ".join(LOCAL_PARTS),
        "USER": USER,
        "PASSWORD": PASSWORD,
    }
    conf = etc / "exim.conf"
    conf.write_text(_fill(SERVERS_DIR / "exim" / "exim.conf.in", values), encoding="utf-8")
    server = MtaServer(
        name="exim",
        port=port,
        root=root,
        log_files=(logs / "exim-main.log", logs / "exim-reject.log", logs / "exim.out"),
        id_in_reply=r"\bid=([0-9A-Za-z]{6}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2})",
        auth_log_pattern=r"{id} <= .* A=(?P<mech>[a-z0-9_]+)_server:",
        mech_names={"plain": "PLAIN", "login": "LOGIN", "cram_md5": "CRAM-MD5"},
    )
    try:
        # -bdf: the daemon in the foreground (ours to stop); -oX: the port.
        server.processes.append(
            _spawn([exim, "-C", str(conf), "-bdf", "-oX", str(port)], logs / "exim.out")
        )
        if not _wait(lambda: _listening(port), timeout):
            raise ServerFailed(f"Exim did not listen on {port}\n{server.log_tail()}")
    except BaseException:
        server.stop()
        raise
    return server
