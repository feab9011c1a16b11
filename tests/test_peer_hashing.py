"""Prefix hashing yields to the reactor between slices and can be cancelled."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
from twisted.internet import defer

from chatapp.peer.hashing import ShortFile, hash_prefix


class StepClock:
    """callLater(0, f) queues f; the test runs one queued call per 'reactor turn'."""

    def __init__(self) -> None:
        self.queue: list[Any] = []

    def callLater(self, delay: float, func: Any, *args: Any) -> Any:
        test = self

        class Call:
            cancelled = False

            def active(self) -> bool:
                return not self.cancelled and self in test.queue

            def cancel(self) -> None:
                self.cancelled = True
                test.queue.remove(self)

        call = Call()
        call.func = lambda: func(*args)  # type: ignore[attr-defined]
        self.queue.append(call)
        return call

    def turn(self) -> None:
        self.queue.pop(0).func()

    def seconds(self) -> float:
        return 0.0


def result_of(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0] if out else None


def test_one_slice_per_turn_and_the_rest_of_the_file_stays_unread() -> None:
    data = bytes(range(256)) * 100
    source = io.BytesIO(data)
    clock = StepClock()
    d = hash_prefix(clock, source, 10_000, slice_size=4096)  # type: ignore[arg-type]
    turns = 0
    while clock.queue:
        assert len(clock.queue) == 1 and not d.called
        clock.turn()
        turns += 1
    assert turns == 3  # 4096 + 4096 + 1808
    assert result_of(d).hexdigest() == hashlib.sha256(data[:10_000]).hexdigest()
    assert source.tell() == 10_000


def test_zero_length_fires_at_once() -> None:
    d = hash_prefix(StepClock(), io.BytesIO(b"abc"), 0)  # type: ignore[arg-type]
    assert result_of(d).hexdigest() == hashlib.sha256(b"").hexdigest()


def test_short_file_fails() -> None:
    clock = StepClock()
    d = hash_prefix(clock, io.BytesIO(b"abc"), 10)  # type: ignore[arg-type]
    clock.turn()
    clock.turn()
    failure = result_of(d)
    assert failure.check(ShortFile)


def test_cancel_stops_reading() -> None:
    clock = StepClock()
    source = io.BytesIO(b"x" * 100)
    d = hash_prefix(clock, source, 100, slice_size=10)  # type: ignore[arg-type]
    clock.turn()
    d.cancel()
    assert clock.queue == [] and source.tell() == 10
    assert result_of(d).check(defer.CancelledError)


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097])
def test_sizes_around_the_slice(size: int) -> None:
    data = b"q" * size
    clock = StepClock()
    d = hash_prefix(clock, io.BytesIO(data), size, slice_size=4096)  # type: ignore[arg-type]
    while clock.queue:
        clock.turn()
    assert result_of(d).hexdigest() == hashlib.sha256(data).hexdigest()
