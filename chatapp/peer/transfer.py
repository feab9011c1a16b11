"""A file transfer as the user sees it: identity, state, progress and a way to wait for its end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer

from chatapp.peer.errors import TransferFailed
from chatapp.peer.states import Direction, TransferState, transfer_move

if TYPE_CHECKING:
    from chatapp.peer.session import PeerSession

PROGRESS_INTERVAL = 0.1  # seconds: at most 10 progress events a second per transfer


class Transfer:
    """One file going one way on one peer session.

    ``handle`` is a small number unique within the :class:`PeerFactory` (from 1,
    across sessions and directions), for a person to type; ``id`` is the
    sender's id on the wire. ``bytes_done`` counts from byte 0 of the file (a resumed transfer starts
    at ``offset``); ``reason`` says why a transfer ended (``""`` while it runs,
    e.g. ``declined``, ``disk-full``, ``hash-mismatch``, ``connection-lost``);
    ``path`` is the local file: the source for a send, the final file once a
    receive is done.
    """

    def __init__(
        self, session: PeerSession, handle: int, transfer_id: str, name: str, size: int, direction: Direction
    ) -> None:
        self.session = session
        self.handle = handle
        self.id = transfer_id
        self.name = name
        self.size = size
        self.direction = direction
        self.state = TransferState.OFFERED
        self.reason = ""
        self.offset = 0  # where this transfer starts: the length of a kept partial when it resumes
        self.resumed = False  # True when it resumes a kept partial (offset > 0); set before any progress
        self.bytes_done = 0
        # a receive: bytes of a partial file kept from an earlier try when the offer came (an accept resumes
        # from them), and bytes its partial keeps once it ended without the file (the same offer resumes)
        self.already = 0
        self.kept = 0
        self.path: str | None = None
        self.sha256: str | None = None
        self.started: float | None = None  # clock time the first byte moved
        self.rate = 0.0  # bytes per second since started
        self._last_progress: float | None = None
        self._waiters: list[defer.Deferred[Transfer]] = []

    def __repr__(self) -> str:
        where = f"{self.bytes_done}/{self.size}"
        return f"<Transfer #{self.handle} {self.direction.value} {self.id} {self.state.value} {where}>"

    @property
    def peer(self) -> str:
        return self.session.peer_name or ""

    @property
    def finished(self) -> bool:
        return self.state.final

    def when_done(self) -> defer.Deferred[Transfer]:
        """A Deferred that fires with this transfer when it is DONE, or fails with TransferFailed."""
        d: defer.Deferred[Transfer] = defer.Deferred()
        if self.state is TransferState.DONE:
            d.callback(self)
        elif self.state.final:
            d.errback(TransferFailed(self))
        else:
            self._waiters.append(d)
        return d

    def move(self, new: TransferState, reason: str = "") -> None:
        """Change state (raises IllegalTransition on a move the table forbids)."""
        self.state = transfer_move(self.state, new)
        if new.final:
            self.reason = reason or new.value
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                if new is TransferState.DONE:
                    d.callback(self)
                else:
                    d.errback(TransferFailed(self))

    def count(self, n: int, now: float) -> bool:
        """Record ``n`` more bytes; True when a progress event is due (throttled)."""
        if self.started is None:
            self.started = now
        self.bytes_done += n
        elapsed = now - self.started
        if elapsed > 0:
            self.rate = (self.bytes_done - self.offset) / elapsed
        due = self._last_progress is None or now - self._last_progress >= PROGRESS_INTERVAL
        if due or self.bytes_done >= self.size:
            self._last_progress = now
            return True
        return False
