"""Issue 11, the peer side: everything an outsider can make a listener hold is bounded.

Each test sends the hostile input through a transport (StringTransport, or
the loopback for the listener) and asserts a bound: bytes buffered, entries
held, descriptors open.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest_twisted
from test_peer_harness import TOKENS, Recorder, dict_verify, identity_of, key_of, make_peer, open_listener, tls
from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.peer import PeerFactory, SessionState, TransferState
from chatapp.peer.flow import OUTPUT_LIMIT, OUTPUT_PAUSE
from chatapp.peer.receiver import MAX_REFUSED_IDS
from chatapp.tls.transports import inner_transport

reactor: Any = _reactor
TIMEOUT = 20
EMPTY = hashlib.sha256(b"").hexdigest()


def producer(transport: StringTransport) -> Any:
    assert transport.producer is not None
    return transport.producer


def port_of(port: Any) -> int:
    return int(port.getHost().port)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- unread output (item 3) ----------------------------------------------------------


def test_unread_errors_stop_reading_then_resume(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    producer(transport).pauseProducing()  # what a TCP transport does once its buffer is full
    session.dataReceived(b"X\r\n" * 100_000)  # each would cost an ERR line
    first = transport.value()
    assert len(first) <= fb.chunk_size + OUTPUT_PAUSE + 200
    assert transport.producerState == "paused" and session.state is SessionState.OPEN
    transport.clear()
    producer(transport).resumeProducing()  # the peer read: what was left is answered, nothing lost
    for _ in range(100_000 // fb.work_budget + 1):
        clock.advance(0)  # one slice of lines per reactor turn
    assert transport.producerState == "producing"
    assert first.count(b"ERR 400") + transport.value().count(b"ERR 400") == 100_000


def test_output_that_grows_without_input_closes(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    producer(transport).pauseProducing()
    for _ in range(200):
        if session.state is not SessionState.OPEN:
            break
        session.send_message("m" * 16000)
    assert session.state is SessionState.CLOSING and session.close_reason == "output-limit"
    assert len(transport.value()) <= fb.chunk_size + OUTPUT_LIMIT + 16_100
    assert fb.limits_hit["peer-output"] == 1


@pytest_twisted.ensureDeferred
async def test_loopback_peer_that_never_reads_is_bounded(tmp_path: Path) -> None:
    bob = PeerFactory(
        "bob", dict_verify(TOKENS), str(tmp_path / "bob"), Recorder(), reactor, identity=identity_of("bob")
    )
    port = await bob.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    welcomed: defer.Deferred[None] = defer.Deferred()

    class Rude(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"HELLO chatapp/2 alice tok-alice\r\n")  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            if not welcomed.called:
                self.transport.pauseProducing()  # type: ignore[union-attr]  # never read again
                welcomed.callback(None)

    rude = Rude()
    await connectProtocol(tls(TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(port))), rude)
    try:
        await welcomed.addTimeout(TIMEOUT, reactor)
        victim = next(iter(bob.connections))
        for _ in range(200):
            rude.transport.write(b"X\r\n" * 50_000)  # type: ignore[union-attr]
        for _ in range(2000):
            if "output" in victim.gate.reasons or victim.state is not SessionState.OPEN:
                break
            await task.deferLater(reactor, 0.01)
        transport: Any = inner_transport(victim.transport)  # the TCP connection under TLS
        unsent = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        assert unsent <= bob.chunk_size + OUTPUT_LIMIT + transport.bufferSize
        assert "output" in victim.gate.reasons or victim.close_reason == "output-limit"
    finally:
        rude.transport.abortConnection()  # type: ignore[union-attr]
        await bob.stop()


# -- handshake slots and sessions (item 5) ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_loopback_idle_stranger_cannot_take_every_handshake_slot(tmp_path: Path) -> None:
    alice = PeerFactory(
        "alice", dict_verify(TOKENS), str(tmp_path / "a"), Recorder(), reactor, identity=identity_of("alice")
    )
    bob = PeerFactory("bob", dict_verify(TOKENS), str(tmp_path / "b"), Recorder(), reactor, identity=identity_of("bob"))
    port = await bob.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    number = port_of(port)
    idle = []
    try:
        for _ in range(20):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", number, bindAddress=("127.0.0.3", 0))
            idle.append(await connectProtocol(endpoint, Protocol()))
        for _ in range(200):  # bob sees them (and closes those beyond the per-address bound)
            if bob.limits_hit.get("peer-handshakes-per-address", 0) >= 18:
                break
            await task.deferLater(reactor, 0.01)
        strangers = [s for s in bob.connections if s.handshake_key == "127.0.0.3"]
        assert len(strangers) <= bob.max_handshakes_per_address
        friend = TCP4ClientEndpoint(reactor, "127.0.0.1", number, bindAddress=("127.0.0.2", 0))
        session = await alice.connect_endpoint(friend, "bob", "tok-alice", "proof-alice", key_of("bob")).addTimeout(
            TIMEOUT, reactor
        )
        assert session.state is SessionState.OPEN
    finally:
        for protocol in idle:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        await alice.stop()
        await bob.stop()


def test_sessions_in_total_are_bounded(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, max_sessions=3)
    transports = []
    for i in range(10):
        session = fb.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", f"192.0.2.{i}", 1))
        session.makeConnection(transport)
        transports.append(transport)
    assert len(fb.connections) == 3
    assert sum(1 for t in transports if t.disconnecting) == 7


# -- files: descriptors, idle transfers, partials, ids, history (items 6-8) ---------------------


def test_silent_offers_hold_bounded_descriptors(tmp_path: Path, clock: Clock) -> None:
    tokens = {**TOKENS, "tok-carol": ("carol", "proof-carol")}
    fb, _ = make_peer(
        tmp_path,
        "bob",
        clock,
        dict_verify(tokens),
        auto_accept=True,
        max_open_offers=8,
        max_open_files=12,
        max_open_files_per_peer=8,
    )
    before = open_fds()
    transports = []
    for n, peer in enumerate(("alice", "carol")):
        session, transport = open_listener(fb, peer, f"tok-{peer}", host=f"192.0.2.{n + 1}")
        for i in range(100):
            session.dataReceived(f"OFFER s{i} 1000000 silent-{i}.bin\r\n".encode())
        transports.append(transport)
    accepted = [t.value().count(b"ACCEPT") for t in transports]
    assert accepted[0] == 8 and accepted[0] + accepted[1] == 12
    assert open_fds() - before <= 12
    clock.advance(fb.progress_window + 1)  # no DATA: every accepted transfer fails and closes its file
    assert all(t.value().count(b"data-timeout") == n for t, n in zip(transports, accepted, strict=True))
    assert open_fds() - before <= 0
    assert not fb.receiving


def test_partials_are_bounded_in_number_across_reconnects(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True, max_partials=5)
    for round_ in range(4):
        session, _transport = open_listener(fb)
        for i in range(4):
            session.dataReceived(f"OFFER p{i} 10 r{round_}-{i}.bin\r\nDATA p{i} 1\r\nx".encode())
        session.connectionLost(None)  # a cut: the partials are kept for a resume, the oldest pruned
        kept = os.listdir(fb.downloads.partial_root)
        assert len(kept) <= 5


def test_refused_ids_are_remembered_up_to_a_bound(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, max_file_size=10)
    session, transport = open_listener(fb)
    for i in range(MAX_REFUSED_IDS * 3):
        session.dataReceived(f"OFFER r{i} 1000 huge.bin\r\n".encode())
    assert len(session.receiver._dropped_ids) == MAX_REFUSED_IDS
    transport.clear()
    last = MAX_REFUSED_IDS * 3 - 1
    session.dataReceived(f"OFFER r{last} 5 a.txt\r\n".encode())  # a recent id is never reused
    assert transport.value() == f"REJECT r{last} bad-offer\r\n".encode()
    session.dataReceived(f"DATA r{last} 3\r\nabc".encode())  # in flight when we said no: read and dropped
    assert session.state is SessionState.OPEN
    session.dataReceived(b"DATA r0 3\r\nabc")  # forgotten: like an id never offered
    assert session.state is SessionState.CLOSING and session.close_reason == "protocol-error"


def test_finished_history_is_bounded(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True, max_finished=50)
    session, transport = open_listener(fb)
    for i in range(500):
        session.dataReceived(f"OFFER z{i} 0 e{i}.txt\r\nEND z{i} {EMPTY}\r\n".encode())
    assert transport.value().count(b"DONE") == 500
    assert len(session.incoming) <= 50 and len(fb.transfers) <= 50
    assert all(t.state is TransferState.DONE for t in fb.transfers.values())


def test_partials_listed_and_discarded_and_cancel_keeps_one(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, _transport = open_listener(fb)
    session.dataReceived(b"OFFER k1 10 kept.bin\r\nDATA k1 4\r\nabcd")
    session.cancel(session.incoming["k1"])  # a receiver's cancel keeps the partial for a resume
    session.dataReceived(b"OFFER k2 10 gone.bin\r\nDATA k2 2\r\nab")
    session.cancel(session.incoming["k2"], discard=True)
    (partial,) = fb.partials()
    assert (partial.peer, partial.name, partial.size, partial.kept) == ("alice", "kept.bin", 10, 4)
    assert fb.discard_partials() == 1 and fb.partials() == []
