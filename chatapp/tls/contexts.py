"""OpenSSL connection creators for both links, TLS 1.3 only, each building its ``SSL.Context`` once.

Pass one to ``TLSMemoryBIOFactory(creator, isClient, factory)`` (a server wraps any endpoint's factory
this way, ``systemd:`` included) or to ``wrapClientTLS(creator, endpoint)``. A context is never changed
after it is built: recent pyOpenSSL raises when a context that a connection used is modified.

None of these makes the trust decision inside OpenSSL: the verify callbacks accept every certificate so
that the handshake completes and the application can decide with a proper message in
``handshakeCompleted`` (``server_trust`` for the server link, fingerprints for peers), sending nothing
before it has decided. OpenSSL still proves that the other side holds the key of the certificate.

- ``ServerLinkServerTLS``: the chat server; presents its certificate and chain, asks for none, and frees
  each connection's record buffers while it is idle.
- ``ServerLinkClientTLS``: the client's link to the server; records whether the chain verified against
  the trust roots, and ``trusted_by_roots(transport)`` adds the host name check (service_identity).
- ``PeerListenerTLS`` / ``PeerConnectorTLS``: the peer link; both present their identity, the listener
  refuses a connector without a certificate; names, dates and chains are not checked, only fingerprints
  (``transports.peer_fingerprint``).
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Sequence
from typing import Any

import service_identity
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from chatapp.tls.identity import Identity
from chatapp.tls.records import note_tls_step
from chatapp.tls.transports import peer_certificate, tls_connection

# OpenSSL's SSL_MODE_ENABLE_PARTIAL_WRITE (ssl.h), which pyOpenSSL sets on every context but does not export.
_MODE_ENABLE_PARTIAL_WRITE = 0x1


def _tls13_context(identity: Identity | None) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    # No resumption: every connection does a full handshake, so every peer shows its certificate, and
    # the server keeps no session cache and sends no tickets nobody would use.
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_options(SSL.OP_NO_TICKET)
    # Counts what OpenSSL does for post-handshake messages (a KeyUpdate costs a reply), so the TLS
    # layer can close a connection that sends them without end (chatapp.tls.records).
    context.set_info_callback(note_tls_step)
    # Our TLS layer writes into a memory BIO, which never refuses bytes: without partial writes one
    # SSL_write encrypts a whole slice of a file, not one 16 KiB record per call (chatapp.tls.records).
    context.clear_mode(_MODE_ENABLE_PARTIAL_WRITE)
    if identity is not None:
        context.use_certificate(identity.certificate)
        for certificate in identity.chain:
            context.add_extra_chain_cert(certificate)
        context.use_privatekey(identity.private_key)
        context.check_privatekey()
    return context


def _connection(context: SSL.Context, tls_protocol: Any) -> SSL.Connection:
    connection = SSL.Connection(context, None)
    connection.set_app_data(tls_protocol)  # for note_tls_step
    return connection


def _accept_any(connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int) -> bool:
    # Trust is decided on the fingerprint after the handshake; OpenSSL only has to get us the certificate.
    return True


@implementer(IOpenSSLServerConnectionCreator)
class ServerLinkServerTLS:
    """The chat server's side of the server link."""

    def __init__(self, identity: Identity) -> None:
        self.fingerprint = identity.fingerprint
        context = _tls13_context(identity)
        # Free OpenSSL's read and write record buffers (~17 KB each) whenever they are empty, as Twisted's
        # own CertificateOptions does: the server's connections are idle most of the time, and this
        # halves what each costs (bench/idle_memory.py). pyOpenSSL does not set it by itself.
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return _connection(self._context, tlsProtocol)


@implementer(IOpenSSLClientConnectionCreator)
class ServerLinkClientTLS:
    """The client's side of the server link to ``host`` (one creator per server, reused on reconnect).

    ``trust_roots`` replaces the system's trusted roots (tests, a private CA); by default OpenSSL's
    default verify paths are used.
    """

    def __init__(self, host: str, trust_roots: Sequence[x509.Certificate] | None = None) -> None:
        self.host = host.strip().removeprefix("[").removesuffix("]")
        try:
            self._ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(self.host)
        except ValueError:
            self._ip = None
        # Per connection: did any certificate in the chain fail OpenSSL's own verification?
        self._chain_failed: weakref.WeakKeyDictionary[SSL.Connection, bool] = weakref.WeakKeyDictionary()
        context = _tls13_context(None)
        context.set_verify(SSL.VERIFY_PEER, self._record_verification)
        if trust_roots is None:
            context.set_default_verify_paths()
        else:
            store = context.get_cert_store()
            assert store is not None
            for root in trust_roots:
                store.add_cert(crypto.X509.from_cryptography(root))
        self._context = context

    def _record_verification(
        self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        # Called for every certificate of the chain; one failure anywhere means "not trusted by roots".
        self._chain_failed[connection] = self._chain_failed.get(connection, False) or not ok
        return True

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = _connection(self._context, tlsProtocol)
        if self._ip is None:  # SNI carries host names only, never IP addresses (RFC 6066)
            connection.set_tlsext_host_name(self.host.encode("idna"))
        return connection

    def trusted_by_roots(self, transport: Any) -> bool:
        """After the handshake: the chain verified against the trust roots and names this host."""
        connection = tls_connection(transport)
        if self._chain_failed.get(connection, True):
            return False
        certificate = peer_certificate(transport)
        try:
            if self._ip is None:
                verify_certificate_hostname(certificate, self.host)
            else:
                verify_certificate_ip_address(certificate, str(self._ip))
        except (service_identity.VerificationError, service_identity.CertificateError):
            return False
        return True


@implementer(IOpenSSLServerConnectionCreator)
class PeerListenerTLS:
    """The listening side of a peer link: presents our identity and requires the connector's."""

    def __init__(self, identity: Identity) -> None:
        self.fingerprint = identity.fingerprint
        context = _tls13_context(identity)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any)
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return _connection(self._context, tlsProtocol)


@implementer(IOpenSSLClientConnectionCreator)
class PeerConnectorTLS:
    """The connecting side of a peer link: presents our identity and accepts any listener certificate."""

    def __init__(self, identity: Identity) -> None:
        self.fingerprint = identity.fingerprint
        context = _tls13_context(identity)
        context.set_verify(SSL.VERIFY_PEER, _accept_any)
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return _connection(self._context, tlsProtocol)
