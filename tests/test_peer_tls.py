"""The peer link over real TLS on 127.0.0.1 (PROTOCOL.md 4.3, 4.4): men in the middle are refused at each place."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from test_peer_harness import TOKENS, Recorder, dict_verify, identity_of, key_of, tls
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from chatapp.events import KeyChanged, KeyRefused
from chatapp.peer import HandshakeFailed, PeerFactory, SessionState
from chatapp.peer.contacts import Contacts, NothingToTrust
from chatapp.peer.socket_options import UNSENT_LIMIT
from chatapp.runner import InlineRunner
from chatapp.tls.known_hosts import KnownPeers
from chatapp.tls.transports import inner_transport

reactor: Any = _reactor
TIMEOUT = 20


class Calls:
    """A verify that counts its calls: a HELLO that reached the listener shows up here."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self._verify = dict_verify(TOKENS)

    def __call__(self, token: str) -> Any:
        self.tokens.append(token)
        return self._verify(token)


def peer(tmp_path: Path, me: str, key_name: str | None = None, verify: Any = None, **kw: Any) -> PeerFactory:
    return PeerFactory(
        me, verify or dict_verify(TOKENS), str(tmp_path / me), Recorder(), reactor,
        identity=identity_of(key_name or me), **kw,
    )  # fmt: skip


def contacts_of(tmp_path: Path, me: str, remembered: dict[str, str]) -> Contacts:
    path = tmp_path / f"{me}-known_peers"
    path.write_text("".join(f"127.0.0.1:7000 {user} {fp}\n" for user, fp in remembered.items()))
    contacts = Contacts(KnownPeers(path), "127.0.0.1", 7000, InlineRunner())
    contacts.load()
    return contacts


def remembered_in_file(contacts: Contacts, user: str) -> str | None:
    entry = KnownPeers(contacts.known.path).lookup("127.0.0.1", 7000, user)
    return entry.fingerprint if entry is not None else None


class Caller(Protocol):
    """Says HELLO (as alice, with alice's valid token) and keeps every byte it gets until the close."""

    def __init__(self, hello: bytes = b"HELLO chatapp/2 alice tok-alice\r\n", hang_up: bool = False) -> None:
        self.hello = hello
        self.hang_up = hang_up  # close after the first line (a WELCOME would keep the chat open)
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.hello)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.hang_up and self.received.endswith(b"\r\n") and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.received)


async def listening(factory: PeerFactory) -> int:
    port = await factory.listen("tcp:0:interface=127.0.0.1").addTimeout(TIMEOUT, reactor)
    return int(port.getHost().port)  # type: ignore[attr-defined]


async def call(port: int, protocol: Caller, key_name: str | None = "alice") -> bytes:
    plain = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    endpoint = tls(plain, key_name) if key_name is not None else plain
    await connectProtocol(endpoint, protocol).addTimeout(TIMEOUT, reactor)
    return await protocol.closed.addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_connector_refuses_a_listener_with_another_key_before_hello(tmp_path: Path) -> None:
    calls = Calls()
    mallory = peer(tmp_path, "bob", key_name="mallory", verify=calls)  # answers at bob's address
    alice = peer(tmp_path, "alice")
    port = await listening(mallory)
    try:
        with pytest.raises(HandshakeFailed) as info:
            await alice.connect("bob", "127.0.0.1", port, "tok-alice", "proof-alice", key_of("bob")).addTimeout(
                TIMEOUT, reactor
            )
        error = info.value
        assert error.reason == "bad-key"
        assert (error.expected, error.offered) == (key_of("bob"), key_of("mallory"))
        assert str(error) == (
            "the peer's key is not the one the server vouched for: someone may be intercepting"
            f" (vouched {key_of('bob')}, offered {key_of('mallory')})"
        )
        assert calls.tokens == []  # no HELLO reached the impostor: the token stays secret
        assert alice.sessions == {} and mallory.sessions == {}
    finally:
        await alice.stop()
        await mallory.stop()


