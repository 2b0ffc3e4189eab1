"""Fixtures of the interoperability tests: real Postfix and Exim on loopback.

* ``postfix`` / ``exim`` (session): a running private server (:class:`_mta.MtaServer`),
  STARTTLS with the test CA's ``server_cert``, AUTH (PLAIN, LOGIN, CRAM-MD5) after TLS,
  Maildirs under its temp directory. Missing servers skip the tests, or fail them with
  ``POSTILLON_REQUIRE_ALL=1``; a server that is there but does not start always fails.
* ``client``: a factory ``client(server, **settings) -> Client``, parametrised over
  :class:`~postillon.Transporter` and :class:`~postillon.AsyncTransporter`, so every test
  that uses it runs once with each; the clients are closed at teardown.

Install the servers with ``bash .ci/interop-setup`` (root, Debian 12).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import trustme

from postillon import AsyncTransporter, Security, SendStatus, Status, Transporter

from ._mta import MtaServer, ServerFailed, ServerMissing, start_exim, start_postfix
from support import require


def _start(
    what: str, starter: Callable[[bytes, bytes], MtaServer], cert: trustme.LeafCert
) -> MtaServer:
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    try:
        return starter(chain, cert.private_key_pem.bytes())
    except ServerMissing as exc:
        require(what, str(exc))
    except ServerFailed as exc:
        pytest.fail(f"{what} did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def postfix(server_cert: trustme.LeafCert) -> Iterator[MtaServer]:
    """A private Postfix smtpd (+ Dovecot SASL) for the whole session."""
    server = _start("Postfix", start_postfix, server_cert)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def exim(server_cert: trustme.LeafCert) -> Iterator[MtaServer]:
    """A private Exim daemon for the whole session."""
    server = _start("Exim", start_exim, server_cert)
    yield server
    server.stop()


class Client:
    """One transporter, sync or async, behind the same blocking calls.

    The async flavour runs its own event loop in the test's thread: every call is one
    ``run_until_complete``, so the connection (``keep_alive``) lives across calls exactly
    as a program's would.
    """

    def __init__(self, kind: str, server: MtaServer, settings: dict[str, Any]) -> None:
        self.kind = kind
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: Transporter | None = None
        self._async: AsyncTransporter | None = None
        if kind == "sync":
            self._sync = Transporter(server.host, server.port, **settings)
        else:
            self._loop = asyncio.new_event_loop()

            async def make() -> AsyncTransporter:
                return AsyncTransporter(server.host, server.port, **settings)

            self._async = self._loop.run_until_complete(make())

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        return self._loop.run_until_complete(asyncio.wait_for(coro, 60))

    def send(self, mail: Any, **kwargs: Any) -> SendStatus:
        """``send()`` of the transporter."""
        if self._sync is not None:
            return self._sync.send(mail, **kwargs)
        assert self._async is not None
        status: SendStatus = self._run(self._async.send(mail, **kwargs))
        return status

    def send_many(self, mails: Iterable[Any]) -> list[SendStatus]:
        """``send_many()`` of the transporter."""
        if self._sync is not None:
            return self._sync.send_many(mails)
        assert self._async is not None
        statuses: list[SendStatus] = self._run(self._async.send_many(mails))
        return statuses

    def check_connection(self) -> Status:
        """``check_connection()`` of the transporter."""
        if self._sync is not None:
            return self._sync.check_connection()
        assert self._async is not None
        status: Status = self._run(self._async.check_connection())
        return status

    def close(self) -> None:
        """Close the transporter (QUIT) and the private loop."""
        if self._sync is not None:
            self._sync.close()
        if self._async is not None and self._loop is not None:
            try:
                self._run(self._async.close())
            finally:
                self._loop.close()
                self._loop = None


@pytest.fixture(params=["sync", "async"])
def client(
    request: pytest.FixtureRequest, client_ssl_context: ssl.SSLContext
) -> Iterator[Callable[..., Client]]:
    """Factory ``client(server, **settings)``: STARTTLS with the test CA unless overridden."""
    made: list[Client] = []

    def factory(server: MtaServer, **settings: Any) -> Client:
        settings.setdefault("security", Security.STARTTLS)
        if settings["security"] is not Security.NONE:
            settings.setdefault("ssl_context", client_ssl_context)
        settings.setdefault("local_hostname", "client.example.test")
        settings.setdefault("connection_timeout", 10)
        settings.setdefault("send_timeout", 60)
        c = Client(request.param, server, settings)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()
