"""A local capture server for development: every message it receives becomes an .eml file.

It speaks real SMTP (aiosmtpd) with STARTTLS on a throwaway self-signed certificate made
on the spot (``cryptography``), optional AUTH PLAIN/LOGIN, SMTPUTF8 and 8BITMIME, and
listens on loopback unless told otherwise. Nothing it receives goes anywhere else.
It needs the "sink" extra: ``pip install 'postillon[sink]'``.

Example::

    from postillon.sink import CaptureServer

    with CaptureServer("captured", port=0, auth=("dev", "secret")) as server:
        ctx = ssl.create_default_context(cadata=server.cert_pem.decode())
        Transporter("127.0.0.1", server.port, security=Security.STARTTLS, user="dev",
                    password="secret", ssl_context=ctx).send(mail)
        print(server.messages[0].path)
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import email.parser
import email.policy
import hmac
import ipaddress
import logging
import os
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CaptureServer", "Captured", "SinkUnavailable", "make_self_signed"]

log = logging.getLogger("postillon.sink")

INSTALL_HINT = "pip install 'postillon[sink]'"
#: the certificate file written next to the messages (give it to clients as --cafile)
CERT_FILE = "sink-cert.pem"
#: largest message accepted (SIZE); larger ones are refused with 552
DATA_SIZE_LIMIT = 64 * 1024 * 1024


class SinkUnavailable(RuntimeError):
    """aiosmtpd or cryptography is not installed (the "sink" extra)."""


@dataclass(frozen=True)
class Captured:
    """One message the capture server stored."""

    path: Path
    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    size: int
    tls: bool
    auth_user: str | None
    received_at: _dt.datetime

    def line(self) -> str:
        """The one-line summary printed by ``postillon sink``."""
        return (
            f"from {self.mail_from or '<>'} to {', '.join(self.rcpt_tos)} "
            f"subject {self.subject!r} size {self.size} file {self.path}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "path": str(self.path),
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "subject": self.subject,
            "size": self.size,
            "tls": self.tls,
            "auth_user": self.auth_user,
            "received_at": self.received_at.isoformat(),
        }


def make_self_signed(host: str = "127.0.0.1", days: int = 30) -> tuple[bytes, bytes]:
    """A throwaway self-signed certificate and its key (PEM) for localhost and ``host``.

    Raises :class:`SinkUnavailable` without ``cryptography``.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise SinkUnavailable(f"the capture server needs cryptography: {INSTALL_HINT}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postillon sink (throwaway)")])
    alt: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        ip = ipaddress.ip_address(host)
        if x509.IPAddress(ip) not in alt:
            alt.append(x509.IPAddress(ip))
    except ValueError:
        if host and host != "localhost":
            alt.append(x509.DNSName(host))
    now = _dt.datetime.now(_dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # its own trust anchor: clients load it as the CA of a verifying context
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: a private directory, removed at once
    with tempfile.TemporaryDirectory(prefix="postillon-sink-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as fh:
            fh.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def _parse_auth(auth: object) -> tuple[str, str] | None:
    if auth is None:
        return None
    if isinstance(auth, str):
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise ValueError("auth: expected USER:PASS")
        return user, password
    if isinstance(auth, tuple | list) and len(auth) == 2 and all(isinstance(a, str) for a in auth):
        if not auth[0] or not auth[1]:
            raise ValueError("auth: user and password must not be empty")
        return str(auth[0]), str(auth[1])
    raise ValueError("auth: a (user, password) pair or 'USER:PASS'")


class _Handler:
    """aiosmtpd handler: store the message, then tell the server."""

    def __init__(self, server: CaptureServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content or b""
        try:
            record = self.server._store(
                content,
                envelope.mail_from or "",
                tuple(envelope.rcpt_tos),
                tls=session.ssl is not None,
                auth_user=_auth_user(session),
            )
        except OSError as exc:
            log.error("cannot store a message: %s", exc)
            return "451 4.3.0 cannot store the message now"
        return f"250 2.0.0 stored as {record.path.name}"


def _auth_user(session: Any) -> str | None:
    login = getattr(session, "auth_data", None)
    if isinstance(login, bytes):
        return login.decode("utf-8", "replace")
    return None


class CaptureServer:
    """A local SMTP server that stores every message as ``DIR/<timestamp>-<n>.eml``.

    ``tls=True``: STARTTLS with a self-signed certificate made at start (``cert_pem``),
    or the PEM files ``cert_file`` / ``key_file``. ``auth``: ``(user, password)`` or
    ``"USER:PASS"``: AUTH PLAIN/LOGIN then required (over TLS when TLS is on).
    ``port=0`` picks a free port (read ``port`` after ``start()``). ``on_message`` is
    called with each :class:`Captured`, in the server's thread.

    Example::

        server = CaptureServer("captured", "127.0.0.1", 0).start()
        ... send to 127.0.0.1:server.port ...
        server.wait_for(1)
        server.stop()
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],  # noqa: A002 - the documented name
        host: str = "127.0.0.1",
        port: int = 2525,
        tls: bool = True,
        auth: tuple[str, str] | str | None = None,
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
        hostname: str = "postillon-sink.localhost",
        on_message: Callable[[Captured], None] | None = None,
        data_size_limit: int = DATA_SIZE_LIMIT,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError("host: a host name or address")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"port: 0 (any free port) to 65535, not {port!r}")
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file: give both cert_file and key_file, or neither")
        if on_message is not None and not callable(on_message):
            raise ValueError("on_message: a callable taking a Captured")
        self.dir = Path(dir)
        self.host = host
        self.port = port
        self.tls = bool(tls)
        self._auth = _parse_auth(auth)
        self._cert_file = cert_file
        self._key_file = key_file
        self.hostname = hostname
        self.on_message = on_message
        self.data_size_limit = data_size_limit
        self.cert_pem: bytes | None = None
        self.cert_path: Path | None = None
        self.messages: list[Captured] = []
        self._cond = threading.Condition()
        self._counter = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._protocols: list[Any] = []

    def __repr__(self) -> str:
        auth = ", auth=on" if self._auth else ""
        return f"CaptureServer({str(self.dir)!r}, {self.host!r}, {self.port}, tls={self.tls}{auth})"

    def __enter__(self) -> CaptureServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def auth_user(self) -> str | None:
        """The login the server asks for (the password is never readable)."""
        return self._auth[0] if self._auth else None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> CaptureServer:
        """Make the directory and the certificate, bind, serve in a thread; return self.

        Raises :class:`SinkUnavailable` when aiosmtpd (or cryptography, for TLS) is missing,
        ``OSError`` when the address cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the capture server is already started")
        try:
            from aiosmtpd.smtp import SMTP
        except ImportError:
            raise SinkUnavailable(f"the capture server needs aiosmtpd: {INSTALL_HINT}") from None
        # aiosmtpd logs each command, a deprecation line of its own on every AUTH, and a
        # traceback whenever a client refuses the throwaway certificate; the capture
        # server reports what matters itself
        logging.getLogger("mail.log").setLevel(logging.CRITICAL)
        self.dir.mkdir(parents=True, exist_ok=True)
        tls_context = None
        if self.tls:
            if self._cert_file is not None and self._key_file is not None:
                self.cert_pem = Path(self._cert_file).read_bytes()
                tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                tls_context.load_cert_chain(self._cert_file, self._key_file)
                self.cert_path = Path(self._cert_file)
            else:
                self.cert_pem, key_pem = make_self_signed(self.host)
                tls_context = _server_context(self.cert_pem, key_pem)
                self.cert_path = self.dir / CERT_FILE
                self.cert_path.write_bytes(self.cert_pem)
        loop = asyncio.new_event_loop()
        self._loop = loop
        auth = self._auth

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> Any:
            from aiosmtpd.smtp import AuthResult, LoginPassword

            if auth is None or not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            ok = hmac.compare_digest(data.login, auth[0].encode()) and hmac.compare_digest(
                data.password, auth[1].encode()
            )
            return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)

        handler = _Handler(self)

        def factory() -> Any:
            with warnings.catch_warnings():
                # "AUTH without TLS" is the user's explicit choice with --no-tls
                warnings.simplefilter("ignore")
                proto = SMTP(
                    handler,
                    hostname=self.hostname,
                    ident="postillon sink",
                    data_size_limit=self.data_size_limit,
                    enable_SMTPUTF8=True,
                    decode_data=False,
                    tls_context=tls_context,
                    auth_required=auth is not None,
                    auth_require_tls=tls_context is not None,
                    authenticator=authenticator if auth is not None else None,
                    loop=loop,
                )
            self._protocols.append(proto)
            if len(self._protocols) > 256:
                self._protocols = [p for p in self._protocols if p.transport is not None]
            return proto

        async def serve() -> asyncio.base_events.Server:
            return await loop.create_server(factory, host=self.host, port=self.port)

        self._thread = threading.Thread(target=loop.run_forever, name="postillon-sink", daemon=True)
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
        except BaseException:
            self._shutdown_loop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("capture server on %s:%d, storing in %s", self.host, self.port, self.dir)
        return self

    def stop(self) -> None:
        """Close the listener and every connection; stop the thread (idempotent)."""
        loop, server = self._loop, self._server
        if loop is None:
            return
        if server is not None:

            async def close() -> None:
                server.close()
                for proto in self._protocols:
                    transport = getattr(proto, "transport", None)
                    if transport is not None:
                        transport.close()
                await server.wait_closed()
                # end the sessions still running, so that none is destroyed pending
                current = asyncio.current_task()
                tasks = [t for t in asyncio.all_tasks() if t is not current]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(close(), loop).result(5)
            except Exception as exc:  # the loop is going away anyway
                log.debug("closing the capture server: %s", exc)
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._server = None
        self._loop = None
        self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)
        if not loop.is_running():
            loop.close()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Captured]:
        """Wait until ``n`` messages were stored; return them (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.messages)} of {n} messages within {timeout}s")
                self._cond.wait(left)
            return list(self.messages)

    # -- storage --------------------------------------------------------------------

    def _store(
        self,
        content: bytes,
        mail_from: str,
        rcpt_tos: tuple[str, ...],
        *,
        tls: bool,
        auth_user: str | None,
    ) -> Captured:
        now = _dt.datetime.now(_dt.UTC)
        stamp = now.strftime("%Y%m%dT%H%M%S")
        with self._cond:
            while True:
                self._counter += 1
                path = self.dir / f"{stamp}-{self._counter}.eml"
                try:
                    # O_EXCL: a restarted server never overwrites an earlier capture
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    continue
                break
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(content)
        try:
            subject = " ".join(str(headers.get("Subject", "")).split())
        except Exception:  # a broken encoded word must not lose the message
            subject = "(unreadable subject)"
        record = Captured(
            path=path,
            mail_from=mail_from,
            rcpt_tos=rcpt_tos,
            subject=subject,
            size=len(content),
            tls=tls,
            auth_user=auth_user,
            received_at=now,
        )
        with self._cond:
            self.messages.append(record)
            self._cond.notify_all()
        if self.on_message is not None:
            try:
                self.on_message(record)
            except Exception:
                log.exception("on_message callback failed")
        return record
