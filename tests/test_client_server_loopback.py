"""The client library against a real ServerFactory on 127.0.0.1, with the real reactor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from conftest import make_factory
from deferreds import result_of
from processes import pin_server
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory

from chatapp.client import errors
from chatapp.client.connection import ServerConnection, State
from chatapp.client.server import PeerTicket
from chatapp.events import ChatEvent, ChatRequested, GaveUp, Reconnected, Reconnecting, ServerLost
from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.tls.contexts import ServerLinkServerTLS
from chatapp.tls.identity import new_identity
from chatapp.tls.transports import inner_transport

PASSWORD = "correct horse battery"
TIMEOUT = 5


class Events:
    """Records connection events; ``wait_for(kind)`` fires when one of that kind arrives."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self._waiting: list[tuple[str, defer.Deferred[tuple[Any, ...]]]] = []

    def _add(self, *event: Any) -> None:
        self.seen.append(event)
        still = []
        for kind, d in self._waiting:
            if kind == event[0]:
                d.callback(event)
            else:
                still.append((kind, d))
        self._waiting = still

    def wait_for(self, kind: str) -> defer.Deferred[tuple[Any, ...]]:
        d: defer.Deferred[tuple[Any, ...]] = defer.Deferred()
        self._waiting.append((kind, d))
        return d.addTimeout(TIMEOUT, reactor)

    def __call__(self, event: ChatEvent) -> None:
        if isinstance(event, ChatRequested):
            self._add("request", event.user)
        elif isinstance(event, ServerLost):
            assert isinstance(event.error, errors.ConnectionClosed)
            self._add("lost", event.error.bye)
        elif isinstance(event, Reconnecting):
            self._add("reconnecting", event.attempt)
        elif isinstance(event, Reconnected):
            self._add("reconnected", event.user, event.listening)
        elif isinstance(event, GaveUp):
            self._add("gave_up", type(event.error).__name__, str(event.error))


