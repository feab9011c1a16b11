"""Real Twisted TLS over TCP on 127.0.0.1: both links, the server verdicts, refusals, the inner transport."""

from __future__ import annotations

import datetime
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from tls_certs import NOW, make_ca, make_leaf
from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IListeningPort, IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from chatapp.tls.contexts import PeerConnectorTLS, PeerListenerTLS, ServerLinkClientTLS, ServerLinkServerTLS
from chatapp.tls.identity import Identity, new_identity
from chatapp.tls.known_hosts import KnownServers
from chatapp.tls.server_trust import Mismatch, ServerTrust, Trusted, Unknown
from chatapp.tls.transports import inner_transport, peer_fingerprint, tls_connection

TIMEOUT = 10


@implementer(IHandshakeListener)
class Side(protocol.Protocol):
    """One end: ``handshake`` fires at handshakeCompleted, ``lost`` at connectionLost (the reason in ``reason``)."""

    transport: Any  # the TLS wrapper; tests reach through it on purpose

    def __init__(self) -> None:
        self.handshake: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self.received = b""

    def handshakeCompleted(self) -> None:
        self.handshake.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


class Sides(protocol.Factory):
    def __init__(self) -> None:
        self.made: list[Side] = []
        self.first: defer.Deferred[Side] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Side:
        side = Side()
        side.factory = self
        self.made.append(side)
        if len(self.made) == 1:
            self.first.callback(side)
        return side


@dataclass
class Loopback:
    ports: list[IListeningPort] = field(default_factory=list)
    sides: list[Side] = field(default_factory=list)

    async def listen(self, creator: Any) -> tuple[int, Sides]:
        sides = Sides()
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(TLSMemoryBIOFactory(creator, False, sides))
        self.ports.append(port)
        return port.getHost().port, sides

    async def connect(self, creator: Any, port: int) -> Side:
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        side = await endpoint.connect(protocol.Factory.forProtocol(Side))
        assert isinstance(side, Side)
        self.sides.append(side)
        return side


