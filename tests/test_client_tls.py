"""The client's trust in the server's certificate, against a real TLS server on 127.0.0.1 that records
every byte it receives: a man in the middle (another key than the pinned or given one) is refused with
the exact message, a first contact is refused unless confirmed, and no password ever crosses before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from chatapp.client import ServerConnection
from chatapp.client.errors import ServerKeyChanged, ServerKeyUnknown, ServerNotTrusted
from chatapp.tls.contexts import ServerLinkServerTLS
from chatapp.tls.identity import new_identity
from chatapp.tls.known_hosts import KnownServers

PASSWORD = "correct horse battery"
TIMEOUT = 10


@implementer(IHandshakeListener)
class Recording(Protocol):
    """Greets after the handshake like a chat server, answers LOGIN and KEY, and keeps every byte."""

    def __init__(self, received: list[bytes]) -> None:
        self.received = received

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        self.transport.write(b"* HELLO chatapp/2\r\n")

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.received.append(data)
        for line in data.split(b"\r\n"):
            if line.startswith(b"LOGIN "):
                self.transport.write(b"OK LOGIN alice\r\n")
            elif line.startswith(b"KEY "):
                self.transport.write(b"OK KEY\r\n")


class Impostor:
    def __init__(self) -> None:
        self.identity = new_identity("impostor")
        self.received: list[bytes] = []
        self.port: Any = None

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def number(self) -> int:
        return int(self.port.getHost().port)


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Impostor]:
    impostor = Impostor()
    factory = Factory.forProtocol(lambda: Recording(impostor.received))
    wrapped = TLSMemoryBIOFactory(ServerLinkServerTLS(impostor.identity), False, factory)
    impostor.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(wrapped)
    yield impostor
    await impostor.port.stopListening()


def connection(port: int, known: KnownServers, **options: Any) -> ServerConnection:
    return ServerConnection(reactor, f"127.0.0.1:{port}", known_servers=known, max_attempts=1, **options)


class Questions:
    """A ``confirm`` for the trust question that keeps each question's answer, for the test to give."""

    def __init__(self) -> None:
        self.answers: list[defer.Deferred[bool]] = []

    def __call__(self, where: str, fingerprint: str) -> defer.Deferred[bool]:
        answer: defer.Deferred[bool] = defer.Deferred()
        self.answers.append(answer)
        return answer

    async def first(self) -> None:
        """Wait until the first question is asked."""
        for _ in range(TIMEOUT * 100):
            if self.answers:
                return
            await deferLater(reactor, 0.01)
        raise AssertionError("the trust question was never asked")


async def refused(conn: ServerConnection) -> BaseException:
    try:
        await conn.login("alice", PASSWORD).addTimeout(TIMEOUT, reactor)
    except ServerNotTrusted as e:
        return e
    finally:
        await conn.close()
    raise AssertionError("the login went through")


def pinned_another_key(server: Impostor, tmp_path: Path) -> tuple[KnownServers, str]:
    """A known-servers file in which ``server``'s address is pinned with some other key."""
    known = KnownServers(tmp_path / "known_servers")
    pinned = new_identity().fingerprint
    known.pin("127.0.0.1", server.number, pinned)
    return known, pinned


