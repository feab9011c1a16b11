"""chatapp's TLS layer: Twisted's, handing up what one socket read decrypted to at once, and bounded.

``TLSMemoryBIOProtocol`` calls the wrapped protocol's ``dataReceived`` once
per TLS record (OpenSSL's ``SSL_read`` never returns more than one record),
so a file arriving in 16 KiB records costs the peer session a framer step,
a bookkeeping call and a queue entry every 16 KiB: 65,536 times a GiB, about
a quarter of the receiver's CPU. :class:`GatheringTLSProtocol` joins the
records decrypted from one read of the socket (at most its read size plus
one partial record) and delivers them at once, before any end of the
connection that came after them.

It also bounds what the other side can make the TLS layer itself do:

- **Post-handshake messages.** Each TLS 1.3 ``KeyUpdate`` that asks for one
  makes OpenSSL queue a reply, and one byte of data between them resets
  OpenSSL's own limit of 32 in a row. :func:`note_tls_step` (the info callback
  of every context in :mod:`chatapp.tls.contexts`) counts OpenSSL's steps
  after the handshake; past :data:`MAX_POST_HANDSHAKE_STEPS` the connection
  is aborted. chatapp never sends such messages itself (no session tickets,
  no key updates), so a well-behaved peer never comes near it.
- **Replies.** Whatever OpenSSL queued is handed to the transport whole
  (Twisted's layer moves at most 32 KiB a time), where the transport's own
  buffer and producer see it.
- **The end.** When TLS ends (the peer's ``close_notify``, or an error) the
  application's producer is stopped at once: what it would write is dropped,
  so a file being sent must not go on being read. The TCP connection is closed
  once our last bytes are out, or aborted after :data:`CLOSE_WAIT` seconds
  (Twisted's layer waits for ever on a peer that never reads). When we end it
  (``loseConnection``), Twisted's layer sends our ``close_notify`` and waits
  for the peer's before it closes TCP, for ever if none comes: the connection
  is aborted after :data:`CLOSE_WAIT` seconds then too, so a peer that keeps
  its end open cannot keep a connection we closed (and what it holds).
- **Tiny records.** A read that decrypted to more than
  :data:`TINY_RECORDS` records is a peer sending very small records (a
  record costs far more to open than its byte): the socket is then read
  :data:`SMALL_READ` bytes at a time, so one read never keeps the reactor
  from other connections for long.

Writing, it hands OpenSSL up to :data:`WRITE_SLICE` bytes at once (Twisted's
layer: a copied 16 KiB at a time) and the transport all their records in one write.

It replaces Twisted's private ``_flushReceiveBIO``, ``_flushSendBIO`` and ``_write``. Should
a later Twisted stop calling them, records are simply delivered one by one again
and nothing is bounded here; ``tests/test_tls_records.py`` notices.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from chatapp.tls.known_hosts import format_address
from chatapp.tls.transports import inner_transport

log = Logger()

# What one SSL_read may return: a record is at most 16 KiB of plaintext, so this never cuts one in two calls.
RECORD_READ = 2**15
# OpenSSL's info-callback steps after the handshake (a KeyUpdate and its reply take four to six).
MAX_POST_HANDSHAKE_STEPS = 128
# Plaintext handed to one SSL_write: OpenSSL cuts it into 16 KiB records itself, into the memory BIO.
WRITE_SLICE = 2**18
# What one bio_read may take: the records of a WRITE_SLICE with their headers and tags, in one piece.
SEND_READ = WRITE_SLICE + 2**13
# After TLS ended (the peer's close_notify, or an error), or we closed, the TCP connection is closed once
# the last bytes are through both ways; a peer that never reads them, or never answers our close_notify,
# gets this long, then the connection is aborted.
CLOSE_WAIT = 5.0
# Records in one read past which the peer is taken to send tiny records, and the read size used then.
TINY_RECORDS = 512
SMALL_READ = 16 * 1024

# The protocol TLSMemoryBIOFactory builds by default (a subclass that coalesces small writes).
_BaseTLS: type[TLSMemoryBIOProtocol] = TLSMemoryBIOFactory.protocol


def note_tls_step(connection: SSL.Connection, where: int, ret: int) -> None:
    """OpenSSL's info callback: tell the connection's TLS layer about each step of a handshake."""
    if where & SSL.SSL_CB_LOOP:
        layer = connection.get_app_data()
        if isinstance(layer, GatheringTLSProtocol):
            layer.tls_step()


class GatheringTLSProtocol(_BaseTLS):  # type: ignore[valid-type,misc]
    """A TLS layer delivering everything one socket read decrypted to in one ``dataReceived``."""

    _post_handshake_steps = 0
    _small_reads = False
    _close_wait: IDelayedCall | None = None
    _tcp_gone = False

    def tls_step(self) -> None:
        """OpenSSL took a step of a handshake (see :func:`note_tls_step`)."""
        if self._handshakeDone:
            self._post_handshake_steps += 1

    def _flushReceiveBIO(self) -> None:
        pieces: list[bytes] = []
        while not self._lostTLSConnection and self._post_handshake_steps <= MAX_POST_HANDSHAKE_STEPS:
            try:
                pieces.append(self._tlsConnection.recv(RECORD_READ))
            except WantReadError:
                break  # everything the BIO held is decrypted
            except ZeroReturnError:
                # the peer's close alert: the bytes before it reach the application first
                self._deliver(pieces)
                pieces = []
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                failure = Failure()
                self._deliver(pieces)
                pieces = []
                self._tlsShutdownFinished(failure)
        if self._post_handshake_steps > MAX_POST_HANDSHAKE_STEPS:
            self._too_many_post_handshake_messages()
            return
        if len(pieces) > TINY_RECORDS and not self._small_reads:
            self._read_in_small_bites(len(pieces))
        self._deliver(pieces)
        self._flushSendBIO()

    def _write(self, data: bytes) -> None:
        # Twisted's layer copies out and encrypts 16 KiB at a time and reads the BIO after each record:
        # a transport write per record. Here a slice is a view (no copy), encrypted in one SSL_write
        # (our contexts turn partial writes off) and its records go to the transport in one write.
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        done = 0
        while done < len(view):
            end = min(done + WRITE_SLICE, len(view))
            try:
                while done < end:  # once with our contexts; per record with partial writes on
                    done += self._tlsConnection.send(view[done:end])
            except WantReadError:
                self._flushSendBIO()  # the records already made go first
                self._bufferedWrite(bytes(view[done:]))
                return
            except Error:
                self._tlsShutdownFinished(Failure())  # as Twisted does: the transport closes with this error
                return
            self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        while self.transport is not None:
            try:
                data = self._tlsConnection.bio_read(SEND_READ)
            except WantReadError:
                return  # nothing was queued
            self.transport.write(data)
            if len(data) < SEND_READ:
                return  # that was all of it (asking again would only raise, once per record sent)

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        super()._tlsShutdownFinished(reason)
        producer = self._producer
        if producer is not None:
            producer.stopProducing()  # from now on its writes are dropped: it must not go on making them
        self._wait_for_the_close("ended TLS and does not read what is left")

    def loseConnection(self) -> None:
        super().loseConnection()
        self._wait_for_the_close("does not close after we did")

    def _wait_for_the_close(self, what: str) -> None:
        if self._close_wait is None and not self._tcp_gone:
            self._close_wait = self.factory.clock.callLater(CLOSE_WAIT, self._close_waited, what)

    def _close_waited(self, what: str) -> None:
        self._close_wait = None
        log.info("TLS: {peer} {what}: dropping the connection", peer=self._who(), what=what)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._tcp_gone = True  # Twisted's connectionLost may end TLS itself: no wait to start then
        if self._close_wait is not None:
            if self._close_wait.active():
                self._close_wait.cancel()
            self._close_wait = None
        super().connectionLost(reason)

    def _deliver(self, pieces: list[bytes]) -> None:
        if pieces and not self._aborted:
            ProtocolWrapper.dataReceived(self, pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _too_many_post_handshake_messages(self) -> None:
        if not self._aborted:
            log.info(
                "TLS: {peer} sent post-handshake messages without end (key updates?): closing",
                peer=self._who(),
            )
            self.abortConnection()

    def _who(self) -> str:
        address: Any = self.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return format_address(host, port) if host is not None and port is not None else str(address)

    def _read_in_small_bites(self, records: int) -> None:
        self._small_reads = True
        inner = inner_transport(self)
        if isinstance(getattr(inner, "bufferSize", None), int):
            log.info(
                "TLS: {peer} sent {records} records in one read: reading it {size} bytes at a time",
                peer=self._who(),
                records=records,
                size=SMALL_READ,
            )
            inner.bufferSize = min(inner.bufferSize, SMALL_READ)


class GatheringTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building :class:`GatheringTLSProtocol` connections; ``clock`` times their end."""

    protocol = GatheringTLSProtocol

    def __init__(self, creator: Any, is_client: bool, wrapped_factory: Any, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor as default_reactor

            clock = default_reactor
        super().__init__(creator, is_client, wrapped_factory, clock)
        self.clock: IReactorTime = clock


@implementer(IStreamClientEndpoint)
class GatheringTLSEndpoint:
    """Like Twisted's ``wrapClientTLS``: TLS over ``endpoint``, with :class:`GatheringTLSProtocol`."""

    def __init__(self, creator: Any, endpoint: IStreamClientEndpoint) -> None:
        self._creator = creator
        self._endpoint = endpoint

    def connect(self, factory: Any) -> Any:
        connected: Any = self._endpoint.connect(GatheringTLSFactory(self._creator, True, factory))

        def inner(tls: Any) -> Protocol:
            return tls.wrappedProtocol

        return connected.addCallback(inner)
