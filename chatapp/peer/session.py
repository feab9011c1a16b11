"""One peer connection (PROTOCOL.md section 3): handshake, chat, and both directions of file transfer.

A :class:`PeerSession` is the Twisted protocol of one connection, in either
role: the *listener* (it accepted the connection and verifies the token) or the
*connector* (it dialled out with a token from ``OK CONNECT``). Its state is
``HANDSHAKING -> OPEN -> CLOSED`` (:mod:`chatapp.peer.states`).
"""

from __future__ import annotations

import enum
import errno
import hmac
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp import PROTOCOL_VERSION
from chatapp.peer.errors import HandshakeFailed, PeerError, ProtocolError, VerifyRejected
from chatapp.peer.framing import TOO_LONG, Framer, Line, Raw
from chatapp.peer.hashing import hash_prefix
from chatapp.peer.names import clean_name, offer_name, partial_key, shorten
from chatapp.peer.receiver import IncomingTransfer
from chatapp.peer.sender import MAX_CHUNK, OutgoingTransfer, SendPump
from chatapp.peer.states import Direction, SessionState, TransferState, session_move
from chatapp.peer.transfer import Transfer
from chatapp.wire import (
    PEER_MAX_LINE,
    BadArguments,
    WireError,
    decode_line,
    escape_for_terminal,
    fields,
    fields_and_rest,
    fold_name,
    format_error,
    format_line,
    is_number,
    parse_number,
    split_verb,
    valid_sha256,
    valid_urlsafe,
    valid_username,
)

if TYPE_CHECKING:
    from chatapp.peer.factory import PeerFactory

log = Logger()

MAX_ID = 32
REJECT_REASONS = frozenset(
    {"declined", "too-large", "bad-name", "bad-offer", "busy", "disk-full", "write-error", "cancelled"}
)
CANCEL_REASONS = frozenset({"cancelled", "read-error", "bad-offset", "stale-partial"})
_MSG_ROOM = PEER_MAX_LINE - len("MSG ")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# Bytes a TCP transport reads per recv() (Twisted's default is 64 KiB). Larger reads mean fewer
# dataReceived calls per chunk; the framer hands them on uncopied (bench/RESULTS-transfer.md).
# It is also the transport's write high-water mark: a sender pauses after each 256 KiB chunk, as
# before (at 1 MiB it queued four chunks and Twisted re-joined them on every write: slower).
RECEIVE_SIZE = 256 * 1024


class Role(enum.Enum):
    LISTENER = "listener"  # accepted the connection; verifies the token
    CONNECTOR = "connector"  # dialled out after OK CONNECT


def valid_id(text: str) -> bool:
    return valid_urlsafe(text, MAX_ID)


def split_message(text: str) -> list[str]:
    """Split chat text into MSG payloads: one per line, each at most one peer line long, empties dropped."""
    pieces: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        while line:
            head = line.encode("utf-8")[:_MSG_ROOM].decode("utf-8", errors="ignore")
            pieces.append(head)
            line = line[len(head) :]
    return pieces


