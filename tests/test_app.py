"""ChatClient against the in-process server: one emit hears everything, stop() is a Deferred, dials are shared."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from chat_harness import TIMEOUT, start_client
from live_server import start_server
from twisted.internet import defer, reactor

from chatapp.app import ChatClient, UnknownTransfer
from chatapp.events import FileOffered, PeerJoined, PeerLeft


class Clients:
    def __init__(self, port: int, tmp_path: Path) -> None:
        self.port = port
        self.tmp_path = tmp_path
        self.started: list[ChatClient] = []


@pytest_twisted.async_yield_fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    service, port = await start_server(str(tmp_path / "server.sqlite3"))
    world = Clients(port, tmp_path)
    yield world
    for client in world.started:
        await client.stop()
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_is_a_deferred_that_fires_after_bye_and_quit(clients: Clients) -> None:
    alice, _ = await start_client(clients.port, "alice", clients.tmp_path)
    bob, b = await start_client(clients.port, "bob", clients.tmp_path)
    clients.started.append(bob)
    await alice.send_message("bob", "hi")
    await b.until(lambda: ("alice", "hi") in b.messages())
    stopping = alice.stop()
    assert isinstance(stopping, defer.Deferred)
    await stopping.addTimeout(TIMEOUT, reactor)
    assert not alice.server.connected and not alice.listening
    await b.until(lambda: bool(b.of(PeerLeft)))
    assert [e.reason for e in b.of(PeerLeft)] == ["bye"]


@pytest_twisted.ensureDeferred
async def test_handles_number_transfers_in_the_events_and_the_lookups(clients: Clients) -> None:
    alice, _ = await start_client(clients.port, "alice", clients.tmp_path)
    bob, b = await start_client(clients.port, "bob", clients.tmp_path)
    clients.started += [alice, bob]
    (clients.tmp_path / "one.txt").write_bytes(b"one")
    (clients.tmp_path / "two.txt").write_bytes(b"two")
    first = await alice.send_file("bob", str(clients.tmp_path / "one.txt"))
    second = await alice.send_file("bob", str(clients.tmp_path / "two.txt"))
    assert (first, second) == (1, 2)
    assert [t.handle for t in alice.transfers()] == [1, 2]
    await b.until(lambda: len(b.of(FileOffered)) == 2)
    offered = [e.transfer for e in b.of(FileOffered)]
    assert [t.handle for t in offered] == [1, 2]  # bob numbers his own, from 1
    assert bob.transfer(2) is offered[1]
    with pytest.raises(UnknownTransfer):
        bob.transfer(3)


@pytest_twisted.ensureDeferred
async def test_a_caller_that_stops_waiting_for_a_dial_does_not_strand_the_others(clients: Clients) -> None:
    alice, _ = await start_client(clients.port, "alice", clients.tmp_path)
    bob, b = await start_client(clients.port, "bob", clients.tmp_path)
    clients.started += [alice, bob]
    impatient = defer.ensureDeferred(alice.chat("bob"))
    patient = defer.ensureDeferred(alice.chat("bob"))
    impatient.cancel()
    session = await patient.addTimeout(TIMEOUT, reactor)
    assert session.peer_name == "bob"
    with pytest.raises(defer.CancelledError):
        await impatient
    await b.until(lambda: bool(b.of(PeerJoined)))
    assert len(alice.sessions()) == 1
