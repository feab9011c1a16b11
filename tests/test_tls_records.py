"""GatheringTLSFactory: what one read of the socket decrypts to reaches the application in one piece."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from chatapp.tls.contexts import PeerConnectorTLS, PeerListenerTLS
from chatapp.tls.identity import new_identity
from chatapp.tls.records import GatheringTLSFactory

KiB = 1024


class App(protocol.Protocol):
    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason


def pump(source: StringTransport, target: Any) -> bytes:
    """Hand what ``source`` holds to ``target`` in one ``dataReceived`` (one read of a socket)."""
    data = source.value()
    source.clear()
    if data:
        target.dataReceived(data)
    return data


CLOCK = Clock()  # the connector's TLS gathers small writes until the next reactor turn: CLOCK.advance(0)


def tls_pair(server_factory: type[TLSMemoryBIOFactory]) -> tuple[Any, App, StringTransport, Any, App, StringTransport]:
    """A connector (Twisted's own TLS) and a listener built by ``server_factory``, handshake done."""
    clock = CLOCK
    server_app, client_app = App(), App()
    server = server_factory(
        PeerListenerTLS(new_identity("alice")), False, protocol.Factory.forProtocol(lambda: server_app), clock
    ).buildProtocol(None)
    client = TLSMemoryBIOFactory(
        PeerConnectorTLS(new_identity("bob")), True, protocol.Factory.forProtocol(lambda: client_app), clock
    ).buildProtocol(None)
    server_wire, client_wire = StringTransport(), StringTransport()
    server.makeConnection(server_wire)
    client.makeConnection(client_wire)
    for _ in range(10):
        if not (pump(client_wire, server) + pump(server_wire, client)):
            break
    assert server._handshakeDone and client._handshakeDone
    return server, server_app, server_wire, client, client_app, client_wire


def test_the_records_of_one_read_arrive_as_one_piece() -> None:
    server, app, _, client, _, client_wire = tls_pair(GatheringTLSFactory)
    content = os.urandom(256 * KiB)
    client.write(content)
    assert len(client_wire.value()) > 16 * 16 * KiB  # 16 records or more on the wire
    pump(client_wire, server)
    assert app.pieces == [content]


def test_twisted_alone_hands_over_one_record_at_a_time() -> None:
    """The contrast: the same bytes through TLSMemoryBIOFactory come in 16 KiB pieces."""
    server, app, _, client, _, client_wire = tls_pair(TLSMemoryBIOFactory)
    content = os.urandom(256 * KiB)
    client.write(content)
    pump(client_wire, server)
    assert len(app.pieces) >= 16 and max(map(len, app.pieces)) <= 16 * KiB
    assert b"".join(app.pieces) == content


def test_bytes_before_the_close_alert_arrive_before_the_close() -> None:
    server, app, server_wire, client, _, client_wire = tls_pair(GatheringTLSFactory)
    content = os.urandom(100 * KiB)
    client.write(content)
    client.loseConnection()  # the close alert follows the data in the same read
    pump(client_wire, server)
    assert app.pieces == [content]
    assert server_wire.disconnecting  # the close alert was answered and TCP is being closed
    assert app.lost is None  # connectionLost comes from TCP, later
    server.connectionLost(Failure(protocol.connectionDone.value))
    assert app.lost is not None and app.pieces == [content]


def test_garbage_after_good_records_ends_tls_after_delivering_them() -> None:
    server, app, server_wire, client, _, client_wire = tls_pair(GatheringTLSFactory)
    content = os.urandom(40 * KiB)
    client.write(content)
    CLOCK.advance(0)
    data = client_wire.value()
    assert len(data) > len(content)
    server.dataReceived(data + b"\x17\x03\x03\x00\x10" + b"\x00" * 16)  # a forged application-data record
    assert app.pieces == [content]
    assert server_wire.disconnecting
    server.connectionLost(Failure(protocol.connectionDone.value))
    assert app.lost is not None and app.pieces == [content]


def test_nothing_is_delivered_after_an_abort() -> None:
    server, app, _, client, _, client_wire = tls_pair(GatheringTLSFactory)
    server.abortConnection()
    client.write(b"late bytes")
    CLOCK.advance(0)
    assert client_wire.value()
    pump(client_wire, server)
    assert app.pieces == []
