"""Server settings of the command line: flags > ``POSTILLON_*`` environment > account > defaults.

An account is a table of a TOML file (default ``~/.config/postillon/config.toml``), in the
manner of msmtp's accounts::

    default_account = "work"

    [accounts.work]
    host = "smtp.example.com"
    port = 587
    security = "starttls"
    user = "ann@example.com"
    password_command = "pass show mail/work"
    from = "Ann <ann@example.com>"

The password never comes from a flag (it would show in ``ps`` and in the shell history):
it comes from ``POSTILLON_PASSWORD``, the account's ``password_command`` (run without a
shell), or a prompt when stdin is a terminal.

Signing (``send`` and ``spool submit``) resolves the same way (:func:`resolve_signing`):
``--dkim-key``/``--dkim-domain``/``--dkim-selector`` > ``POSTILLON_DKIM_*`` > the
account's ``dkim_key``/``dkim_domain``/``dkim_selector``; ``--smime-cert`` >
``POSTILLON_SMIME_CERT`` > ``smime_cert``, its password from ``POSTILLON_SMIME_PASSWORD``
or the account's ``smime_password_command``, never from a flag.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import AuthMode, IgnoreCert, Security

if TYPE_CHECKING:
    from ..signing import DkimSigner, SmimeSigner

__all__ = [
    "ENV_PREFIX",
    "ServerSettings",
    "SigningSettings",
    "UsageError",
    "add_server_arguments",
    "add_signing_arguments",
    "resolve",
    "resolve_signing",
]

ENV_PREFIX = "POSTILLON_"
DEFAULT_CONFIG = "~/.config/postillon/config.toml"
#: seconds a password_command may take (a pinentry prompt needs some)
PASSWORD_COMMAND_TIMEOUT = 60.0

_IGNORE_NAMES = {
    "invalid-certificate": IgnoreCert.INVALID_CERTIFICATE,
    "invalid-name": IgnoreCert.INVALID_NAME,
    "expired": IgnoreCert.EXPIRED,
    "revocation": IgnoreCert.REVOCATION,
}

#: the keys an account may hold, and the setting each one fills
_ACCOUNT_KEYS = {
    "host",
    "port",
    "security",
    "user",
    "password_command",
    "auth_mode",
    "accept_unencrypted",
    "ignore_cert",
    "cafile",
    "timeout",
    "log_file",
    "ehlo_name",
    "from",
    "dkim_key",
    "dkim_domain",
    "dkim_selector",
    "smime_cert",
    "smime_password_command",
}

#: a DKIM key or a PKCS#12 file is a few kilobytes; refuse to read a huge file by mistake
MAX_KEY_FILE = 1024 * 1024

SETTINGS_EPILOG = """\
server settings, highest precedence first:
  1. the flags above (--host, --port, --security, --user, ...)
  2. environment: POSTILLON_HOST, POSTILLON_PORT, POSTILLON_SECURITY, POSTILLON_USER,
     POSTILLON_PASSWORD, POSTILLON_AUTH_MODE, POSTILLON_CAFILE, POSTILLON_IGNORE_CERT,
     POSTILLON_TIMEOUT, POSTILLON_LOG_FILE, POSTILLON_EHLO_NAME,
     POSTILLON_INSECURE_ACCEPT_UNENCRYPTED=1, POSTILLON_ACCOUNT, POSTILLON_CONFIG
  3. the account named by --account (or default_account) in the TOML file
     (--config, default ~/.config/postillon/config.toml)
  4. defaults: port 587 with STARTTLS (465 means implicit TLS), certificates verified
--security none is clear text throughout (the login too): use it on loopback only.
the password comes from POSTILLON_PASSWORD, the account's password_command, or a prompt
(on a terminal only); never from a flag.
"""


SIGNING_EPILOG = """\

signing, highest precedence first (each setting on its own):
  DKIM:   --dkim-key PEM --dkim-domain D --dkim-selector S; POSTILLON_DKIM_KEY,
          POSTILLON_DKIM_DOMAIN, POSTILLON_DKIM_SELECTOR; account keys dkim_key,
          dkim_domain, dkim_selector (the three go together)
  S/MIME: --smime-cert P12; POSTILLON_SMIME_CERT; account key smime_cert. Its password
          from POSTILLON_SMIME_PASSWORD or the account's smime_password_command; never
          from a flag.
