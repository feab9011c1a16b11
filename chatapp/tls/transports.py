"""What an application reads from a Twisted TLS transport once ``handshakeCompleted`` has been called.

``transport`` below is the ``self.transport`` of a protocol wrapped by ``TLSMemoryBIOFactory`` (directly,
through ``wrapClientTLS``, or under further ``ProtocolWrapper`` layers such as timeouts).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol

from chatapp.tls.fingerprint import fingerprint_of


class NotTLS(TypeError):
    """The transport has no TLS layer."""


class NoPeerCertificate(ValueError):
    """The other side presented no certificate (or the handshake has not completed yet)."""


def _tls_layer(transport: Any) -> TLSMemoryBIOProtocol:
    layer = transport
    while isinstance(layer, ProtocolWrapper):
        if isinstance(layer, TLSMemoryBIOProtocol):
            return layer
        layer = layer.transport
    raise NotTLS(f"no TLS layer in {transport!r}")


def tls_connection(transport: Any) -> SSL.Connection:
    """The pyOpenSSL connection under ``transport`` (for its negotiated version, cipher, peer chain)."""
    connection = _tls_layer(transport).getHandle()
    assert isinstance(connection, SSL.Connection)
    return connection


def peer_certificate(transport: Any) -> x509.Certificate:
    """The certificate the other side presented in the handshake."""
    certificate = tls_connection(transport).get_peer_certificate(as_cryptography=True)
    if certificate is None:
        raise NoPeerCertificate("the other side presented no certificate")
    return certificate


def peer_fingerprint(transport: Any) -> str:
    """The fingerprint of the other side's key; compare it with ``fingerprint.same_fingerprint``."""
    return fingerprint_of(peer_certificate(transport))


def inner_transport(transport: Any) -> Any:
    """The transport under every ``ProtocolWrapper`` (TLS included): the real TCP (or UNIX) connection.

    Socket settings belong there: ``bufferSize`` on the TLS wrapper is never read, and
    ``setTcpNoDelay`` must reach the socket itself.
    """
    layer = transport
    while isinstance(layer, ProtocolWrapper):
        layer = layer.transport
    return layer
