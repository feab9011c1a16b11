"""Two peer factories over real 127.0.0.1 sockets: handshake, 5 MiB each way, chat during the transfer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_peer_harness import TOKENS, Recorder, dict_verify, identity_of, key_of, tls
from twisted.internet import defer, error, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from chatapp.peer import HandshakeFailed, PeerFactory, PeerSession, ServerUnavailable, Transfer, VerifyRejected

reactor: Any = _reactor
MiB = 1024 * 1024
TIMEOUT = 20


class Watcher(Recorder):
    """A Recorder that can wait for sessions to leave and sends a MSG once a send is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.gone: defer.Deferred[None] = defer.Deferred()
        self.chat_sent = False

    def peer_left(self, session: PeerSession, reason: str) -> None:
        super().peer_left(session, reason)
        if not self.gone.called:
            self.gone.callback(None)

    def transfer_progress(self, transfer: Transfer) -> None:
        super().transfer_progress(transfer)
        if transfer.direction.value == "send" and transfer.bytes_done >= MiB and not self.chat_sent:
            self.chat_sent = True
            transfer.session.send_message(f"mid-transfer from {transfer.session.factory.me}")
            self.events.append(("chat-sent", transfer.bytes_done))


async def all_closed(*factories: PeerFactory) -> None:
    """Wait (a bounded time) until no factory has a connection left, so no socket outlives the test."""
    for _ in range(500):
        if not any(f.connections for f in factories):
            return
        await task.deferLater(reactor, 0.01)
    raise AssertionError("connections left open")


def port_number(port: Any) -> int:
    return int(port.getHost().port)


def factory(tmp_path: Path, me: str, events: Recorder, **kw: Any) -> PeerFactory:
    return PeerFactory(
        me, dict_verify(TOKENS), str(tmp_path / me), events, reactor, identity=identity_of(me), auto_accept=True, **kw
    )


@pytest_twisted.ensureDeferred
async def test_loopback_five_mib_each_way_with_chat(tmp_path: Path) -> None:
    ea, eb = Watcher(), Watcher()
    alice = factory(tmp_path, "alice", ea, chunk_size=64 * 1024)
    bob = factory(tmp_path, "bob", eb, chunk_size=64 * 1024)
    port = await bob.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    try:
        session = await alice.connect(
            "bob", "127.0.0.1", port_number(port), "tok-alice", "proof-alice", key_of("bob")
        ).addTimeout(TIMEOUT, reactor)
        bob_side = bob.session_for("alice")
        assert bob_side is not None and session.peer_name == "bob" and bob_side.peer_name == "alice"

        content_a, content_b = os.urandom(5 * MiB + 123), os.urandom(5 * MiB - 7)
        (tmp_path / "a.bin").write_bytes(content_a)
        (tmp_path / "b.bin").write_bytes(content_b)
        up = session.send_file(str(tmp_path / "a.bin"), name="from-alice.bin")
        down = bob_side.send_file(str(tmp_path / "b.bin"), name="from-bob.bin")
        await defer.gatherResults([up.when_done(), down.when_done()]).addTimeout(TIMEOUT, reactor)

        got_a = Path(tmp_path, "bob", "from-alice.bin").read_bytes()
        got_b = Path(tmp_path, "alice", "from-bob.bin").read_bytes()
        assert hashlib.sha256(got_a).digest() == hashlib.sha256(content_a).digest()
        assert hashlib.sha256(got_b).digest() == hashlib.sha256(content_b).digest()
        assert up.sha256 == hashlib.sha256(content_a).hexdigest()

        # each side's MSG arrived while the other side's file was still coming in
        assert eb.messages == ["mid-transfer from alice"] and ea.messages == ["mid-transfer from bob"]
        incoming_at_bob = eb.events.index(("ended", up.id, "done", "done"))
        assert eb.events.index(("message", "mid-transfer from alice")) < incoming_at_bob
        assert ea.chat_sent and eb.chat_sent

        session.close()
        await defer.gatherResults([ea.gone, eb.gone]).addTimeout(TIMEOUT, reactor)
        assert ea.left == ["closed"] and eb.left == ["bye"]
        assert alice.sessions == {} and bob.sessions == {}
    finally:
        await alice.stop()
        await bob.stop()
        await all_closed(alice, bob)


@pytest_twisted.ensureDeferred
async def test_loopback_bad_token_fails_connect(tmp_path: Path) -> None:
    ea, eb = Watcher(), Watcher()
    alice = factory(tmp_path, "alice", ea)
    bob = factory(tmp_path, "bob", eb)
    port = await bob.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    try:
        with pytest.raises(HandshakeFailed) as info:
            await alice.connect(
                "bob", "127.0.0.1", port_number(port), "forged", "proof-alice", key_of("bob")
            ).addTimeout(TIMEOUT, reactor)
        assert info.value.reason == "bad-token"
        assert bob.sessions == {} and eb.joined == []
    finally:
        await alice.stop()
        await bob.stop()
        await all_closed(alice, bob)


@pytest_twisted.ensureDeferred
async def test_loopback_connection_refused(tmp_path: Path) -> None:
    alice = factory(tmp_path, "alice", Watcher())
    bob = factory(tmp_path, "bob", Watcher())
    port = await bob.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    number = port_number(port)
    await bob.stop()
    with pytest.raises(error.ConnectError):
        await alice.connect(
            "bob", "127.0.0.1", number, "tok-alice", "proof-alice", key_of("bob"), timeout=5
        ).addTimeout(TIMEOUT, reactor)
    assert not alice.connections


class _Caller(Protocol):
    """Says one HELLO and keeps every byte the listener answers until it closes."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(f"HELLO chatapp/2 alice {self.token}\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.received)


@pytest_twisted.ensureDeferred
async def test_loopback_listener_answers_503_when_the_server_is_down_and_403_for_a_bad_token(
    tmp_path: Path,
) -> None:
    def verify(token: str) -> defer.Deferred[tuple[str, str, str]]:
        if token == "server-down":
            return defer.fail(ServerUnavailable("our server is not there"))  # what ChatClient._verify gives
        return defer.fail(VerifyRejected())

    bob = PeerFactory("bob", verify, str(tmp_path / "bob"), Watcher(), reactor, identity=identity_of("bob"))
    port = await bob.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    try:
        answers = {}
        for token in ("server-down", "forged"):
            caller = _Caller(token)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port_number(port))
            await connectProtocol(tls(endpoint), caller).addTimeout(TIMEOUT, reactor)
            answers[token] = await caller.closed.addTimeout(TIMEOUT, reactor)
        assert answers == {"server-down": b"ERR 503 server-unavailable\r\n", "forged": b"ERR 403 bad-token\r\n"}
        assert bob.sessions == {}
    finally:
        await bob.stop().addTimeout(TIMEOUT, reactor)
    assert not bob.connections
