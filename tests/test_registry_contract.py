"""One contract for every registry, lockout and signup window: the memory ones and the Redis ones.

Each test runs against both (a real redis-server for the second, tests/services.py); the tests
at the end are Redis only: two processes' worth of registries sharing one Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from chatapp.server.limits import MemorySignups, SignupLimiter, Signups
from chatapp.server.lockout import Attempt, Lockout, LoginLockout, MemoryLockout, Refused, Verdict, Wait
from chatapp.server.registry import Issued, MemoryRegistry, Registry, TokenWait, lua
from chatapp.server.registry.redis import (
    HEARTBEAT_TTL,
    RedisLink,
    RedisLockout,
    RedisRegistry,
    RedisSignups,
    parse_redis_url,
)
from chatapp.server.store import ADDRESS, NAME

TIMEOUT = 10.0
MAX_ATTEMPTS = 3


@dataclass(eq=False)
class FakeConnection:
    """What a registry sees of a server connection: it records what it is told."""

    events: list[tuple[str, ...]] = field(default_factory=list)
    kicked: list[str] = field(default_factory=list)
    told: defer.Deferred[None] = field(default_factory=defer.Deferred)

    def kick(self, reason: str) -> None:
        self.kicked.append(reason)
        if not self.told.called:
            self.told.callback(None)

    def event(self, *parts: str) -> None:
        self.events.append(parts)
        if not self.told.called:
            self.told.callback(None)

    def heard(self) -> defer.Deferred[None]:
        """Fires once this connection was kicked or told an event (from another process: over pub/sub)."""
        return self.told.addTimeout(TIMEOUT, reactor)


@dataclass
class Process:
    """What one server process holds: a registry, a lockout and signup windows."""

    registry: Registry[Any]
    lockout: Lockout
    signups: Signups
    link: RedisLink | None = None


def memory_process(clock: Clock) -> Process:
    return Process(
        MemoryRegistry(),
        MemoryLockout(LoginLockout(clock, MAX_ATTEMPTS, 300.0)),
        MemorySignups(SignupLimiter(5)),
    )


async def redis_process(url: str, clock: Clock) -> Process:
    link = RedisLink(parse_redis_url(url), clock)
    registry: RedisRegistry[Any] = RedisRegistry(link)
    process = Process(registry, RedisLockout(link, MAX_ATTEMPTS, 300.0), RedisSignups(link, 5), link)
    await registry.open()
    return process


@pytest_twisted.async_yield_fixture(params=["memory", "redis"])
async def process(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Process]:
    if request.param == "memory":
        made = memory_process(clock)
    else:
        made = await redis_process(request.getfixturevalue("redis_url"), clock)
    yield made
    await made.registry.close()


@pytest_twisted.async_yield_fixture
async def two(redis_url: str, clock: Clock) -> AsyncIterator[tuple[Process, Process]]:
    """Two server processes' worth of Redis registries on one Redis."""
    first = await redis_process(redis_url, clock)
    second = await redis_process(redis_url, clock)
    yield first, second
    await first.registry.close()
    await second.registry.close()


# -- presence ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_presence_is_listed_with_key_and_listening_address(process: Process) -> None:
    registry = process.registry
    alice, bob = FakeConnection(), FakeConnection()
    await registry.login("Alice", alice)
    await registry.login("bob", bob)
    await registry.set_key("alice", alice, "sha256:" + "a" * 64)
    await registry.listen("ALICE", alice, "127.0.0.1", 4000)
    found = await registry.get("alice")
    assert found is not None
    assert (found.name, found.connection, found.listening, found.key) == (
        "Alice",
        alice,
        ("127.0.0.1", 4000),
        "sha256:" + "a" * 64,
    )
    assert sorted((p.name, p.listening is not None) for p in await registry.online()) == [
        ("Alice", True),
        ("bob", False),
    ]
    await registry.unlisten("alice", alice)
    found = await registry.get("alice")
    assert found is not None and found.listening is None
    await registry.logout("alice", alice)
    assert await registry.get("alice") is None
    assert [p.name for p in await registry.online()] == ["bob"]


@pytest_twisted.ensureDeferred
async def test_a_new_login_replaces_the_old_one_and_the_old_one_cannot_log_the_new_one_out(
    process: Process,
) -> None:
    registry = process.registry
    old, new = FakeConnection(), FakeConnection()
    await registry.login("alice", old)
    await registry.login("alice", new)
    assert old.kicked == ["replaced"] and new.kicked == []
    await registry.logout("alice", old)  # the old connection closing after its BYE
    await registry.listen("alice", old, "127.0.0.1", 4000)  # a stale connection changes nothing
    found = await registry.get("alice")
    assert found is not None and found.connection is new and found.listening is None


