"""When a peer session reads its socket, and how much unread output it may hold.

Two things stop a session reading: a received file waiting for the disk (its
writer says so) and our own output piling up because the peer does not read
what we send (every line it sends may cost it a reply). Reading resumes when
every reason is gone.

The transport tells its registered producer when its buffer passes its
high-water mark (``pauseProducing``) and when it has emptied
(``resumeProducing``). :class:`OutputWatch` is that producer: it passes both
on to the :class:`~chatapp.peer.pump.SendPump` and counts what is written
while the transport is full. Past ``pause_after`` bytes the session stops
reading (so no more replies are made); past ``close_after`` (1 MiB beyond a
chunk in flight: only output that grows with no input to blame, such as chat
we send to a peer that never reads) the connection is closed. Both marks sit
above one DATA chunk, so two peers sending each other files never both stop
reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from chatapp.peer.pump import SendPump

if TYPE_CHECKING:
    from chatapp.peer.session import PeerSession

MiB = 1024 * 1024
# unread output beyond a DATA chunk in flight, while the transport is full: stop reading the peer...
OUTPUT_PAUSE = 64 * 1024
# ... and close the connection
OUTPUT_LIMIT = 1 * MiB


@implementer(IPushProducer)
class OutputWatch:
    """The producer a session registers on its transport: pacing for the pump, and a bound on unread output."""

    def __init__(
        self,
        pump: SendPump,
        chunk_size: int,
        on_backed_up: Callable[[bool], None],
        on_over_limit: Callable[[], None],
    ) -> None:
        self.pump = pump
        self.pause_after = chunk_size + OUTPUT_PAUSE
        self.close_after = chunk_size + OUTPUT_LIMIT
        self.full = False  # the transport's buffer is past its high-water mark
        self.written_while_full = 0
        self.backed_up = False
        self._on_backed_up = on_backed_up
        self._on_over_limit = on_over_limit

    def wrote(self, count: int) -> None:
        """``count`` bytes were just handed to the transport."""
        if not self.full:
            return
        self.written_while_full += count
        if self.written_while_full > self.close_after:
            self._on_over_limit()
        elif self.written_while_full > self.pause_after and not self.backed_up:
            self.backed_up = True
            self._on_backed_up(True)

    def pauseProducing(self) -> None:
        if not self.full:
            self.full = True
            self.written_while_full = 0
        self.pump.pauseProducing()

    def resumeProducing(self) -> None:
        self.full = False
        self.written_while_full = 0
        if self.backed_up:
            self.backed_up = False
            self._on_backed_up(False)
        self.pump.resumeProducing()

    def stopProducing(self) -> None:
        self.pump.stopProducing()


class ReadGate:
    """Reasons not to read (``"disk"``, ``"output"``): the transport reads only while there is none."""

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume
        self.reasons: set[str] = set()

    @property
    def open(self) -> bool:
        return not self.reasons

    def close(self, reason: str) -> None:
        was_open = not self.reasons
        self.reasons.add(reason)
        if was_open:
            self._pause()

    def release(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self._resume()


class SessionFlow:
    """The watch and the gate of one session, wired to its transport, its DATA deadline and its limits."""

    def __init__(self, session: PeerSession, chunk_size: int) -> None:
        self._session = session
        self.watch = OutputWatch(session.sender.pump, chunk_size, self._backed_up, self._over_limit)
        self.gate = ReadGate(self._pause_transport, self._resume_transport)

    def _pause_transport(self) -> None:
        session = self._session
        session.data_deadline.stop()
        transport: Any = session.transport
        if transport is not None and session.live:
            transport.pauseProducing()

    def _resume_transport(self) -> None:
        session = self._session
        transport: Any = session.transport
        if transport is None or not session.live:
            return
        if session.framer.raw_left:
            session.data_deadline.start()
        transport.resumeProducing()
        session.drain()  # what was read before the pause and not yet taken

    def _backed_up(self, over: bool) -> None:
        """Our unread output passed the pause mark (``over``) or drained: stop making replies meanwhile."""
        if over:
            self.gate.close("output")
        else:
            self._session.reading_since = self._session.factory.clock.seconds()
            self.gate.release("output")

    def _over_limit(self) -> None:
        session = self._session
        if not session.live:
            return
        session.factory.limit_hit("peer-output", "a peer does not read what we send: closing its connection")
        session.lose("output-limit", abort=True)  # a clean close would wait for it to read