@pytest_twisted.ensureDeferred
async def test_listener_answers_bad_key_to_a_valid_token_shown_with_another_key(tmp_path: Path) -> None:
    bob = peer(tmp_path, "bob")
    port = await listening(bob)
    try:
        answer = await call(port, Caller(), key_name="mallory")  # alice's token, mallory's key
        assert answer == b"ERR 403 bad-key\r\n"
        assert bob.sessions == {}
        assert await call(port, Caller(hang_up=True), key_name="alice") == b"WELCOME chatapp/2 bob proof-alice\r\n"
    finally:
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_changed_key_of_a_remembered_contact_stops_the_chat_until_trusted(tmp_path: Path) -> None:
    old = key_of("alice-old-laptop")
    calls = Calls()
    bob_contacts = contacts_of(tmp_path, "bob", {"alice": old})
    bob = peer(tmp_path, "bob", verify=calls, contacts=bob_contacts)
    events: list[Any] = []
    bob.emit = events.append
    alice = peer(tmp_path, "alice")
    port = await listening(bob)
    try:
        with pytest.raises(HandshakeFailed) as info:
            await alice.connect("bob", "127.0.0.1", port, "tok-alice", "proof-alice", key_of("bob")).addTimeout(
                TIMEOUT, reactor
            )
        assert info.value.reason == "key-changed"  # what bob answered: ERR 403 key-changed
        assert [e for e in events if isinstance(e, KeyChanged)] == [KeyChanged("alice", old, key_of("alice"))]
        assert bob.sessions == {}
        # the user compared the new key with alice and accepts it
        assert await bob_contacts.trust("alice") == key_of("alice")
        assert remembered_in_file(bob_contacts, "alice") == key_of("alice")
        session = await alice.connect(
            "bob", "127.0.0.1", port, "tok-alice", "proof-alice", key_of("bob")
        ).addTimeout(TIMEOUT, reactor)
        assert session.state is SessionState.OPEN
        with pytest.raises(NothingToTrust):
            await bob_contacts.trust("alice")
    finally:
        await alice.stop()
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_connector_closes_before_hello_when_a_remembered_contact_key_changed(tmp_path: Path) -> None:
    old = key_of("bob-old-laptop")
    calls = Calls()
    bob = peer(tmp_path, "bob", verify=calls, contacts=contacts_of(tmp_path, "bob", {"alice": key_of("alice")}))
    bob_events: list[Any] = []
    bob.emit = bob_events.append
    alice_contacts = contacts_of(tmp_path, "alice", {"bob": old})
    alice = peer(tmp_path, "alice", contacts=alice_contacts)
    events: list[Any] = []
    alice.emit = events.append
    port = await listening(bob)
    try:
        for _ in range(2):
            with pytest.raises(HandshakeFailed) as info:
                await alice.connect("bob", "127.0.0.1", port, "tok-alice", "proof-alice", key_of("bob")).addTimeout(
                    TIMEOUT, reactor
                )
            assert info.value.reason == "key-changed"
            assert str(info.value) == f"the contact's key changed (remembered {old}, now {key_of('bob')})"
            for _ in range(TIMEOUT * 100):  # bob sees alice's connection go
                if not bob.connections:
                    break
                await deferLater(reactor, 0.01)
        assert events == [KeyChanged("bob", old, key_of("bob"))] * 2
        assert calls.tokens == []  # bob never saw a HELLO
        # ... but bob is told: alice's client (her key, proven by TLS) left without a word, once a minute
        assert bob_events == [KeyRefused("alice")]
        await alice_contacts.trust("bob")
        session = await alice.connect(
            "bob", "127.0.0.1", port, "tok-alice", "proof-alice", key_of("bob")
        ).addTimeout(TIMEOUT, reactor)
        assert session.state is SessionState.OPEN and calls.tokens == ["tok-alice"]
    finally:
        await alice.stop()
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_first_chat_remembers_the_contact(tmp_path: Path) -> None:
    alice_contacts = contacts_of(tmp_path, "alice", {})
    alice = peer(tmp_path, "alice", contacts=alice_contacts)
    bob = peer(tmp_path, "bob")
    port = await listening(bob)
    try:
        await alice.connect("bob", "127.0.0.1", port, "tok-alice", "proof-alice", key_of("bob")).addTimeout(
            TIMEOUT, reactor
        )
        assert alice_contacts.remembered("BOB") == key_of("bob")
        assert remembered_in_file(alice_contacts, "bob") == key_of("bob")
    finally:
        await alice.stop()
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_an_open_session_bounds_what_a_chat_line_waits_behind(tmp_path: Path) -> None:
    """Both ends: no Nagle delay, at most UNSENT_LIMIT bytes unsent in the kernel."""
    alice, bob = peer(tmp_path, "alice"), peer(tmp_path, "bob")
    port = await listening(bob)
    try:
        session = await alice.connect("bob", "127.0.0.1", port, "tok-alice", "proof-alice", key_of("bob")).addTimeout(
            TIMEOUT, reactor
        )
        while "alice" not in bob.sessions or bob.sessions["alice"].state is not SessionState.OPEN:
            await deferLater(reactor, 0.01)
        for end in (session, bob.sessions["alice"]):
            sock = inner_transport(end.transport).getHandle()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == UNSENT_LIMIT
    finally:
        await alice.stop()
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_a_changed_key_taken_as_told_is_said_and_remembered(tmp_path: Path) -> None:
    """``--accept-changed-keys``: the chat opens on the new key, and an event says so (never silently)."""
    old = key_of("alice-old-laptop")
    bob_contacts = contacts_of(tmp_path, "bob", {"alice": old})
    bob_contacts.accept_changed = True
    bob = peer(tmp_path, "bob", contacts=bob_contacts)
    events: list[Any] = []
    bob.emit = events.append
    alice = peer(tmp_path, "alice")
    port = await listening(bob)
    try:
        session = await alice.connect(
            "bob", "127.0.0.1", port, "tok-alice", "proof-alice", key_of("bob")
        ).addTimeout(TIMEOUT, reactor)
        assert session.state is SessionState.OPEN
        assert [e for e in events if isinstance(e, KeyChanged)] == [
            KeyChanged("alice", old, key_of("alice"), accepted=True)
        ]
        assert bob_contacts.remembered("alice") == key_of("alice")
        while remembered_in_file(bob_contacts, "alice") != key_of("alice"):  # written in the background
            await deferLater(reactor, 0.01)
    finally:
        await alice.stop()
        await bob.stop()