class ChatServer:
    def __init__(self, factory: ServerFactory) -> None:
        self.factory = factory
        self.port: IListeningPort | None = None
        self.number = 0
        self.tls = ServerLinkServerTLS(new_identity("chatserver"))  # one key, kept across restarts

    async def start(self, number: int = 0) -> None:
        endpoint = serverFromString(reactor, f"tcp:{number}:interface=127.0.0.1")
        wrapped = TLSMemoryBIOFactory(self.tls, False, self.factory)
        self.port = await endpoint.listen(wrapped)
        self.number = self.port.getHost().port  # type: ignore[union-attr]
        pin_server(self.number, self.tls.fingerprint)

    async def stop(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            await defer.maybeDeferred(port.stopListening)
        await self.factory.shut_down().addTimeout(TIMEOUT, reactor)

    def kick_transport(self, user: str) -> None:
        """Close the server side of ``user``'s connection without a word."""
        presence = result_of(self.factory.registry.get(user))
        assert presence is not None and presence.connection.transport is not None
        # Under TLS a loseConnection waits for the registered producer: cut the TCP connection itself.
        inner_transport(presence.connection.transport).loseConnection()


class Clients:
    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self.made: list[ServerConnection] = []

    def new(self, **options: Any) -> tuple[ServerConnection, Events]:
        events = Events()
        options.setdefault("initial_delay", 0.05)
        options.setdefault("max_delay", 0.2)
        options.setdefault("jitter", 0.0)
        conn = ServerConnection(reactor, f"127.0.0.1:{self.server.number}", events, **options)
        self.made.append(conn)
        return conn, events


@pytest_twisted.async_yield_fixture
async def server(tmp_path) -> AsyncIterator[ChatServer]:
    factory = make_factory(str(tmp_path / "chat.sqlite3"), reactor, ServerConfig(block_time=600, tls=True))  # type: ignore[arg-type]
    before = set(reactor.getDelayedCalls())
    chat = ChatServer(factory)
    await chat.start()
    yield chat
    await chat.stop()
    factory.store.close()
    # nothing may be left behind: every timer (keep-alive, backoff, login deadline) cancelled
    for _ in range(100):
        left = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
        if not left:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert left == []


@pytest_twisted.async_yield_fixture
async def clients(server: ChatServer) -> AsyncIterator[Clients]:
    made = Clients(server)
    yield made
    for conn in made.made:
        await conn.close().addTimeout(TIMEOUT, reactor)


def wait(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    return d.addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_signup_listen_who_connect_and_verify_between_two_clients(clients: Clients) -> None:
    alice, alice_events = clients.new()
    bob, _ = clients.new()
    assert await wait(alice.signup("Alice", PASSWORD)) == "Alice"
    assert await wait(alice.listen(40123)) == ("127.0.0.1", 40123)
    assert await wait(bob.signup("bob", PASSWORD)) == "bob"
    who = await wait(bob.who())
    assert sorted(who) == [("Alice", "listening"), ("bob", "online")]
    requested = alice_events.wait_for("request")
    ticket = await wait(bob.connect("alice"))
    assert isinstance(ticket, PeerTicket)
    assert (ticket.user, ticket.host, ticket.port) == ("Alice", "127.0.0.1", 40123)
    assert await requested == ("request", "bob")
    assert alice.identity is not None and bob.identity is not None
    assert ticket.fingerprint == alice.identity.fingerprint  # the target's key, as alice published it
    assert await wait(alice.verify(ticket.token)) == ("bob", ticket.proof, bob.identity.fingerprint)
    with pytest.raises(errors.BadToken):
        await wait(alice.verify(ticket.token))  # single use
    with pytest.raises(errors.NotListening):
        await wait(alice.connect("bob"))
    with pytest.raises(errors.NoSuchUser):
        await wait(alice.connect("carol"))
    with pytest.raises(errors.UserExists):
        await wait(clients.new()[0].signup("ALICE", PASSWORD))


@pytest_twisted.ensureDeferred
async def test_login_after_signup_elsewhere_and_pipelined_calls(clients: Clients) -> None:
    first, _ = clients.new()
    await wait(first.signup("carol", PASSWORD))
    await wait(first.close())
    second, _ = clients.new()
    protocol = await wait(second.open())
    key = "sha256:" + "1" * 64
    calls = [protocol.login("Carol", PASSWORD), protocol.key(key), protocol.listen(40000), protocol.who()]
    results = await wait(defer.gatherResults(calls, consumeErrors=True))
    assert results == ["carol", None, ("127.0.0.1", 40000), [("carol", "listening")]]


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_then_blocked(clients: Clients) -> None:
    owner, _ = clients.new()
    await wait(owner.signup("dave", PASSWORD))
    attacker, events = clients.new()
    for tries_left, more in ((2, "2 more wrong passwords block"), (1, "one more wrong password blocks")):
        with pytest.raises(errors.BadCredentials) as info:
            await wait(attacker.login("dave", "wrong password"))
        assert info.value.tries_left == tries_left
        assert str(info.value) == f"wrong user name or password (401 bad-credentials); {more} your address"
    lost = attacker.protocol.when_closed()
    with pytest.raises(errors.Blocked) as blocked:
        await wait(attacker.login("dave", "wrong password"))
    assert blocked.value.seconds == 600
    await wait(lost)  # the server hangs up on a blocked address
    assert events.seen == []  # never logged in: no session lost, nothing to reconnect (the login failed)
    assert attacker.state is State.IDLE
    with pytest.raises(errors.Blocked) as again:
        await wait(attacker.login("dave", PASSWORD))  # * BLOCKED instead of HELLO
    assert again.value.seconds is not None and 590 <= again.value.seconds <= 600


@pytest_twisted.ensureDeferred
async def test_reconnects_logs_in_and_listens_again_after_a_drop(server: ChatServer, clients: Clients) -> None:
    alice, events = clients.new()
    bob, _ = clients.new()
    await wait(alice.signup("alice", PASSWORD))
    await wait(alice.listen(40555))
    await wait(bob.signup("bob", PASSWORD))
    old = alice.protocol
    reconnected = events.wait_for("reconnected")
    server.kick_transport("alice")
    assert await reconnected == ("reconnected", "alice", ("127.0.0.1", 40555))
    assert events.seen == [("lost", None), ("reconnecting", 1), ("reconnected", "alice", ("127.0.0.1", 40555))]
    assert alice.protocol is not old and alice.logged_in
    assert ("alice", "listening") in await wait(bob.who())
    ticket = await wait(bob.connect("alice"))
    assert ticket.port == 40555


@pytest_twisted.ensureDeferred
async def test_reconnects_through_a_server_restart_on_the_same_port(server: ChatServer, clients: Clients) -> None:
    alice, events = clients.new()
    await wait(alice.signup("alice", PASSWORD))
    await wait(alice.listen(40556))
    number = server.number
    await server.stop()  # * BYE shutdown, then closed; the port is gone
    await wait(events.wait_for("reconnecting"))
    assert events.seen[0] == ("lost", "shutdown")
    with pytest.raises(errors.NotConnected):
        await wait(alice.who())
    await deferLater(reactor, 0.3, lambda: None)  # a few refused attempts
    refused = [e for e in events.seen if e[0] == "reconnecting"]
    assert len(refused) >= 2
    reconnected = events.wait_for("reconnected")
    await server.start(number)
    assert await reconnected == ("reconnected", "alice", ("127.0.0.1", 40556))
    assert await wait(alice.who()) == [("alice", "listening")]


@pytest_twisted.ensureDeferred
async def test_a_new_password_is_used_when_reconnecting(server: ChatServer, clients: Clients) -> None:
    alice, events = clients.new()
    await wait(alice.signup("alice", PASSWORD))
    await wait(alice.passwd(PASSWORD, "a whole new password"))
    reconnected = events.wait_for("reconnected")
    server.kick_transport("alice")
    assert await reconnected == ("reconnected", "alice", None)


@pytest_twisted.ensureDeferred
async def test_replaced_by_a_second_login_is_not_reconnected(clients: Clients) -> None:
    first, first_events = clients.new()
    await wait(first.signup("erin", PASSWORD))
    gave_up = first_events.wait_for("gave_up")
    second, _ = clients.new()
    await wait(second.login("erin", PASSWORD))
    _, name, text = await gave_up
    assert name == "ConnectionClosed" and "logged in from somewhere else" in text
    assert first_events.seen[0] == ("lost", "replaced")
    await deferLater(reactor, 0.2, lambda: None)
    assert first.state is State.IDLE and not first.connected
    assert await wait(second.who()) == [("erin", "online")]