@pytest_twisted.ensureDeferred
async def test_a_server_with_another_key_than_the_pinned_one_is_refused_loudly(
    server: Impostor, tmp_path: Path
) -> None:
    known, pinned = pinned_another_key(server, tmp_path)
    error = await refused(connection(server.number, known, trust_on_first_use=True))  # not asked, not even so
    assert isinstance(error, ServerKeyChanged)
    assert str(error) == (
        f"REFUSED: the chat server at 127.0.0.1:{server.number} presented a different key than the one pinned. "
        f"Someone may be intercepting the connection. Pinned: {pinned}  offered: {server.fingerprint}. "
        f"If the server's key was changed on purpose, remove line 1 of {tmp_path / 'known_servers'} "
        "and connect again."
    )
    assert server.received == []  # the password never crossed
    assert known.lookup("127.0.0.1", server.number).fingerprint == pinned  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_a_pin_wins_over_a_given_fingerprint_that_names_the_new_key_and_the_message_says_so(
    server: Impostor, tmp_path: Path
) -> None:
    known, pinned = pinned_another_key(server, tmp_path)
    error = await refused(connection(server.number, known, server_fingerprint=server.fingerprint))
    assert isinstance(error, ServerKeyChanged)
    assert str(error).endswith(
        f"remove line 1 of {tmp_path / 'known_servers'} and connect again. The key you gave"
        " (--server-fingerprint) is the offered one, but a pinned key is only replaced by removing its line."
    )
    assert server.received == []
    assert known.lookup("127.0.0.1", server.number).fingerprint == pinned  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_a_wrong_server_fingerprint_is_refused(server: Impostor, tmp_path: Path) -> None:
    known = KnownServers(tmp_path / "known_servers")
    given = new_identity().fingerprint
    error = await refused(connection(server.number, known, server_fingerprint=given))
    assert isinstance(error, ServerKeyChanged)
    assert f"expected: {given}  offered: {server.fingerprint}" in str(error).replace("Expected", "expected")
    assert "--server-fingerprint" in str(error)
    assert server.received == []
    assert known.lookup("127.0.0.1", server.number) is None  # nothing pinned


@pytest_twisted.ensureDeferred
async def test_first_contact_without_a_way_to_confirm_is_refused_with_the_fingerprint(
    server: Impostor, tmp_path: Path
) -> None:
    known = KnownServers(tmp_path / "known_servers")
    error = await refused(connection(server.number, known))
    assert isinstance(error, ServerKeyUnknown)
    assert error.offered == server.fingerprint and server.fingerprint in str(error)
    assert f"--server-fingerprint {server.fingerprint}" in str(error)
    assert server.received == []
    assert known.lookup("127.0.0.1", server.number) is None


@pytest_twisted.ensureDeferred
async def test_a_user_who_says_no_sends_nothing_and_pins_nothing(server: Impostor, tmp_path: Path) -> None:
    known = KnownServers(tmp_path / "known_servers")
    asked: list[tuple[str, str]] = []

    def confirm(where: str, fingerprint: str) -> defer.Deferred[bool]:
        asked.append((where, fingerprint))
        return defer.succeed(False)

    error = await refused(connection(server.number, known, confirm=confirm))
    assert asked == [(f"127.0.0.1:{server.number}", server.fingerprint)]
    assert "nothing was sent" in str(error)
    assert server.received == [] and known.lookup("127.0.0.1", server.number) is None


@pytest.mark.parametrize("how", ["given", "confirmed", "tofu"])
@pytest_twisted.ensureDeferred
async def test_first_contact_accepted_pins_the_key_then_logs_in(server: Impostor, tmp_path: Path, how: str) -> None:
    known = KnownServers(tmp_path / "known_servers")
    choices: dict[str, dict[str, Any]] = {
        "given": {"server_fingerprint": server.fingerprint.upper().replace("SHA256", "sha256")},
        "confirmed": {"confirm": lambda where, fingerprint: defer.succeed(True)},
        "tofu": {"trust_on_first_use": True},
    }
    options = choices[how]
    conn = connection(server.number, known, **options)
    assert await conn.login("alice", PASSWORD).addTimeout(TIMEOUT, reactor) == "alice"
    await conn.close()
    assert known.lookup("127.0.0.1", server.number).fingerprint == server.fingerprint  # type: ignore[union-attr]
    sent = b"".join(server.received)
    assert sent.startswith(b"LOGIN alice correct horse battery\r\nKEY sha256:")
    assert conn.identity is not None and conn.identity.fingerprint.encode() in sent


