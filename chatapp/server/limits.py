"""Per-address limits other than lockout (see lockout.py): signups per hour, connections at once.

Pure and in memory, driven by the caller's clock; lost on restart (PROTOCOL.md 2.3).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from twisted.internet import defer

HOUR = 3600.0


def seconds_left(until: float, now: float) -> int:
    """Whole seconds, rounded up, at least 1 (PROTOCOL.md section 1)."""
    return max(1, math.ceil(until - now))


class LimitLog:
    """Says whether a limit's hit is worth a log line: the first, then at most one per ``interval``.

    Hitting a limit is what an attacker does all day; a line per hit would fill the log.
    ``key`` names a limit (a fixed set chosen by the code, never client input).
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def first(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True


class SignupLimiter:
    """At most ``per_hour`` accounts per client address in any sliding hour.

    At most ``max_tracked`` addresses are remembered, the least recently seen
    dropped first: an address that many others pushed out gets a fresh hour,
    which is the price of bounded memory (accounts still cost a bcrypt hash each).
    """

    def __init__(self, per_hour: int, max_tracked: int = 100_000) -> None:
        self.per_hour = per_hour
        self.max_tracked = max_tracked
        self._times: dict[str, deque[float]] = {}

    def reserve(self, address: str, now: float) -> float | None:
        """Take a slot and return its stamp, or None when the hour is full (see ``wait``)."""
        times = self._prune(address, now)
        if len(times) >= self.per_hour:
            return None
        times.append(now)
        return now

    def release(self, address: str, stamp: float) -> None:
        """Give back a slot whose signup did not create an account."""
        times = self._times.get(address)
        if times is not None and stamp in times:
            times.remove(stamp)

    def wait(self, address: str, now: float) -> float:
        """Seconds until the oldest slot of the hour frees."""
        times = self._prune(address, now)
        return times[0] + HOUR - now if times else 0.0

    def _prune(self, address: str, now: float) -> deque[float]:
        self._forget_idle(now)
        times = self._times.pop(address, None)
        if times is None:
            times = deque()
            if len(self._times) >= self.max_tracked:
                del self._times[next(iter(self._times))]
        self._times[address] = times  # most recently seen last
        while times and times[0] + HOUR <= now:
            times.popleft()
        return times

    def _forget_idle(self, now: float) -> None:
        # Addresses whose newest signup is over an hour old hold no slot: drop them (dicts keep
        # insertion order, and an address is re-inserted on each signup, so the stale ones lead).
        while self._times:
            address, times = next(iter(self._times.items()))
            if times and times[-1] + HOUR > now:
                break
            del self._times[address]  # the newest stamp of the first is over an hour old, or it has none


class Signups(Protocol):
    """Signup windows behind Deferreds, so that they can be shared by server processes (Redis)."""

    def reserve(self, address: str, now: float) -> defer.Deferred[tuple[str | None, float]]:
        """Take a slot: (its id, 0), or (None, seconds until the oldest slot of the hour frees)."""

    def release(self, address: str, slot: str) -> defer.Deferred[None]:
        """Give back a slot whose signup did not create an account."""


class MemorySignups:
    """One process's signup windows: :class:`SignupLimiter` behind :class:`Signups`."""

    def __init__(self, limiter: SignupLimiter) -> None:
        self.limiter = limiter

    def reserve(self, address: str, now: float) -> defer.Deferred[tuple[str | None, float]]:
        stamp = self.limiter.reserve(address, now)
        if stamp is None:
            return defer.succeed((None, self.limiter.wait(address, now)))
        # Slots of one address with equal stamps are interchangeable: the stamp is the id.
        return defer.succeed((repr(stamp), 0.0))

    def release(self, address: str, slot: str) -> defer.Deferred[None]:
        self.limiter.release(address, float(slot))
        return defer.succeed(None)


class ConnectionCap:
    """At most ``per_address`` connections open at once from one client address."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self._open: dict[str, int] = {}

    def take(self, address: str) -> bool:
        """Count a new connection; False (and nothing counted) if the address holds the most it may."""
        held = self._open.get(address, 0)
        if held >= self.per_address:
            return False
        self._open[address] = held + 1
        return True

    def give_back(self, address: str) -> None:
        held = self._open.pop(address, 0) - 1
        if held > 0:
            self._open[address] = held
