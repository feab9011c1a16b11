"""Writing one received file off the reactor thread, in order, with a bound on what waits in memory.

A :class:`FileWriter` keeps at most one write of its file in flight on a
:class:`~chatapp.runner.Runner` (a small thread pool; inline in tests).
Pieces that arrive meanwhile are queued and handed over together (up to
:data:`MAX_WRITE`, one ``writev``), so a fast stream makes few, large writes
and a slow disk makes the queue grow instead of blocking the reactor. A
write starts once :data:`MIN_WRITE` bytes wait (or at the end, or when bytes
waited :data:`FLUSH_AFTER` seconds, so a trickle holds nothing long): each
hand-over to the thread costs two thread switches, a wake-up of the reactor
and, while the reactor is busy, a wait for the GIL, so fewer is cheaper.
When more than ``high_water`` bytes wait, ``on_backlog(True)`` asks the
session to stop reading the socket; ``on_backlog(False)`` once it fell under
``low_water``. A :class:`~chatapp.peer.backlog.DiskBacklog` shared by the
writers of a factory bounds the total the same way.

The SHA-256 is updated on the reactor thread as each piece arrives (it is
C code, about a tenth of a millisecond for 256 KiB): the writer thread then
needs the GIL only twice a write. Hashing there instead made it wait for the
busy reactor thread at every update, and the backlog it built stopped the
session reading, chat included.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from chatapp.peer.backlog import DiskBacklog
    from chatapp.peer.downloads import DownloadDir
    from chatapp.runner import Runner

MiB = 1024 * 1024
MAX_WRITE = 4 * MiB
# Bytes gathered before a write is started (the last piece of a file is written whatever its size).
# Held in memory per transfer until then: bounded, like the queue, by the high-water mark.
MIN_WRITE = MiB
# Pieces under this size are copied into one buffer as they come: a flood of 1-byte DATA chunks makes
# a few buffers, not millions of objects (each ~35 bytes of overhead) nor millions of iovecs.
SMALL_PIECE = 16 * 1024
# Bytes under MIN_WRITE are written anyway once they waited this long: a trickle cannot keep them in memory.
FLUSH_AFTER = 1.0
HIGH_WATER = 16 * MiB
LOW_WATER = 2 * MiB


class Stage(enum.Enum):
    WRITING = "writing"  # taking bytes
    FINISHING = "finishing"  # finish() called: the queue drains, then fsync and close
    ABANDONED = "abandoned"  # the transfer stopped: nothing more is written; the file closes
    FAILED = "failed"  # a write, the fsync or the close failed: the file is closed
    FINISHED = "finished"  # synced and closed


_MOVES = {
    Stage.WRITING: {Stage.FINISHING, Stage.ABANDONED, Stage.FAILED},
    Stage.FINISHING: {Stage.FINISHED, Stage.FAILED},
    Stage.ABANDONED: set(),
    Stage.FAILED: set(),
    Stage.FINISHED: set(),
}


class FileWriter:
    """The bytes of one incoming transfer on their way into its open partial file ``fd``.

    ``on_error`` hears a write error while bytes still come; ``on_bug`` gets
    the failure of a callback of ours that raised (the session logs it and closes).
    """

    def __init__(
        self,
        runner: Runner,
        downloads: DownloadDir,
        fd: int,
        hasher: Any,
        on_error: Callable[[OSError], None],
        on_backlog: Callable[[bool], None],
        on_bug: Callable[[Failure], None],
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
        min_write: int = MIN_WRITE,
        clock: IReactorTime | None = None,
        backlog: DiskBacklog | None = None,
    ) -> None:
        self._runner = runner
        self._downloads = downloads
        self._fd: int | None = fd
        self.hasher = hasher
        self._on_error = on_error
        self._on_backlog = on_backlog
        self._on_bug = on_bug
        self._high_water = high_water
        self._low_water = low_water
        # never above the low-water mark: a backlog must always be able to start the write that eases it
        self._min_write = max(1, min(min_write, low_water))
        self.stage = Stage.WRITING
        self._queue: deque[bytes | bytearray | memoryview] = deque()
        self._queued = 0  # bytes in _queue
        self._writing = 0  # bytes of the write in flight (0: none)
        self.backlogged = False  # on_backlog(True) was the last call
        self.error: OSError | None = None
        self._finished: defer.Deferred[str] = defer.Deferred()
        self._clock = clock  # None: what waits is written only at MIN_WRITE or at the end
        self._flush_call: IDelayedCall | None = None
        self._total = backlog  # None: only this writer's own marks apply
        self.closed: defer.Deferred[None] = defer.Deferred()  # fires once the file is closed, however it ended
        self.intact = True  # every byte hashed went to the file (False once bytes were dropped or a write failed)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet on disk."""
        return self._queued + self._writing

    def write(self, data: bytes | memoryview) -> None:
        """Hash and queue ``data``.

        ``data`` must not change afterwards: bytes, or a view of bytes (the framer's pieces are). A view
        is kept as it is while it is at least half of what it holds alive, or while the piece queued
        before it holds the same buffer alive already (the two sides of a DATA line in one read); any
        other is copied, so the memory a queue pins stays within twice what it counts.
        """
        if self.stage is not Stage.WRITING:
            return
        size = len(data)
        if not size:
            return
        self.hasher.update(data)
        queue = self._queue
        if size < SMALL_PIECE:
            tail = queue[-1] if queue else None
            if type(tail) is not bytearray or len(tail) >= self._min_write:
                tail = bytearray()
                queue.append(tail)
            tail += data  # still queued, so no thread holds it yet
        elif (
            isinstance(data, memoryview)
            and 2 * size < len(data.obj)  # type: ignore[arg-type]
            and not (queue and isinstance(queue[-1], memoryview) and queue[-1].obj is data.obj)
        ):
            queue.append(bytes(data))
        else:
            queue.append(data)
        self._queued += size
        total = self._total
        if total is not None:
            total.grow(size)
        if not self._writing and self._queued >= self._min_write:
            self._write_next()
        elif not self._writing and self._flush_call is None and self._clock is not None:
            self._flush_call = self._clock.callLater(FLUSH_AFTER, self._flush)
        if not self.backlogged and (self.buffered > self._high_water or (total is not None and total.over)):
            self.backlogged = True
            if total is not None and total.over:
                self._hold(total)
            self._on_backlog(True)

    def backlog_eased(self) -> None:
        """The factory's total fell to its resume mark (called by the :class:`DiskBacklog` that held us)."""
        self._ease()

    def finish(self) -> defer.Deferred[str]:
        """Write what is queued, fsync and close the file; fires with the hex SHA-256 of all bytes.

        Fails with the OSError of a write, the fsync or the close.
        """
        if self.error is not None:
            return defer.fail(self.error)
        self._move(Stage.FINISHING)
        if not self._writing:
            if self._queue:
                self._write_next()  # _written syncs after the last write
            else:
                self._sync()
        return self._finished

    def abandon(self) -> None:
        """Take no more bytes; what was received is still written (kept, for a resume), then the file
        is closed. Nothing new is read meanwhile, so this is bounded by what is queued now."""
        if self.stage is not Stage.WRITING:
            return  # finishing goes on to its end; failed and finished writers are closed
        self._move(Stage.ABANDONED)
        self._ease()
        if not self._writing:
            if self._queue:
                self._write_next()
            else:
                self._close()

    # -- inside --------------------------------------------------------------------

    def _move(self, new: Stage) -> None:
        if new not in _MOVES[self.stage]:
            raise RuntimeError(f"file writer: {self.stage.value} -> {new.value}")
        self.stage = new

    def _flush(self) -> None:
        self._flush_call = None
        if self.stage is Stage.WRITING and not self._writing and self._queue:
            self._write_next()

    def _cancel_flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None

    def _write_next(self) -> None:
        self._cancel_flush()
        batch: list[bytes | bytearray | memoryview] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0]) <= MAX_WRITE):
            piece = self._queue.popleft()
            batch.append(piece)
            size += len(piece)
        self._queued -= size
        self._writing = size
        d = self._runner.run(self._write_blocking, self._fd, batch)
        d.addCallback(self._written)
        d.addErrback(self._on_bug)

    def _write_blocking(self, fd: int, batch: list[bytes | bytearray | memoryview]) -> OSError | None:
        """On the runner's thread: write ``batch``; an OSError is returned, not raised."""
        try:
            self._downloads.write(fd, batch)
        except OSError as e:
            return e
        return None

    def _written(self, error: OSError | None) -> None:
        written, self._writing = self._writing, 0
        try:
            self._next_after(error)
        finally:
            # Last: the total falling can let other sessions read, and deliver, before we return.
            self._count_out(written)

    def _next_after(self, error: OSError | None) -> None:
        if self.stage is Stage.ABANDONED:
            if error is not None:
                self.intact = False  # the file may hold less than was hashed
            if error is None and self._queue:
                self._write_next()  # the rest of what was received, for a resume
            else:
                self._drop_queue()
                self._close()  # an error now changes nothing: the transfer is over
            return
        if error is not None:
            self._fail(error)
            return
        # The next write starts before _ease: easing resumes reading, and a TLS transport then
        # delivers what it holds at once, so END (and finish()) can run inside _ease.
        if self._queued >= self._min_write or (self._queue and self.stage is Stage.FINISHING):
            self._write_next()
        elif self.stage is Stage.FINISHING:
            self._sync()
        elif self._queue and self._flush_call is None and self._clock is not None:
            self._flush_call = self._clock.callLater(FLUSH_AFTER, self._flush)
        self._ease()

    def _ease(self) -> None:
        if not self.backlogged:
            return
        total = self._total
        if self.stage is Stage.WRITING:
            if self.buffered > self._low_water:
                return
            if total is not None and total.over:
                self._hold(total)  # our own queue is low, the factory's is not: wait for it
                return
        if total is not None:
            total.let_go(self)
        self.backlogged = False
        self._on_backlog(False)

    def _hold(self, total: DiskBacklog) -> None:
        total.hold(self)
        # What we hold counts against the total: write it now rather than after FLUSH_AFTER.
        if not self._writing and self._queue and self.stage is Stage.WRITING:
            self._write_next()

    def _drop_queue(self) -> None:
        if self._queued:
            self.intact = False
        dropped, self._queued = self._queued, 0
        self._queue.clear()
        self._count_out(dropped)

    def _count_out(self, count: int) -> None:
        if self._total is not None and count:
            self._total.shrink(count)

    def _fail(self, error: OSError) -> None:
        was = self.stage
        self.error = error
        self.intact = False
        self._move(Stage.FAILED)
        self._drop_queue()
        self._ease()
        self._close()
        if was is Stage.FINISHING:
            self._finished.errback(error)
        else:
            self._on_error(error)

    def _sync(self) -> None:
        self._cancel_flush()
        fd, self._fd = self._fd, None
        d = self._runner.run(self._sync_blocking, fd)
        d.addCallback(self._synced)
        d.addErrback(self._on_bug)

    def _sync_blocking(self, fd: int) -> OSError | None:
        try:
            try:
                self._downloads.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            return e
        return None

    def _synced(self, error: OSError | None) -> None:
        if error is not None:
            self._fail(error)
            return
        self._move(Stage.FINISHED)
        self._tell_closed()
        self._finished.callback(self.hasher.hexdigest())

    def _close(self) -> None:
        self._cancel_flush()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._tell_closed()

    def _tell_closed(self) -> None:
        if not self.closed.called:
            self.closed.callback(None)
