"""``postillon doctor HOST[:PORT]``: probe a server and say, in plain words, how to use it.

For each port (the one given, else 465, 587 and 25 side by side) it finds out whether the
port speaks TLS at once (implicit TLS) or plain SMTP, and then whether STARTTLS is
offered; it checks the certificate chain and host name and says which check failed
(expired, wrong name, untrusted issuer); it reads the greeting (or explains a greeting
that never came: implicit TLS on a STARTTLS port or the reverse, or a firewall), the EHLO
capabilities, the AUTH mechanisms and SIZE; and it ends with the settings to use.

It speaks SMTP itself over plain sockets with short timeouts, with the sans-I/O pieces
of :mod:`postillon.protocol` (reply parser, EHLO table). It never authenticates and
never sends mail.

Example::

    postillon doctor smtp.example.com
    postillon doctor smtp.example.com:587 --json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidMessage, ProtocolError, TLSError
from ..protocol import commands
from ..protocol.capabilities import Capabilities
from ..protocol.reply import Reply, ReplyParser, printable
from ..settings import IgnoreCert
from ..transport import tls as _tls
from ._common import EXIT_FAILED, EXIT_OK, print_json
from ._settings import UsageError, parse_port, ssl_context_for

__all__ = ["PortReport", "add_parsers", "parse_target", "probe"]

#: ports probed when none is given: implicit TLS, submission with STARTTLS, relay
DEFAULT_PORTS = (465, 587, 25)
#: how long a server may stay silent before we try TLS (implicit-TLS servers wait for us)
GREETING_WAIT = 3.0

EPILOG = """\
examples:
  postillon doctor smtp.gmail.com            (probes 465, 587 and 25)
  postillon doctor smtp.example.com:587
  postillon doctor [::1]:2525 --cafile sink-cert.pem
  postillon doctor mail.example.com --json