"""


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


@dataclass
class ServerSettings:
    """The resolved settings: the keyword arguments of a Transporter, plus where they came from."""

    host: str
    port: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: the account's default sender ("from" key), if any
    default_from: str | None = None
    account: str | None = None

    def transporter(self, **extra: Any) -> Any:
        """Build the Transporter (``extra`` overrides, e.g. ``keep_alive``)."""
        from .. import Transporter

        return Transporter(self.host, self.port, **{**self.kwargs, **extra})

    def describe(self) -> str:
        """``host:port (security)`` without any secret."""
        security = self.kwargs.get("security")
        sec = security.value if isinstance(security, Security) else "auto"
        port = self.port if self.port is not None else "default"
        return f"{self.host}:{port} ({sec})"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The server flags shared by ``send``, ``check`` and ``spool run``."""
    g = parser.add_argument_group("server settings (see the end of this help for precedence)")
    g.add_argument("--account", metavar="NAME", help="a named account of the TOML file")
    g.add_argument("--config", metavar="PATH", help=f"the TOML file (default {DEFAULT_CONFIG})")
    g.add_argument("--host", help="SMTP server name or address")
    g.add_argument("--port", metavar="N", help="port (default: 587, or 465 with --security tls)")
    g.add_argument(
        "--security",
        metavar="MODE",
        help="tls (implicit TLS, 465), starttls (587/25) or none (clear text)",
    )
    g.add_argument("--user", help="login name (the password is never a flag)")
    g.add_argument(
        "--auth-mode",
        metavar="MECH",
        help="PLAIN, LOGIN, CRAM-MD5, XOAUTH2, OAUTHBEARER or SCRAM-SHA-256 "
        "(default: the strongest offered)",
    )
    g.add_argument(
        "--insecure-accept-unencrypted",
        action="store_true",
        default=None,
        help="go on in clear text when STARTTLS is not offered (credentials too)",
    )
    g.add_argument(
        "--ignore-cert",
        metavar="WHAT",
        action="append",
        help="ignore one class of certificate error: invalid-certificate, invalid-name, "
        "expired, revocation (repeat or comma-separate)",
    )
    g.add_argument("--cafile", metavar="PEM", help="trust the CA certificates of this PEM file")
    g.add_argument("--timeout", metavar="SECONDS", help="connection timeout (default 30)")
    g.add_argument("--log-file", metavar="PATH", help="append a transcript (secrets redacted)")
    g.add_argument("--ehlo-name", metavar="NAME", help="the EHLO name (default: this host's FQDN)")


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else None


def _truthy(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"{name}: expected yes or no, not {value!r}")


def parse_port(value: object, name: str = "--port") -> int:
    """A TCP port from a flag, a variable or a TOML value."""
    if isinstance(value, bool):
        raise UsageError(f"{name}: not a port number: {value!r}")
    try:
        port = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise UsageError(f"{name}: not a port number: {value!r}") from None
    if not 0 < port < 65536:
        raise UsageError(f"{name}: port out of range (1-65535): {port}")
    return port


def _security(value: object, name: str) -> Security:
    try:
        return Security(str(value).strip().lower())
    except ValueError:
        raise UsageError(f"{name}: must be tls, starttls or none, not {value!r}") from None


def _ignore(values: object, name: str) -> IgnoreCert:
    items: list[str] = []
    if isinstance(values, str):
        items = [values]
    elif isinstance(values, list | tuple):
        items = [str(v) for v in values]
    else:
        raise UsageError(f"{name}: a list of certificate checks to ignore")
    flags = IgnoreCert.NONE
    for item in items:
        for raw in item.split(","):
            word = raw.strip().lower().replace("_", "-")
            if not word:
                continue
            if word == "all":
                for flag in _IGNORE_NAMES.values():
                    flags |= flag
                continue
            if word not in _IGNORE_NAMES:
                known = ", ".join(_IGNORE_NAMES)
                raise UsageError(f"{name}: unknown check {word!r} (known: {known}, all)")
            flags |= _IGNORE_NAMES[word]
    return flags


def _timeout(value: object, name: str) -> float:
    try:
        seconds = float(str(value))
    except ValueError:
        raise UsageError(f"{name}: not a number of seconds: {value!r}") from None
    if not seconds > 0 or seconds > 86400:
        raise UsageError(f"{name}: must be between 0 and 86400 seconds, not {value!r}")
    return seconds


