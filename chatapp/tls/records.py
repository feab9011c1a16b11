"""TLS that hands the application what one socket read decrypted to in one piece, not one piece per record.

``TLSMemoryBIOProtocol`` calls the wrapped protocol's ``dataReceived`` once
per TLS record (OpenSSL's ``SSL_read`` never returns more than one record),
so a file arriving in 16 KiB records costs the peer session a framer step,
a bookkeeping call and a queue entry every 16 KiB: 65,536 times a GiB, about
a quarter of the receiver's CPU. :class:`GatheringTLSFactory` wraps like
``TLSMemoryBIOFactory`` but joins the records decrypted from one read of the
socket (at most its read size plus one partial record) and delivers them at
once, before any end of the connection that came after them.

It replaces Twisted's private ``_flushReceiveBIO``. Should a later Twisted stop
calling that method, the records are simply delivered one by one again;
``tests/test_tls_records.py`` notices.
"""

from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

# What one SSL_read may return: a record is at most 16 KiB of plaintext, so this never cuts one in two calls.
RECORD_READ = 2**15

# The protocol TLSMemoryBIOFactory builds by default (a subclass that coalesces small writes).
_BaseTLS: type[TLSMemoryBIOProtocol] = TLSMemoryBIOFactory.protocol


class GatheringTLSProtocol(_BaseTLS):  # type: ignore[valid-type,misc]
    """A TLS layer delivering everything one socket read decrypted to in one ``dataReceived``."""

    def _flushReceiveBIO(self) -> None:
        pieces: list[bytes] = []
        while not self._lostTLSConnection:
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
        self._deliver(pieces)
        self._flushSendBIO()

    def _deliver(self, pieces: list[bytes]) -> None:
        if pieces and not self._aborted:
            ProtocolWrapper.dataReceived(self, pieces[0] if len(pieces) == 1 else b"".join(pieces))


class GatheringTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building :class:`GatheringTLSProtocol` connections."""

    protocol = GatheringTLSProtocol
