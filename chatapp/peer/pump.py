"""The push producer that paces every file we send on one connection.

One :class:`SendPump` is registered on a session's transport. It moves one
chunk of one transfer per reactor turn, round robin, and stops while the
transport says it is full, so memory stays at about one chunk per
connection and a slow receiver slows the sender. Chat lines written between
turns go out between chunks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

if TYPE_CHECKING:
    from chatapp.peer.sender import OutgoingTransfer


@implementer(IPushProducer)
class SendPump:
    """Round-robin over transfers that have bytes to send; one ``step`` per reactor turn."""

    def __init__(self, clock: IReactorTime, step: Callable[[OutgoingTransfer], bool]) -> None:
        self._clock = clock
        self._step = step  # sends one chunk (or END); returns True if the transfer has more to send
        self._queue: deque[OutgoingTransfer] = deque()
        self._call: IDelayedCall | None = None
        self.paused = False
        self.stopped = False
        self._ticking = False  # guards against a transport resuming us from inside our own write

    def add(self, transfer: OutgoingTransfer) -> None:
        if transfer not in self._queue:
            self._queue.append(transfer)
        self._schedule()

    def discard(self, transfer: OutgoingTransfer) -> None:
        if transfer in self._queue:
            self._queue.remove(transfer)

    def __len__(self) -> int:
        return len(self._queue)

    def _schedule(self) -> None:
        if self._call is None and self._queue and not self.paused and not self.stopped:
            self._call = self._clock.callLater(0, self._tick)

    def _tick(self) -> None:
        self._call = None
        if self.paused or self.stopped or not self._queue or self._ticking:
            return
        self._ticking = True
        try:
            transfer = self._queue.popleft()
            if self._step(transfer) and not self.stopped:
                self._queue.append(transfer)
        finally:
            self._ticking = False
        self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def resumeProducing(self) -> None:
        """The transport drained its buffer: send the next chunk now (no idle reactor turn), then go on."""
        self.paused = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._queue and not self.stopped and not self._ticking:
            self._tick()
        else:
            self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True
        self.pauseProducing()
        self._queue.clear()
