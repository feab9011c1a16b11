"""Issue 11 follow-up, the peer side: an outsider cannot hold every slot of a listener.

Handshake slots (a new connection displaces the oldest silent one), sessions
(per address, incoming apart from our own calls, idle ones displaced, keep-alive),
open-file slots (minimum progress, a peer's share), prefix hashing (cached, off the
reactor thread, one at a time per peer) and the per-read work budget. Each test
sends the hostile input through a transport and asserts a bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from test_peer_harness import TOKENS, Recorder, dict_verify, identity_of, key_of, make_peer
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.peer import PeerFactory, SessionState

reactor: Any = _reactor
TIMEOUT = 20


def port_of(port: Any) -> int:
    return int(port.getHost().port)


def stranger(factory: PeerFactory, host: str) -> tuple[Any, StringTransport]:
    session = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 1))
    session.makeConnection(transport)
    return session, transport


# -- handshake slots (item 1) -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_loopback_idle_sockets_from_four_addresses_do_not_keep_a_real_peer_out(tmp_path: Path) -> None:
    alice = PeerFactory(
        "alice", dict_verify(TOKENS), str(tmp_path / "a"), Recorder(), reactor, identity=identity_of("alice")
    )
    bob = PeerFactory("bob", dict_verify(TOKENS), str(tmp_path / "b"), Recorder(), reactor, identity=identity_of("bob"))
    port = await bob.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    number = port_of(port)
    idle = []
    try:
        for host in ("127.0.4.1", "127.0.4.2", "127.0.4.3", "127.0.4.4"):
            for _ in range(2):
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", number, bindAddress=(host, 0))
                idle.append(await connectProtocol(endpoint, Protocol()))
        for _ in range(500):  # bob sees all 8: every slot is taken
            if len(bob.connections) >= bob.max_handshakes:
                break
            await task.deferLater(reactor, 0.01)
        assert len(bob.connections) == bob.max_handshakes == 8
        friend = TCP4ClientEndpoint(reactor, "127.0.0.1", number, bindAddress=("127.0.0.2", 0))
        session = await alice.connect_endpoint(friend, "bob", "tok-alice", "proof-alice", key_of("bob")).addTimeout(
            TIMEOUT, reactor
        )
        assert session.state is SessionState.OPEN  # at its first try
        assert bob.limits_hit["peer-handshakes-displaced"] == 1
        assert len(bob.connections) <= bob.max_handshakes + 1  # seven idle ones and the friend
    finally:
        for protocol in idle:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        await alice.stop()
        await bob.stop()


def test_a_full_table_displaces_the_oldest_silent_handshake_never_one_being_verified(
    tmp_path: Path, clock: Clock
) -> None:
    pending: list[Any] = []

    def slow_verify(token: str) -> Any:
        from twisted.internet import defer

        d: Any = defer.Deferred()
        pending.append(d)
        return d

    fb, _ = make_peer(tmp_path, "bob", clock, slow_verify, max_handshakes=3, max_handshakes_per_address=3)
    waiting, _ = stranger(fb, "192.0.2.1")
    waiting.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")  # now waiting for our server
    assert waiting.state is SessionState.VERIFYING
    clock.advance(1)
    _first, first_t = stranger(fb, "192.0.2.2")
    clock.advance(1)
    _second, second_t = stranger(fb, "192.0.2.3")
    _third, third_t = stranger(fb, "192.0.2.4")  # the table is full: the oldest silent one goes
    assert first_t.disconnecting and not second_t.disconnecting and not third_t.disconnecting
    assert waiting.state is SessionState.VERIFYING
    _fourth, fourth_t = stranger(fb, "192.0.2.5")
    assert second_t.disconnecting and not fourth_t.disconnecting
    assert len(fb._handshaking) == 3
    assert waiting in fb._handshaking


def test_a_silent_connection_is_closed_after_the_hello_deadline(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    _session, transport = stranger(fb, "192.0.2.9")
    clock.advance(fb.hello_timeout - 0.5)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    assert fb.hello_timeout < fb.handshake_timeout