@pytest_twisted.ensureDeferred
async def test_tell_reaches_the_current_login_only(process: Process) -> None:
    registry = process.registry
    bob = FakeConnection()
    await registry.tell("bob", "REQUEST", "alice")  # nobody: nothing happens
    await registry.login("bob", bob)
    await registry.tell("BOB", "REQUEST", "alice")
    assert bob.events == [("REQUEST", "alice")]


# -- tokens -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tokens_are_single_use_and_only_for_their_target(process: Process, clock: Clock) -> None:
    registry = process.registry
    issued = await registry.issue("Alice", "Bob", clock.seconds(), "sha256:" + "f" * 64)
    assert isinstance(issued, Issued) and issued.first
    again = await registry.issue("alice", "bob", clock.seconds())
    assert isinstance(again, Issued) and not again.first  # one "* REQUEST" per burst
    assert await registry.redeem(issued.token, "carol", clock.seconds()) is None  # not hers: kept
    ticket = await registry.redeem(issued.token, "BOB", clock.seconds())
    assert ticket is not None
    assert (ticket.requester, ticket.target, ticket.proof, ticket.fingerprint) == (
        "Alice",
        "Bob",
        issued.proof,
        "sha256:" + "f" * 64,
    )
    assert await registry.redeem(issued.token, "bob", clock.seconds()) is None


@pytest_twisted.ensureDeferred
async def test_sixteen_tokens_per_requester_then_a_wait_until_the_oldest_expires(
    process: Process, clock: Clock
) -> None:
    registry = process.registry
    for _ in range(16):
        assert isinstance(await registry.issue("alice", "bob", clock.seconds()), Issued)
        clock.advance(1)
    assert await registry.token_wait("alice", clock.seconds()) == pytest.approx(44.0)
    refused = await registry.issue("alice", "bob", clock.seconds())
    assert isinstance(refused, TokenWait) and refused.seconds == pytest.approx(44.0)
    assert isinstance(await registry.issue("carol", "bob", clock.seconds()), Issued)  # others are not held up
    clock.advance(45)
    assert await registry.token_wait("alice", clock.seconds()) is None


@pytest_twisted.ensureDeferred
async def test_an_expired_token_is_refused(process: Process, clock: Clock) -> None:
    issued = await process.registry.issue("alice", "bob", clock.seconds())
    assert isinstance(issued, Issued)
    clock.advance(61)
    assert await process.registry.redeem(issued.token, "bob", clock.seconds()) is None


# -- lockout and signups --------------------------------------------------------------------


async def fail_once(lockout: Lockout, address: str, name: str) -> Verdict:
    attempt = await lockout.admit(address, name)
    assert isinstance(attempt, Attempt)
    assert await lockout.check_stored(attempt, None, None) is None
    settlement = await lockout.settle(attempt, False)
    for block in settlement.store:
        await lockout.stored(block)
    return settlement.verdict


@pytest_twisted.ensureDeferred
async def test_the_third_failure_blocks_and_a_success_resets(process: Process) -> None:
    lockout = process.lockout
    assert await fail_once(lockout, "10.0.0.1", "alice") is Verdict.BAD_CREDENTIALS
    attempt = await lockout.admit("10.0.0.1", "alice")
    assert isinstance(attempt, Attempt)
    assert (await lockout.settle(attempt, True)).verdict is Verdict.SUCCESS
    assert [await fail_once(lockout, "10.0.0.1", "alice") for _ in range(2)] == [Verdict.BAD_CREDENTIALS] * 2
    attempt = await lockout.admit("10.0.0.1", "alice")
    assert isinstance(attempt, Attempt)
    settlement = await lockout.settle(attempt, False)
    assert settlement.verdict is Verdict.BLOCKED
    assert {(b.kind, b.key) for b in settlement.store} == {(ADDRESS, "10.0.0.1"), (NAME, "alice")}
    # While the block is being stored, LOGINs it covers wait; then they read it from the store.
    waiting = await lockout.admit("10.0.0.1", "bob")
    assert isinstance(waiting, Wait)
    for block in settlement.store:
        await lockout.stored(block)
    await waiting.turn.addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_attempts_in_flight_count_against_the_limit(process: Process) -> None:
    lockout = process.lockout
    decisions = [await lockout.admit("10.0.0.9", f"user{i}") for i in range(10)]
    admitted = [d for d in decisions if isinstance(d, Attempt)]
    assert len(admitted) == MAX_ATTEMPTS
    assert all(isinstance(d, Wait) for d in decisions if not isinstance(d, Attempt))
    for attempt in admitted:
        await lockout.abandon(attempt)


