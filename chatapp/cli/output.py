"""Our own stdout, bounded: written without ever blocking the reactor, and never allowed to grow without end.

Script mode and the one-shots (``send``, ``listen``) print one line per event.
Writes go to a non-blocking consumer (``StandardIO`` in script mode,
:class:`StdoutWriter` in the one-shots) that keeps what fd 1 did not take
yet.  Whoever reads our stdout may stop reading, so that queue is watched:
:class:`BoundedOutput` registers itself as the consumer's streaming producer,
so the consumer says when its buffer passed its own high-water mark
(``pauseProducing``) and when it emptied (``resumeProducing``), and counts the
bytes written in between.

- Past ``pause_after`` (:data:`OUTPUT_PAUSE`) queued bytes the output is
  *backed up*: listeners are told, and :class:`PeerThrottle` stops reading
  every peer whose events reach the output meanwhile (their lines stay in the
  kernel and TCP slows them down: nothing is lost). A peer that produces no
  output (one that only pings) is not paused.
- When the consumer has written everything, the peers read again.
- Past ``close_after`` (:data:`OUTPUT_LIMIT`) — output that comes anyway,
  such as the server link's events or a script's own command replies — the
  run ends with :data:`~chatapp.cli.errors.EXIT_OUTPUT` and one line on
  stderr; later lines are dropped, so memory stays bounded until then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import abstract, defer, fdesc
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatapp.app import ChatClient
from chatapp.events import ChatEvent, PeerLeft
from chatapp.peer import PeerSession

from .errors import EXIT_OUTPUT, Fatal

log = Logger()

T = TypeVar("T")

MiB = 1024 * 1024
# unread output queued beyond the consumer's own buffer: stop reading the peers that produce it...
OUTPUT_PAUSE = 1 * MiB
# ... and past this, stop the run (what still comes is output we cannot hold back)
OUTPUT_LIMIT = 16 * MiB
# the pause reason given to peer sessions (their ReadGate keeps it apart from "disk" and "output")
PAUSE_REASON = "stdout"

OVERFLOW_TEXT = "stdout is not being read: more than {mib} MiB of output waiting, so chatapp stops"


class OutputOverflow(Fatal):
    """The unread output passed the hard bound."""

    def __init__(self, limit: int) -> None:
        super().__init__(EXIT_OUTPUT, OVERFLOW_TEXT.format(mib=limit // MiB))


@implementer(IPushProducer)
class BoundedOutput:
    """Lines to a non-blocking ``consumer``, with back-pressure and a hard bound on what waits unread."""

    def __init__(
        self,
        consumer: IConsumer | None = None,
        *,
        pause_after: int = OUTPUT_PAUSE,
        close_after: int = OUTPUT_LIMIT,
    ) -> None:
        if not 0 < pause_after < close_after:
            raise ValueError("pause_after must be positive and below close_after")
        self.pause_after = pause_after
        self.close_after = close_after
        self.consumer: IConsumer | None = None
        self.full = False  # the consumer's buffer is past its own high-water mark
        self.queued = 0  # bytes written since it said so (what waits beyond its buffer)
        self.backed_up = False
        self.overflowed = False
        self.listeners: list[Callable[[bool], None]] = []  # told True when backed up, False when drained
        self._early: list[bytes] = []  # lines before a consumer is attached (a login's few events)
        self._waiters: list[defer.Deferred[Any]] = []
        self._told = False
        if consumer is not None:
            self.attach(consumer)

    def attach(self, consumer: IConsumer) -> None:
        """Start writing to ``consumer`` (what was written before goes first)."""
        self.consumer = consumer
        consumer.registerProducer(self, True)
        early, self._early = self._early, []
        for data in early:
            self._write(data)

    def write(self, line: str) -> None:
        """One line (a newline is added); dropped once the hard bound was passed."""
        data = line.encode("utf-8") + b"\n"
        if self.consumer is None:
            self._early.append(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.overflowed or self.consumer is None:
            return
        self.consumer.write(data)
        if not self.full:
            return
        self.queued += len(data)
        if self.queued > self.close_after:
            self._overflow()
        elif self.queued > self.pause_after and not self.backed_up:
            self.backed_up = True
            if not self._told:  # once per run: a reader that stalls again and again must not fill the log
                self._told = True
                log.warn(
                    "stdout is not being read: {queued} bytes wait; peers that produce output are paused (logged once)",
                    queued=self.queued,
                )
            self._tell(True)

    def _overflow(self) -> None:
        self.overflowed = True
        log.error("stdout is not being read: more than {limit} bytes wait; stopping", limit=self.close_after)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(OutputOverflow(self.close_after))

    def _tell(self, backed_up: bool) -> None:
        for listener in list(self.listeners):
            try:
                listener(backed_up)
            except Exception:
                log.failure("telling that the output {state}", state="backed up" if backed_up else "drained")

    def guard(self, work: defer.Deferred[T]) -> defer.Deferred[T]:
        """``work``'s outcome, or :class:`OutputOverflow` if the hard bound is passed first."""
        out: defer.Deferred[T] = defer.Deferred()
        if self.overflowed:
            out.errback(OutputOverflow(self.close_after))
        else:
            self._waiters.append(out)

        def settle(result: T | Failure) -> None:
            if out in self._waiters:
                self._waiters.remove(out)
            if out.called:
                return  # the run is ending anyway: what ``work`` did after the overflow does not matter
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)

        work.addBoth(settle)
        return out

    # -- IPushProducer: the consumer's word on its buffer ---------------------

    def pauseProducing(self) -> None:
        if not self.full:
            self.full = True
            self.queued = 0

    def resumeProducing(self) -> None:
        self.full = False
        self.queued = 0
        if self.backed_up:
            self.backed_up = False
            self._tell(False)

    def stopProducing(self) -> None:
        """stdout was closed: nothing can be written any more (and nothing waits)."""
        self.resumeProducing()