def within(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    return d.addTimeout(TIMEOUT, reactor)


@pytest_twisted.async_yield_fixture
async def loopback() -> AsyncIterator[Loopback]:
    net = Loopback()
    yield net
    for side in net.sides:
        if not side.lost.called:
            side.transport.abortConnection()
        await within(side.lost)
    for port in net.ports:
        sides: Sides = port.factory.wrappedFactory  # type: ignore[attr-defined]
        for side in sides.made:
            if not side.lost.called:
                side.transport.abortConnection()
            await within(side.lost)
        await defer.maybeDeferred(port.stopListening)


async def connected(net: Loopback, server_creator: Any, client_creator: Any) -> tuple[Side, Side]:
    port, sides = await net.listen(server_creator)
    client = await net.connect(client_creator, port)
    await within(client.handshake)
    server = await within(sides.first)
    await within(server.handshake)
    return server, client


@pytest_twisted.ensureDeferred
async def test_server_link_speaks_tls13_and_an_unknown_self_signed_server_is_unknown(
    loopback: Loopback, tmp_path: Path
) -> None:
    server_identity = new_identity("server")
    creator = ServerLinkClientTLS("127.0.0.1")  # the system roots: nothing there signed this
    server, client = await connected(loopback, ServerLinkServerTLS(server_identity), creator)
    assert tls_connection(client.transport).get_protocol_version_name() == "TLSv1.3"
    assert tls_connection(server.transport).get_protocol_version_name() == "TLSv1.3"
    assert not creator.trusted_by_roots(client.transport)
    trust = ServerTrust(KnownServers(tmp_path / "known_servers"), "127.0.0.1", 7000)
    assert trust.check(client.transport, creator) == Unknown(server_identity.fingerprint)
    # the server asked for no client certificate
    assert tls_connection(server.transport).get_peer_certificate() is None


@pytest_twisted.ensureDeferred
async def test_a_pinned_server_is_trusted_and_another_key_is_a_mismatch(loopback: Loopback, tmp_path: Path) -> None:
    real, impostor = new_identity("server"), new_identity("server")
    known = KnownServers(tmp_path / "known_servers")
    (tmp_path / "known_servers").write_text("# other servers\nother:1 sha256:" + "0" * 64 + "\n")
    known.pin("127.0.0.1", 7000, real.fingerprint)
    trust = ServerTrust(known, "127.0.0.1", 7000)
    creator = ServerLinkClientTLS("127.0.0.1", trust_roots=[])

    _, client = await connected(loopback, ServerLinkServerTLS(real), creator)
    assert trust.check(client.transport, creator) == Trusted("pin", real.fingerprint)

    _, client = await connected(loopback, ServerLinkServerTLS(impostor), creator)
    assert trust.check(client.transport, creator) == Mismatch(
        real.fingerprint, impostor.fingerprint, tmp_path / "known_servers", 3
    )


@pytest_twisted.ensureDeferred
async def test_first_contact_with_a_given_fingerprint(loopback: Loopback, tmp_path: Path) -> None:
    real, impostor = new_identity(), new_identity()
    known = KnownServers(tmp_path / "known_servers")
    creator = ServerLinkClientTLS("127.0.0.1", trust_roots=[])
    trust = ServerTrust(known, "127.0.0.1", 7000, given=real.fingerprint.upper().replace("SHA256", "sha256"))

    _, client = await connected(loopback, ServerLinkServerTLS(impostor), creator)
    assert trust.check(client.transport, creator) == Mismatch(real.fingerprint, impostor.fingerprint, None, None)

    _, client = await connected(loopback, ServerLinkServerTLS(real), creator)
    verdict = trust.check(client.transport, creator)
    assert verdict == Trusted("given", real.fingerprint)
    trust.pin(verdict.fingerprint)
    assert ServerTrust(known, "127.0.0.1", 7000).check(client.transport, creator) == Trusted("pin", real.fingerprint)


@pytest_twisted.ensureDeferred
async def test_a_certificate_from_a_trusted_root_for_this_host_needs_no_pin(loopback: Loopback, tmp_path: Path) -> None:
    ca = make_ca()
    leaf = make_leaf(ca, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    trust = ServerTrust(KnownServers(tmp_path / "known_servers"), "localhost", 7000)
    for host in ("127.0.0.1", "localhost"):
        creator = ServerLinkClientTLS(host, trust_roots=[ca.certificate])
        _, client = await connected(loopback, ServerLinkServerTLS(leaf), creator)
        assert creator.trusted_by_roots(client.transport), host
        assert trust.check(client.transport, creator) == Trusted("roots", leaf.fingerprint)
    assert not (tmp_path / "known_servers").exists()  # nothing pinned


@pytest.mark.parametrize(
    "why",
    ["another host name", "expired", "unknown root", "no chain sent"],
)
@pytest_twisted.ensureDeferred
async def test_root_trust_needs_the_chain_the_name_and_the_dates(loopback: Loopback, why: str) -> None:
    ca = make_ca()
    host = "localhost"
    roots = [ca.certificate]
    leaf = make_leaf(ca)
    if why == "another host name":
        host = "chat.example.org"
    elif why == "expired":
        leaf = make_leaf(ca, not_after=NOW - datetime.timedelta(days=1))
    elif why == "unknown root":
        roots = [make_ca().certificate]
    else:
        roots = [make_ca().certificate]
        leaf = Identity(leaf.certificate, (), leaf.private_key)
    creator = ServerLinkClientTLS(host, trust_roots=roots)
    _, client = await connected(loopback, ServerLinkServerTLS(leaf), creator)
    assert not creator.trusted_by_roots(client.transport)


@pytest_twisted.ensureDeferred
async def test_mutual_peer_tls_shows_each_side_the_others_fingerprint(loopback: Loopback) -> None:
    listener_identity, connector_identity = new_identity("alice"), new_identity("bob")
    server, client = await connected(loopback, PeerListenerTLS(listener_identity), PeerConnectorTLS(connector_identity))
    assert peer_fingerprint(server.transport) == connector_identity.fingerprint
    assert peer_fingerprint(client.transport) == listener_identity.fingerprint
    assert tls_connection(server.transport).get_protocol_version_name() == "TLSv1.3"
    client.transport.write(b"HELLO")
    while server.received != b"HELLO":
        await within(deferred_later())


def deferred_later() -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    return d


async def refused_by_the_listener(net: Loopback, listener: Any, client_creator: Any) -> Failure:
    """Connect; the listener must lose the connection without ever completing a handshake."""
    port, sides = await net.listen(listener)
    await net.connect(client_creator, port)
    server = await within(sides.first)
    await within(server.lost)
    assert not server.handshake.called
    assert server.reason is not None
    return server.reason


@pytest_twisted.ensureDeferred
async def test_a_connector_without_a_certificate_is_refused_by_the_listener(loopback: Loopback) -> None:
    reason = await refused_by_the_listener(
        loopback, PeerListenerTLS(new_identity()), ServerLinkClientTLS("127.0.0.1", trust_roots=[])
    )
    assert reason.check(SSL.Error)
    assert "peer did not return a certificate" in str(reason.value)


@implementer(IOpenSSLClientConnectionCreator)
class OldClient:
    """A client that speaks TLS 1.2 at most."""

    def __init__(self) -> None:
        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.set_max_proto_version(SSL.TLS1_2_VERSION)
        self._context.set_verify(SSL.VERIFY_NONE)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)


@pytest.mark.parametrize("listener", [ServerLinkServerTLS, PeerListenerTLS])
@pytest_twisted.ensureDeferred
async def test_a_tls12_client_is_refused(loopback: Loopback, listener: Callable[[Identity], Any]) -> None:
    reason = await refused_by_the_listener(loopback, listener(new_identity()), OldClient())
    assert reason.check(SSL.Error)
    assert "unsupported protocol" in str(reason.value)
    assert not loopback.sides[0].handshake.called


@pytest_twisted.ensureDeferred
async def test_socket_options_reach_the_tcp_transport_under_tls(loopback: Loopback) -> None:
    server, client = await connected(loopback, PeerListenerTLS(new_identity()), PeerConnectorTLS(new_identity()))
    for side in (server, client):
        inner = inner_transport(side.transport)
        assert isinstance(inner, tcp.Connection)
        assert inner is side.transport.transport
        inner.setTcpNoDelay(True)
        assert inner.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        inner.bufferSize = 256 * 1024
        assert inner.bufferSize == 256 * 1024
    # and the connection still carries bytes both ways
    client.transport.write(b"ping")
    server.transport.write(b"pong")
    while (server.received, client.received) != (b"ping", b"pong"):
        await within(deferred_later())
