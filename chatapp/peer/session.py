"""One peer connection (PROTOCOL.md section 3): framing, the handshake, chat, and dispatch to the two sides.

A :class:`PeerSession` is the Twisted protocol of one connection, in either
role: the *listener* (it accepted the connection and verifies the token) or the
*connector* (it dialled out with a token from ``OK CONNECT``). Its state is
``HANDSHAKING [-> VERIFYING] -> OPEN -> CLOSING -> CLOSED`` (:mod:`chatapp.peer.states`).
Files are the business of its :class:`~chatapp.peer.sender.Sender` (ours) and
:class:`~chatapp.peer.receiver.Receiver` (theirs); the session turns lines
into their calls and gives them a way to write lines and to emit events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp import PROTOCOL_VERSION
from chatapp.events import ChatEvent, MessageReceived
from chatapp.peer.chat import split_message
from chatapp.peer.deadline import Deadline
from chatapp.peer.errors import HandshakeFailed, PeerError, ProtocolError
from chatapp.peer.flow import OutputWatch, ReadGate
from chatapp.peer.framing import TOO_LONG, Framer, Line, Raw
from chatapp.peer.handshake import judge_token, parse_hello, read_welcome
from chatapp.peer.receiver import IncomingTransfer, Receiver
from chatapp.peer.sender import OutgoingTransfer, Sender
from chatapp.peer.states import Role, SessionState, session_move
from chatapp.peer.transfer import Transfer
from chatapp.wire import (
    PEER_MAX_LINE,
    WireError,
    decode_line,
    escape_for_terminal,
    fields,
    format_error,
    format_line,
    split_verb,
)

if TYPE_CHECKING:
    from chatapp.peer.factory import PeerFactory

log = Logger()

# Bytes a TCP transport reads per recv() (Twisted's default is 64 KiB). Larger reads mean fewer
# dataReceived calls per chunk; the framer hands them on uncopied (bench/RESULTS-transfer.md).
# It is also the transport's write high-water mark: a sender pauses after each 256 KiB chunk, as
# before (at 1 MiB it queued four chunks and Twisted re-joined them on every write: slower).
RECEIVE_SIZE = 256 * 1024
# Until the handshake is done only one short line is due: small reads then, so a stranger's bytes
# never cost a 256 KiB buffer (issue 11 item 12: fuzzed handshakes fragmented the heap).
HANDSHAKE_RECEIVE_SIZE = 4 * 1024
_LIVE = (SessionState.HANDSHAKING, SessionState.VERIFYING, SessionState.OPEN)


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
        self.opened_at: float | None = None  # when the handshake finished (factory clock)
        self.sender = Sender(self)
        self.receiver = Receiver(self)
        self._token = token
        self._proof = proof
        self._framer = Framer(PEER_MAX_LINE)
        self._handshake_deadline = Deadline(factory.clock, factory.handshake_timeout, self._handshake_timed_out)
        # A DATA chunk must arrive whole in time: until its bytes are in, no line can be read on this
        # connection, so a peer trickling them would hold it (and its file) hostage for ever.
        self._data_deadline = Deadline(factory.clock, factory.data_timeout, self._data_timed_out)
        self.watch = OutputWatch(self.sender.pump, factory.chunk_size, self._backed_up, self._output_over_limit)
        self.gate = ReadGate(self._pause_transport, self._resume_transport)
        self._draining = False
        self.handshake_address = ""  # the source address whose handshake slot this listener holds
        self._open_waiters: list[defer.Deferred[PeerSession]] = []
        self._closed_waiters: list[defer.Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<PeerSession {self.role.value} {self.peer_name!r} {self.state.value}>"

    # -- public API ---------------------------------------------------------

    @property
    def outgoing(self) -> dict[str, OutgoingTransfer]:
        """The files we send on this session, by id."""
        return self.sender.transfers

    @property
    def incoming(self) -> dict[str, IncomingTransfer]:
        """The files offered to us on this session, by the sender's id."""
        return self.receiver.transfers

    @property
    def transfers(self) -> list[Transfer]:
        """All transfers of this session, both directions, finished ones included."""
        return [*self.outgoing.values(), *self.incoming.values()]

    def when_open(self) -> defer.Deferred[PeerSession]:
        """Fires with this session once the handshake succeeded; fails with HandshakeFailed otherwise."""
        if self.opened_at is not None:
            return defer.succeed(self)
        if self.state in _LIVE:
            d: defer.Deferred[PeerSession] = defer.Deferred()
            self._open_waiters.append(d)
            return d
        return defer.fail(HandshakeFailed(self.close_reason or "closed"))

    def when_closed(self) -> defer.Deferred[None]:
        """Fires once the connection is gone (``connectionLost`` ran)."""
        if self.state is SessionState.CLOSED:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._closed_waiters.append(d)
        return d

    def send_message(self, text: str) -> int:
        """Send chat text (split into several MSG lines if long or multi-line); return the number of lines."""
        self._require_open()
        pieces = split_message(text)
        for piece in pieces:
            self.send(format_line("MSG", piece))
        return len(pieces)

    def ping(self) -> None:
        self._require_open()
        self.send(format_line("PING"))

    def send_file(self, path: str, name: str | None = None) -> OutgoingTransfer:
        """Offer the file at ``path`` (as ``name``, default its base name); sending starts on ACCEPT.

        Raises OSError if the file cannot be opened or is not a regular file.
        """
        self._require_open()
        return self.sender.offer(path, name)

    def accept(self, transfer: str | Transfer) -> None:
        """Accept an incoming offer (resuming from a kept partial copy if there is one)."""
        incoming = self.receiver.find(transfer)
        self._require_open()
        self.receiver.accept(incoming)

    def reject(self, transfer: str | Transfer, reason: str = "declined") -> None:
        """Refuse an incoming offer, or stop an incoming transfer under way; its partial file is deleted."""
        self.receiver.reject(self.receiver.find(transfer), reason)

    def cancel(self, transfer: str | Transfer, reason: str = "cancelled", discard: bool = False) -> None:
        """Stop a transfer: ``CANCEL`` for one we send, ``REJECT <id> cancelled`` for one we receive.

        A received file's partial copy is kept for a later resume unless ``discard``
        (a send ignores it). Ids are chosen by each sender, so an id may name one
        transfer each way: pass the :class:`Transfer` to be exact; a bare id means
        ours if we send one by that id.
        """
        outgoing = self.sender.find(transfer)
        if outgoing is not None:
            self.sender.cancel(outgoing, reason)
        else:
            self.receiver.cancel(self.receiver.find(transfer), discard)

    def close(self, reason: str = "closed") -> None:
        """Say BYE (if open) and close; open transfers end as cancelled."""
        if self.state is SessionState.OPEN:
            self.send(format_line("BYE"))
        self._close(reason)

    def replace(self) -> None:
        """Called by the factory when a newer session with the same peer opened: BYE and close."""
        self.close("replaced")

    # -- for the sender and the receiver ------------------------------------------

    def send(self, data: bytes) -> None:
        """Write a line (or DATA bytes) unless the session is closing."""
        if self.transport is not None and self.state in _LIVE:
            self.transport.write(data)
            self.watch.wrote(len(data))

    def emit(self, event: ChatEvent) -> None:
        """Give ``event`` to the application; if its handler raises (a bug), log it and close."""
        try:
            self.factory.emit(event)
        except Exception:
            log.failure("the application failed on {event}", event=type(event).__name__)
            self.close("internal-error")

    def fail_inside(self, failure: Failure, doing: str = "") -> None:
        """The errback after our own callbacks: a bug here is logged and closes this session."""
        log.failure("peer session failed while {doing}", failure, doing=doing or "handling an event")
        self.close("internal-error")

    def pause_reading(self, reason: str = "disk") -> None:
        """Stop reading the socket for ``reason`` (a received file waits for the disk); DATA deadlines wait too."""
        self.gate.close(reason)

    def resume_reading(self, reason: str = "disk") -> None:
        self.gate.release(reason)

    def _pause_transport(self) -> None:
        self._data_deadline.stop()
        transport: Any = self.transport
        if transport is not None and self.state in _LIVE:
            transport.pauseProducing()

    def _resume_transport(self) -> None:
        transport: Any = self.transport
        if transport is None or self.state not in _LIVE:
            return
        if self._framer.raw_left:
            self._data_deadline.start()
        transport.resumeProducing()
        self._drain()  # what was read before the pause and not yet taken

    def _backed_up(self, over: bool) -> None:
        """Our unread output passed the pause mark (``over``) or drained: stop making replies meanwhile."""
        if over:
            self.pause_reading("output")
        else:
            self.resume_reading("output")

    def _output_over_limit(self) -> None:
        if self.state not in _LIVE:
            return
        self.factory.limit_hit("peer-output", "a peer does not read what we send: closing its connection")
        self._close("output-limit", abort=True)  # a clean close would wait for it to read

    def forget(self, transfer: Transfer) -> None:
        """The factory forgot a finished transfer: so does its side."""
        if isinstance(transfer, OutgoingTransfer):
            self.sender.forget(transfer)
        elif isinstance(transfer, IncomingTransfer):
            self.receiver.forget(transfer)

    def who(self) -> str:
        """The peer's name for a log line (escaped)."""
        return escape_for_terminal(self.peer_name or "?")

    # -- connection life ------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport  # a TCP (or TLS) transport: also an IConsumer
        if isinstance(getattr(transport, "bufferSize", None), int):
            transport.bufferSize = HANDSHAKE_RECEIVE_SIZE  # this connection only; RECEIVE_SIZE once open
        transport.registerProducer(self.watch, True)
        if not self.factory.session_connected(self):
            self._close("too-many-sessions")
            return
        if self.role is Role.LISTENER and not self.factory.handshake_started(self, _host(transport)):
            self._close("too-many-handshakes")
            return
        self._handshake_deadline.start()
        if self.role is Role.CONNECTOR:
            assert self.peer_name is not None and self._token is not None
            self.send(format_line("HELLO", PROTOCOL_VERSION, self.factory.me, self._token))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.close_reason = self.close_reason or "connection-lost"
        self._move(SessionState.CLOSED)
        self._handshake_deadline.stop()
        self._data_deadline.stop()
        self.sender.connection_lost(self.close_reason)
        self.receiver.connection_lost(self.close_reason)
        self.factory.session_closed(self)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.errback(HandshakeFailed(self.close_reason))
        self.factory.prune_partials()
        closed, self._closed_waiters = self._closed_waiters, []
        for waiter in closed:
            waiter.callback(None)

    def _move(self, new: SessionState) -> None:
        self.state = session_move(self.state, new)

    def _handshake_timed_out(self) -> None:
        if self.state in (SessionState.HANDSHAKING, SessionState.VERIFYING):
            log.info("peer handshake timed out")
            self._close("handshake-timeout")

    def _close(self, reason: str, abort: bool = False) -> None:
        if self.state not in _LIVE:
            return
        self._move(SessionState.CLOSING)
        self.close_reason = reason
        transport: Any = self.transport
        if transport is not None:
            if abort and hasattr(transport, "abortConnection"):
                transport.abortConnection()
            else:
                transport.loseConnection()

    def _require_open(self) -> None:
        if self.state is not SessionState.OPEN:
            raise PeerError("the peer session is not open")

    # -- bytes in -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state not in _LIVE:
            return
        self._framer.feed(data)
        self._drain()

    def _drain(self) -> None:
        """Take lines and DATA bytes from the framer while the gate is open (what is left waits for it)."""
        if self._draining:
            return  # called back from inside the loop below: it goes on by itself
        self._draining = True
        try:
            self._take_items()
        finally:
            self._draining = False

    def _take_items(self) -> None:
        framer = self._framer
        while self.state in _LIVE and self.gate.open:
            item = framer.next()
            if item is None:
                return
            if isinstance(item, Raw):
                self.receiver.on_bytes(item.data)
                if item.last:
                    self._data_deadline.stop()
            elif isinstance(item, Line):
                self._line_received(item.data)
            elif item is TOO_LONG:
                self.send(format_error(413, "line-too-long", f"lines are at most {PEER_MAX_LINE} bytes"))
                self._close("line-too-long")

    def _line_received(self, raw: bytes) -> None:
        if not raw:
            return
        if self.state is not SessionState.OPEN:
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
                    log.info("peer {peer} said {line}", peer=self.who(), line=escape_for_terminal(line))
                return
            handler = self._handlers.get(verb)
            if handler is None:
                raise WireError(400, "unknown-command", "unknown command")
            handler(self, args)
        except WireError as e:
            self.send(e.line())
        except ProtocolError as e:
            log.info("protocol error from {peer}: {text}", peer=self.who(), text=e.text)
            self.send(format_error(400, "protocol-error", e.text))
            self.receiver.protocol_error(e.transfer_id)
            self._close("protocol-error")

    def _data(self, args: str | None) -> None:
        self._framer.expect_raw(self.receiver.on_data(args))
        self._data_deadline.start()

    def _data_timed_out(self) -> None:
        log.info("{peer} sent a DATA chunk too slowly: closing", peer=self.who())
        self._close("data-timeout")  # a cut, not a protocol error: partial files are kept for resume

    # -- handshake ------------------------------------------------------------

    def _listener_line(self, raw: bytes) -> None:
        if raw.split(b" ", 1)[0].upper() in (b"OK", b"ERR", b"*"):
            self._close("not-authenticated")  # OK, ERR and * lines are never answered (section 1)
            return
        hello = parse_hello(raw) if self.state is SessionState.HANDSHAKING else None
        if hello is None:
            self.send(format_error(403, "not-authenticated"))
            self._close("not-authenticated")
            return
        self._move(SessionState.VERIFYING)
        self.peer_name, token = hello
        judged = judge_token(self.factory.verify, token, self.peer_name, self.factory.me)
        judged.addCallback(self._judged)
        judged.addErrback(self.fail_inside, "verifying a peer")

    def _judged(self, verdict: tuple[bytes, str]) -> None:
        if self.state is not SessionState.VERIFYING:
            return  # closed meanwhile
        line, refusal = verdict
        self.send(line)
        if refusal:
            self._close(refusal)
        else:
            self._open()

    def _connector_line(self, raw: bytes) -> None:
        assert self.peer_name is not None and self._proof is not None
        name, refusal = read_welcome(raw, self.peer_name, self._proof)
        if name is None:
            if refusal == "bad-welcome":
                log.info("bad WELCOME from the peer we called {peer}", peer=self.who())
            self._close(refusal)
            return
        self.peer_name = name
        self._open()

    def _open(self) -> None:
        self._move(SessionState.OPEN)
        self._handshake_deadline.stop()
        transport: Any = self.transport
        if isinstance(getattr(transport, "bufferSize", None), int):
            transport.bufferSize = RECEIVE_SIZE
        self._token = self._proof = None
        log.info("peer session with {peer} open ({role})", peer=self.who(), role=self.role.value)
        self.opened_at = self.factory.clock.seconds()
        self.factory.session_opened(self)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(self)

    # -- chat -----------------------------------------------------------------

    def _do_msg(self, args: str | None) -> None:
        if args:
            self.emit(MessageReceived(self, args))

    def _do_ping(self, args: str | None) -> None:
        fields(args, 0)
        self.send(format_line("PONG"))

    def _do_pong(self, args: str | None) -> None:
        pass

    def _do_bye(self, args: str | None) -> None:
        self._close("bye")

    _handlers: dict[str, Callable[[PeerSession, str | None], None]] = {
        "MSG": _do_msg,
        "PING": _do_ping,
        "PONG": _do_pong,
        "BYE": _do_bye,
        "OFFER": lambda self, args: self.receiver.on_offer(args),
        "ACCEPT": lambda self, args: self.sender.on_accept(args),
        "REJECT": lambda self, args: self.sender.on_reject(args),
        "DATA": _data,
        "END": lambda self, args: self.receiver.on_end(args),
        "DONE": lambda self, args: self.sender.on_done(args),
        "FAIL": lambda self, args: self.sender.on_fail(args),
        "CANCEL": lambda self, args: self.receiver.on_cancel(args),
    }



def _host(transport: Any) -> str:
    """The peer's address (its host part), or "" if the transport cannot say."""
    try:
        return str(transport.getPeer().host)
    except Exception:
        return ""