class PeerSession(Protocol):
    """One peer connection. Use the public methods from the reactor thread only."""

    factory: PeerFactory

    def __init__(
        self,
        factory: PeerFactory,
        role: Role,
        target: str | None = None,
        token: str | None = None,
        proof: str | None = None,
    ) -> None:
        self.factory = factory
        self.role = role
        self.state = SessionState.HANDSHAKING
        self.peer_name: str | None = target  # as the peer spells it once open; the target until then
        self.close_reason = ""
        self.outgoing: dict[str, OutgoingTransfer] = {}
        self.incoming: dict[str, IncomingTransfer] = {}
        self._token = token
        self._proof = proof
        self._hello_seen = False
        self._closing = False
        self._framer = Framer(PEER_MAX_LINE)
        self._raw_target: IncomingTransfer | None = None
        self._dropped_ids: set[str] = set()  # incoming ids refused before a transfer existed
        self._next_id = 1
        self._timer: IDelayedCall | None = None
        self._data_timer: IDelayedCall | None = None  # the deadline of the DATA chunk being read
        self._pump = SendPump(factory.clock, self._send_step)
        self._was_open = False
        self.opened_at: float | None = None  # when the handshake finished (factory clock)
        self._open_waiters: list[defer.Deferred[PeerSession]] = []

    def __repr__(self) -> str:
        return f"<PeerSession {self.role.value} {self.peer_name!r} {self.state.value}>"

    # -- public API ---------------------------------------------------------

    @property
    def transfers(self) -> list[Transfer]:
        """All transfers of this session, both directions, finished ones included."""
        return [*self.outgoing.values(), *self.incoming.values()]

    def when_open(self) -> defer.Deferred[PeerSession]:
        """Fires with this session once the handshake succeeded; fails with HandshakeFailed otherwise."""
        d: defer.Deferred[PeerSession] = defer.Deferred()
        if self.state is SessionState.HANDSHAKING:
            self._open_waiters.append(d)
        elif self.state is SessionState.OPEN or self._was_open:
            d.callback(self)
        else:
            d.errback(HandshakeFailed(self.close_reason or "closed"))
        return d

    def send_message(self, text: str) -> int:
        """Send chat text (split into several MSG lines if long or multi-line); return the number of lines."""
        self._require_open()
        pieces = split_message(text)
        for piece in pieces:
            self._send(format_line("MSG", piece))
        return len(pieces)

    def ping(self) -> None:
        self._require_open()
        self._send(format_line("PING"))

    def send_file(self, path: str, name: str | None = None) -> OutgoingTransfer:
        """Offer the file at ``path`` (as ``name``, default its base name); sending starts on ACCEPT.

        Raises OSError if the file cannot be opened or is not a regular file.
        """
        self._require_open()
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
        transfer_id = f"{'c' if self.role is Role.CONNECTOR else 'l'}{self._next_id}"
        self._next_id += 1
        transfer = OutgoingTransfer(self, transfer_id, offered, source, info.st_size, path)
        self.outgoing[transfer_id] = transfer
        self._send(format_line("OFFER", transfer_id, str(info.st_size), offered))
        log.info(
            "offering {id} ({size} bytes) to {peer}", id=transfer_id, size=info.st_size, peer=self._peer_for_log()
        )
        return transfer

    def accept(self, transfer_id: str | Transfer) -> None:
        """Accept an incoming offer (resuming from a kept partial copy if there is one)."""
        transfer = self._incoming_offer(_id_of(transfer_id))
        downloads = self.factory.downloads
        try:
            downloads.ensure()
            kept = downloads.kept_size(transfer.partial)
        except OSError as e:
            self._receiver_failed(transfer, e)
            return
        transfer.move(TransferState.ACCEPTED)
        if kept is not None and kept > transfer.size:
            downloads.remove(transfer.partial)
            kept = None
        if not kept:
            self._start_receiving(transfer, 0, None)
            return
        try:
            source = os.fdopen(downloads.open_read(transfer.partial), "rb")
        except OSError:
            downloads.remove(transfer.partial)
            self._start_receiving(transfer, 0, None)
            return
        transfer.preparing = hash_prefix(self.factory.clock, source, kept)

        def hashed(hasher: Any) -> None:
            source.close()
            transfer.preparing = None
            self._start_receiving(transfer, kept, hasher)

        def unhashable(failure: Failure) -> None:
            source.close()
            transfer.preparing = None
            if failure.check(defer.CancelledError):
                return
            downloads.remove(transfer.partial)
            self._start_receiving(transfer, 0, None)

        transfer.preparing.addCallbacks(hashed, unhashable)

    def reject(self, transfer_id: str | Transfer, reason: str = "declined") -> None:
        """Refuse an incoming offer, or stop an incoming transfer under way; its partial file is deleted."""
        transfer_id = _id_of(transfer_id)
        if reason not in REJECT_REASONS:
            raise ValueError(f"not a REJECT reason: {reason!r}")
        transfer = self.incoming.get(transfer_id)
        if transfer is None:
            raise KeyError(transfer_id)
        if transfer.finished:
            return
        self._send(format_line("REJECT", transfer_id, reason))
        transfer.close_file()
        self.factory.downloads.remove(transfer.partial)
        self._end(transfer, TransferState.REJECTED, reason)

    def cancel(self, transfer: str | Transfer, reason: str = "cancelled") -> None:
        """Stop a transfer: ``CANCEL`` for one we send, ``REJECT <id> cancelled`` for one we receive.

        Ids are chosen by each sender, so an id may name one transfer each way:
        pass the :class:`Transfer` to be exact; a bare id means ours if we send one by that id.
        """
        if isinstance(transfer, Transfer):
            if transfer.direction is Direction.RECEIVE:
                self.reject(transfer.id, "cancelled")
                return
            transfer_id = transfer.id
        else:
            transfer_id = transfer
            if transfer_id in self.incoming and transfer_id not in self.outgoing:
                self.reject(transfer_id, "cancelled")
                return
        if reason not in CANCEL_REASONS:
            raise ValueError(f"not a CANCEL reason: {reason!r}")
        outgoing = self.outgoing.get(transfer_id)
        if outgoing is None:
            raise KeyError(transfer_id)
        if outgoing.finished:
            return
        self._cancel_outgoing(outgoing, reason)

    def close(self, reason: str = "closed") -> None:
        """Say BYE (if open) and close; open transfers end as cancelled."""
        if self._closing:
            return
        if self.state is SessionState.OPEN:
            self._send(format_line("BYE"))
        self._close(reason)

    def replace(self) -> None:
        """Called by the factory when a newer session with the same peer opened: BYE and close."""
        self.close("replaced")

    # -- connection life ------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport  # a TCP (or TLS) transport: also an IConsumer
        if isinstance(getattr(transport, "bufferSize", None), int):
            transport.bufferSize = RECEIVE_SIZE  # this connection only
        transport.registerProducer(self._pump, True)
        self.factory.session_connected(self)
        if self.role is Role.LISTENER and not self.factory.handshake_started(self):
            log.info("too many handshakes in progress: closing a new connection")
            self._close("too-many-handshakes")
            return
        self._timer = self.factory.clock.callLater(self.factory.handshake_timeout, self._handshake_timed_out)
        if self.role is Role.CONNECTOR:
            assert self.peer_name is not None and self._token is not None
            self._send(format_line("HELLO", PROTOCOL_VERSION, self.factory.me, self._token))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.state is SessionState.CLOSED:
            return
        was = self.state
        self._closing = True
        self.close_reason = self.close_reason or "connection-lost"
        self.state = session_move(self.state, SessionState.CLOSED)
        for timer in (self._timer, self._data_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._data_timer = None
        self._pump.stopProducing()
        for transfer in self.transfers:
            if transfer.finished:
                continue
            if isinstance(transfer, IncomingTransfer):
                transfer.close_file()  # the partial is kept for a later resume
            elif isinstance(transfer, OutgoingTransfer):
                transfer.close_source()
            self._end(transfer, TransferState.CANCELLED, self.close_reason)
        self.factory.session_closed(self, was)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.errback(HandshakeFailed(self.close_reason))
        self.factory.prune_partials()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.state is SessionState.HANDSHAKING and not self._closing:
            log.info("peer handshake timed out")
            self._close("handshake-timeout")

    def _send(self, line: bytes) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(line)

    def _close(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        if self.transport is not None:
            self.transport.loseConnection()

    def _require_open(self) -> None:
        if self.state is not SessionState.OPEN or self._closing:
            raise PeerError("the peer session is not open")

    def _peer_for_log(self) -> str:
        return escape_for_terminal(self.peer_name or "?")

    def _emit(self, name: str, *args: Any) -> None:
        try:
            getattr(self.factory.events, name)(*args)
        except Exception:
            log.failure("event handler {name} failed", name=name)

    # -- bytes in -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        framer = self._framer
        framer.feed(data)
        while not self._closing:
            item = framer.next()
            if item is None:
                return
            if isinstance(item, Raw):
                self._raw_received(item.data)
                if item.last and self._data_timer is not None and self._data_timer.active():
                    self._data_timer.cancel()
            elif isinstance(item, Line):
                self._line_received(item.data)
            elif item is TOO_LONG:
                self._send(format_error(413, "line-too-long", f"lines are at most {PEER_MAX_LINE} bytes"))
                self._close("line-too-long")

    def _line_received(self, raw: bytes) -> None:
        if not raw:
            return
        if self.state is SessionState.HANDSHAKING:
            if self.role is Role.LISTENER:
                self._listener_line(raw)
            else:
                self._connector_line(raw)
            return
        try:
            line = decode_line(raw)
            verb, args = split_verb(line)
            if verb in ("OK", "ERR", "*"):
                if verb == "ERR":
                    log.info("peer {peer} said {line}", peer=self._peer_for_log(), line=escape_for_terminal(line))
                return
            handler = self._handlers.get(verb)
            if handler is None:
                raise WireError(400, "unknown-command", "unknown command")
            handler(self, args)
        except WireError as e:
            self._send(e.line())
        except ProtocolError as e:
            self._protocol_error(e)

    def _protocol_error(self, error: ProtocolError) -> None:
        log.info("protocol error from {peer}: {text}", peer=self._peer_for_log(), text=error.text)
        self._send(format_error(400, "protocol-error", error.text))
        transfer = self.incoming.get(error.transfer_id) if error.transfer_id else None
        if transfer is not None and not transfer.finished:
            transfer.close_file()
            self.factory.downloads.remove(transfer.partial)
            self._end(transfer, TransferState.CANCELLED, "protocol-error")
        self._close("protocol-error")

    # -- handshake ------------------------------------------------------------

    def _listener_line(self, raw: bytes) -> None:
        if raw.split(b" ", 1)[0].upper() in (b"OK", b"ERR", b"*"):
            self._close("not-authenticated")  # OK, ERR and * lines are never answered (section 1)
            return
        hello = None if self._hello_seen else _parse_hello(raw)
        if hello is None:
            self._send(format_error(403, "not-authenticated"))
            self._close("not-authenticated")
            return
        self._hello_seen = True
        self.peer_name, token = hello
        d = defer.maybeDeferred(self.factory.verify, token)
        d.addCallbacks(self._verified, self._verify_failed)

    def _verified(self, result: tuple[str, str]) -> None:
        if self._closing:
            return
        requester, proof = result
        assert self.peer_name is not None
        if fold_name(requester) != fold_name(self.peer_name) or not valid_urlsafe(proof):
            log.info("token was issued to someone else than {peer}", peer=self._peer_for_log())
            self._refuse(format_error(403, "bad-token"), "bad-token")
            return
        self._send(format_line("WELCOME", PROTOCOL_VERSION, self.factory.me, proof))
        self._open()

    def _verify_failed(self, failure: Failure) -> None:
        if self._closing:
            return
        if failure.check(VerifyRejected):
            self._refuse(format_error(403, "bad-token"), "bad-token")
        else:
            log.failure("could not verify a peer token", failure)
            self._refuse(format_error(503, "server-unavailable"), "server-unavailable")

    def _refuse(self, line: bytes, reason: str) -> None:
        self._send(line)
        self._close(reason)

    def _connector_line(self, raw: bytes) -> None:
        try:
            verb, args = split_verb(decode_line(raw))
            if verb == "ERR":
                parts = (args or "").split(" ")
                self._close(parts[1] if len(parts) > 1 and valid_urlsafe(parts[1], 64) else "refused")
                return
            if verb != "WELCOME":
                raise BadArguments()
            version, name, proof = fields(args, 3)
        except WireError:
            self._close("bad-welcome")
            return
        assert self.peer_name is not None and self._proof is not None
        same_name = valid_username(name) and fold_name(name) == fold_name(self.peer_name)
        same_proof = hmac.compare_digest(proof.encode("utf-8"), self._proof.encode("utf-8"))
        if version != PROTOCOL_VERSION or not same_name or not same_proof:
            log.info("bad WELCOME from the peer we called {peer}", peer=self._peer_for_log())
            self._close("bad-welcome")
            return
        self.peer_name = name
        self._open()

    def _open(self) -> None:
        self.state = session_move(self.state, SessionState.OPEN)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._token = self._proof = None
        log.info("peer session with {peer} open ({role})", peer=self._peer_for_log(), role=self.role.value)
        self._was_open = True
        self.factory.session_opened(self)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(self)

    # -- chat -----------------------------------------------------------------

    def _do_msg(self, args: str | None) -> None:
        if args:
            self._emit("message", self, args)

    def _do_ping(self, args: str | None) -> None:
        fields(args, 0)
        self._send(format_line("PONG"))

    def _do_pong(self, args: str | None) -> None:
        pass

    def _do_bye(self, args: str | None) -> None:
        self._close("bye")

    # -- files: we send ---------------------------------------------------------

    def _do_accept(self, args: str | None) -> None:
        parts = fields(args, 2, 1)
        transfer = self.outgoing.get(parts[0])
        if transfer is None or transfer.state is not TransferState.OFFERED:
            return  # unknown or finished: crossed in flight
        offset = parse_number(parts[1])
        if offset > transfer.size:
            self._cancel_outgoing(transfer, "bad-offset")
            return
        claimed = parts[2].lower() if len(parts) == 3 else None
        if offset and (claimed is None or not valid_sha256(claimed)):
            self._cancel_outgoing(transfer, "stale-partial")
            return
        transfer.move(TransferState.ACCEPTED)
        transfer.offset = offset
        assert transfer.source is not None
        transfer.hashing = hash_prefix(self.factory.clock, transfer.source, offset)

        def hashed(hasher: Any) -> None:
            transfer.hashing = None
            if transfer.finished:
                return
            if offset and not hmac.compare_digest(hasher.hexdigest(), claimed or ""):
                self._cancel_outgoing(transfer, "stale-partial")
                return
            transfer.hasher = hasher
            transfer.position = transfer.bytes_done = offset
            if offset == transfer.size:
                self._send_end(transfer)
            else:
                transfer.move(TransferState.SENDING)
                self._pump.add(transfer)

        def unreadable(failure: Failure) -> None:
            transfer.hashing = None
            if not failure.check(defer.CancelledError) and not transfer.finished:
                log.info("cannot read {path}: {error}", path=_safe(transfer.path), error=_safe(failure.value))
                self._cancel_outgoing(transfer, "read-error")

        transfer.hashing.addCallbacks(hashed, unreadable)

    def _send_step(self, transfer: OutgoingTransfer) -> bool:
        """Send one chunk of ``transfer`` (and END after the last); True if more is to come."""
        if transfer.state is not TransferState.SENDING or self._closing:
            return False
        try:
            data = transfer.read_chunk(self.factory.chunk_size)
        except (OSError, EOFError) as e:
            log.info("cannot read {path}: {error}", path=_safe(transfer.path), error=_safe(e))
            self._cancel_outgoing(transfer, "read-error")
            return False
        self._send(b"DATA %s %d\r\n" % (transfer.id.encode("ascii"), len(data)))
        self._send(data)
        if transfer.count(len(data), self.factory.clock.seconds()):
            self._emit("transfer_progress", transfer)
        if transfer.position < transfer.size:
            return True
        self._send_end(transfer)
        return False

    def _send_end(self, transfer: OutgoingTransfer) -> None:
        transfer.sha256 = transfer.hasher.hexdigest()
        self._send(format_line("END", transfer.id, transfer.sha256))
        transfer.move(TransferState.ENDED)
        transfer.close_source()

    def _cancel_outgoing(self, transfer: OutgoingTransfer, reason: str) -> None:
        self._send(format_line("CANCEL", transfer.id, reason))
        self._stop_outgoing(transfer, TransferState.CANCELLED, reason)

    def _stop_outgoing(self, transfer: OutgoingTransfer, state: TransferState, reason: str) -> None:
        self._pump.discard(transfer)
        transfer.close_source()
        self._end(transfer, state, reason)

    def _reply_transfer(self, transfer_id: str) -> OutgoingTransfer | None:
        transfer = self.outgoing.get(transfer_id)
        if transfer is None or transfer.finished:
            return None  # unknown or finished: replies cross in flight
        return transfer

    def _do_reject(self, args: str | None) -> None:
        (transfer_id,), reason = fields_and_rest(args, 1)
        transfer = self._reply_transfer(transfer_id)
        if transfer is not None:
            self._stop_outgoing(transfer, TransferState.REJECTED, reason)

    def _do_fail(self, args: str | None) -> None:
        (transfer_id,), reason = fields_and_rest(args, 1)
        transfer = self._reply_transfer(transfer_id)
        if transfer is not None:
            self._stop_outgoing(transfer, TransferState.FAILED, reason)

    def _do_done(self, args: str | None) -> None:
        (transfer_id,) = fields(args, 1)
        transfer = self._reply_transfer(transfer_id)
        if transfer is not None and transfer.state is TransferState.ENDED:
            self._end(transfer, TransferState.DONE)

    # -- files: we receive --------------------------------------------------------

    def _do_offer(self, args: str | None) -> None:
        if args is None:
            raise BadArguments()
        parts = args.split(" ", 2)
        transfer_id = parts[0]
        if not valid_id(transfer_id):
            raise BadArguments("transfer ids are 1-32 of A-Z a-z 0-9 _ -")
        if transfer_id in self.incoming or transfer_id in self._dropped_ids:
            self._send(format_line("REJECT", transfer_id, "bad-offer"))  # ids are never reused
            return
        if len(parts) != 3 or not is_number(parts[1]) or not parts[2]:
            self._refuse_offer(transfer_id, "bad-offer")
            return
        size, offered = int(parts[1]), parts[2]
        name = clean_name(offered)
        if name is None:
            self._refuse_offer(transfer_id, "bad-name")
            return
        if size > self.factory.max_file_size:
            self._refuse_offer(transfer_id, "too-large")
            return
        assert self.peer_name is not None
        partial = self.factory.downloads.partial_path(partial_key(self.peer_name, name, size))
        waiting = sum(1 for t in self.incoming.values() if t.state is TransferState.OFFERED)
        if waiting >= self.factory.max_open_offers or self.factory.partial_in_use(partial):
            self._refuse_offer(transfer_id, "busy")
            return
        transfer = IncomingTransfer(self, transfer_id, offered, name, size, partial)
        self.incoming[transfer_id] = transfer
        log.info("{peer} offers {id}: {size} bytes", peer=self._peer_for_log(), id=transfer_id, size=size)
        self._emit("offer", self, transfer)
        if transfer.state is TransferState.OFFERED and not self._closing and self.factory.should_accept(transfer):
            self.accept(transfer_id)

    def _refuse_offer(self, transfer_id: str, reason: str) -> None:
        self._dropped_ids.add(transfer_id)
        self._send(format_line("REJECT", transfer_id, reason))

    def _incoming_offer(self, transfer_id: str) -> IncomingTransfer:
        transfer = self.incoming.get(transfer_id)
        if transfer is None:
            raise KeyError(transfer_id)
        if transfer.state is not TransferState.OFFERED:
            raise PeerError(f"transfer {transfer_id} is {transfer.state.value}, not offered")
        self._require_open()
        return transfer

    def _start_receiving(self, transfer: IncomingTransfer, offset: int, hasher: Any) -> None:
        if transfer.finished or self._closing:
            return
        try:
            transfer.open(self.factory.downloads, offset)
        except OSError as e:
            if offset:  # the kept partial changed under us: start over
                self._start_receiving(transfer, 0, None)
                return
            self._receiver_failed(transfer, e)
            return
        if hasher is not None:
            transfer.hasher = hasher
        transfer.offset = transfer.bytes_done = offset
        transfer.ready = True
        if offset:
            self._send(format_line("ACCEPT", transfer.id, str(offset), transfer.hasher.hexdigest()))
        else:
            self._send(format_line("ACCEPT", transfer.id, "0"))
        log.info(
            "accepted {id} from {peer} at offset {offset}", id=transfer.id, peer=self._peer_for_log(), offset=offset
        )

    def _receiver_failed(self, transfer: IncomingTransfer, error: OSError) -> None:
        """A local write error: REJECT disk-full or write-error, delete the partial, tell the user."""
        reason = "disk-full" if error.errno in _DISK_FULL else "write-error"
        log.warn("cannot save {id} from {peer}: {error}", id=transfer.id, peer=self._peer_for_log(), error=_safe(error))
        if reason == "disk-full":
            self._emit("notice", self, f"disk full: could not save {transfer.name}; the chat goes on")
        else:
            self._emit("notice", self, f"could not save {transfer.name}: {error.strerror or error}")
        self.reject(transfer.id, reason)

    def _do_data(self, args: str | None) -> None:
        try:
            transfer_id, count_text = fields(args, 2)
            count = parse_number(count_text)
        except WireError:
            raise ProtocolError("malformed DATA") from None
        if not valid_id(transfer_id) or not 1 <= count <= MAX_CHUNK:
            raise ProtocolError("malformed DATA")
        transfer = self.incoming.get(transfer_id)
        if transfer_id in self._dropped_ids or (
            transfer is not None and transfer.state in (TransferState.REJECTED, TransferState.FAILED)
        ):
            self._raw_target = None  # read and dropped
            self._expect_data(count)
            return
        if transfer is None:
            raise ProtocolError(f"DATA for unknown id {transfer_id}")
        if not transfer.ready or transfer.state not in (TransferState.ACCEPTED, TransferState.RECEIVING):
            raise ProtocolError(f"DATA for {transfer_id}, which is not accepted", transfer_id)
        if transfer.bytes_done + count > transfer.size:
            raise ProtocolError(f"DATA past the offered size of {transfer_id}", transfer_id)
        if transfer.state is TransferState.ACCEPTED:
            transfer.move(TransferState.RECEIVING)
        self._raw_target = transfer
        self._expect_data(count)

    def _expect_data(self, count: int) -> None:
        """Read the next ``count`` bytes raw, within the factory's ``data_timeout``.

        Until a chunk's bytes are in, no line can be read on this connection, so
        a peer trickling them would hold it (and its file) hostage for ever.
        """
        self._framer.expect_raw(count)
        if self._data_timer is not None and self._data_timer.active():
            self._data_timer.reset(self.factory.data_timeout)
        else:
            self._data_timer = self.factory.clock.callLater(self.factory.data_timeout, self._data_timed_out)

    def _data_timed_out(self) -> None:
        self._data_timer = None
        if not self._closing:
            log.info("{peer} sent a DATA chunk too slowly: closing", peer=self._peer_for_log())
            self._close("data-timeout")  # a cut, not a protocol error: partial files are kept for resume

    def _raw_received(self, data: bytes | memoryview) -> None:
        transfer = self._raw_target
        if transfer is None or transfer.state is not TransferState.RECEIVING:
            return
        try:
            transfer.write(self.factory.downloads, data)
        except OSError as e:
            self._receiver_failed(transfer, e)
            return
        if transfer.count(len(data), self.factory.clock.seconds()):
            self._emit("transfer_progress", transfer)

    def _do_end(self, args: str | None) -> None:
        transfer_id, digest = fields(args, 2)
        transfer = self.incoming.get(transfer_id)
        if transfer is None or not transfer.ready or transfer.state not in (
            TransferState.ACCEPTED,
            TransferState.RECEIVING,
        ):
            return  # unknown, dropped or finished
        transfer.move(TransferState.ENDED)
        transfer.close_file()
        downloads = self.factory.downloads
        if transfer.bytes_done != transfer.size:
            self._fail_incoming(transfer, "size-mismatch")
            return
        transfer.sha256 = transfer.hasher.hexdigest()
        if not valid_sha256(digest) or not hmac.compare_digest(transfer.sha256, digest.lower()):
            self._fail_incoming(transfer, "hash-mismatch")
            return
        try:
            transfer.path = downloads.place(transfer.partial, transfer.name)
        except OSError as e:
            log.warn("cannot put {id} in place: {error}", id=transfer_id, error=_safe(e))
            self._fail_incoming(transfer, "write-error")
            return
        self._send(format_line("DONE", transfer_id))
        log.info("received {id} from {peer}", id=transfer_id, peer=self._peer_for_log())
        self._end(transfer, TransferState.DONE)

    def _fail_incoming(self, transfer: IncomingTransfer, reason: str) -> None:
        self.factory.downloads.remove(transfer.partial)
        self._send(format_line("FAIL", transfer.id, reason))
        self._end(transfer, TransferState.FAILED, reason)

    def _do_cancel(self, args: str | None) -> None:
        (transfer_id,), reason = fields_and_rest(args, 1)
        transfer = self.incoming.get(transfer_id)
        if transfer is None or transfer.finished:
            return
        transfer.close_file()
        if reason == "stale-partial":
            self.factory.downloads.remove(transfer.partial)
        self._end(transfer, TransferState.CANCELLED, reason)

    # -- shared ---------------------------------------------------------------

    def _end(self, transfer: Transfer, state: TransferState, reason: str = "") -> None:
        transfer.move(state, reason)
        if self._raw_target is transfer:
            self._raw_target = None
        self._emit("transfer_ended", transfer)

    _handlers: dict[str, Callable[[PeerSession, str | None], None]] = {
        "MSG": _do_msg,
        "PING": _do_ping,
        "PONG": _do_pong,
        "BYE": _do_bye,
        "OFFER": _do_offer,
        "ACCEPT": _do_accept,
        "REJECT": _do_reject,
        "DATA": _do_data,
        "END": _do_end,
        "DONE": _do_done,
        "FAIL": _do_fail,
        "CANCEL": _do_cancel,
    }


def _id_of(transfer: str | Transfer) -> str:
    return transfer.id if isinstance(transfer, Transfer) else transfer


def _safe(value: object) -> str:
    """Text for a log line: control characters (CR, LF, ESC...) shown escaped."""
    return escape_for_terminal("" if value is None else str(value))


def _parse_hello(raw: bytes) -> tuple[str, str] | None:
    """(name, token) from a well-formed ``HELLO chatapp/1 <name> <token>``, else None."""
    try:
        verb, args = split_verb(decode_line(raw))
        if verb != "HELLO":
            return None
        version, name, token = fields(args, 3)
    except WireError:
        return None
    if version != PROTOCOL_VERSION or not valid_username(name) or not valid_urlsafe(token):
        return None
    return name, token
