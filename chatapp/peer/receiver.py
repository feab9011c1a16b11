"""The receiving side of one peer session: incoming transfers and the rules of taking them.

:class:`Receiver` owns every file offered to us on a session: it checks
offers (id, size, name, open offers, a partial in use), accepts them (from a
kept partial when the same peer offers the same name and size again, proving
the prefix with its hash), hands ``DATA`` bytes to a
:class:`~chatapp.peer.writer.FileWriter` (it hashes them as they come and
writes them off the reactor thread, and asks the session to stop reading
while too much waits), and on ``END`` checks
the size and hash, fsyncs, places the file in the download folder
(:mod:`chatapp.peer.downloads`) and only then says ``DONE``.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.events import FileOffered, PeerNotice, TransferEnded, TransferProgress
from chatapp.peer.deadline import Deadline
from chatapp.peer.errors import PeerError, ProtocolError
from chatapp.peer.names import clean_name, partial_key
from chatapp.peer.sender import MAX_CHUNK
from chatapp.peer.states import Direction, SessionState, TransferState
from chatapp.peer.transfer import Transfer
from chatapp.peer.writer import FileWriter
from chatapp.wire import (
    BadArguments,
    WireError,
    fields,
    fields_and_rest,
    format_line,
    is_number,
    loggable,
    parse_number,
    valid_sha256,
    valid_urlsafe,
)

if TYPE_CHECKING:
    from chatapp.peer.session import PeerSession

log = Logger()

MAX_ID = 32
# refused offer ids remembered per connection (to refuse their reuse and drop their DATA in flight);
# an older one is forgotten: its late DATA is then a protocol error, its reuse a new offer
MAX_REFUSED_IDS = 1024
# An accepted transfer must make progress while we read: at least MIN_PROGRESS bytes (or the rest of the
# file) in every PROGRESS_WINDOW, else FAIL <id> data-timeout (the partial stays). A trickle of one byte a
# minute would otherwise hold an open file (and a slot of max_open_files) for ever.
PROGRESS_WINDOW = 60.0
MIN_PROGRESS = 64 * 1024
REJECT_REASONS = frozenset(
    {"declined", "too-large", "bad-name", "bad-offer", "busy", "disk-full", "write-error", "cancelled"}
)
_TAKING = (TransferState.ACCEPTED, TransferState.RECEIVING)  # ACCEPT sent, END not yet in
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def valid_id(text: str) -> bool:
    return valid_urlsafe(text, MAX_ID)


class IncomingTransfer(Transfer):
    """A file offered to us. ``name`` is the cleaned name (bad names are rejected before this exists)."""

    def __init__(
        self,
        session: PeerSession,
        handle: int,
        transfer_id: str,
        offered_name: str,
        name: str,
        size: int,
        partial: str,
    ) -> None:
        super().__init__(session, handle, transfer_id, name, size, Direction.RECEIVE)
        self.offered_name = offered_name
        self.partial = partial  # path of the partial file
        self.preparing: defer.Deferred[Any] | None = None  # hashing a kept partial (state ACCEPTED)
        self.writer: FileWriter | None = None  # from ACCEPT on
        self.idle: Deadline | None = None  # from ACCEPT on: too little DATA in a window fails the transfer
        self.window_start = 0  # bytes_done when the current progress window began

    def stop_io(self) -> None:
        """Stop hashing or writing; the partial file stays (the caller removes it if it must go)."""
        if self.preparing is not None:
            preparing, self.preparing = self.preparing, None
            preparing.cancel()
        if self.writer is not None:
            writer = self.writer
            writer.abandon()
            # Once what came is on disk, the writer's hash is the kept partial's: a resume of it hashes
            # nothing (else a peer could make us re-read a large partial after each byte it appends).
            writer.closed.addCallback(self._closed_whole, writer)
            if not writer.closed.called:  # still writing what came: a resume must measure after it
                self.session.factory.partial_closing(self.partial, writer.closed)
        if self.idle is not None:
            self.idle.stop()

    def _closed_whole(self, _: object, writer: FileWriter) -> None:
        if writer.intact:
            self.session.factory.remember_prefix(self.partial, writer.hasher)


class Receiver:
    """Every transfer offered to us on one session, by the sender's id (``transfers``)."""

    def __init__(self, session: PeerSession) -> None:
        self.session = session
        self.factory = session.factory
        self.transfers: dict[str, IncomingTransfer] = {}
        self._dropped_ids: set[str] = set()  # ids refused before a transfer existed (the last MAX_REFUSED_IDS)
        self._dropped_order: deque[str] = deque()
        self.unfinished: set[IncomingTransfer] = set()  # offered, accepted or receiving: each may hold a file
        self._target: IncomingTransfer | None = None  # whose DATA bytes are being read (None: dropped)
        self._backlogged: set[IncomingTransfer] = set()  # their writers asked us to stop reading
        self._hash_lock = defer.DeferredLock()  # one prefix hash at a time for this peer

    # -- asked by the user ----------------------------------------------------------

    def accept(self, transfer: IncomingTransfer) -> None:
        """Accept an offer, resuming from a kept partial copy if there is one."""
        if transfer.state is not TransferState.OFFERED:
            raise PeerError(f"transfer {transfer.id} is {transfer.state.value}, not offered")
        closing = self.factory.closing_partials.get(transfer.partial)
        if closing is None:
            self._resume_or_start(transfer)
            return
        # An earlier transfer of this file (cut a moment ago) still writes what it received: the kept
        # partial is measured and hashed once that is on disk, not while it grows.
        transfer.move(TransferState.PREPARING)
        waiting: defer.Deferred[None] = defer.Deferred()

        def written(result: object) -> object:
            if not waiting.called:
                waiting.callback(None)
            return result

        closing.addBoth(written)
        transfer.preparing = waiting
        waiting.addCallback(self._earlier_closed, transfer)
        waiting.addErrback(self._prefix_unreadable)  # a cancel while waiting: nothing to do
        waiting.addErrback(self.session.fail_inside, "resuming a file")

    def _earlier_closed(self, _: object, transfer: IncomingTransfer) -> None:
        if transfer.preparing is None or transfer.finished:
            return  # stopped meanwhile
        transfer.preparing = None
        self._resume_or_start(transfer)

    def _resume_or_start(self, transfer: IncomingTransfer) -> None:
        downloads = self.factory.downloads
        try:
            downloads.ensure()
            kept = downloads.kept_size(transfer.partial)
        except OSError as e:
            self._cannot_save(transfer, e)
            return
        if kept is not None and kept > transfer.size:
            downloads.remove(transfer.partial)
            kept = None
        if not kept:
            self._start(transfer, 0, None)
            return
        if transfer.state is TransferState.OFFERED:
            transfer.move(TransferState.PREPARING)
        # off the reactor thread, cached per kept partial, one at a time for this peer and few in total
        preparing = transfer.preparing = self._hash_lock.run(self.factory.prefix_hash, transfer.partial, kept)
        # the errback first: it only sees read errors; bugs of the callback go to the session
        preparing.addErrback(self._prefix_unreadable)
        preparing.addCallback(self._prefix_hashed, transfer, kept)
        preparing.addErrback(self.session.fail_inside, "resuming a file")

    def reject(self, transfer: IncomingTransfer, reason: str = "declined") -> None:
        """Refuse an offer, or stop a transfer under way; its partial file is deleted."""
        self._say_no(transfer, reason, discard=True)

    def cancel(self, transfer: IncomingTransfer, discard: bool = False) -> None:
        """Stop a transfer (``REJECT <id> cancelled``); its partial stays for a later resume unless ``discard``.

        A partial with nothing in it yet (cancelled right after the accept) goes anyway: nothing to resume.
        """
        self._say_no(transfer, "cancelled", discard or transfer.bytes_done == 0)

    def find(self, transfer: str | Transfer) -> IncomingTransfer:
        """The incoming transfer named by ``transfer`` (itself, or the sender's id); raises KeyError."""
        transfer_id = transfer.id if isinstance(transfer, Transfer) else transfer
        incoming = self.transfers.get(transfer_id)
        if incoming is None or (isinstance(transfer, Transfer) and incoming is not transfer):
            raise KeyError(transfer_id)
        return incoming

    def _say_no(self, transfer: IncomingTransfer, reason: str, discard: bool) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"not a REJECT reason: {reason!r}")
        if transfer.finished:
            return
        self.session.send(format_line("REJECT", transfer.id, reason))
        began = transfer.writer is not None  # bytes of this transfer may be in the partial
        transfer.stop_io()
        if discard and began:
            self.factory.downloads.remove(transfer.partial)
        elif not began:
            # a partial kept from an earlier try of this offer is not this transfer's to delete
            transfer.kept = transfer.already
        self._end(transfer, TransferState.REJECTED, reason)

    # -- lines from the sender ----------------------------------------------------------

    def on_offer(self, args: str | None) -> None:
        if args is None:
            raise BadArguments()
        parts = args.split(" ", 2)
        transfer_id = parts[0]
        if not valid_id(transfer_id):
            raise BadArguments("transfer ids are 1-32 of A-Z a-z 0-9 _ -")
        if transfer_id in self.transfers or transfer_id in self._dropped_ids:
            self.session.send(format_line("REJECT", transfer_id, "bad-offer"))  # ids are never reused
            return
        if len(parts) != 3 or not is_number(parts[1]) or not parts[2]:
            self._refuse(transfer_id, "bad-offer")
            return
        size, offered = int(parts[1]), parts[2]
        name = clean_name(offered)
        if name is None:
            self._refuse(transfer_id, "bad-name")
            return
        if size > self.factory.max_file_size:
            self._refuse(transfer_id, "too-large")
            return
        assert self.session.peer_name is not None
        partial = self.factory.downloads.partial_path(partial_key(self.session.peer_name, name, size))
        if len(self.unfinished) >= self.factory.max_open_offers or self.factory.partial_in_use(partial):
            self._refuse(transfer_id, "busy")
            return
        if self.factory.files_of(self.session.peer_name) >= self.factory.max_open_files_per_peer:
            self.factory.limit_hit("peer-open-files-share", "a peer holds its share of the open files: refusing (busy)")
            self._refuse(transfer_id, "busy")
            return
        # the same share per address: a few accounts made from one place cannot hold every file slot either
        if self.factory.files_from(self.session.source_key) >= self.factory.max_open_files_per_peer:
            self.factory.limit_hit(
                "peer-open-files-address-share", "an address holds its share of the open files: refusing (busy)"
            )
            self._refuse(transfer_id, "busy")
            return
        if len(self.factory.receiving) >= self.factory.max_open_files:
            self.factory.limit_hit("peer-open-files", "too many files being received: refusing offers (busy)")
            self._refuse(transfer_id, "busy")
            return
        transfer = IncomingTransfer(self.session, self.factory.new_handle(), transfer_id, offered, name, size, partial)
        try:
            kept = self.factory.downloads.kept_size(partial)
        except OSError:
            kept = None  # the accept will say what is wrong with the folder
        transfer.already = kept if kept is not None and kept <= size else 0
        self.transfers[transfer_id] = transfer
        self.unfinished.add(transfer)
        self.factory.receiving[partial] = transfer
        self.factory.remember_offer(partial, self.session.peer_name, name, size)
        self.factory.add_transfer(transfer)
        log.info("{peer} offers {id}: {size} bytes", peer=self.session.who(), id=transfer_id, size=size)
        self.session.emit(FileOffered(self.session, transfer))
        if (
            transfer.state is TransferState.OFFERED
            and self.session.state is SessionState.OPEN
            and self.factory.should_accept(transfer)
        ):
            self.accept(transfer)

    def on_data(self, args: str | None) -> int:
        """A ``DATA`` line: check it and say how many raw bytes follow (for this transfer, or dropped)."""
        try:
            transfer_id, count_text = fields(args, 2)
            count = parse_number(count_text)
        except WireError:
            raise ProtocolError("malformed DATA") from None
        if not valid_id(transfer_id) or not 1 <= count <= MAX_CHUNK:
            raise ProtocolError("malformed DATA")
        transfer = self.transfers.get(transfer_id)
        if transfer_id in self._dropped_ids or (
            transfer is not None and transfer.state in (TransferState.REJECTED, TransferState.FAILED)
        ):
            self._target = None  # read and dropped: it was in flight when we said no
            return count
        if transfer is None:
            raise ProtocolError(f"DATA for unknown id {transfer_id}")
        if transfer.state not in _TAKING:
            raise ProtocolError(f"DATA for {transfer_id}, which is not accepted", transfer_id)
        if transfer.bytes_done + count > transfer.size:
            raise ProtocolError(f"DATA past the offered size of {transfer_id}", transfer_id)
        if transfer.state is TransferState.ACCEPTED:
            transfer.move(TransferState.RECEIVING)
        self._target = transfer
        return count

    def on_bytes(self, data: bytes | memoryview) -> None:
        """Raw bytes of the current DATA chunk."""
        transfer = self._target
        if transfer is None or transfer.state is not TransferState.RECEIVING:
            return
        assert transfer.writer is not None
        transfer.writer.write(data)
        if transfer.state is TransferState.RECEIVING and transfer.count(len(data), self.factory.clock.seconds()):
            self.session.emit(TransferProgress(transfer))

    def on_end(self, args: str | None) -> None:
        transfer_id, digest = fields(args, 2)
        transfer = self.transfers.get(transfer_id)
        if transfer is None or transfer.state not in _TAKING:
            return  # unknown, dropped or finished
        transfer.move(TransferState.ENDED)
        if transfer.idle is not None:
            transfer.idle.stop()
        if self._target is transfer:
            self._target = None
        assert transfer.writer is not None
        if transfer.bytes_done != transfer.size:
            transfer.writer.abandon()
            self._fail(transfer, "size-mismatch")
            return
        saved = transfer.writer.finish()
        saved.addErrback(self._not_saved, transfer)
        saved.addCallback(self._check_and_place, transfer, digest)
        saved.addErrback(self.session.fail_inside, "finishing a received file")

    def on_cancel(self, args: str | None) -> None:
        (transfer_id,), reason = fields_and_rest(args, 1)
        transfer = self.transfers.get(transfer_id)
        if transfer is None or transfer.finished:
            return
        transfer.stop_io()
        if reason == "stale-partial":
            self.factory.downloads.remove(transfer.partial)
        else:
            transfer.kept = transfer.bytes_done
        self._end(transfer, TransferState.CANCELLED, reason)

    def protocol_error(self, transfer_id: str | None) -> None:
        """The peer broke the protocol about ``transfer_id``: that transfer's partial cannot be trusted."""
        transfer = self.transfers.get(transfer_id) if transfer_id else None
        if transfer is not None and not transfer.finished:
            transfer.stop_io()
            self.factory.downloads.remove(transfer.partial)
            self._end(transfer, TransferState.CANCELLED, "protocol-error")

    def connection_lost(self, reason: str) -> None:
        """The connection is gone: unfinished transfers end as cancelled; their partials stay for a resume."""
        for transfer in self.transfers.values():
            if not transfer.finished:
                transfer.stop_io()
                transfer.kept = transfer.bytes_done
                self._end(transfer, TransferState.CANCELLED, reason)

    # -- inside -----------------------------------------------------------------------

    def forget(self, transfer: IncomingTransfer) -> None:
        """Drop a finished transfer from the history (the factory keeps only the last few)."""
        if self.transfers.get(transfer.id) is transfer:
            del self.transfers[transfer.id]

    def _refuse(self, transfer_id: str, reason: str) -> None:
        self._dropped_ids.add(transfer_id)
        self._dropped_order.append(transfer_id)
        if len(self._dropped_order) > MAX_REFUSED_IDS:
            self._dropped_ids.discard(self._dropped_order.popleft())
        self.session.send(format_line("REJECT", transfer_id, reason))

    def _prefix_unreadable(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError, OSError):
            return failure  # type: ignore[return-value]  # a bug: for the session's errback
        if not failure.check(defer.CancelledError):
            log.info("cannot read a kept partial: {error}", error=loggable(failure.value))
        return None

    def _prefix_hashed(self, hasher: Any, transfer: IncomingTransfer, kept: int) -> None:
        if transfer.preparing is None or transfer.finished:
            return  # stopped (stop_io let go of it first)
        transfer.preparing = None
        if hasher is None:  # unreadable: start over
            self.factory.downloads.remove(transfer.partial)
            self._start(transfer, 0, None)
        else:
            self._start(transfer, kept, hasher)

    def _start(self, transfer: IncomingTransfer, offset: int, hasher: Any) -> None:
        """Open the partial (new, or to append after ``offset`` kept bytes) and send ACCEPT."""
        if transfer.finished or self.session.state is not SessionState.OPEN:
            return
        downloads = self.factory.downloads
        try:
            fd = downloads.open_append(transfer.partial, offset) if offset else downloads.open_new(transfer.partial)
        except OSError as e:
            if offset:  # the kept partial changed under us: start over
                self._start(transfer, 0, None)
                return
            self._cannot_save(transfer, e)
            return
        hasher = hasher if hasher is not None else hashlib.sha256()
        transfer.writer = FileWriter(
            self.factory.disk(),
            downloads,
            fd,
            hasher,
            on_error=lambda error: self._write_failed(transfer, error),
            on_backlog=lambda over: self._backlog(transfer, over),
            on_bug=lambda failure: self.session.fail_inside(failure, "writing a received file"),
            clock=self.factory.clock,
            backlog=self.factory.disk_backlog,
        )
        transfer.offset = transfer.bytes_done = offset
        transfer.resumed = offset > 0
        transfer.window_start = offset
        transfer.idle = Deadline(self.factory.clock, self.factory.progress_window, lambda: self._idle(transfer))
        transfer.idle.start()
        transfer.move(TransferState.ACCEPTED)
        if not offset:
            self.factory.prune_partials()  # a new partial: keep their number bounded across reconnects
        if offset:
            self.session.send(format_line("ACCEPT", transfer.id, str(offset), hasher.hexdigest()))
        else:
            self.session.send(format_line("ACCEPT", transfer.id, "0"))
        log.info("accepted {id} from {peer} at offset {offset}", id=transfer.id, peer=self.session.who(), offset=offset)

    def _write_failed(self, transfer: IncomingTransfer, error: OSError) -> None:
        if transfer.state in _TAKING:
            self._cannot_save(transfer, error)

    def _cannot_save(self, transfer: IncomingTransfer, error: OSError) -> None:
        """A local write error: REJECT disk-full or write-error, delete the partial, tell the user."""
        reason = "disk-full" if error.errno in _DISK_FULL else "write-error"
        log.warn(
            "cannot save {id} from {peer}: {error}", id=transfer.id, peer=self.session.who(), error=loggable(error)
        )
        self.session.emit(PeerNotice(self.session, _notice(transfer, error)))
        self.reject(transfer, reason)

    def _backlog(self, transfer: IncomingTransfer, over: bool) -> None:
        """A writer is behind (``over``) or caught up: read the socket only while none is behind."""
        was_reading = not self._backlogged
        if over:
            self._backlogged.add(transfer)
        else:
            self._backlogged.discard(transfer)
        if was_reading and self._backlogged:
            self.session.pause_reading("disk")
        elif not was_reading and not self._backlogged:
            self.session.resume_reading("disk")

    def _not_saved(self, failure: Failure, transfer: IncomingTransfer) -> Failure | None:
        """The last writes or the fsync failed: FAIL the transfer (nothing is under the final name)."""
        error = failure.check(OSError)
        if error is None:
            return failure  # a bug: for the session's errback
        assert isinstance(failure.value, OSError)
        log.warn("cannot save {id}: {error}", id=transfer.id, error=loggable(failure.value))
        if not transfer.finished:
            self.session.emit(PeerNotice(self.session, _notice(transfer, failure.value)))
            self._fail(transfer, "disk-full" if failure.value.errno in _DISK_FULL else "write-error")
        return None

    def _check_and_place(self, sha256: str | None, transfer: IncomingTransfer, digest: str) -> Any:
        if sha256 is None or transfer.finished:
            return None  # not saved (handled), or cancelled meanwhile: the partial stays for a resume
        transfer.sha256 = sha256
        if not valid_sha256(digest) or not hmac.compare_digest(sha256, digest.lower()):
            self._fail(transfer, "hash-mismatch")
            return None
        placing = self.factory.disk().run(self.factory.downloads.place, transfer.partial, transfer.name)
        placing.addErrback(self._not_placed, transfer)
        placing.addCallback(self._placed, transfer)
        return placing  # its own bugs go on to the errback after us

    def _not_placed(self, failure: Failure, transfer: IncomingTransfer) -> Failure | None:
        if failure.check(OSError) is None:
            return failure
        log.warn("cannot put {id} in place: {error}", id=transfer.id, error=loggable(failure.value))
        if not transfer.finished:
            self._fail(transfer, "write-error")
        return None

    def _placed(self, path: str | None, transfer: IncomingTransfer) -> None:
        if path is None:
            return
        transfer.path = path
        if transfer.finished:
            return  # cancelled while it was put in place: the file is whole, but the sender hears nothing
        self.session.send(format_line("DONE", transfer.id))
        log.info("received {id} from {peer}", id=transfer.id, peer=self.session.who())
        self._end(transfer, TransferState.DONE)

    def _fail(self, transfer: IncomingTransfer, reason: str) -> None:
        self.factory.downloads.remove(transfer.partial)
        self.session.send(format_line("FAIL", transfer.id, reason))
        self._end(transfer, TransferState.FAILED, reason)

    def _idle(self, transfer: IncomingTransfer) -> None:
        """A progress window ended: enough bytes came (or we did not read), or the transfer fails."""
        if transfer.state not in _TAKING:
            return
        assert transfer.idle is not None
        factory = self.factory
        needed = min(factory.min_progress, transfer.size - transfer.window_start)
        held_back = not self.session.gate.open or (
            factory.clock.seconds() - self.session.reading_since < factory.progress_window
        )  # we were the ones not reading (disk, our output) for part of the window: not the sender's fault
        if transfer.bytes_done - transfer.window_start >= needed or held_back:
            transfer.window_start = transfer.bytes_done
            transfer.idle.start()
            return
        factory.limit_hit("peer-slow-transfer", "an accepted transfer made too little progress: failing it")
        self.session.send(format_line("FAIL", transfer.id, "data-timeout"))
        transfer.stop_io()
        transfer.kept = transfer.bytes_done  # the partial stays for a resume
        self._end(transfer, TransferState.FAILED, "data-timeout")

    def _end(self, transfer: IncomingTransfer, state: TransferState, reason: str = "") -> None:
        if transfer.idle is not None:
            transfer.idle.stop()
        transfer.move(state, reason)
        self.unfinished.discard(transfer)
        if self._target is transfer:
            self._target = None
        self.session.emit(TransferEnded(transfer))
        self.factory.transfer_finished(transfer)


def _notice(transfer: Transfer, error: OSError) -> str:
    if error.errno in _DISK_FULL:
        return f"disk full: could not save {transfer.name}; the chat goes on"
    return f"could not save {transfer.name}: {error.strerror or error}"
