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
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

import chatapp.peer.chat as chat
from chatapp.addresses import counted_as
from chatapp.events import ChatEvent
from chatapp.peer.chat import split_message
from chatapp.peer.deadline import Deadline
from chatapp.peer.errors import HandshakeFailed, ProtocolError
from chatapp.peer.files import FileCommands
from chatapp.peer.flow import SessionFlow
from chatapp.peer.framing import TOO_LONG, Framer, Line, Raw
from chatapp.peer.handshake import Handshake
from chatapp.peer.receiver import Receiver
from chatapp.peer.sender import Sender
from chatapp.peer.socket_options import bound_queues
from chatapp.peer.states import Role, SessionState, session_move
from chatapp.tls.transports import inner_transport
from chatapp.wire import (
    PEER_MAX_LINE,
    UNANSWERED,
    WireError,
    decode_line,
    escape_for_terminal,
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
# Lines and DATA pieces handled per slice: past it, reading pauses until the next reactor turn, so a peer
# sending many tiny items (a 256 KiB read holds ~23k one-byte DATA chunks) cannot keep other sessions
# waiting. Its total cost stays proportional to what it sends, as for any traffic; only the wait of the others
# needed bounding, so there is no separate rule for tiny chunks.
WORK_BUDGET = 1000
_LIVE = (SessionState.HANDSHAKING, SessionState.VERIFYING, SessionState.OPEN)


@implementer(IHandshakeListener)
class PeerSession(FileCommands, Protocol):
    """One peer connection. Use the public methods from the reactor thread only."""

    factory: PeerFactory

    def __init__(
        self,
        factory: PeerFactory,
        role: Role,
        target: str | None = None,
        token: str | None = None,
        proof: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.factory = factory
        self.role = role
        self.state = SessionState.HANDSHAKING
        self.peer_name: str | None = target  # as the peer spells it once open; the target until then
        self.close_reason = ""
        self.opened_at: float | None = None  # when the handshake finished (factory clock)
        self.sender = Sender(self)
        self.receiver = Receiver(self)
        self.framer = Framer(PEER_MAX_LINE)
        self.handshake = Handshake(self, token, proof, fingerprint)
        self.refused_keys: tuple[str, str] | tuple[()] = ()  # (expected, offered) of a key refusal
        # A DATA chunk must arrive whole in time: until its bytes are in, no line can be read on this
        # connection, so a peer trickling them would hold it (and its file) hostage for ever.
        self.data_deadline = Deadline(factory.clock, factory.data_timeout, self._data_timed_out)
        flow = SessionFlow(self, factory.chunk_size)
        self.watch, self.gate = flow.watch, flow.gate
        self._draining = False
        self._next_slice: IDelayedCall | None = None  # the reactor turn where reading goes on past the budget
        self.handshake_key = ""  # the source (as counted: source_key) whose handshake slot this listener holds
        self.tls_done = False  # the TLS handshake finished (handshakeCompleted)
        self.tls_key: str | None = None  # a listener's: the fingerprint of the caller's certificate
        self.source_key = ""  # the peer's address (an IPv6 one: its /64), as per-address limits count it
        now = factory.clock.seconds()
        self.last_heard = now  # when a byte last came in
        self.last_active = now  # when chat or file traffic (not PING/PONG) last went either way
        self.reading_since = now  # when we last resumed reading after holding the peer back (disk, output)
        self.keepalive = Deadline(factory.clock, factory.keepalive_interval, self._keepalive)
        self._open_waiters: list[defer.Deferred[PeerSession]] = []
        self._closed_waiters: list[defer.Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<PeerSession {self.role.value} {self.peer_name!r} {self.state.value}>"

    # -- public API ---------------------------------------------------------

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
        self.last_active = self.factory.clock.seconds()
        for piece in pieces:
            self.send(format_line("MSG", piece))
        return len(pieces)

    def ping(self) -> None:
        self._require_open()
        self.send(format_line("PING"))

    def close(self, reason: str = "closed") -> None:
        """Say BYE (if open) and close; open transfers end as cancelled."""
        if self.state is SessionState.OPEN:
            self.send(format_line("BYE"))
        self.lose(reason)

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
        self.reading_since = self.factory.clock.seconds()
        self.gate.release(reason)

    @property
    def live(self) -> bool:
        """Connected and not closing: lines may still be read and written."""
        return self.state in _LIVE

    def who(self) -> str:
        """The peer's name for a log line (escaped)."""
        return escape_for_terminal(self.peer_name or "?")

    # -- connection life ------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport  # the TLS transport (a TCP one in unit tests): also an IConsumer
        socket: Any = inner_transport(transport)
        if hasattr(socket, "setTcpNoDelay"):
            socket.setTcpNoDelay(True)  # small lines both ways: no waiting for delayed ACKs
        if isinstance(getattr(socket, "bufferSize", None), int):
            socket.bufferSize = HANDSHAKE_RECEIVE_SIZE  # this connection only; RECEIVE_SIZE once open
        transport.registerProducer(self.watch, True)
        self.source_key = counted_as(_host(transport))
        if not self.factory.session_connected(self, self.source_key):
            self.lose("too-many-sessions", abort=True)
            return
        if self.role is Role.LISTENER and not self.factory.handshake_started(self, self.source_key):
            self.lose("too-many-handshakes")
            return
        self.handshake.start()

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done (``IHandshakeListener``): the connector may check the key and say HELLO."""
        self.tls_done = True
        if self.role is Role.LISTENER:
            try:
                self.tls_key = self.factory.peer_key(self)  # who it is, should it leave before HELLO
            except (ValueError, TypeError):  # no certificate: nobody to tell of (the key check refuses it)
                self.tls_key = None
        self.handshake.secured()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.state is SessionState.CLOSED:
            return
        left_unheard = self.state is SessionState.HANDSHAKING and self.tls_key is not None
        self.close_reason = self.close_reason or "connection-lost"
        self.move(SessionState.CLOSED)
        if left_unheard:
            self.factory.left_unheard(self)
        self.handshake.done()
        self.data_deadline.stop()
        self.keepalive.stop()
        if self._next_slice is not None and self._next_slice.active():
            self._next_slice.cancel()
        self.sender.connection_lost(self.close_reason)
        self.receiver.connection_lost(self.close_reason)
        self.factory.session_closed(self)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.errback(HandshakeFailed(self.close_reason, *self.refused_keys))
        self.factory.prune_partials()
        closed, self._closed_waiters = self._closed_waiters, []
        for waiter in closed:
            waiter.callback(None)

    def move(self, new: SessionState) -> None:
        self.state = session_move(self.state, new)

    def lose(self, reason: str, abort: bool = False) -> None:
        """Close the connection without a word (``abort``: at once, dropping unsent output)."""
        if self.state not in _LIVE:
            return
        self.move(SessionState.CLOSING)
        self.close_reason = reason
        self.factory.session_closing(self)
        transport: Any = self.transport
        if transport is not None:
            if abort and hasattr(transport, "abortConnection"):
                transport.abortConnection()
            else:
                transport.unregisterProducer()  # TLS sends its close alert only once no producer is registered
                transport.loseConnection()

    # -- bytes in -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state not in _LIVE:
            return
        self.last_heard = self.factory.clock.seconds()
        self.framer.feed(data)
        self.drain()

    def drain(self) -> None:
        """Take lines and DATA bytes from the framer while the gate is open (what is left waits for it)."""
        if self._draining:
            return  # called back from inside the loop below: it goes on by itself
        self._draining = True
        try:
            self._take_items()
        finally:
            self._draining = False

    def _take_items(self) -> None:
        framer = self.framer
        budget = self.factory.work_budget
        while self.state in _LIVE and self.gate.open:
            if budget <= 0:
                self.gate.close("budget")  # the rest on a later turn: other sessions are served meanwhile
                self._next_slice = self.factory.clock.callLater(0, self._go_on)
                return
            budget -= 1
            item = framer.next()
            if item is None:
                return
            if isinstance(item, Raw):
                self.last_active = self.last_heard
                self.receiver.on_bytes(item.data)
                if item.last:
                    self.data_deadline.stop()
            elif isinstance(item, Line):
                self._line_received(item.data)
            elif item is TOO_LONG:
                self.send(format_error(413, "line-too-long", f"lines are at most {PEER_MAX_LINE} bytes"))
                self.lose("line-too-long")

    def _go_on(self) -> None:
        self._next_slice = None
        self.gate.release("budget")

    def _line_received(self, raw: bytes) -> None:
        if not raw:
            return
        if self.state is not SessionState.OPEN:
            self.handshake.line(raw)
            return
        try:
            line = decode_line(raw)
            verb, args = split_verb(line)
            if verb in UNANSWERED:
                if verb == "ERR":
                    log.info("peer {peer} said {line}", peer=self.who(), line=escape_for_terminal(line))
                return
            if verb not in ("PING", "PONG"):
                self.last_active = self.last_heard
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
            self.lose("protocol-error")

    def _data(self, args: str | None) -> None:
        self.framer.expect_raw(self.receiver.on_data(args))
        self.data_deadline.start()

    def _keepalive(self) -> None:
        """Every ``keepalive_interval`` while open: PING a quiet peer; close one silent for too long."""
        if self.state is not SessionState.OPEN:
            return
        silent = self.factory.clock.seconds() - self.last_heard
        if silent >= self.factory.session_idle_timeout:
            self.factory.limit_hit("peer-session-idle", "a peer session heard nothing for too long: closing it")
            self.close("idle-timeout")
            return
        if silent >= self.factory.keepalive_interval:
            self.send(format_line("PING"))
        self.keepalive.start()

    def _data_timed_out(self) -> None:
        log.info("{peer} sent a DATA chunk too slowly: closing", peer=self.who())
        self.lose("data-timeout")  # a cut, not a protocol error: partial files are kept for resume

    def opened(self) -> None:
        """The handshake succeeded: the chat is open."""
        self.move(SessionState.OPEN)
        self.handshake.done()
        socket: Any = inner_transport(self.transport)
        if isinstance(getattr(socket, "bufferSize", None), int):
            socket.bufferSize = RECEIVE_SIZE
        bound_queues(socket)
        log.info("peer session with {peer} open ({role})", peer=self.who(), role=self.role.value)
        self.opened_at = self.last_active = self.factory.clock.seconds()
        self.keepalive.start()
        contacts, key = self.factory.contacts, self.handshake.key
        if contacts is not None and key is not None and self.peer_name is not None:
            contacts.seen(self.peer_name, key)
        self.factory.session_opened(self)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(self)

    _handlers: dict[str, Callable[[PeerSession, str | None], None]] = {
        "MSG": chat.on_msg,
        "PING": chat.on_ping,
        "PONG": chat.on_pong,
        "BYE": chat.on_bye,
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
