"""The counting half of the lockout and signup rules: pure, in memory, driven by the caller's clock.

Blocks and locks themselves are durable and live in the store; the counts
below the limit may be lost on restart (PROTOCOL.md 2.3).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

HOUR = 3600.0


def seconds_left(until: float, now: float) -> int:
    """Whole seconds, rounded up, at least 1 (PROTOCOL.md section 1)."""
    return max(1, math.ceil(until - now))


@dataclass(frozen=True)
class FailureOutcome:
    block_address: bool
    lock_name: bool


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

    def failure(self, address: str, name: str) -> FailureOutcome:
        """Count one failure; a count that reaches the limit is reset and reported."""
        block = self._bump(self._by_address, address) >= self.max_attempts
        lock = self._bump(self._by_name, name) >= self.max_attempts
        if block:
            del self._by_address[address]
        if lock:
            del self._by_name[name]
        return FailureOutcome(block, lock)

    def success(self, address: str, name: str) -> None:
        self._by_address.pop(address, None)
        self._by_name.pop(name, None)

    def count(self, address: str, name: str) -> tuple[int, int]:
        return self._by_address.get(address, 0), self._by_name.get(name, 0)


class SignupLimiter:
    """At most ``per_hour`` accounts per client address in any sliding hour."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._times: dict[str, deque[float]] = {}

    def reserve(self, address: str, now: float) -> float | None:
        """Take a slot and return its stamp, or None when the hour is full (see ``wait``)."""
        times = self._prune(address, now)
        if len(times) >= self.per_hour:
            return None
        times.append(now)
        self._times[address] = self._times.pop(address)  # most recent last
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
        times = self._times.setdefault(address, deque())
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
            del self._times[address]
