"""Small immutable settings: security mode, certificate switches, AUTH mechanisms, DSN.

Example::

    Transporter("smtp.example.com", security=Security.STARTTLS,
                ignore_errors=IgnoreCert.EXPIRED | IgnoreCert.INVALID_NAME)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import InvalidMessage

__all__ = ["AuthMode", "Dsn", "IgnoreCert", "Security"]


class Security(enum.Enum):
    """How the connection is protected (4D ``acceptUnsecureConnection``, WinDev ``Option``)."""

    #: implicit TLS from the first byte (SMTPS, port 465); WinDev ``optionTLS``
    TLS = "tls"
    #: plain connect, then STARTTLS, then EHLO again (port 587/25); WinDev ``emailProtocolSMTPS``
    STARTTLS = "starttls"
    #: no TLS (port 25); WinDev ``emailOptionDefault``
    NONE = "none"


class IgnoreCert(enum.Flag):
    """Certificate errors to ignore (WinDev ``IgnoreError``); each flag ignores only its class."""

    NONE = 0
    #: untrusted or self-signed chain
    INVALID_CERTIFICATE = enum.auto()
    #: host name mismatch
    INVALID_NAME = enum.auto()
    #: validity dates (expired or not yet valid)
    EXPIRED = enum.auto()
    #: revocation checks
    REVOCATION = enum.auto()


class AuthMode(enum.Enum):
    """SASL mechanisms (4D ``authenticationMode``); the values are the SASL names."""

    PLAIN = "PLAIN"
    LOGIN = "LOGIN"
    CRAM_MD5 = "CRAM-MD5"
    XOAUTH2 = "XOAUTH2"
    OAUTHBEARER = "OAUTHBEARER"
    SCRAM_SHA_256 = "SCRAM-SHA-256"

    @classmethod
    def parse(cls, value: AuthMode | str) -> AuthMode:
        """Accept an AuthMode, its SASL name or its Python name; 4D "OAUTH2" means XOAUTH2."""
        if isinstance(value, AuthMode):
            return value
        key = str(value).strip().upper()
        if key == "OAUTH2":
            return cls.XOAUTH2
        for mode in cls:
            if key in (mode.value, mode.name):
                return mode
        known = ", ".join(m.value for m in cls)
        raise ValueError(f"authentication_mode: unknown mechanism {value!r} (known: {known})")


_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@dataclass(frozen=True, slots=True)
class Dsn:
    """Delivery status notification request (RFC 3461).

    ``notify``: any of "SUCCESS", "FAILURE", "DELAY", or ("NEVER",) alone;
    ``ret``: "FULL" or "HDRS"; ``envid``: an envelope id (sent as xtext).

    Example: ``transporter.send(mail, dsn=Dsn(notify=("FAILURE", "DELAY"), ret="HDRS"))``
    """

    notify: tuple[str, ...] = ()
    ret: str | None = None
    envid: str | None = None

    def __post_init__(self) -> None:
        notify = tuple(n.upper() for n in self.notify)
        object.__setattr__(self, "notify", notify)
        if "NEVER" in notify and len(notify) > 1:
            raise InvalidMessage("NEVER cannot be combined with other values", "dsn.notify")
        if not set(notify) <= _NOTIFY | {"NEVER"}:
            raise InvalidMessage(f"unknown value in {notify!r}", "dsn.notify")
        if self.ret is not None:
            ret = self.ret.upper()
            if ret not in ("FULL", "HDRS"):
                raise InvalidMessage(f"must be FULL or HDRS, not {self.ret!r}", "dsn.ret")
            object.__setattr__(self, "ret", ret)
        if self.envid is not None:
            if not self.envid or len(self.envid) > 100:
                raise InvalidMessage("must be 1 to 100 characters", "dsn.envid")
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in self.envid):
                raise InvalidMessage("must not contain control characters", "dsn.envid")
