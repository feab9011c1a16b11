"""The sending side of one peer session: our outgoing transfers and the rules of sending them.

:class:`Sender` owns every file we offer on a session: it numbers the offer,
answers ``ACCEPT`` (checking a resume offset against the hash of our own
prefix), feeds chunks to the session's :class:`~chatapp.peer.pump.SendPump`,
and ends transfers on ``REJECT``, ``FAIL``, ``DONE``, ``CANCEL`` or a lost
connection. It writes lines through its session and never touches the socket.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import stat
from typing import IO, TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.events import TransferEnded, TransferProgress
from chatapp.peer.names import offer_name, shorten
from chatapp.peer.pump import SendPump
from chatapp.peer.states import Direction, SessionState, TransferState
from chatapp.peer.transfer import Transfer
from chatapp.wire import fields, fields_and_rest, format_line, loggable, parse_number, valid_sha256

if TYPE_CHECKING:
    from chatapp.peer.session import PeerSession

log = Logger()

MAX_CHUNK = 1024 * 1024
DEFAULT_CHUNK = 256 * 1024
CANCEL_REASONS = frozenset({"cancelled", "read-error", "bad-offset", "stale-partial"})


class OutgoingTransfer(Transfer):
    """A file we send: its open source file, the read position and the running hash."""

    def __init__(
        self, session: PeerSession, handle: int, transfer_id: str, name: str, source: IO[bytes], size: int, path: str
    ) -> None:
        super().__init__(session, handle, transfer_id, name, size, Direction.SEND)
        self.source: IO[bytes] | None = source
        self.path = path
        self.hasher: Any = hashlib.sha256()
        self.position = 0  # next byte to read from source
        self.hashing: defer.Deferred[Any] | None = None  # hashing the prefix the receiver claims to have

    def read_chunk(self, chunk_size: int) -> bytes:
        """The next chunk (hashed), b"" at the end; raises OSError (or EOFError if the file shrank)."""
        assert self.source is not None
        want = min(chunk_size, self.size - self.position)
        if want <= 0:
            return b""
        data = self.source.read(want)
        if not data:
            raise EOFError("file shrank while sending")
        self.hasher.update(data)
        self.position += len(data)
        return data

    def close_source(self) -> None:
        if self.hashing is not None:
            hashing, self.hashing = self.hashing, None
            hashing.cancel()
        if self.source is not None:
            try:
                self.source.close()
            finally:
                self.source = None


class Sender:
    """Every transfer we send on one session, by the id we gave it (``transfers``)."""

    def __init__(self, session: PeerSession) -> None:
        self.session = session
        self.factory = session.factory
        self.transfers: dict[str, OutgoingTransfer] = {}
        self.pump = SendPump(self.factory.clock, self._send_step)
        self._next_id = 1

    # -- asked by the user ------------------------------------------------------

    def offer(self, path: str, name: str | None) -> OutgoingTransfer:
        """Open ``path`` and send OFFER; raises OSError if it cannot be opened or is not a regular file."""
        source = open(path, "rb")  # closed when the transfer ends
        try:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
        except BaseException:
            source.close()
            raise
        offered = shorten(offer_name(name if name is not None else path), 1024)
        # ids are ours to choose; a role letter keeps them apart from the ids of a peer running this code
        transfer_id = f"{self.session.role.value[0]}{self._next_id}"
        self._next_id += 1
        transfer = OutgoingTransfer(
            self.session, self.factory.new_handle(), transfer_id, offered, source, info.st_size, path
        )
        self.transfers[transfer_id] = transfer
        self.factory.add_transfer(transfer)
        self.session.send(format_line("OFFER", transfer_id, str(info.st_size), offered))
        log.info("offering {id} ({size} bytes) to {peer}", id=transfer_id, size=info.st_size, peer=self.session.who())
        return transfer

    def find(self, transfer: str | Transfer) -> OutgoingTransfer | None:
        """Our transfer named by ``transfer`` (itself, or our id), or None if it names none of ours."""
        if isinstance(transfer, Transfer):
            ours = isinstance(transfer, OutgoingTransfer) and self.transfers.get(transfer.id) is transfer
            return transfer if ours else None  # type: ignore[return-value]
        return self.transfers.get(transfer)

    def cancel(self, transfer: OutgoingTransfer, reason: str = "cancelled") -> None:
        if reason not in CANCEL_REASONS:
            raise ValueError(f"not a CANCEL reason: {reason!r}")
        if not transfer.finished:
            self._cancel(transfer, reason)

    # -- lines from the receiver -------------------------------------------------------

    def on_accept(self, args: str | None) -> None:
        parts = fields(args, 2, 1)
        transfer = self.transfers.get(parts[0])
        if transfer is None or transfer.state is not TransferState.OFFERED:
            return  # unknown or finished: crossed in flight
        offset = parse_number(parts[1])
        if offset > transfer.size:
            self._cancel(transfer, "bad-offset")
            return
        claimed = parts[2].lower() if len(parts) == 3 else ""
        if offset and not valid_sha256(claimed):
            self._cancel(transfer, "stale-partial")
            return
        transfer.offset = offset
        transfer.resumed = offset > 0
        transfer.move(TransferState.ACCEPTED)
        assert transfer.source is not None
        hashing = transfer.hashing = self.factory.hash_source(transfer.source, offset)
        # the errback first: it only sees read errors; the callback's own bugs go to the session
        hashing.addErrback(self._unreadable, transfer)
        hashing.addCallback(self._prefix_hashed, transfer, claimed)
        hashing.addErrback(self.session.fail_inside, "starting a send")

    def _unreadable(self, failure: Failure, transfer: OutgoingTransfer) -> None:
        transfer.hashing = None
        if not failure.check(defer.CancelledError) and not transfer.finished:
            log.info("cannot read {path}: {error}", path=loggable(transfer.path), error=loggable(failure.value))
            self._cancel(transfer, "read-error")

    def _prefix_hashed(self, hasher: Any, transfer: OutgoingTransfer, claimed: str) -> None:
        transfer.hashing = None
        if hasher is None or transfer.finished:
            return  # unreadable (handled) or ended meanwhile
        offset = transfer.offset
        if offset and not hmac.compare_digest(hasher.hexdigest(), claimed):
            self._cancel(transfer, "stale-partial")
            return
        transfer.hasher = hasher
        transfer.position = transfer.bytes_done = offset
        if offset == transfer.size:
            self._send_end(transfer)
        else:
            transfer.move(TransferState.SENDING)
            self.pump.add(transfer)

    def on_reject(self, args: str | None) -> None:
        (transfer_id,), reason = fields_and_rest(args, 1)
        transfer = self._answered(transfer_id)
        if transfer is not None:
            self._stop(transfer, TransferState.REJECTED, reason)

    def on_fail(self, args: str | None) -> None:
        (transfer_id,), reason = fields_and_rest(args, 1)
        transfer = self._answered(transfer_id)
        if transfer is not None:
            self._stop(transfer, TransferState.FAILED, reason)

    def on_done(self, args: str | None) -> None:
        (transfer_id,) = fields(args, 1)
        transfer = self._answered(transfer_id)
        if transfer is not None and transfer.state is TransferState.ENDED:
            self._end(transfer, TransferState.DONE)

    def connection_lost(self, reason: str) -> None:
        """The connection is gone: every unfinished send ends as cancelled with the session's reason."""
        self.pump.stopProducing()
        for transfer in self.transfers.values():
            if not transfer.finished:
                transfer.close_source()
                self._end(transfer, TransferState.CANCELLED, reason)

    # -- inside ---------------------------------------------------------------------

    def _answered(self, transfer_id: str) -> OutgoingTransfer | None:
        transfer = self.transfers.get(transfer_id)
        if transfer is None or transfer.finished:
            return None  # unknown or finished: replies cross in flight
        return transfer

    def _send_step(self, transfer: OutgoingTransfer) -> bool:
        """Send one chunk of ``transfer`` (and END after the last); True if more is to come."""
        if transfer.state is not TransferState.SENDING or self.session.state is not SessionState.OPEN:
            return False
        try:
            data = transfer.read_chunk(self.factory.chunk_size)
        except (OSError, EOFError) as e:
            log.info("cannot read {path}: {error}", path=loggable(transfer.path), error=loggable(e))
            self._cancel(transfer, "read-error")
            return False
        # One write for header and bytes: one TLS record run instead of a tiny record of its own, and
        # the transport sends them together (the copy costs less than the extra record and send()).
        self.session.send(b"DATA %s %d\r\n" % (transfer.id.encode("ascii"), len(data)) + data)
        if transfer.count(len(data), self.factory.clock.seconds()):
            self.session.emit(TransferProgress(transfer))
        if transfer.position < transfer.size:
            return True
        self._send_end(transfer)
        return False

    def _send_end(self, transfer: OutgoingTransfer) -> None:
        transfer.sha256 = transfer.hasher.hexdigest()
        self.session.send(format_line("END", transfer.id, transfer.sha256))
        transfer.move(TransferState.ENDED)
        transfer.close_source()

    def _cancel(self, transfer: OutgoingTransfer, reason: str) -> None:
        self.session.send(format_line("CANCEL", transfer.id, reason))
        self._stop(transfer, TransferState.CANCELLED, reason)

    def _stop(self, transfer: OutgoingTransfer, state: TransferState, reason: str) -> None:
        self.pump.discard(transfer)
        transfer.close_source()
        self._end(transfer, state, reason)

    def _end(self, transfer: OutgoingTransfer, state: TransferState, reason: str = "") -> None:
        transfer.move(state, reason)
        self.session.emit(TransferEnded(transfer))
        self.factory.transfer_finished(transfer)

    def forget(self, transfer: OutgoingTransfer) -> None:
        """Drop a finished transfer from the history (the factory keeps only the last few)."""
        if self.transfers.get(transfer.id) is transfer:
            del self.transfers[transfer.id]