exit status: 0 a usable configuration was found, 1 none (unreachable, not SMTP, or the
certificate fails verification), 2 bad usage.
"""

# OpenSSL verify codes (x509_vfy.h) in plain words
_EXPIRED = 10
_NOT_YET_VALID = 9
_WRONG_NAME = {62, 64}  # host name mismatch, IP address mismatch
_UNTRUSTED = {2, 18, 19, 20, 21, 27}


@dataclass
class CertReport:
    """What the certificate is and whether it verified."""

    verified: bool = False
    problem: str | None = None
    subject: str | None = None
    issuer: str | None = None
    names: list[str] = field(default_factory=list)
    not_before: str | None = None
    not_after: str | None = None


@dataclass
class PortReport:
    """The findings on one port. ``mode``: "tls" (implicit), "starttls", "plain" or None."""

    port: int
    reachable: bool = False
    mode: str | None = None
    greeting: str | None = None
    problem: str | None = None
    starttls_offered: bool = False
    tls_version: str | None = None
    cipher: str | None = None
    certificate: CertReport | None = None
    capabilities: list[str] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    size: int | None = None
    notes: list[str] = field(default_factory=list)
    elapsed_ms: int = 0

    @property
    def usable(self) -> bool:
        """SMTP was reached (a greeting and an EHLO answer)."""
        return self.mode is not None and self.problem is None

    @property
    def secure(self) -> bool:
        """Usable over TLS with a certificate that verified."""
        return (
            self.usable
            and self.mode in ("tls", "starttls")
            and self.certificate is not None
            and self.certificate.verified
        )


class _Session:
    """A socket, a reply parser and a deadline: just enough SMTP to look around."""

    def __init__(self, sock: socket.socket, host: str, timeout: float) -> None:
        self.sock: socket.socket = sock
        self.host = host
        self.timeout = timeout
        self.parser = ReplyParser()

    def reply(self, wait: float | None = None) -> Reply:
        deadline = time.monotonic() + (wait if wait is not None else self.timeout)
        while True:
            reply = self.parser.next_reply()
            if reply is not None:
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            self.parser.feed(data)

    def command(self, line: bytes) -> Reply:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(line)
        return self.reply()

    def quit(self) -> None:
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def _connect_problem(exc: OSError, host: str, port: int, timeout: float) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: the name does not exist in DNS ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: nothing listens on port {port} of {host}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return (
            f"no answer to the TCP connection within {timeout:g}s: a firewall drops it "
            f"(outgoing port {port} is often blocked by providers), or the host is down"
        )
    return f"cannot connect: {exc.strerror or exc}"


def _cert_details(der: bytes | None, report: CertReport) -> None:
    if der is None:
        return
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - cryptography comes with [crypto]/[sink]
        return
    cert = x509.load_der_x509_certificate(der)
    report.subject = cert.subject.rfc4514_string()
    report.issuer = cert.issuer.rfc4514_string()
    report.not_before = cert.not_valid_before_utc.date().isoformat()
    report.not_after = cert.not_valid_after_utc.date().isoformat()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        report.names = [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        report.names = []


def _explain(exc: ssl.SSLCertVerificationError, host: str, cert: CertReport) -> str:
    code = exc.verify_code
    if code == _EXPIRED:
        return f"expired: the certificate was valid until {cert.not_after or '?'}"
    if code == _NOT_YET_VALID:
        return f"not yet valid: the certificate starts on {cert.not_before or '?'}"
    if code in _WRONG_NAME:
        names = ", ".join(cert.names) or "no names"
        return f"wrong name: the certificate is for {names}, not for {host}"
    if code in _UNTRUSTED:
        issuer = cert.issuer or "an unknown issuer"
        if cert.issuer is not None and cert.issuer == cert.subject:
            return f"untrusted issuer: the certificate is self-signed ({issuer})"
        return f"untrusted issuer: issued by {issuer}, which this machine does not trust"
    return f"verification failed: {exc.verify_message}"


def _more_problems(der: bytes | None, host: str, first: str) -> list[str]:
    """Name and dates checked on their own: OpenSSL reports only the first failure."""
    if der is None:
        return []
    found = []
    checks = (("wrong name", IgnoreCert.EXPIRED), ("expired", IgnoreCert.INVALID_NAME))
    for label, skip in checks:
        if first.startswith(label) or (label == "expired" and first.startswith("not yet")):
            continue
        try:
            _tls.verify_leaf(der, host, skip)
        except TLSError as exc:
            reason = str(exc).split(": ", 1)[-1]
            found.append(reason.split(" (")[0])
        except Exception:  # noqa: S112 - a certificate cryptography cannot read: say nothing more
            continue
    return found


def _handshake(
    sock: socket.socket, host: str, verify_ctx: ssl.SSLContext, report: PortReport
) -> tuple[ssl.SSLSocket | None, ssl.SSLCertVerificationError | None]:
    """TLS on ``sock`` with verification; on a certificate failure, (None, the error)."""
    cert = CertReport()
    report.certificate = cert
    try:
        tls_sock = verify_ctx.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        return None, exc
    cert.verified = True
    _cert_details(tls_sock.getpeercert(binary_form=True), cert)
    report.tls_version = tls_sock.version()
    cipher = tls_sock.cipher()
    report.cipher = cipher[0] if cipher else None
    return tls_sock, None


def _unverified(
    sock: socket.socket, host: str, report: PortReport, error: ssl.SSLCertVerificationError
) -> ssl.SSLSocket:
    """TLS without verification, only to read the certificate and go on probing."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls_sock = ctx.wrap_socket(sock, server_hostname=None if _is_ip(host) else host)
    der = tls_sock.getpeercert(binary_form=True)
    cert = report.certificate or CertReport()
    report.certificate = cert
    _cert_details(der, cert)
    report.tls_version = tls_sock.version()
    cipher = tls_sock.cipher()
    report.cipher = cipher[0] if cipher else None
    first = _explain(error, host, cert)
    cert.problem = "; ".join([first, *_more_problems(der, host, first)])
    return tls_sock


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _ehlo(session: _Session, name: str, report: PortReport) -> Capabilities:
    reply = session.command(commands.ehlo(name))
    if reply.is_positive:
        caps = Capabilities.from_ehlo(reply)
    else:
        report.notes.append(f"EHLO refused ({reply}); fell back to HELO: no SMTP extensions")
        caps = Capabilities.from_helo(session.command(commands.helo(name)))
    report.capabilities = [f"{k} {v}".strip() for k, v in caps.keywords.items()]
    report.auth = list(caps.auth)
    report.size = caps.size
    return caps