def ssl_context_for(cafile: str, name: str = "--cafile") -> ssl.SSLContext:
    """A verifying client context that trusts the CA certificates of ``cafile``."""
    path = Path(cafile).expanduser()
    if not path.is_file():
        raise UsageError(f"{name}: no such file: {cafile}")
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"{name}: not a PEM certificate file: {cafile} ({exc})") from None
    return ctx


def load_account(config: str | None, account: str | None) -> tuple[str | None, dict[str, Any]]:
    """The account (name, values); ``(None, {})`` when none is named and none is the default."""
    path = Path(config or DEFAULT_CONFIG).expanduser()
    if not path.exists():
        if config is not None:
            raise UsageError(f"--config: no such file: {config}")
        if account is not None:
            raise UsageError(f"--account {account}: no configuration file at {path}")
        return None, {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read: {exc.strerror}") from None
    accounts = data.get("accounts", {})
    if not isinstance(accounts, dict):
        raise UsageError(f"{path}: [accounts] must be a table of accounts")
    name = account
    if name is None:
        default = data.get("default_account")
        if default is None:
            return None, {}
        name = str(default)
    values = accounts.get(name)
    if not isinstance(values, dict):
        known = ", ".join(sorted(accounts)) or "none"
        raise UsageError(f"unknown account {name!r} in {path} (accounts: {known})")
    if "password" in values:
        raise UsageError(
            f"account {name!r}: a clear-text 'password' is not read; "
            'use password_command (e.g. "pass show mail/work") or POSTILLON_PASSWORD'
        )
    unknown = sorted(set(values) - _ACCOUNT_KEYS)
    if unknown:
        known = ", ".join(sorted(_ACCOUNT_KEYS))
        raise UsageError(f"account {name!r}: unknown key {unknown[0]!r} (known: {known})")
    return name, values


def run_password_command(command: object, account: str, key: str = "password_command") -> str:
    """Run ``password_command`` (or the account's ``key``) without a shell; its first
    output line is the password."""
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"account {account!r}: {key}: {exc}") from None
    elif isinstance(command, list) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise UsageError(f"account {account!r}: {key} must be a string or a list")
    if not argv:
        raise UsageError(f"account {account!r}: {key} is empty")
    try:
        done = subprocess.run(  # argv from the user's own config, never a shell
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PASSWORD_COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise UsageError(f"account {account!r}: {key}: program not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"account {account!r}: {key} timed out") from None
    if done.returncode != 0:
        # its stderr may say why; its stdout may hold a secret, so it is never shown
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        hint = f": {why[-1][:200]}" if why else ""
        raise UsageError(f"account {account!r}: {key} failed (exit {done.returncode}){hint}")
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise UsageError(f"account {account!r}: {key} printed no password")
    return lines[0]


Pick = Callable[[str, str, str], "tuple[Any, str] | None"]


def _sources(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[str | None, str | None, dict[str, Any], Pick]:
    """The configuration file, the account (name and keys) and a ``pick(flag, env_name,
    key)`` that looks a setting up in precedence order (flag > environment > account)
    and says where it came from, for error messages."""
    account_name = getattr(args, "account", None) or _env(env, "ACCOUNT")
    config = getattr(args, "config", None) or _env(env, "CONFIG")
    name, acct = load_account(config, account_name)
    where = f"account {name!r}: " if name else ""

    def pick(flag: str, env_name: str, key: str) -> tuple[Any, str] | None:
        value = getattr(args, flag, None)
        if value is not None:
            return value, "--" + flag.replace("_", "-")
        value = _env(env, env_name)
        if value is not None:
            return value, ENV_PREFIX + env_name
        if key in acct:
            return acct[key], f"{where}{key}"
        return None

    return config, name, acct, pick


def resolve(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    prompt: Callable[[str], str] | None = None,
    need_password: bool = True,
) -> ServerSettings:
    """Merge flags, environment and account into :class:`ServerSettings`.

    Raises :class:`UsageError` (one clear line) for anything wrong.
    """
    env = os.environ if environ is None else environ
    config, name, acct, pick = _sources(args, env)

    host = pick("host", "HOST", "host")
    if host is None:
        raise UsageError(
            "no server: give --host, set POSTILLON_HOST, or name an --account "
            f"(configuration: {config or DEFAULT_CONFIG})"
        )
    host_name = str(host[0]).strip()
    if not host_name or any(c.isspace() for c in host_name):
        raise UsageError(f"{host[1]}: not a host name: {host[0]!r}")
    settings = ServerSettings(host=host_name, account=name)
    kw = settings.kwargs
    if (port := pick("port", "PORT", "port")) is not None:
        settings.port = parse_port(*port)
    if (security := pick("security", "SECURITY", "security")) is not None:
        kw["security"] = _security(*security)
    if (mode := pick("auth_mode", "AUTH_MODE", "auth_mode")) is not None:
        try:
            kw["authentication_mode"] = AuthMode.parse(str(mode[0]))
        except ValueError:
            known = ", ".join(m.value for m in AuthMode)
            raise UsageError(f"{mode[1]}: unknown mechanism {mode[0]!r} (known: {known})") from None
    accept = pick(
        "insecure_accept_unencrypted", "INSECURE_ACCEPT_UNENCRYPTED", "accept_unencrypted"
    )
    if accept is not None:
        kw["accept_unsecure_connection"] = _truthy(*accept)
    if (ignore := pick("ignore_cert", "IGNORE_CERT", "ignore_cert")) is not None:
        kw["ignore_errors"] = _ignore(*ignore)
    if (cafile := pick("cafile", "CAFILE", "cafile")) is not None:
        kw["ssl_context"] = ssl_context_for(str(cafile[0]), cafile[1])
    if (timeout := pick("timeout", "TIMEOUT", "timeout")) is not None:
        kw["connection_timeout"] = _timeout(*timeout)
    if (log_file := pick("log_file", "LOG_FILE", "log_file")) is not None:
        kw["log_file"] = str(Path(str(log_file[0])).expanduser())
    if (ehlo := pick("ehlo_name", "EHLO_NAME", "ehlo_name")) is not None:
        kw["local_hostname"] = str(ehlo[0])
    if "from" in acct:
        settings.default_from = str(acct["from"])
    user = pick("user", "USER", "user")
    if user is not None and str(user[0]):
        kw["user"] = str(user[0])
        if need_password:
            kw["password"] = _password(env, acct, name, str(user[0]), prompt)
    return settings


def _password(
    env: Mapping[str, str],
    acct: Mapping[str, Any],
    account: str | None,
    user: str,
    prompt: Callable[[str], str] | None,
) -> str:
    value = env.get(ENV_PREFIX + "PASSWORD")
    if value:
        return value
    if "password_command" in acct:
        return run_password_command(acct["password_command"], account or "?")
    if prompt is None and sys.stdin is not None and sys.stdin.isatty():
        prompt = getpass.getpass
    if prompt is None:
        raise UsageError(
            f"no password for user {user!r}: set POSTILLON_PASSWORD, give the account a "
            "password_command, or run on a terminal to be asked"
        )
    try:
        return prompt(f"Password for {user}: ")
    except (EOFError, KeyboardInterrupt):
        raise UsageError("no password given") from None


# --- signing ----------------------------------------------------------------------------


@dataclass
class SigningSettings:
    """The resolved signers of ``send`` / ``spool submit`` (both None: no signing).

    ``smime_certificate`` and ``smime_password`` are what :class:`~postillon.Transporter`
    takes; ``smime`` is the signer they make, loaded once here so that a wrong password
    or a bad file is a usage error before anything connects.
    """

    dkim: DkimSigner | None = None
    smime: SmimeSigner | None = field(default=None, repr=False)
    smime_certificate: bytes | None = field(default=None, repr=False)
    smime_password: str | None = field(default=None, repr=False)
    #: the account's default sender ("from" key), if an account was read
    default_from: str | None = None

    def transporter_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that make a Transporter sign the same way."""
        kw: dict[str, Any] = {}
        if self.dkim is not None:
            kw["dkim"] = self.dkim
        if self.smime_certificate is not None:
            kw["smime_certificate"] = self.smime_certificate
            kw["smime_password"] = self.smime_password
        return kw


def add_signing_arguments(parser: argparse.ArgumentParser, *, account: bool = False) -> None:
    """The signing flags of ``send`` and ``spool submit``.

    ``account``: also add ``--account`` and ``--config`` (for a command without the
    server flags, which carry them otherwise).
    """
    g = parser.add_argument_group("signing (see the end of this help)")
    if account:
        g.add_argument("--account", metavar="NAME", help="a named account of the TOML file")
        g.add_argument("--config", metavar="PATH", help=f"the TOML file (default {DEFAULT_CONFIG})")
    g.add_argument(
        "--dkim-key",
        metavar="PATH",
        help="DKIM-sign with this unencrypted RSA or Ed25519 private key (PEM or DER)",
    )
    g.add_argument("--dkim-domain", metavar="DOMAIN", help="the DKIM d= domain")
    g.add_argument("--dkim-selector", metavar="NAME", help="the DKIM s= selector")
    g.add_argument(
        "--smime-cert",
        metavar="P12",
        help="S/MIME-sign with this PKCS#12 file (password: POSTILLON_SMIME_PASSWORD "
        "or the account's smime_password_command)",
    )


def _read_key_file(value: object, src: str) -> bytes:
    path = Path(str(value)).expanduser()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UsageError(f"{src}: no such file: {value}") from None
    except OSError as exc:
        raise UsageError(f"{src}: cannot read {value}: {exc.strerror}") from None
    if not path.is_file():
        raise UsageError(f"{src}: not a file: {value}")
    if size > MAX_KEY_FILE:
        raise UsageError(f"{src}: {value} is too large to be a key or certificate file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{src}: cannot read {value}: {exc.strerror}") from None
    if not data:
        raise UsageError(f"{src}: {value} is empty")
    return data


def _signer_error(exc: ValueError, labels: Mapping[str, str]) -> UsageError:
    """A signer's ValueError ("field: problem") as a usage error naming our source."""
    text = str(exc)
    field_name, sep, problem = text.partition(": ")
    if sep and field_name in labels:
        return UsageError(f"{labels[field_name]}: {problem}")
    return UsageError(text)


def resolve_signing(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> SigningSettings:
    """The signers from flags > ``POSTILLON_*`` > account; :class:`UsageError` when bad.

    Keys and certificates are read and checked here (a missing file, a wrong password,
    a DKIM key without its domain), before any connection.
    """
    env = os.environ if environ is None else environ
    _config, name, acct, pick = _sources(args, env)
    out = SigningSettings(default_from=str(acct["from"]) if "from" in acct else None)

    key = pick("dkim_key", "DKIM_KEY", "dkim_key")
    domain = pick("dkim_domain", "DKIM_DOMAIN", "dkim_domain")
    selector = pick("dkim_selector", "DKIM_SELECTOR", "dkim_selector")
    if key is None:
        for given in (domain, selector):
            if given is not None:
                raise UsageError(
                    f"{given[1]}: given without a DKIM key "
                    "(--dkim-key, POSTILLON_DKIM_KEY or the account's dkim_key)"
                )
    else:
        if domain is None:
            raise UsageError(
                f"{key[1]}: needs the signing domain (--dkim-domain, POSTILLON_DKIM_DOMAIN "
                "or the account's dkim_domain)"
            )
        if selector is None:
            raise UsageError(
                f"{key[1]}: needs the selector (--dkim-selector, POSTILLON_DKIM_SELECTOR "
                "or the account's dkim_selector)"
            )
        pem = _read_key_file(key[0], key[1])
        from ..signing import DkimSigner

        try:
            out.dkim = DkimSigner(str(domain[0]), str(selector[0]), pem)
        except ValueError as exc:
            raise _signer_error(
                exc, {"domain": domain[1], "selector": selector[1], "private_key": key[1]}
            ) from None
    cert = pick("smime_cert", "SMIME_CERT", "smime_cert")
    if cert is not None:
        data = _read_key_file(cert[0], cert[1])
        password: str | None = env.get(ENV_PREFIX + "SMIME_PASSWORD") or None
        if password is None and "smime_password_command" in acct:
            password = run_password_command(
                acct["smime_password_command"], name or "?", "smime_password_command"
            )
        from ..signing import SmimeSigner

        try:
            out.smime = SmimeSigner(data, password)
        except ValueError as exc:
            error = _signer_error(exc, {"smime_certificate": cert[1]})
            if password is None and "password" in str(exc):
                error = UsageError(
                    f"{error} (no password was given: set POSTILLON_SMIME_PASSWORD or "
                    "the account's smime_password_command)"
                )
            raise error from None
        out.smime_certificate = data
        out.smime_password = password
    return out