class PeerThrottle:
    """Pauses the peer sessions whose events reach a backed-up output; resumes them all when it drained."""

    def __init__(self, output: BoundedOutput, client: ChatClient | None = None) -> None:
        self.client = client  # set once logged in (events may come while logging in)
        self.output = output
        output.listeners.append(self._pressure)

    def sink(self, show: Callable[[ChatEvent], None]) -> Callable[[ChatEvent], None]:
        """``show``, and then the session the event came from stops reading if the output is backed up."""

        def hear(event: ChatEvent) -> None:
            show(event)
            if not self.output.backed_up or isinstance(event, PeerLeft):
                return
            session = session_of(event)
            if session is not None:
                session.pause_reading(PAUSE_REASON)

        return hear

    def _pressure(self, backed_up: bool) -> None:
        if backed_up or self.client is None or self.client.peers is None:
            return
        for session in self.client.peers.connections:
            session.resume_reading(PAUSE_REASON)


def session_of(event: ChatEvent) -> PeerSession | None:
    """The peer session an event is about, if it comes from the peer side."""
    session = getattr(event, "session", None)
    if session is None:
        transfer = getattr(event, "transfer", None)
        session = getattr(transfer, "session", None)
    return session if isinstance(session, PeerSession) else None


class StdoutWriter(abstract.FileDescriptor):
    """fd 1 (or ``fd``) written by the reactor, non-blocking; for the one-shots, which do not read stdin."""

    def __init__(self, reactor: Any, fd: int = 1) -> None:
        super().__init__(reactor)
        self.fd = fd
        fdesc.setNonBlocking(fd)
        self.connected = True

    def fileno(self) -> int:
        return self.fd

    def writeSomeData(self, data: bytes) -> int | BaseException:
        return fdesc.writeToFD(self.fd, data)  # EPIPE: the reader went away; connectionLost follows

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.connected = False