@implementer(IOpenSSLClientConnectionCreator)
class NoCertificate:
    """A TLS 1.3 client that presents no certificate."""

    def __init__(self) -> None:
        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.set_min_proto_version(SSL.TLS1_3_VERSION)
        self.context.set_verify(SSL.VERIFY_NONE)

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@pytest_twisted.ensureDeferred
async def test_a_connector_without_a_client_certificate_is_refused(tmp_path: Path) -> None:
    calls = Calls()
    bob = peer(tmp_path, "bob", verify=calls)
    port = await listening(bob)
    try:
        caller = Caller()
        endpoint = wrapClientTLS(NoCertificate(), TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await connectProtocol(endpoint, caller).addTimeout(TIMEOUT, reactor)
        assert await caller.closed.addTimeout(TIMEOUT, reactor) == b""
        assert calls.tokens == [] and bob.sessions == {}
    finally:
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_a_plain_tcp_peer_gets_nothing(tmp_path: Path) -> None:
    calls = Calls()
    bob = peer(tmp_path, "bob", verify=calls)
    port = await listening(bob)
    try:
        answer = await call(port, Caller(), key_name=None)  # HELLO in clear text
        assert b"WELCOME" not in answer and b"ERR" not in answer  # at most a TLS alert, never a line
        assert calls.tokens == [] and bob.sessions == {}
    finally:
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_a_tls_handshake_that_never_starts_times_out_and_frees_its_slot(tmp_path: Path) -> None:
    bob = peer(tmp_path, "bob", handshake_timeout=0.2)
    port = await listening(bob)
    try:
        idle = Caller(hello=b"")  # completes TCP, never sends a ClientHello
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), idle).addTimeout(TIMEOUT, reactor)
        assert await idle.closed.addTimeout(TIMEOUT, reactor) == b""
        assert not bob.connections and bob._handshakes_from == {}
    finally:
        await bob.stop()


class Quitter(Protocol):
    """alice accepts bob's file, and once some of it came ends TLS (close_notify) and never reads again."""

    def __init__(self, enough: int) -> None:
        self.enough = enough
        self.received = 0
        self.quit: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HELLO chatapp/2 alice tok-alice\r\n")

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.received += len(data)
        if b"OFFER " in data:
            transfer_id = data.split(b"OFFER ", 1)[1].split(b" ", 1)[0]
            self.transport.write(b"ACCEPT " + transfer_id + b" 0\r\n")
        elif self.received >= self.enough and not self.quit.called:
            self.transport.loseConnection()  # our close_notify goes out
            inner_transport(self.transport).pauseProducing()  # and nothing more is read
            self.quit.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_peer_that_ends_tls_and_stops_reading_ends_our_send_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the peer's close_notify nothing we write reaches it: the file is no longer read, and the
    connection, which a peer that never reads would hold open for ever, is dropped after CLOSE_WAIT."""
    from chatapp.peer import TransferState
    from chatapp.tls import records

    monkeypatch.setattr(records, "CLOSE_WAIT", 0.2)
    bob = peer(tmp_path, "bob")
    port = await listening(bob)
    path = tmp_path / "big.bin"
    size = 256 * 1024 * 1024
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: nothing to write, all of it to read
    quitter = Quitter(enough=1024 * 1024)
    endpoint = tls(TCP4ClientEndpoint(reactor, "127.0.0.1", port), "alice")
    await connectProtocol(endpoint, quitter).addTimeout(TIMEOUT, reactor)
    try:
        while "alice" not in bob.sessions or bob.sessions["alice"].state is not SessionState.OPEN:
            await deferLater(reactor, 0.01)
        session = bob.sessions["alice"]
        sent = session.send_file(str(path))
        await quitter.quit.addTimeout(TIMEOUT, reactor)
        for _ in range(TIMEOUT * 50):
            if sent.finished:
                break
            await deferLater(reactor, 0.02)
        assert sent.state is TransferState.CANCELLED and sent.reason == "connection-lost"
        assert sent.position < size // 2  # not read to the end into a connection that drops it all
        assert session.state is SessionState.CLOSED
    finally:
        if quitter.transport is not None:
            inner_transport(quitter.transport).abortConnection()
        await bob.stop()
