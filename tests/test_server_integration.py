"""The real service (threads for bcrypt and SQLite) over 127.0.0.1 sockets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_twisted
from line_client import connect_lines
from live_server import start_server
from server_harness import key_of
from twisted.internet import defer

from chatapp.server.tap import ChatServerService

PASSWORD = "correct horse battery"

Start = Callable[..., Awaitable[tuple[ChatServerService, int]]]


@pytest_twisted.async_yield_fixture
async def server(tmp_path) -> AsyncIterator[Start]:
    services: list[ChatServerService] = []

    async def _start(*args: str) -> tuple[ChatServerService, int]:
        service, port = await start_server(str(tmp_path / "chat.sqlite3"), *args)
        services.append(service)
        return service, port

    yield _start
    for service in services:
        if service.running:
            await stop(service)


async def stop(service: ChatServerService) -> None:
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_signup_login_who_over_loopback(server: Start) -> None:
    _, port = await server()
    alice = await connect_lines(port)
    assert await alice.ask(f"SIGNUP alice {PASSWORD}") == "OK SIGNUP alice"
    assert await alice.ask(f"KEY {key_of('alice')}") == "OK KEY"
    assert await alice.ask("LISTEN 40123") == "OK LISTEN 127.0.0.1 40123"
    bob = await connect_lines(port, source="127.0.0.2")
    assert await bob.ask(f"SIGNUP bob {PASSWORD}") == "OK SIGNUP bob"
    assert await bob.ask(f"KEY {key_of('bob')}") == "OK KEY"
    reply = (await bob.ask("CONNECT alice")).split(" ")
    assert reply[:5] == ["OK", "CONNECT", "alice", "127.0.0.1", "40123"]
    assert reply[7] == key_of("alice")  # the target's key
    assert await alice.next_line() == "* REQUEST bob"
    assert await alice.ask(f"VERIFY {reply[5]}") == f"OK VERIFY bob {reply[6]} {key_of('bob')}"  # the requester's
    await alice.close()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_lockout_across_three_connections_and_a_restart(server: Start) -> None:
    service, port = await server("--block-time", "600")
    for attempt in range(3):
        client = await connect_lines(port, source="127.0.0.7")
        reply = await client.ask("LOGIN alice wrongpassword")
        if attempt < 2:
            assert reply == f"ERR 401 bad-credentials {2 - attempt} wrong user name or password"
            await client.close()
        else:
            assert reply.startswith("ERR 429 blocked 600 ")
            await client.closed
    refused = await connect_lines(port, source="127.0.0.7", greeting=None)
    assert (await refused.next_line()).startswith("* BLOCKED ")
    await refused.closed
    # the block is durable: a new server process on the same file still refuses the address
    await stop(service)
    _, port = await server()
    refused = await connect_lines(port, source="127.0.0.7", greeting=None)
    line = await refused.next_line()
    assert line.startswith("* BLOCKED ") and 590 <= int(line.split(" ")[2]) <= 600
    await refused.closed
    # the name was locked too (one failure reached both limits), from any address
    other = await connect_lines(port, source="127.0.0.8")
    assert (await other.ask(f"LOGIN alice {PASSWORD}")).startswith("ERR 429 locked ")
    await other.close()


@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_signups_of_one_name(server: Start) -> None:
    _, port = await server("--signups-per-hour", "100", "--max-connections-per-address", "100")
    clients = [await connect_lines(port) for _ in range(20)]
    for client in clients:
        client.send(f"SIGNUP Same {PASSWORD}")
    replies = await defer.gatherResults([defer.ensureDeferred(c.next_line()) for c in clients])
    assert replies.count("OK SIGNUP Same") == 1
    assert replies.count("ERR 409 user-exists that name is taken") == 19
    for client in clients:
        await client.close()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_ping_is_answered_while_realistic_bcrypt_checks_run(server: Start) -> None:
    _, port = await server("--bcrypt-rounds", "12", "--max-connections-per-address", "100")
    busy = [await connect_lines(port, source=f"127.0.1.{i}") for i in range(1, 9)]
    for i, client in enumerate(busy):
        client.send(f"LOGIN nobody{i} {PASSWORD}")  # unknown users still cost a full bcrypt check
    pinger = await connect_lines(port, source="127.0.2.1")
    started = time.monotonic()
    assert await pinger.ask("PING") == "OK PONG"
    latency = time.monotonic() - started
    replies = [await c.next_line() for c in busy]
    elapsed = time.monotonic() - started
    assert all(r.startswith(("ERR 401", "ERR 503")) for r in replies), replies
    # 8 checks of ~0.2 s each on a small pool take well over a second; the PING did not wait for them
    assert latency < 0.5 < elapsed or latency < elapsed / 4
    for client in [*busy, pinger]:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_shutdown_says_bye(server: Start) -> None:
    service, port = await server()
    client = await connect_lines(port)
    await client.ask(f"SIGNUP alice {PASSWORD}")
    stopping = defer.ensureDeferred(stop(service))
    assert await client.next_line() == "* BYE shutdown"
    await client.closed
    await stopping
