"""The push producer that paces every file we send on one connection.

One :class:`SendPump` is registered on a session's transport. It moves one
chunk of one transfer per reactor turn, round robin, and stops while the
transport says it is full, so memory stays at about one chunk per
connection and a slow receiver slows the sender. Chat lines written between
turns go out between chunks.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from chatapp.peer.errors import IllegalTransition

if TYPE_CHECKING:
    from chatapp.peer.sender import OutgoingTransfer


class PumpState(enum.Enum):
    RUNNING = "running"  # the transport takes bytes: send a chunk per reactor turn
    PAUSED = "paused"  # the transport's buffer is full: wait for resumeProducing
    STOPPED = "stopped"  # the connection is gone: for good


_PUMP_MOVES: dict[PumpState, frozenset[PumpState]] = {
    PumpState.RUNNING: frozenset({PumpState.RUNNING, PumpState.PAUSED, PumpState.STOPPED}),
    PumpState.PAUSED: frozenset({PumpState.PAUSED, PumpState.RUNNING, PumpState.STOPPED}),
    PumpState.STOPPED: frozenset({PumpState.STOPPED}),
}


@implementer(IPushProducer)
class SendPump:
    """Round-robin over transfers that have bytes to send; one ``step`` per reactor turn."""

    def __init__(self, clock: IReactorTime, step: Callable[[OutgoingTransfer], bool]) -> None:
        self._clock = clock
        self._step = step  # sends one chunk (or END); returns True if the transfer has more to send
        self._queue: deque[OutgoingTransfer] = deque()
        self._call: IDelayedCall | None = None
        self.state = PumpState.RUNNING
        self._ticking = False  # guards against a transport resuming us from inside our own write

    def add(self, transfer: OutgoingTransfer) -> None:
        if transfer not in self._queue:
            self._queue.append(transfer)
        self._schedule()

    def discard(self, transfer: OutgoingTransfer) -> None:
        if transfer in self._queue:
            self._queue.remove(transfer)

    def _move(self, new: PumpState) -> None:
        if new not in _PUMP_MOVES[self.state]:
            raise IllegalTransition(f"pump: {self.state.value} -> {new.value}")
        self.state = new

    def __len__(self) -> int:
        return len(self._queue)

    def _schedule(self) -> None:
        if self._call is None and self._queue and self.state is PumpState.RUNNING:
            self._call = self._clock.callLater(0, self._tick)

    def _tick(self) -> None:
        self._call = None
        if self.state is not PumpState.RUNNING or not self._queue or self._ticking:
            return
        self._ticking = True
        try:
            transfer = self._queue.popleft()
            if self._step(transfer) and self.state is not PumpState.STOPPED:
                self._queue.append(transfer)
        finally:
            self._ticking = False
        self._schedule()

    def pauseProducing(self) -> None:
        if self.state is not PumpState.STOPPED:
            self._move(PumpState.PAUSED)
        self._cancel_call()

    def _cancel_call(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def resumeProducing(self) -> None:
        """The transport drained its buffer: send the next chunk now (no idle reactor turn), then go on."""
        if self.state is PumpState.STOPPED:
            return  # a transport may resume a producer it already stopped; nothing is left to send
        self._move(PumpState.RUNNING)
        self._cancel_call()
        if self._queue and not self._ticking:
            self._tick()
        else:
            self._schedule()

    def stopProducing(self) -> None:
        self._move(PumpState.STOPPED)
        self._cancel_call()
        self._queue.clear()
