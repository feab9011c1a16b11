"""The client core end to end over 127.0.0.1: a real server, real clients, real files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from chat_harness import Recorder, cut_when_written, start_client
from live_server import start_server
from twisted.internet import defer

from chatapp.app import ChatClient
from chatapp.events import ChatRequested, FileOffered, PeerLeft, Reconnected, ServerLost, TransferProgress
from chatapp.peer import TransferState
from chatapp.server.tap import ChatServerService

MiB = 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 4 * MiB)
            f.write(os.urandom(n))
            remaining -= n
    return path


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.service: ChatServerService | None = None
        self.port = 0
        self.clients: list[ChatClient] = []

    async def start_server(self, *args: str) -> None:
        self.service, self.port = await start_server(str(self.tmp_path / "server.sqlite3"), *args)

    async def client(self, name: str, **options: Any) -> tuple[ChatClient, Recorder]:
        client, recorder = await start_client(self.port, name, self.tmp_path, **options)
        self.clients.append(client)
        return client, recorder

    async def stop(self) -> None:
        for client in self.clients:
            await client.stop()
        if self.service is not None and self.service.running:
            await self.service.stopService()


@pytest_twisted.async_yield_fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    await w.start_server()
    yield w
    await w.stop()


@pytest_twisted.ensureDeferred
async def test_three_clients_chat_pairwise_at_once(world: World) -> None:
    (alice, a), (bob, b), (carol, c) = [await world.client(n) for n in ("alice", "bob", "carol")]
    await defer.gatherResults(
        [
            defer.ensureDeferred(alice.send_message("bob", "hi bob")),
            defer.ensureDeferred(alice.send_message("carol", "hi carol")),
            defer.ensureDeferred(bob.send_message("carol", "hi carol from bob")),
        ]
    )
    await b.until(lambda: ("alice", "hi bob") in b.messages())
    await c.until(lambda: {("alice", "hi carol"), ("bob", "hi carol from bob")} <= set(c.messages()))
    await bob.send_message("alice", "hello alice")
    await carol.send_message("bob", "hello bob")
    await a.until(lambda: ("bob", "hello alice") in a.messages())
    await b.until(lambda: ("carol", "hello bob") in b.messages())
    assert ChatRequested("alice") in b.events  # the server told bob who was coming
    assert {s.peer_name for s in alice.sessions()} == {"bob", "carol"}
    assert len(bob.sessions()) == 2 and len(carol.sessions()) == 2


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_50_mib_each_way_with_chat_during_the_transfer(world: World, tmp_path: Path) -> None:
    alice, a = await world.client("alice", auto_accept=True)
    bob, b = await world.client("bob", auto_accept=True)
    to_bob = random_file(tmp_path / "to-bob.bin", 50 * MiB)
    to_alice = random_file(tmp_path / "to-alice.bin", 50 * MiB)
    await alice.send_file("bob", str(to_bob))
    await bob.send_file("alice", str(to_alice))
    # chat lines go between chunks while both files are on the way
    await b.until(lambda: bool(b.of(TransferProgress)))
    await alice.send_message("bob", "still there?")
    await bob.send_message("alice", "yes")
    await b.until(lambda: ("alice", "still there?") in b.messages())
    await a.until(lambda: ("bob", "yes") in a.messages())
    await a.until(lambda: len(a.ended()) == 2, timeout=60)
    await b.until(lambda: len(b.ended()) == 2, timeout=60)
    assert all(t.state is TransferState.DONE for t in a.ended() + b.ended())
    assert sha256_of(tmp_path / "bob" / "downloads" / "to-bob.bin") == sha256_of(to_bob)
    assert sha256_of(tmp_path / "alice" / "downloads" / "to-alice.bin") == sha256_of(to_alice)


@pytest_twisted.ensureDeferred
async def test_a_transfer_cut_at_40_percent_resumes_from_the_partial(world: World, tmp_path: Path) -> None:
    alice, _a = await world.client("alice")
    bob, b = await world.client("bob", auto_accept=True)
    size = 32 * MiB  # several writes (writer.MIN_WRITE) before the cut, more still to come after it
    source = random_file(tmp_path / "big.bin", size)

    def cut() -> None:  # the link dies mid-file
        session = alice.session("bob")
        assert session is not None and session.transport is not None
        session.transport.abortConnection()  # type: ignore[attr-defined]

    cutting = cut_when_written(bob, 0.4 * size, cut)
    await alice.send_file("bob", str(source))
    await cutting
    await b.until(lambda: bool(b.of(PeerLeft)))
    downloads = tmp_path / "bob" / "downloads"
    assert not (downloads / "big.bin").exists()  # nothing under the final name

    handle = await alice.send_file("bob", str(source))
    transfer = alice.transfer(handle)
    await defer.ensureDeferred(_done(transfer))
    assert transfer.state is TransferState.DONE
    assert transfer.offset >= 0.4 * size  # only the rest was sent
    assert sha256_of(downloads / "big.bin") == sha256_of(source)
    assert [p.name for p in downloads.iterdir() if not p.name.startswith(".")] == ["big.bin"]


async def _done(transfer: object) -> None:
    await transfer.when_done()  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_offers_wait_for_the_users_decision(world: World, tmp_path: Path) -> None:
    alice, a = await world.client("alice")
    bob, b = await world.client("bob")
    (tmp_path / "note.txt").write_bytes(b"line one\r\nline two\r\n")
    (tmp_path / "spam.txt").write_bytes(b"spam")
    await alice.send_file("bob", str(tmp_path / "note.txt"))
    await alice.send_file("bob", str(tmp_path / "spam.txt"))
    await b.until(lambda: len(b.of(FileOffered)) == 2)
    offers = {e.transfer.name: e.transfer.handle for e in b.of(FileOffered)}
    bob.accept(offers["note.txt"])
    bob.reject(offers["spam.txt"])
    await a.until(lambda: len(a.ended()) == 2)
    states = {t.name: t.state for t in a.ended()}
    assert states == {"note.txt": TransferState.DONE, "spam.txt": TransferState.REJECTED}
    assert (tmp_path / "bob" / "downloads" / "note.txt").read_bytes() == b"line one\r\nline two\r\n"
    assert not (tmp_path / "bob" / "downloads" / "spam.txt").exists()


@pytest_twisted.ensureDeferred
async def test_the_server_stopping_mid_chat_does_not_stop_the_chat(world: World) -> None:
    alice, a = await world.client("alice")
    bob, b = await world.client("bob")
    await alice.send_message("bob", "before")
    await b.until(lambda: ("alice", "before") in b.messages())
    assert world.service is not None
    await world.service.stopService()
    await a.until(lambda: bool(a.of(ServerLost)))
    await alice.send_message("bob", "during")
    await bob.send_message("alice", "still here")
    await b.until(lambda: ("alice", "during") in b.messages())
    await a.until(lambda: ("bob", "still here") in a.messages())
    # the server comes back on the same port: the clients log in again and publish their ports
    await world.start_server("--listen", f"tcp:{world.port}:interface=127.0.0.1")
    await a.until(lambda: bool(a.of(Reconnected)))
    await b.until(lambda: bool(b.of(Reconnected)))
    who = {entry.name: entry.state for entry in await alice.who()}
    assert who == {"alice": "listening", "bob": "listening"}


@pytest_twisted.ensureDeferred
async def test_two_users_dialling_each_other_at_once_keep_one_chat(world: World) -> None:
    alice, a = await world.client("alice")
    bob, b = await world.client("bob")
    await defer.gatherResults(
        [defer.ensureDeferred(alice.chat("bob")), defer.ensureDeferred(bob.chat("alice"))], consumeErrors=True
    ).addErrback(lambda _: None)  # the losing dial of the two may be closed under its caller
    await a.until(lambda: alice.session("bob") is not None)
    await b.until(lambda: bob.session("alice") is not None)
    await alice.send_message("bob", "one chat?")
    await bob.send_message("alice", "one chat.")
    await b.until(lambda: ("alice", "one chat?") in b.messages())
    await a.until(lambda: ("bob", "one chat.") in a.messages())
    assert len(alice.sessions()) == 1 and len(bob.sessions()) == 1
    assert not a.of(PeerLeft) and not b.of(PeerLeft)


@pytest_twisted.ensureDeferred
async def test_peer_connections_read_256_kib_at_a_time_and_the_server_link_does_not(world: World) -> None:
    from chatapp.peer.session import RECEIVE_SIZE

    alice, _ = await world.client("alice")
    bob, _ = await world.client("bob")
    session = await alice.chat("bob")
    assert getattr(session.transport, "bufferSize", None) == RECEIVE_SIZE == 256 * 1024
    server_link = alice.server.protocol.transport
    assert getattr(server_link, "bufferSize", None) == 64 * 1024  # Twisted's default, unchanged
    assert bob.session("alice") is not None
