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
from chatapp.tls.records import (
    CLOSE_WAIT,
    MAX_POST_HANDSHAKE_STEPS,
    SMALL_READ,
    TINY_RECORDS,
    WRITE_SLICE,
    GatheringTLSFactory,
)

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


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def sending_pair(listener_factory: type[TLSMemoryBIOFactory]) -> tuple[Any, CountingTransport, Any, App]:
    """``tls_pair``, with the listener's transport counting its writes."""
    server, _, server_wire, client, client_app, _ = tls_pair(listener_factory)
    counting = CountingTransport()
    server.transport = counting
    server_wire.clear()
    return server, counting, client, client_app


def test_a_large_write_goes_to_the_transport_in_one_write_per_slice() -> None:
    server, wire, client, client_app = sending_pair(GatheringTLSFactory)
    content = os.urandom(2 * WRITE_SLICE + 5)
    server.write(content)
    assert wire.writes == 3  # Twisted's layer: one per 16 KiB record, 33 here
    pump(wire, client)
    assert b"".join(client_app.pieces) == content


def test_our_contexts_encrypt_a_slice_in_one_call() -> None:
    """Partial writes are off on chatapp's contexts: OpenSSL cuts a whole slice into records in one SSL_write
    (pyOpenSSL turns partial writes on, and then each call makes one record)."""
    server, wire, client, client_app = sending_pair(GatheringTLSFactory)
    calls: list[int] = []
    connection = server._tlsConnection

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(connection, name)

        def send(self, data: Any) -> int:
            calls.append(len(data))
            return int(connection.send(data))

    server._tlsConnection = Counting()
    content = os.urandom(WRITE_SLICE + 5)
    server.write(content)
    assert calls == [WRITE_SLICE, 5]
    pump(wire, client)
    assert b"".join(client_app.pieces) == content


def test_twisted_alone_writes_each_record_on_its_own() -> None:
    """The contrast, so the test above cannot pass by Twisted doing the same already."""
    server, wire, client, client_app = sending_pair(TLSMemoryBIOFactory)
    content = os.urandom(2 * WRITE_SLICE + 5)
    server.write(content)
    assert wire.writes >= len(content) // (16 * KiB)
    pump(wire, client)
    assert b"".join(client_app.pieces) == content


def test_a_write_after_the_tls_connection_is_lost_is_dropped() -> None:
    server, wire, _, _ = sending_pair(GatheringTLSFactory)
    server.abortConnection()
    before = wire.writes
    server.write(b"x" * 100)
    assert wire.writes == before


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def test_after_the_peers_close_notify_our_producer_stops_and_an_unread_connection_is_dropped() -> None:
    server, _, server_wire, client, _, client_wire = tls_pair(GatheringTLSFactory)
    producer = Producer()
    server.registerProducer(producer, True)
    client.loseConnection()  # close_notify
    pump(client_wire, server)
    assert producer.calls[-1:] == ["stop"]  # what it would write now goes nowhere
    assert server_wire.disconnecting and not server_wire.disconnected  # closing, our last bytes first
    CLOCK.advance(CLOSE_WAIT - 0.1)
    assert not server_wire.disconnected
    CLOCK.advance(0.1)
    assert server_wire.disconnected  # the peer never read them: aborted
    server.connectionLost(Failure(protocol.connectionDone.value))
    assert not CLOCK.getDelayedCalls()


def test_a_peer_that_never_answers_our_close_notify_is_dropped() -> None:
    """We close (a refusal, BYE); Twisted's layer sends close_notify and would wait for the peer's for ever,
    with the TCP connection, its descriptor and the session's slot held: aborted after CLOSE_WAIT."""
    server, app, server_wire, _, _, client_wire = tls_pair(GatheringTLSFactory)
    server.write(b"ERR 403 bad-token\r\n")
    server.loseConnection()
    assert client_wire.value() == b"" and server_wire.value()  # our reply and close_notify are on the wire
    CLOCK.advance(CLOSE_WAIT - 0.1)
    assert not server_wire.disconnected  # the peer still has time to answer
    CLOCK.advance(0.1)
    assert server_wire.disconnected  # it never did: aborted
    server.connectionLost(Failure(protocol.connectionDone.value))
    assert app.lost is not None and not CLOCK.getDelayedCalls()


def test_a_peer_that_answers_our_close_notify_closes_without_a_timer_left() -> None:
    server, _, server_wire, client, _, client_wire = tls_pair(GatheringTLSFactory)
    server.loseConnection()
    pump(server_wire, client)  # the peer reads our close_notify and answers with its own
    pump(client_wire, server)
    assert server_wire.disconnecting  # both sides said close_notify: TCP is being closed
    server.connectionLost(Failure(protocol.connectionDone.value))
    assert not CLOCK.getDelayedCalls() and not server_wire.disconnected


