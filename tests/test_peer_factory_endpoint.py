"""PeerFactory.connect's endpoint: an address from OK CONNECT is dialled at once, only a name is resolved."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.testing import MemoryReactorClock

from chatapp.peer.factory import peer_endpoint


def test_an_ip_address_is_dialled_without_a_resolver_thread() -> None:
    reactor = MemoryReactorClock()
    v4 = peer_endpoint(reactor, "127.0.0.1", 7000, 5.0)
    assert isinstance(v4, TCP4ClientEndpoint)
    v4.connect(None)  # type: ignore[arg-type]
    assert [(host, port, timeout) for host, port, _, timeout, _ in reactor.tcpClients] == [("127.0.0.1", 7000, 5.0)]
    assert reactor.getDelayedCalls() == []  # nothing waits on name resolution
    assert isinstance(peer_endpoint(reactor, "::1", 7000, 5.0), TCP6ClientEndpoint)
    assert isinstance(peer_endpoint(reactor, "::ffff:192.0.2.1", 7000, 5.0), TCP6ClientEndpoint)


def test_a_name_is_resolved() -> None:
    endpoint = peer_endpoint(MemoryReactorClock(), "peer.example", 7000, 5.0)
    assert isinstance(endpoint, HostnameEndpoint)