@pytest_twisted.ensureDeferred
async def test_a_block_that_could_not_be_stored_is_refused_from_the_lockout(process: Process, clock: Clock) -> None:
    lockout = process.lockout
    for _ in range(2):
        await fail_once(lockout, "10.0.0.2", "dave")
    attempt = await lockout.admit("10.0.0.2", "dave")
    assert isinstance(attempt, Attempt)
    settlement = await lockout.settle(attempt, False)
    for block in settlement.store:
        await lockout.store_failed(block)
    refused = await lockout.admit("10.0.0.2", "erin")
    assert isinstance(refused, Refused) and refused.seconds == 300
    assert await lockout.address_refusal("10.0.0.2", None) == refused


@pytest_twisted.ensureDeferred
async def test_signups_per_hour(process: Process, clock: Clock) -> None:
    signups = process.signups
    slots = [await signups.reserve("10.0.0.3", clock.seconds()) for _ in range(5)]
    assert all(slot is not None for slot, _ in slots)
    clock.advance(100)
    slot, wait = await signups.reserve("10.0.0.3", clock.seconds())
    assert slot is None and wait == pytest.approx(3500.0)
    first = slots[0][0]
    assert first is not None
    await signups.release("10.0.0.3", first)  # that signup made no account
    slot, _ = await signups.reserve("10.0.0.3", clock.seconds())
    assert slot is not None


# -- Redis only: two processes on one Redis ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_token_is_redeemed_once_across_processes(two: tuple[Process, Process], clock: Clock) -> None:
    first, second = two
    issued = await first.registry.issue("alice", "bob", clock.seconds())
    assert isinstance(issued, Issued)
    both = await defer.gatherResults(
        [
            first.registry.redeem(issued.token, "bob", clock.seconds()),
            second.registry.redeem(issued.token, "bob", clock.seconds()),
        ]
    )
    assert sorted(ticket is None for ticket in both) == [False, True]
    # The cap is shared too: 16 from one process, the 17th refused by the other.
    for _ in range(16):
        assert isinstance(await first.registry.issue("carol", "dave", clock.seconds()), Issued)
    assert isinstance(await second.registry.issue("carol", "dave", clock.seconds()), TokenWait)


@pytest_twisted.ensureDeferred
async def test_the_lockout_is_exact_across_processes(two: tuple[Process, Process]) -> None:
    first, second = two
    # Many LOGINs at once, half through each process: only MAX_ATTEMPTS may be checked at once.
    decisions = await defer.gatherResults(
        [(first if i % 2 else second).lockout.admit("10.0.0.5", "alice") for i in range(40)]
    )
    admitted = [d for d in decisions if isinstance(d, Attempt)]
    assert len(admitted) == MAX_ATTEMPTS
    # All three wrong, settled by whichever process admitted them: exactly one block, decided once.
    settlements = [await first.lockout.settle(a, False) for a in admitted]
    assert [s.verdict for s in settlements] == [Verdict.BAD_CREDENTIALS] * 2 + [Verdict.BLOCKED]
    for block in settlements[-1].store:
        await first.lockout.stored(block)
    # The waiting LOGINs of the other process were woken by the turn published in Redis.
    waits = [d for d in decisions if isinstance(d, Wait)]
    await defer.gatherResults([w.turn for w in waits]).addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_a_login_on_another_process_replaces_and_requests_cross(two: tuple[Process, Process]) -> None:
    first, second = two
    old, new, carol = FakeConnection(), FakeConnection(), FakeConnection()
    await first.registry.login("bob", old)
    await first.registry.login("carol", carol)
    await second.registry.login("Bob", new)
    await old.heard()
    assert old.kicked == ["replaced"] and new.kicked == []
    found = await first.registry.get("bob")
    assert found is not None and found.connection is None and found.name == "Bob"  # held by the other
    await second.registry.tell("carol", "REQUEST", "Bob")
    await carol.heard()
    assert carol.events == [("REQUEST", "Bob")]


@pytest_twisted.ensureDeferred
async def test_users_of_a_dead_process_leave_who_and_are_swept(
    two: tuple[Process, Process], redis_service: Any
) -> None:
    first, second = two
    assert first.link is not None and second.link is not None
    await first.registry.login("alice", FakeConnection())
    await second.registry.login("bob", FakeConnection())
    alive = lua.ALIVE + first.link.process
    ttl = int(redis_service.command(b"PTTL", alive.encode()).strip(b":\r\n"))
    assert 0 < ttl <= HEARTBEAT_TTL * 1000
    redis_service.command(b"DEL", alive.encode())  # what its TTL does when the process is killed
    assert [p.name for p in await second.registry.online()] == ["bob"]
    assert await second.registry.get("alice") is None
    await second.link._beat_once()  # the sweep every heartbeat runs
    assert redis_service.command(b"HLEN", lua.PRESENCE.encode()) == b":1\r\n"