def test_a_connection_that_closes_in_time_leaves_no_timer() -> None:
    server, _, server_wire, client, _, client_wire = tls_pair(GatheringTLSFactory)
    client.loseConnection()
    pump(client_wire, server)
    assert CLOCK.getDelayedCalls()
    server.connectionLost(Failure(protocol.connectionDone.value))
    assert not CLOCK.getDelayedCalls() and not server_wire.disconnected


# -- what the other side can make the TLS layer do ----------------------------------------------


class StdlibPeer:
    """A TLS 1.3 client from Python's own ssl module over memory BIOs: it can send KeyUpdate messages,
    which pyOpenSSL cannot (through ctypes, on the OpenSSL the ssl module is linked with)."""

    def __init__(self, wire: StringTransport, server: Any) -> None:
        import _ssl
        import ctypes
        import ssl
        import tempfile
        from pathlib import Path

        from chatapp.tls.identity import identity_to_pem

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        with tempfile.TemporaryDirectory() as folder:
            pem = Path(folder) / "id.pem"
            pem.write_bytes(identity_to_pem(new_identity("mallory")))
            context.load_cert_chain(pem)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing)
        self.wire, self.server = wire, server
        self.ssl = ssl
        for _ in range(10):
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            self.exchange()
        library = ctypes.CDLL(_ssl.__file__)  # dlsym finds libssl's symbols through the module's handle
        library.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
        library.SSL_version.argtypes = [ctypes.c_void_p]
        # CPython's PySSLSocket: PyObject_HEAD (16 bytes), then the socket (8), then the SSL *
        self._ssl = ctypes.c_void_p.from_address(id(self.tls._sslobj) + 24).value  # type: ignore[attr-defined]
        assert library.SSL_version(self._ssl) == 0x0304, "not the SSL * of a TLS 1.3 connection"
        self._library = library

    def exchange(self) -> None:
        data = self.outgoing.read()
        if data:
            self.server.dataReceived(data)
        reply = self.wire.value()
        self.wire.clear()
        if reply:
            self.incoming.write(reply)
            try:
                self.tls.read(65536)
            except (self.ssl.SSLWantReadError, self.ssl.SSLError):
                pass

    def key_update(self) -> None:
        assert self._library.SSL_key_update(self._ssl, 1) == 1  # 1: and ask for the other side's
        self.tls.write(b"\n")  # a byte of data between: OpenSSL's own limit is 32 updates in a row
        self.exchange()


def listener() -> tuple[Any, App, StringTransport]:
    app = App()
    server = GatheringTLSFactory(
        PeerListenerTLS(new_identity("alice")), False, protocol.Factory.forProtocol(lambda: app), CLOCK
    ).buildProtocol(None)
    wire = StringTransport()
    server.makeConnection(wire)
    return server, app, wire


def test_a_flood_of_key_updates_is_cut() -> None:
    server, app, wire = listener()
    peer = StdlibPeer(wire, server)
    assert server._handshakeDone
    sent = 0
    while not wire.disconnected and sent < 200:
        peer.key_update()
        sent += 1
    assert wire.disconnected  # aborted
    assert sent <= MAX_POST_HANDSHAKE_STEPS // 4 + 1  # each update and its reply take four steps or more
    assert len(app.pieces) < sent  # nothing reaches the application once the limit is passed


def test_a_few_key_updates_are_answered() -> None:
    server, app, wire = listener()
    peer = StdlibPeer(wire, server)
    for _ in range(5):
        peer.key_update()
    peer.tls.write(b"still here\n")
    peer.exchange()
    assert not wire.disconnected
    assert b"".join(app.pieces).endswith(b"still here\n")


def test_tiny_records_make_the_socket_read_in_small_bites() -> None:
    server, app, wire = listener()
    wire.bufferSize = 256 * KiB  # type: ignore[attr-defined]  # what a TCP transport has, and the session sets
    peer = StdlibPeer(wire, server)
    for byte in range(TINY_RECORDS + 1):
        peer.tls.write(bytes([65 + byte % 26]))  # one record each
    peer.exchange()
    assert b"".join(app.pieces) == bytes(65 + b % 26 for b in range(TINY_RECORDS + 1))
    assert len(app.pieces) == 1  # gathered all the same
    assert wire.bufferSize == SMALL_READ  # type: ignore[attr-defined]
    assert not wire.disconnecting
