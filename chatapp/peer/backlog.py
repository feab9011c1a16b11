"""One bound on the received bytes that wait for the disk, across every transfer of a peer factory.

Each :class:`~chatapp.peer.writer.FileWriter` stops its session reading when
its own file has more than its high-water mark waiting. That alone lets
``MAX_OPEN_FILES`` transfers, from as many peers, hold their marks at once
(64 x 16 MiB) on a disk slower than the network. A :class:`DiskBacklog` counts
what all of them hold; past ``limit`` every writer that takes another byte
stops its session reading, and all of them may read again once the total fell
to ``resume_at``. Writes already handed to the disk go on, so the total always
falls: nothing waits on a session that is not reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

MiB = 1024 * 1024
LIMIT = 32 * MiB
RESUME_AT = 16 * MiB


class Held(Protocol):
    def backlog_eased(self) -> None:
        """The total fell to the resume mark: read again unless the writer's own mark still says no."""


class DiskBacklog:
    """Bytes received and not yet written, summed over the writers that report to it."""

    def __init__(
        self, limit: int = LIMIT, resume_at: int | None = None, on_over: Callable[[], None] | None = None
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.resume_at = min(limit, resume_at if resume_at is not None else limit // 2)
        self.total = 0
        self.over = False  # the total passed the limit and has not yet fallen to resume_at
        self._held: dict[Held, None] = {}  # writers stopped by the total, in the order they stopped
        self._on_over = on_over  # told each time the total passes the limit

    def grow(self, count: int) -> None:
        self.total += count
        if self.total > self.limit and not self.over:
            self.over = True
            if self._on_over is not None:
                self._on_over()

    def shrink(self, count: int) -> None:
        self.total -= count
        if self.over and self.total <= self.resume_at:
            self.over = False
            self._release()

    def hold(self, writer: Held) -> None:
        """``writer`` stopped its session because of the total: it hears ``backlog_eased`` when it falls."""
        self._held[writer] = None

    def let_go(self, writer: Held) -> None:
        self._held.pop(writer, None)

    @property
    def held(self) -> int:
        return len(self._held)

    def _release(self) -> None:
        # A writer that reads again can take bytes at once and push the total back over: the rest then wait.
        while self._held and not self.over:
            writer = next(iter(self._held))
            del self._held[writer]
            writer.backlog_eased()
