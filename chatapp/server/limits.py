"""The counting half of the lockout and signup rules: pure, in memory, driven by the caller's clock.

Blocks and locks themselves are durable and live in the store; the counts
below the limit may be lost on restart (PROTOCOL.md 2.3).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
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
    """Consecutive failed logins per client address and per case-folded user name."""

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self._by_address: dict[str, int] = defaultdict(int)
        self._by_name: dict[str, int] = defaultdict(int)

    def failure(self, address: str, name: str) -> FailureOutcome:
        """Count one failure; a count that reaches the limit is reset and reported."""
        self._by_address[address] += 1
        self._by_name[name] += 1
        block = self._by_address[address] >= self.max_attempts
        lock = self._by_name[name] >= self.max_attempts
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
        times = self._times.setdefault(address, deque())
        while times and times[0] + HOUR <= now:
            times.popleft()
        return times