def probe(
    host: str,
    port: int,
    *,
    timeout: float = 5.0,
    verify_ctx: ssl.SSLContext | None = None,
    ehlo_name: str = "doctor.postillon.invalid",
    greeting_wait: float = GREETING_WAIT,
) -> PortReport:
    """Probe one port and return what was found (never raises for network trouble).

    Example::

        report = probe("smtp.example.com", 587)
        print(report.mode, report.certificate and report.certificate.problem, report.auth)
    """
    ctx = verify_ctx or ssl.create_default_context()
    report = PortReport(port)
    started = time.monotonic()
    try:
        _probe(
            host,
            port=port,
            timeout=timeout,
            ctx=ctx,
            ehlo_name=ehlo_name,
            greeting_wait=greeting_wait,
            report=report,
        )
    except (OSError, ProtocolError, ssl.SSLError, ValueError) as exc:
        if report.problem is None:
            report.problem = f"{report.mode or 'connection'}: {printable(str(exc), 200)}"
    report.elapsed_ms = int((time.monotonic() - started) * 1000)
    return report


def _probe(
    host: str,
    *,
    port: int,
    timeout: float,
    ctx: ssl.SSLContext,
    ehlo_name: str,
    greeting_wait: float,
    report: PortReport,
) -> None:
    try:
        sock = _connect(host, port, timeout)
    except OSError as exc:
        report.problem = _connect_problem(exc, host, port, timeout)
        return
    report.reachable = True
    session = _Session(sock, host, timeout)
    try:
        greeting = session.reply(greeting_wait)
    except TimeoutError:
        greeting = None  # silent: an implicit-TLS port waits for our TLS hello
    except (ConnectionResetError, ProtocolError) as exc:
        sock.close()
        report.problem = f"not SMTP: {exc}"
        return
    if greeting is None:
        _implicit_tls(
            host,
            port=port,
            timeout=timeout,
            ctx=ctx,
            ehlo_name=ehlo_name,
            greeting_wait=greeting_wait,
            session=session,
            report=report,
        )
        return
    report.greeting = str(greeting)
    if greeting.code != 220:
        session.quit()
        report.problem = f"the server refuses service in its greeting: {greeting}"
        return
    report.mode = "plain"
    caps = _ehlo(session, ehlo_name, report)
    if not caps.starttls:
        session.quit()
        report.notes.append(
            "STARTTLS is not offered: everything (password included) would travel in clear "
            "text; implicit TLS may be on port 465"
        )
        return
    report.starttls_offered = True
    reply = session.command(b"STARTTLS\r\n")
    if reply.code != 220:
        session.quit()
        report.problem = f"STARTTLS offered but refused: {reply}"
        return
    report.mode = "starttls"
    session.sock.settimeout(timeout)
    tls_sock, error = _handshake(session.sock, host, ctx, report)
    if error is not None:
        # verification failed: start over without it, to read what follows
        sock = _connect(host, port, timeout)
        session = _Session(sock, host, timeout)
        session.reply(max(greeting_wait, timeout))
        session.command(commands.ehlo(ehlo_name))
        if session.command(b"STARTTLS\r\n").code != 220:
            raise ProtocolError("STARTTLS refused on the second connection")
        sock.settimeout(timeout)
        tls_sock = _unverified(sock, host, report, error)
    assert tls_sock is not None
    session.sock = tls_sock
    session.parser = ReplyParser()  # RFC 3207 4.2: forget everything said before TLS
    _ehlo(session, ehlo_name, report)
    session.quit()