def test_a_tls_endpoint_description_is_refused_since_tls_is_added_by_itself(tmp_path: Path) -> None:
    from chatapp.client import InvalidArgument

    with pytest.raises(InvalidArgument, match="TLS is added by itself"):
        ServerConnection(reactor, "tls:example.org:8750", known_servers=KnownServers(tmp_path / "k"))


@pytest_twisted.ensureDeferred
async def test_the_time_a_person_takes_to_compare_the_key_does_not_count_as_the_server_not_greeting(
    server: Impostor, tmp_path: Path
) -> None:
    """hello_timeout is for the server. Its clock stops while the question is asked and starts again in
    full after the answer (this server greeted at once; the greeting waits in the TLS layer meanwhile)."""
    from twisted.internet.task import Clock

    clock = Clock()
    known = KnownServers(tmp_path / "known_servers")
    asked = Questions()

    conn = connection(server.number, known, confirm=asked, clock=clock, hello_timeout=5)
    logged_in = conn.login("alice", PASSWORD)
    await asked.first()
    clock.advance(600)  # ten minutes looking at the fingerprint
    asked.answers[0].callback(True)
    assert await logged_in.addTimeout(TIMEOUT, reactor) == "alice"
    await conn.close()
    assert known.lookup("127.0.0.1", server.number).fingerprint == server.fingerprint  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_a_server_silent_after_the_answer_still_times_out(tmp_path: Path) -> None:
    """The clock starts again after the answer: a server that never greets is still given up on."""
    from twisted.internet.task import Clock

    identity = new_identity("mute")
    wrapped = TLSMemoryBIOFactory(ServerLinkServerTLS(identity), False, Factory.forProtocol(Protocol))
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(wrapped)
    clock = Clock()
    asked = Questions()

    try:
        known = KnownServers(tmp_path / "known_servers")
        conn = connection(port.getHost().port, known, confirm=asked, clock=clock, hello_timeout=5)
        logged_in = conn.login("alice", PASSWORD)
        await asked.first()
        clock.advance(600)
        asked.answers[0].callback(True)
        clock.advance(4.9)
        assert not logged_in.called
        clock.advance(0.1)
        with pytest.raises(Exception, match="did not greet us"):
            await logged_in.addTimeout(TIMEOUT, reactor)
        await conn.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_server_that_stopped_waiting_while_the_person_decided_is_connected_to_again(tmp_path: Path) -> None:
    """The server's login timeout (a minute) ran out at the trust question: after "yes" the client connects
    again, once, is not asked again (the key is pinned by then) and logs in; the password crosses only
    on the second connection."""
    identity = new_identity("slow-reader")
    received: list[bytes] = []
    connections: list[Protocol] = []

    first_gone: defer.Deferred[None] = defer.Deferred()

    class Watched(Recording):
        def connectionLost(self, reason: object = None) -> None:
            if self is connections[0]:
                first_gone.callback(None)

    def build() -> Protocol:
        protocol = Watched(received)
        connections.append(protocol)
        return protocol

    wrapped = TLSMemoryBIOFactory(ServerLinkServerTLS(identity), False, Factory.forProtocol(build))
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(wrapped)
    asked = Questions()

    try:
        known = KnownServers(tmp_path / "known_servers")
        conn = connection(port.getHost().port, known, confirm=asked)
        logged_in = conn.login("alice", PASSWORD)
        await asked.first()
        first = connections[0].transport
        assert first is not None
        first.write(b"* BYE login-timeout\r\n")  # the server's minute is up
        first.loseConnection()
        await first_gone.addTimeout(TIMEOUT, reactor)
        await deferLater(reactor, 0.05)  # the BYE and the close reached the client, held behind the question
        asked.answers[0].callback(True)
        assert await logged_in.addTimeout(TIMEOUT, reactor) == "alice"
        assert len(asked.answers) == 1 and len(connections) == 2
        assert b"".join(received).startswith(b"LOGIN alice ")  # nothing crossed on the first connection
        await conn.close()
    finally:
        await port.stopListening()
