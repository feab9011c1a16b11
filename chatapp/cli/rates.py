"""Transfer speed as a person reads it: the rate over the last few seconds, stalls, and an end summary.

:class:`~chatapp.peer.Transfer` keeps an average since the first byte, which
never falls and hides a stall.  A :class:`RateWindow` keeps the last
:data:`WINDOW` seconds of (time, bytes) samples from progress events and says
the recent rate, or how long nothing moved.  Pure: the time is passed in
(the reactor's clock in the console, a ``task.Clock`` in tests).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from chatapp.peer import Transfer

WINDOW = 5.0  # seconds of samples the rate is measured over
STALL_AFTER = 3.0  # seconds without a byte before a transfer is shown as stalled
MAX_SAMPLES = 128  # per transfer: progress comes at most 10 times a second, so 5 s fit twice


@dataclass(frozen=True)
class Speed:
    """How a transfer goes now: bytes per second over the window, seconds left (None: unknown), stalled for."""

    rate: float
    eta: float | None
    stalled: float | None  # seconds since the last byte, once that is STALL_AFTER or more
    measured: bool = True  # False in a transfer's first MIN_SPAN: the rate (0) means nothing yet


MIN_SPAN = 0.5  # seconds of samples before a rate means anything


class RateWindow:
    """The bytes-done samples of one transfer over the last ``window`` seconds."""

    def __init__(self, window: float = WINDOW, stall_after: float = STALL_AFTER) -> None:
        self.window = window
        self.stall_after = stall_after
        self._samples: deque[tuple[float, int]] = deque(maxlen=MAX_SAMPLES)
        self.last_change: float | None = None  # when bytes last moved

    def add(self, now: float, total: int) -> None:
        """``total`` bytes done at ``now`` (counts only go up; a repeat is not news)."""
        if self._samples and total <= self._samples[-1][1]:
            return
        self._samples.append((now, total))
        self.last_change = now
        self._prune(now)

    def _prune(self, now: float) -> None:
        # keep one sample at or before the window's start, so the span measured is the whole window
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def stalled(self, now: float) -> float | None:
        """Seconds since the last byte moved, when that is ``stall_after`` or more; else None."""
        if self.last_change is None:
            return None
        quiet = now - self.last_change
        return quiet if quiet >= self.stall_after else None

    def measured(self, now: float) -> bool:
        """Whether bytes were watched long enough for :meth:`rate` to mean something: a few milliseconds
        after the first byte any rate is noise (a 1 MiB file "at 8 GB/s"), so MIN_SPAN at least."""
        self._prune(now)
        return len(self._samples) >= 2 and now - self._samples[0][0] >= MIN_SPAN

    def rate(self, now: float) -> float:
        """Bytes per second over the window up to ``now`` (falls while nothing moves; 0 when stalled,
        and before it is :meth:`measured`)."""
        if not self.measured(now) or self.stalled(now) is not None:
            return 0.0
        (t0, b0), (_, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (now - t0)


@dataclass(frozen=True)
class TransferSummary:
    """How a transfer went, at its end: bytes moved in this run (not the kept part), seconds, average rate."""

    transfer: Transfer
    moved: int
    seconds: float
    average: float


class Rates:
    """One :class:`RateWindow` per running transfer (dropped at its end), on the clock ``clock``."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._windows: dict[int, RateWindow] = {}  # by handle; bounded by the transfers running
        self._transfers: dict[int, Transfer] = {}  # the same keys

    def progress(self, transfer: Transfer) -> bool:
        """Record a progress event; True for the first one of ``transfer`` (time to say it resumes)."""
        now = self.clock.seconds()
        window = self._windows.get(transfer.handle)
        first = window is None
        if window is None:
            window = self._windows[transfer.handle] = RateWindow()
            self._transfers[transfer.handle] = transfer
            start = transfer.started if transfer.started is not None else now
            window.add(min(start, now), transfer.offset)  # bytes counted from the first one moved
        window.add(now, transfer.bytes_done)
        return first

    def speed(self, transfer: Transfer) -> Speed:
        now = self.clock.seconds()
        window = self._windows.get(transfer.handle)
        if window is None:
            return Speed(0.0, None, None, measured=False)
        rate = window.rate(now)
        left = transfer.size - transfer.bytes_done
        eta = 0.0 if left <= 0 else (left / rate if rate > 0 else None)
        return Speed(rate, eta, window.stalled(now), window.measured(now))

    def stalled(self) -> list[tuple[Transfer, float]]:
        """(transfer, seconds) of every transfer stalled now."""
        now = self.clock.seconds()
        found = []
        for handle, window in self._windows.items():
            quiet = window.stalled(now)
            if quiet is not None:
                found.append((self._transfers[handle], quiet))
        return found

    def ended(self, transfer: Transfer) -> TransferSummary | None:
        """Forget ``transfer``; its summary if any byte moved in this run."""
        self._windows.pop(transfer.handle, None)
        self._transfers.pop(transfer.handle, None)
        if transfer.started is None:
            return None
        seconds = max(0.0, self.clock.seconds() - transfer.started)
        moved = max(0, transfer.bytes_done - transfer.offset)
        return TransferSummary(transfer, moved, seconds, moved / seconds if seconds > 0 else 0.0)