def _implicit_tls(
    host: str,
    *,
    port: int,
    timeout: float,
    ctx: ssl.SSLContext,
    ehlo_name: str,
    greeting_wait: float,
    session: _Session,
    report: PortReport,
) -> None:
    sock = session.sock
    sock.settimeout(timeout)
    try:
        tls_sock, error = _handshake(sock, host, ctx, report)
    except (OSError, ssl.SSLError):
        sock.close()
        report.certificate = None
        report.problem = (
            f"greeting never received: port {port} sent no SMTP greeting within "
            f"{greeting_wait:g}s and does not answer TLS either. Usually a firewall or a "
            "proxy that accepts the connection and stays silent, or a service that is not SMTP"
        )
        return
    if error is not None:
        tls_sock = _unverified(_connect(host, port, timeout), host, report, error)
    assert tls_sock is not None
    report.mode = "tls"
    session.sock = tls_sock
    greeting = session.reply(timeout)
    report.greeting = str(greeting)
    if greeting.code != 220:
        session.quit()
        report.problem = f"the server refuses service in its greeting: {greeting}"
        return
    _ehlo(session, ehlo_name, report)
    session.quit()


# --- the verdict -----------------------------------------------------------------------

_SECURITY = {"tls": "TLS", "starttls": "STARTTLS", "plain": "NONE"}


def recommend(host: str, reports: list[PortReport]) -> dict[str, Any] | None:
    """The best configuration found: verified TLS first (465, then 587, 25), else the rest."""

    def rank(r: PortReport) -> tuple[int, int]:
        order = {"tls": 0, "starttls": 1, "plain": 2}
        return (0 if r.secure else 1, order.get(r.mode or "", 9))

    usable = sorted((r for r in reports if r.usable), key=rank)
    if not usable:
        return None
    best = usable[0]
    sec = _SECURITY[best.mode or "plain"]
    flags = f"--host {host} --port {best.port} --security {sec.lower()}"
    python = f'Transporter("{host}", {best.port}, security=Security.{sec}'
    advice: list[str] = []
    if best.mode == "plain":
        flags += " --insecure-accept-unencrypted"
        python += ", accept_unsecure_connection=True"
        advice.append("no TLS: do not send a password over this connection")
    cert = best.certificate
    if cert is not None and not cert.verified:
        advice.append(
            "fix the certificate on the server; to trust a private CA give --cafile PEM "
            "(Transporter(ssl_context=...)); as a last resort --ignore-cert "
            "(ignore_errors=IgnoreCert...) names the one check to skip"
        )
    if best.auth:
        flags += " --user NAME"
        python += ', user="NAME", password=...'
    python += ")"
    return {
        "port": best.port,
        "security": sec.lower(),
        "verified": best.secure,
        "python": python,
        "cli": flags,
        "advice": advice,
    }


