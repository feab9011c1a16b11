"""A bare line client for loopback tests: it speaks bytes, so it can also be a hostile one."""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from chatapp.tls.contexts import PeerConnectorTLS
from chatapp.tls.identity import new_identity
from chatapp.wire import LineBuffer

TIMEOUT = 10.0


class LineClient(Protocol):
    def __init__(self) -> None:
        self._buffer = LineBuffer(1 << 20)
        self._lines: deque[str] = deque()
        self._waiters: deque[defer.Deferred[str]] = deque()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.is_closed = False

    def dataReceived(self, data: bytes) -> None:
        lines, _ = self._buffer.feed(data)
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if self._waiters:
                self._waiters.popleft().callback(line)
            else:
                self._lines.append(line)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.is_closed = True
        while self._waiters:
            self._waiters.popleft().errback(Failure(ConnectionDone("closed before the line came")))
        self.closed.callback(None)

    def next_line(self) -> defer.Deferred[str]:
        if self._lines:
            return defer.succeed(self._lines.popleft())
        if self.is_closed:
            return defer.fail(ConnectionDone("closed"))
        d: defer.Deferred[str] = defer.Deferred()
        self._waiters.append(d)
        return d.addTimeout(TIMEOUT, reactor)

    def send(self, *lines: str) -> None:
        assert self.transport is not None
        self.transport.write("".join(line + "\r\n" for line in lines).encode("utf-8"))

    async def ask(self, line: str) -> str:
        self.send(line)
        return await self.next_line()

    async def close(self) -> None:
        if not self.is_closed:
            assert self.transport is not None
            self.transport.loseConnection()
        await self.closed


_ACCEPT_ANY: IOpenSSLClientConnectionCreator | None = None


def accept_any_tls() -> IOpenSSLClientConnectionCreator:
    """A TLS 1.3 client that takes any server certificate: a raw test client checks nothing (and is
    the hostile client some tests play). Built once: its context is never changed after use."""
    global _ACCEPT_ANY
    if _ACCEPT_ANY is None:
        _ACCEPT_ANY = PeerConnectorTLS(new_identity("test"))
    return _ACCEPT_ANY


async def connect_lines(
    port: int,
    source: str = "127.0.0.1",
    greeting: str | None = "* HELLO chatapp/2",
    tls: bool | IOpenSSLClientConnectionCreator = True,
) -> LineClient:
    """Connect from ``source`` (any 127.0.0.0/8 address) and read the greeting if one is given.

    ``tls``: True speaks TLS and takes any certificate, False plain TCP, or a connection creator
    to speak TLS with (a peer link: ``PeerConnectorTLS(identity)``, which presents that identity).
    """
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    if tls is True:
        endpoint = wrapClientTLS(accept_any_tls(), endpoint)
    elif tls is not False:
        endpoint = wrapClientTLS(tls, endpoint)
    client = await connectProtocol(endpoint, LineClient()).addTimeout(TIMEOUT, reactor)
    if greeting is not None:
        assert await client.next_line() == greeting
    return client
