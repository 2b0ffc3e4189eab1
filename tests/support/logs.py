"""Capture of the ``postillon`` logger at DEBUG, and a scanner for leaked secrets.

security.md 1.13 test 1: at the most verbose level, no password, token or AUTH payload
may appear in logs, exception texts, reprs or status objects, raw or base64-encoded.

:meth:`LogCapture.secrets_found` looks for each secret

* raw (also inside ``repr()`` escapes),
* as base64 of the secret alone (the LOGIN form),
* as base64 of ``"\\0user\\0secret"`` and ``"user\\0user\\0secret"`` (PLAIN) for the given
  users,
* inside any base64 token of the text once decoded (catches XOAUTH2, OAUTHBEARER, SCRAM
  and any other SASL blob that embeds the secret).

Example::

    t.send(mail)
    assert log_capture.secrets_found("hunter2", user="alice", extra=[repr(t)]) == []
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable

_B64_TOKEN = re.compile(rb"[A-Za-z0-9+/]{8,}={0,2}")


class LogCapture(logging.Handler):
    """A handler that keeps every record; attach it with :meth:`attach`."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self._logger: logging.Logger | None = None
        self._old_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def attach(self, name: str = "postillon") -> LogCapture:
        """Capture logger ``name`` (and its children) at DEBUG until :meth:`detach`."""
        self._logger = logging.getLogger(name)
        self._old_level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)
        return self

    def detach(self) -> None:
        """Stop capturing and restore the logger's level."""
        if self._logger is not None:
            self._logger.removeHandler(self)
            self._logger.setLevel(self._old_level)
            self._logger = None

    @property
    def text(self) -> str:
        """Every record formatted, exception tracebacks included, one per line."""
        return "\n".join(self.format(r) for r in self.records)

    def messages(self, level: int = logging.NOTSET) -> list[str]:
        """The messages of the records at ``level`` or above."""
        return [r.getMessage() for r in self.records if r.levelno >= level]

    def secrets_found(
        self, *secrets: str, user: str | Iterable[str] = (), extra: Iterable[str] = ()
    ) -> list[str]:
        """Where any secret shows up in the captured log (plus ``extra`` texts).

        Returns one description per hit; an empty list means nothing leaked.
        """
        users = [user] if isinstance(user, str) else list(user)
        texts = [self.text, *extra]
        return scan_for_secrets(texts, secrets, users)


def _forms(secret: str, users: list[str]) -> dict[str, bytes]:
    raw = secret.encode("utf-8")
    forms = {"raw": raw, "base64": base64.b64encode(raw)}
    escaped = repr(secret)[1:-1].encode("utf-8")
    if escaped != raw:
        forms["repr-escaped"] = escaped
    for u in users:
        ub = u.encode("utf-8")
        forms[f"base64(\\0{u}\\0secret)"] = base64.b64encode(b"\0" + ub + b"\0" + raw)
        forms[f"base64({u}\\0{u}\\0secret)"] = base64.b64encode(ub + b"\0" + ub + b"\0" + raw)
    return forms


def scan_for_secrets(
    texts: Iterable[str | bytes], secrets: Iterable[str], users: Iterable[str] = ()
) -> list[str]:
    """Search ``texts`` for every form of every secret; the hits, described."""
    secrets = [s for s in secrets if s]
    if not secrets:
        raise ValueError("secrets_found(): give at least one non-empty secret")
    users = list(users)
    hits: list[str] = []
    for index, text in enumerate(texts):
        blob = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        where = "log" if index == 0 else f"extra[{index - 1}]"
        decoded_tokens: list[bytes] = []
        for token in _B64_TOKEN.findall(blob):
            try:
                decoded_tokens.append(base64.b64decode(token + b"=" * (-len(token) % 4)))
            except (binascii.Error, ValueError):
                continue
        for secret in secrets:
            label = f"secret #{secrets.index(secret) + 1} (len {len(secret)})"
            for form, needle in _forms(secret, users).items():
                if needle in blob:
                    hits.append(f"{label} found {form} in {where}")
            raw = secret.encode("utf-8")
            if any(raw in tok for tok in decoded_tokens):
                hits.append(f"{label} found inside a decoded base64 token in {where}")
    return hits