def _print_report(host: str, r: PortReport) -> None:
    print(f"{host} port {r.port}:")
    if not r.reachable:
        print(f"  connect: FAILED: {r.problem}")
        return
    print("  connect: ok")
    if r.mode == "tls":
        print("  TLS: implicit TLS from the first byte (SMTPS, Security.TLS)")
    if r.greeting:
        print(f"  greeting: {r.greeting}")
    if r.mode in ("plain", "starttls"):
        print("  plain SMTP on connect (Security.STARTTLS or NONE, not implicit TLS)")
        print(f"  STARTTLS: {'offered' if r.starttls_offered else 'NOT offered'}")
    if r.tls_version:
        print(f"  TLS: {r.tls_version}, {r.cipher}")
    cert = r.certificate
    if cert is not None and (cert.subject or cert.problem):
        state = "ok (chain and host name verified)" if cert.verified else f"FAILED: {cert.problem}"
        print(f"  certificate: {state}")
        if cert.subject:
            print(f"    subject: {cert.subject}; issuer: {cert.issuer}")
            print(f"    names: {', '.join(cert.names) or '-'}; valid until {cert.not_after}")
    if r.capabilities:
        when = " (after TLS)" if r.mode in ("tls", "starttls") else ""
        print(f"  capabilities{when}: {', '.join(r.capabilities)}")
        print(f"  AUTH: {' '.join(r.auth) if r.auth else 'none offered'}")
        if r.size:
            print(f"  SIZE: {r.size} bytes ({r.size / 1048576:.1f} MiB)")
    for note in r.notes:
        print(f"  note: {note}")
    if r.problem:
        print(f"  problem: {r.problem}")


def parse_target(target: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    text = target.strip()
    if not text:
        raise UsageError("HOST: empty")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"HOST: unclosed '[' in {target!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UsageError(f"HOST: unexpected {rest!r} after ']'")
        return host, parse_port(rest[1:], "PORT") if rest else None
    if text.count(":") == 1:
        host, port = text.split(":")
        if not host:
            raise UsageError(f"HOST: no host name in {target!r}")
        return host, parse_port(port, "PORT")
    if any(c.isspace() for c in text) or "/" in text:
        raise UsageError(f"HOST: not a host name: {target!r}")
    return text, None


def add_parsers(sub: Any) -> None:
    """Register ``doctor``."""
    p = sub.add_parser(
        "doctor",
        help="probe a server and say how to configure it",
        description="Probe a server: implicit TLS or STARTTLS, the certificate, the greeting, "
        "EHLO, AUTH and SIZE, and the settings to use. Never logs in, never sends mail.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="HOST[:PORT]", help="the server (no port: 465, 587, 25)")
    p.add_argument("--timeout", metavar="SECONDS", default="5", help="per step (default 5)")
    p.add_argument("--cafile", metavar="PEM", help="trust the CA certificates of this file")
    p.add_argument("--ehlo-name", metavar="NAME", default="doctor.postillon.invalid")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``postillon doctor``."""
    host, port = parse_target(args.target)
    try:
        timeout = float(args.timeout)
    except ValueError:
        raise UsageError(f"--timeout: not a number of seconds: {args.timeout!r}") from None
    if not 0 < timeout <= 300:
        raise UsageError(f"--timeout: must be between 0 and 300 seconds, not {args.timeout}")
    try:
        commands.check_ehlo_name(args.ehlo_name)
    except InvalidMessage as exc:
        raise UsageError(f"--ehlo-name: {exc.message}") from None
    ctx = ssl_context_for(args.cafile) if args.cafile else ssl.create_default_context()
    ports = [port] if port is not None else list(DEFAULT_PORTS)
    wait = min(GREETING_WAIT, timeout)
    with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
        reports = list(
            pool.map(
                lambda p: probe(
                    host,
                    p,
                    timeout=timeout,
                    verify_ctx=ctx,
                    ehlo_name=args.ehlo_name,
                    greeting_wait=wait,
                ),
                ports,
            )
        )
    verdict = recommend(host, reports)
    if args.json:
        print_json(
            {
                "host": host,
                "checked_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "ports": [{**asdict(r), "usable": r.usable, "secure": r.secure} for r in reports],
                "recommendation": verdict,
            }
        )
    else:
        for r in reports:
            _print_report(host, r)
        if verdict is None:
            print("=> no usable SMTP service found")
        else:
            print(f"=> use: {verdict['python']}")
            print(f"   postillon send {verdict['cli']} ...")
            for line in verdict["advice"]:
                print(f"   note: {line}")
    if verdict is None or not (verdict["verified"] or verdict["security"] == "none"):
        return EXIT_FAILED
    return EXIT_OK
