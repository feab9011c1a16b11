"""Issue 11 follow-up, the peer side: an outsider cannot hold every slot of a listener.

Handshake slots (a new connection displaces the oldest silent one), sessions
(per address, incoming apart from our own calls, idle ones displaced, keep-alive),
open-file slots (minimum progress, a peer's share), prefix hashing (cached, off the
reactor thread, one at a time per peer) and the per-read work budget. Each test
sends the hostile input through a transport and asserts a bound.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest_twisted
from test_peer_harness import TOKENS, Recorder, dict_verify, identity_of, key_of, make_peer
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from chatapp.peer import PeerFactory, SessionState
from chatapp.tls.contexts import PeerConnectorTLS
from chatapp.tls.records import GatheringTLSFactory
from chatapp.tls.transports import inner_transport

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


@implementer(IHandshakeListener)
class Lingerer(Protocol):
    """A stranger with a certificate: after TLS it sends a line before HELLO, then never reads again, so it
    never sees our refusal nor answers our close_notify."""

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        self.transport.write(b"MSG hi\r\n")
        inner_transport(self.transport).stopReading()


@pytest_twisted.ensureDeferred
async def test_loopback_refused_strangers_that_keep_their_end_open_hold_no_handshake_slot(tmp_path: Path) -> None:
    """Found by the raw-socket attacker: eight such connections from four addresses held every slot for
    as long as they stayed open, and every real peer was reset. A refused connection now gives its slot
    back at once (its TCP connection goes after records.CLOSE_WAIT)."""
    alice = PeerFactory(
        "alice", dict_verify(TOKENS), str(tmp_path / "a"), Recorder(), reactor, identity=identity_of("alice")
    )
    bob = PeerFactory("bob", dict_verify(TOKENS), str(tmp_path / "b"), Recorder(), reactor, identity=identity_of("bob"))
    port = await bob.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    number = port_of(port)
    strangers: list[Any] = []
    try:
        tls = GatheringTLSFactory(PeerConnectorTLS(identity_of("mallory")), True, Factory.forProtocol(Lingerer))
        for host in ("127.0.5.1", "127.0.5.2", "127.0.5.3", "127.0.5.4"):
            for _ in range(2):
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", number, bindAddress=(host, 0))
                strangers.append(await endpoint.connect(tls))
        for _ in range(500):  # bob took all eight, refused each (not-authenticated), and is closing them
            closing = [c for c in bob.connections if c.state is SessionState.CLOSING]
            if len(closing) == 8:
                break
            await task.deferLater(reactor, 0.01)
        assert len(closing) == 8 and all(c.close_reason == "not-authenticated" for c in closing)
        assert len(bob._handshaking) == 0  # closing: no slot held, though the connections are still there
        friend = TCP4ClientEndpoint(reactor, "127.0.0.1", number, bindAddress=("127.0.0.2", 0))
        session = await alice.connect_endpoint(friend, "bob", "tok-alice", "proof-alice", key_of("bob")).addTimeout(
            TIMEOUT, reactor
        )
        assert session.state is SessionState.OPEN  # at its first try
        assert "peer-handshakes-displaced" not in bob.limits_hit
    finally:
        for stranger_tls in strangers:
            if stranger_tls.transport is not None:
                stranger_tls.transport.abortConnection()
        await alice.stop()
        await bob.stop()


def test_a_stranger_still_in_its_tls_handshake_is_displaced_before_one_past_it(tmp_path: Path, clock: Clock) -> None:
    """A flood of half handshakes from many addresses must not push out a real peer in the moments
    between its TLS handshake and its HELLO."""
    fb, _ = make_peer(tmp_path, "bob", clock, max_handshakes=3, max_handshakes_per_address=3)
    real, real_t = stranger(fb, "192.0.2.1")
    real.handshakeCompleted()  # TLS done: its HELLO is on its way
    clock.advance(1)
    _half, half_t = stranger(fb, "192.0.2.2")
    _half2, half2_t = stranger(fb, "192.0.2.3")
    _new, new_t = stranger(fb, "192.0.2.4")  # full: the oldest of those still in TLS goes, not the oldest
    assert half_t.disconnecting and not real_t.disconnecting and not half2_t.disconnecting
    assert not new_t.disconnecting
    real.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")
    assert real.state is SessionState.OPEN


def test_a_refused_stranger_gives_its_handshake_slot_back_at_once(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = stranger(fb, "192.0.2.7")
    assert len(fb._handshaking) == 1
    session.dataReceived(b"HELLO chatapp/2 alice no-such-token\r\n")
    assert transport.value().startswith(b"ERR 403 bad-token")
    assert transport.disconnecting and session.state is SessionState.CLOSING  # the connection is still there
    assert len(fb._handshaking) == 0 and fb._handshakes_from == {}


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


# -- sessions (item 2) ----------------------------------------------------------------------


def open_from(factory: PeerFactory, peer: str, host: str) -> tuple[Any, StringTransport]:
    session, transport = stranger(factory, host)
    session.dataReceived(f"HELLO chatapp/2 {peer} tok-{peer}\r\n".encode())
    assert session.state is SessionState.OPEN, transport.value()
    transport.clear()
    return session, transport


def accounts(count: int) -> dict[str, tuple[str, str]]:
    return {f"tok-u{i}": (f"u{i}", f"proof-u{i}") for i in range(count)}


def test_sessions_are_bounded_per_address_and_our_calls_are_not_counted(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, dict_verify(accounts(20)), max_sessions=6, max_outgoing=2)
    held = [open_from(fb, f"u{i}", "192.0.2.1") for i in range(4)]
    _fifth, fifth_t = stranger(fb, "192.0.2.1")  # a fifth account from the same address
    assert fifth_t.disconnecting and fifth_t.value() == b""
    others = [open_from(fb, f"u{i}", "192.0.2.2") for i in range(4, 6)]
    assert len([s for s in fb.connections if s.live]) == 6
    # incoming is full (and nobody idle long enough): a seventh is refused, but we can still call out
    _seventh, seventh_t = stranger(fb, "192.0.2.3")
    assert seventh_t.disconnecting
    from test_peer_harness import connector

    ours = connector(fb, "carol")
    ours.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.50", 1)))
    assert ours.live and ours in fb.connections
    assert not any(t.disconnecting for _, t in held + others)


def test_an_ipv6_64_is_one_source_address_to_the_listener(tmp_path: Path, clock: Clock) -> None:
    """A stranger stepping through the addresses of its /64 is still one address: two handshakes at most."""
    fb, _ = make_peer(tmp_path, "bob", clock, max_handshakes=8, max_handshakes_per_address=2)
    strangers = []
    for n in range(1, 5):
        session = fb.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv6Address("TCP", f"2001:db8:1:2::{n}", 1))
        session.makeConnection(transport)
        strangers.append(transport)
    assert [t.disconnecting for t in strangers] == [True, True, False, False]  # each new one displaced the oldest
    assert fb._handshakes_from == {"2001:db8:1:2::/64": 2}
    _other, other_t = stranger(fb, "192.0.2.9")
    assert not other_t.disconnecting and fb._handshakes_from["192.0.2.9"] == 1


def test_a_full_table_displaces_the_session_idle_the_longest_only_after_the_idle_time(
    tmp_path: Path, clock: Clock
) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, dict_verify(accounts(10)), max_sessions=3)
    first = open_from(fb, "u0", "192.0.2.1")
    clock.advance(10)
    second = open_from(fb, "u1", "192.0.2.2")
    third = open_from(fb, "u2", "192.0.2.3")
    clock.advance(fb.idle_displace - 20)
    first[0].dataReceived(b"PING\r\n")  # a keep-alive is not activity: first stays the idlest
    second[0].dataReceived(b"MSG hi\r\n")  # chat is
    _early, early_t = stranger(fb, "192.0.2.9")
    assert early_t.disconnecting  # nobody idle for idle_displace yet
    clock.advance(30)
    _late, late_t = stranger(fb, "192.0.2.9")
    assert not late_t.disconnecting
    assert first[1].disconnecting and first[1].value().endswith(b"BYE\r\n")
    assert not second[1].disconnecting and not third[1].disconnecting


def test_an_open_session_pings_a_quiet_peer_and_closes_a_silent_one(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = open_from(fb, "alice", "192.0.2.1")
    clock.advance(fb.keepalive_interval)
    assert transport.value() == b"PING\r\n"
    session.dataReceived(b"PONG\r\n")  # a live peer answers: the session stays, however long
    for _ in range(int(fb.session_idle_timeout / fb.keepalive_interval) * 2):
        clock.advance(fb.keepalive_interval)
        session.dataReceived(b"PONG\r\n")
    assert not transport.disconnecting
    transport.clear()
    ticks = 0
    while not transport.disconnecting:  # now it answers nothing
        clock.advance(fb.keepalive_interval)
        ticks += 1
    assert ticks * fb.keepalive_interval <= fb.session_idle_timeout + fb.keepalive_interval
    assert transport.value().endswith(b"BYE\r\n") and session.close_reason == "idle-timeout"


# -- open-file slots (item 3) ---------------------------------------------------------------


def test_a_trickling_transfer_fails_and_frees_its_file_but_a_slow_honest_one_goes_on(
    tmp_path: Path, clock: Clock
) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, dict_verify(accounts(2)), auto_accept=True)
    trickler, trickle_t = open_from(fb, "u0", "192.0.2.1")
    honest, honest_t = open_from(fb, "u1", "192.0.2.2")
    trickler.dataReceived(b"OFFER t 1000000000 big.bin\r\n")
    honest.dataReceived(b"OFFER h 1000000000 big.bin\r\n")
    assert len(fb.receiving) == 2
    for _ in range(3):  # one byte every window keeps nothing; 64 KiB per window is enough
        trickler.dataReceived(b"DATA t 1\r\nx")
        honest.dataReceived(b"DATA h 65536\r\n" + b"y" * 65536)
        clock.advance(fb.progress_window)
    assert b"FAIL t data-timeout" in trickle_t.value()
    assert b"FAIL" not in honest_t.value()
    assert list(fb.receiving.values()) == [honest.receiver.transfers["h"]]


def test_a_peer_holds_at_most_its_share_of_the_open_files(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, dict_verify(accounts(5)), auto_accept=True, max_open_files=8)
    assert fb.max_open_files_per_peer == 2
    transports = []
    for i in range(5):
        session, transport = open_from(fb, f"u{i}", f"192.0.2.{i}")
        for n in range(6):
            session.dataReceived(f"OFFER f{n} 1000000 f{n}.bin\r\n".encode())
        transports.append(transport)
    accepted = [t.value().count(b"ACCEPT") for t in transports]
    assert accepted == [2, 2, 2, 2, 0]  # four greedy peers cannot take more than their share each
    assert len(fb.receiving) == 8


def test_accounts_from_one_address_hold_at_most_one_share_of_the_open_files_together(
    tmp_path: Path, clock: Clock
) -> None:
    """Found by the raw-socket attacker: four accounts from one address held all 64 slots (16 each)."""
    fb, _ = make_peer(tmp_path, "bob", clock, dict_verify(accounts(5)), auto_accept=True, max_open_files=8)
    transports = []
    for i in range(4):
        session, transport = open_from(fb, f"u{i}", "192.0.2.1")
        for n in range(2):
            session.dataReceived(f"OFFER f{n} 1000000 f{n}.bin\r\n".encode())
        transports.append(transport)
    assert [t.value().count(b"ACCEPT") for t in transports] == [2, 0, 0, 0]
    assert all(t.value().count(b"REJECT") == 2 for t in transports[1:])
    friend, friend_t = open_from(fb, "u4", "192.0.2.9")
    friend.dataReceived(b"OFFER g 10 g.bin\r\n")
    assert b"ACCEPT g 0" in friend_t.value()


# -- many tiny DATA chunks (item 5) ------------------------------------------------------------


def test_a_bystander_is_answered_within_one_slice_of_a_one_byte_data_flood(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, dict_verify(accounts(2)), auto_accept=True)
    flooder, flood_t = open_from(fb, "u0", "192.0.2.1")
    bystander, by_t = open_from(fb, "u1", "192.0.2.2")
    chunks = 20_000
    flooder.dataReceived(f"OFFER f {chunks} tiny.bin\r\n".encode())
    handled: list[int] = []
    receiver = flooder.receiver
    original = receiver.on_bytes

    def counting(data: Any) -> None:
        handled.append(len(data))
        original(data)

    receiver.on_bytes = counting
    flooder.dataReceived(b"DATA f 1\r\nx" * chunks)  # one read holding 20k chunks
    bystander.dataReceived(b"PING\r\n")  # the next event of the reactor
    assert by_t.value() == b"PONG\r\n"
    # the flooder got one slice (a DATA line and its byte are two items) before the bystander's answer
    assert len(handled) <= fb.work_budget // 2
    assert flood_t.producerState == "paused"
    while clock.getDelayedCalls() and len(handled) < chunks:
        clock.advance(0)  # later turns go on with the flood
    assert len(handled) == chunks and receiver.transfers["f"].bytes_done == chunks
    assert flood_t.producerState == "producing"


# -- resume hashing (item 4) ----------------------------------------------------------------


def test_a_repeated_offer_of_a_kept_partial_is_hashed_once(tmp_path: Path, clock: Clock) -> None:
    from test_peer_harness import partial_path, prefix_hashes_counted

    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True)
    kept = partial_path(fb, "alice", "h.bin", 10_000_000)
    Path(kept).write_bytes(b"k" * 300_000)
    with prefix_hashes_counted() as calls:
        session, transport = open_from(fb, "alice", "192.0.2.1")
        for n in range(20):
            transport.clear()
            session.dataReceived(f"OFFER r{n} 10000000 h.bin\r\n".encode())
            assert transport.value().startswith(f"ACCEPT r{n} 300000 ".encode())
            session.dataReceived(f"CANCEL r{n} cancelled\r\n".encode())  # the partial stays, unchanged
    assert calls == [300_000]


def test_an_offer_cancelled_while_its_partial_is_hashed_starts_no_second_hash_and_frees_no_slot_early(
    tmp_path: Path, clock: Clock
) -> None:
    """Found by the raw-socket attacker: OFFER then CANCEL at once, 40 times, made the victim read a
    256 MiB partial 40 times over (the cancel dropped the result and freed the hash slot while the read
    went on in its thread), and 600 times left 582 files open."""
    from test_peer_disk import ManualRunner
    from test_peer_harness import partial_path

    disk = ManualRunner()
    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True, runner=disk)
    kept = partial_path(fb, "alice", "h.bin", 10_000_000)
    Path(kept).write_bytes(b"k" * 300_000)
    session, transport = open_from(fb, "alice", "192.0.2.1")
    for n in range(40):
        session.dataReceived(f"OFFER r{n} 10000000 h.bin\r\nCANCEL r{n} cancelled\r\n".encode())
    assert disk.pending == 1  # one read of the partial, however many offers asked and gave up
    disk.run_all()
    transport.clear()
    session.dataReceived(b"OFFER s 10000000 h.bin\r\n")  # that read was kept: nothing to read now
    assert disk.pending == 0 and transport.value().startswith(b"ACCEPT s 300000 ")


def test_partials_made_and_deleted_do_not_push_a_kept_one_s_hash_out(tmp_path: Path, clock: Clock) -> None:
    from test_peer_harness import partial_path

    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True, max_partials=4)
    big = partial_path(fb, "alice", "big.bin", 10_000_000)
    Path(big).write_bytes(b"b" * 100_000)
    session, _ = open_from(fb, "alice", "192.0.2.1")
    session.dataReceived(b"OFFER a 10000000 big.bin\r\nCANCEL a cancelled\r\n")  # hashed and remembered
    for n in range(20):  # one-byte partials, each deleted by the sender's stale-partial
        session.dataReceived(f"OFFER t{n} 10 t{n}.bin\r\nDATA t{n} 1\r\nxCANCEL t{n} cancelled\r\n".encode())
        session.dataReceived(f"OFFER u{n} 10 t{n}.bin\r\nCANCEL u{n} stale-partial\r\n".encode())
    assert os.path.exists(big) and big in fb._prefixes
    assert len(fb._prefixes) <= fb.downloads.max_partials + fb.max_open_files
