"""The login lockout rule (PROTOCOL.md 2.3), whole, in one object that does no I/O.

Invariant: however many LOGINs run at once, at most ``max_attempts`` wrong
passwords are checked for one address, or for one name, before its block or
lock is set; once set, no LOGIN it covers succeeds, not even one whose check
had already started.

The caller does the I/O around three steps:

1. :meth:`LoginLockout.admit` reserves an attempt before anything is read.
   Attempts still being checked count against the limit, so an attempt that
   could be the one too many is not admitted yet: the caller gets a
   :class:`Wait` and asks again when it fires.
2. :meth:`LoginLockout.check_stored` looks at the blocks the caller read
   from the store *after* admission (the admin tool may add or lift them).
3. :meth:`LoginLockout.settle` takes the password check's result and says
   what to answer and which blocks must be stored durably before answering;
   :meth:`LoginLockout.stored` is told once each is (or
   :meth:`LoginLockout.store_failed`).

A check in flight holds a slot of its address and of its name, so no block
or lock that covers it can be decided before it settles: an attempt
admitted before a block never outlives the block's decision. While a
decided block is being written, LOGINs it covers wait; then they read it
from the store, which is the truth from then on (``chatapp-admin unblock``
takes effect at once), so no reply announces a block before it is stored.
Only a block whose write failed is kept here, in memory, until it runs out.

The protocol talks to a :class:`Lockout`: the same steps, each returning a
Deferred, so that the counters can live in Redis and be exact across server
processes (``chatapp.server.registry.redis``). :class:`MemoryLockout` is the
default: :class:`LoginLockout` itself, every Deferred already fired.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from chatapp.server.limits import seconds_left
from chatapp.server.store import ADDRESS, NAME, Block


class FailureCounter:
    """Consecutive failed logins per client address and per case-folded user name.

    At most ``max_tracked`` keys of each kind are kept, the least recently
    failed forgotten first, so guessing many names cannot fill memory.
    """

    def __init__(self, max_attempts: int, max_tracked: int = 100_000) -> None:
        self.max_attempts = max_attempts
        self.max_tracked = max_tracked
        self._by_address: dict[str, int] = {}
        self._by_name: dict[str, int] = {}

    def _bump(self, counts: dict[str, int], key: str) -> int:
        count = counts.pop(key, 0) + 1  # re-inserted: the dict's order is recency
        counts[key] = count
        if len(counts) > self.max_tracked:
            del counts[next(iter(counts))]
        return count

    def failure(self, address: str, name: str) -> tuple[bool, bool]:
        """Count one failure; (block the address, lock the name). A count that reaches the limit is reset."""
        block = self._bump(self._by_address, address) >= self.max_attempts
        lock = self._bump(self._by_name, name) >= self.max_attempts
        if block:
            del self._by_address[address]
        if lock:
            del self._by_name[name]
        return block, lock

    def success(self, address: str, name: str) -> None:
        self._by_address.pop(address, None)
        self._by_name.pop(name, None)

    def count(self, address: str, name: str) -> tuple[int, int]:
        return self._by_address.get(address, 0), self._by_name.get(name, 0)


class Refusal(enum.Enum):
    BLOCKED = "blocked"  # the address is blocked: the connection is closed
    LOCKED = "locked"  # the name is locked: the connection stays open


@dataclass(frozen=True)
class Refused:
    """Do not check the password; answer ``reason`` with ``seconds`` left."""

    reason: Refusal
    seconds: int


@dataclass(frozen=True)
class Wait:
    """Every attempt the limits allow is being checked: ask again when ``turn`` fires."""

    turn: defer.Deferred[None]


@dataclass(eq=False)
class Attempt:
    """An admitted LOGIN: exactly one :meth:`LoginLockout.settle` or :meth:`LoginLockout.abandon` must follow."""

    address: str
    name: str  # case-folded
    open: bool = True
    ref: str = ""  # what a shared lockout knows this attempt by (chatapp.server.registry.redis)


class Verdict(enum.Enum):
    SUCCESS = "success"
    BAD_CREDENTIALS = "bad-credentials"
    BLOCKED = "blocked"  # this failure blocked the address (and maybe locked the name too)
    LOCKED = "locked"  # this failure locked the name


@dataclass(frozen=True)
class Settlement:
    """What to answer, and the blocks to store durably before answering."""

    verdict: Verdict
    seconds: int = 0  # for BLOCKED and LOCKED
    store: tuple[Block, ...] = field(default=())
    # Wrong passwords this address may still send, the last of which blocks it (PROTOCOL.md 2.3);
    # about the address only: it says nothing about the name.
    tries_left: int = 0


class LoginLockout:
    """Counts failures, reserves attempts, decides blocks and locks; the caller reads and writes the store."""

    def __init__(self, clock: IReactorTime, max_attempts: int, block_time: float, max_tracked: int = 100_000) -> None:
        self._clock = clock
        self.max_attempts = max_attempts
        self.block_time = block_time
        self.failures = FailureCounter(max_attempts, max_tracked)
        self._in_flight: dict[tuple[str, str], list[Attempt]] = {}
        self._storing: dict[tuple[str, str], float] = {}  # decided, being written: LOGINs it covers wait
        self._unstored: dict[tuple[str, str], float] = {}  # decided, the write failed: refused from memory
        self._waiting: dict[tuple[str, str], list[defer.Deferred[None]]] = {}

    # -- refusals that need no attempt (a new connection, a SIGNUP) ------------

    def address_refusal(self, address: str, stored_until: float | None) -> Refused | None:
        """Refuse a blocked address; ``stored_until`` is what the store says about it."""
        return self._refusal(address, None, stored_until, None)

    # -- the three steps of a LOGIN -----------------------------------------------

    def admit(self, address: str, name: str) -> Refused | Wait | Attempt:
        refused = self._refusal(address, name, None, None)
        if refused is not None:
            return refused
        full = [key for key in ((ADDRESS, address), (NAME, name)) if key in self._storing or self._saturated(key)]
        if full:
            turn: defer.Deferred[None] = defer.Deferred()
            for key in full:
                self._waiting.setdefault(key, []).append(turn)
            return Wait(turn)
        attempt = Attempt(address, name)
        for key in self._keys(attempt):
            self._in_flight.setdefault(key, []).append(attempt)
        return attempt

    def check_stored(self, attempt: Attempt, address_until: float | None, name_until: float | None) -> Refused | None:
        """Refuse (and release) ``attempt`` if the store, read after admission, blocks it."""
        refused = self._refusal(attempt.address, attempt.name, address_until, name_until)
        if refused is not None:
            self.abandon(attempt)
        return refused

    def settle(self, attempt: Attempt, password_ok: bool) -> Settlement:
        """The check's result: count it, decide blocks, pick the answer; then free the attempt's slots.

        The slots are freed last: freeing them wakes waiting LOGINs, which must
        see this failure counted and any block it decides.
        """
        try:
            return self._judge(attempt, password_ok)
        finally:
            self._release(attempt)

    def _judge(self, attempt: Attempt, password_ok: bool) -> Settlement:
        if not attempt.open:
            raise RuntimeError("this attempt was settled already")
        if password_ok:
            self.failures.success(attempt.address, attempt.name)
            return Settlement(Verdict.SUCCESS)
        block, lock = self.failures.failure(attempt.address, attempt.name)
        if not (block or lock):
            failed, _ = self.failures.count(attempt.address, attempt.name)
            return Settlement(Verdict.BAD_CREDENTIALS, tries_left=max(1, self.max_attempts - failed))
        now = self._clock.seconds()
        until = now + self.block_time
        blocks = []
        if block:
            blocks.append(Block(ADDRESS, attempt.address, until))
        if lock:
            blocks.append(Block(NAME, attempt.name, until))
        for decided in blocks:
            self._storing[(decided.kind, decided.key)] = until
        verdict = Verdict.BLOCKED if block else Verdict.LOCKED
        failed, _ = self.failures.count(attempt.address, attempt.name)
        return Settlement(verdict, seconds_left(until, now), tuple(blocks), max(0, self.max_attempts - failed))

    def abandon(self, attempt: Attempt) -> None:
        """The attempt ends without a check (busy, a store error, refused by the store): nothing is counted."""
        self._release(attempt)

    def stored(self, block: Block) -> None:
        """The store has ``block``: from now on the store is the truth (an admin may lift it)."""
        self._written(block, kept=False)

    def store_failed(self, block: Block) -> None:
        """``block`` could not be stored: it is kept in memory until it runs out."""
        self._written(block, kept=True)

    def _written(self, block: Block, kept: bool) -> None:
        key = (block.kind, block.key)
        if self._storing.get(key) == block.until:
            del self._storing[key]
        if kept:
            self._unstored[key] = max(block.until, self._unstored.get(key, 0.0))
        for turn in self._waiting.pop(key, ()):
            if not turn.called:
                turn.callback(None)

    # -- inside ------------------------------------------------------------------

    @staticmethod
    def _keys(attempt: Attempt) -> tuple[tuple[str, str], tuple[str, str]]:
        return (ADDRESS, attempt.address), (NAME, attempt.name)

    def _saturated(self, key: tuple[str, str]) -> bool:
        """True if the attempts being checked could, all wrong, reach the limit for ``key``."""
        kind, value = key
        address_count, name_count = self.failures.count(value, value)
        failures = address_count if kind == ADDRESS else name_count
        return failures + len(self._in_flight.get(key, ())) >= self.max_attempts

    def _refusal(
        self, address: str, name: str | None, address_until: float | None, name_until: float | None
    ) -> Refused | None:
        now = self._clock.seconds()
        for kind, key, stored_until, reason in (
            (ADDRESS, address, address_until, Refusal.BLOCKED),
            (NAME, name, name_until, Refusal.LOCKED),
        ):
            if key is None:
                continue
            until = max(self._unstored_until(kind, key, now), stored_until or 0.0)
            if until > now:
                return Refused(reason, seconds_left(until, now))
        return None

    def _unstored_until(self, kind: str, key: str, now: float) -> float:
        until = self._unstored.get((kind, key), 0.0)
        if until and until <= now:
            del self._unstored[(kind, key)]  # a store write that failed: the block ran out anyway
            return 0.0
        return until

    def _release(self, attempt: Attempt) -> None:
        if not attempt.open:
            raise RuntimeError("this attempt was settled already")
        attempt.open = False
        for key in self._keys(attempt):
            attempts = self._in_flight[key]
            attempts.remove(attempt)
            if not attempts:
                del self._in_flight[key]
            for turn in self._waiting.pop(key, ()):
                if not turn.called:
                    turn.callback(None)


class Lockout(Protocol):
    """The steps of :class:`LoginLockout`, each a Deferred (see the module docstring for the order)."""

    def address_refusal(self, address: str, stored_until: float | None) -> defer.Deferred[Refused | None]: ...

    def admit(self, address: str, name: str) -> defer.Deferred[Refused | Wait | Attempt]: ...

    def check_stored(
        self, attempt: Attempt, address_until: float | None, name_until: float | None
    ) -> defer.Deferred[Refused | None]: ...

    def settle(self, attempt: Attempt, password_ok: bool) -> defer.Deferred[Settlement]: ...

    def abandon(self, attempt: Attempt) -> defer.Deferred[None]: ...

    def stored(self, block: Block) -> defer.Deferred[None]: ...

    def store_failed(self, block: Block) -> defer.Deferred[None]: ...


class MemoryLockout:
    """One process's lockout: :class:`LoginLockout` behind the :class:`Lockout` interface."""

    def __init__(self, rule: LoginLockout) -> None:
        self.rule = rule

    def address_refusal(self, address: str, stored_until: float | None) -> defer.Deferred[Refused | None]:
        return defer.succeed(self.rule.address_refusal(address, stored_until))

    def admit(self, address: str, name: str) -> defer.Deferred[Refused | Wait | Attempt]:
        return defer.succeed(self.rule.admit(address, name))

    def check_stored(
        self, attempt: Attempt, address_until: float | None, name_until: float | None
    ) -> defer.Deferred[Refused | None]:
        return defer.succeed(self.rule.check_stored(attempt, address_until, name_until))

    def settle(self, attempt: Attempt, password_ok: bool) -> defer.Deferred[Settlement]:
        return defer.execute(self.rule.settle, attempt, password_ok)

    def abandon(self, attempt: Attempt) -> defer.Deferred[None]:
        return defer.execute(self.rule.abandon, attempt)

    def stored(self, block: Block) -> defer.Deferred[None]:
        self.rule.stored(block)
        return defer.succeed(None)

    def store_failed(self, block: Block) -> defer.Deferred[None]:
        self.rule.store_failed(block)
        return defer.succeed(None)
