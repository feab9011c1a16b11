"""The client side of the server protocol (PROTOCOL.md section 2): one connection, calls as Deferreds.

:class:`ServerClientProtocol` turns each command into a line and a Deferred
that fires with the parsed ``OK`` reply or fails with the typed
:mod:`~chatapp.client.errors` exception of the ``ERR`` reply.  Replies come in
the order the commands were sent, so calls may be pipelined: the protocol
keeps a queue of the calls waiting for their replies.  Of the ``*`` lines only
``* REQUEST`` concerns the application: it becomes a
:class:`~chatapp.events.ChatRequested` given to ``emit``; ``* HELLO``, ``* BYE``
and ``* BLOCKED`` change this connection's :class:`LineState` and what its calls
and :meth:`~ServerClientProtocol.when_closed` report.

Nothing is written before the server's ``* HELLO``: calls made earlier wait
in order and go out when it arrives (or fail when ``* BLOCKED`` or ``* BYE``
comes instead).  Once logged in, the protocol sends ``PING`` every 60 seconds
and drops a connection whose previous ``PING`` is still unanswered.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatapp import PROTOCOL_VERSION
from chatapp.client.errors import (
    FIELD_COUNTS,
    OPTIONAL_FIELDS,
    Blocked,
    ChatClientError,
    ConnectionClosed,
    InvalidArgument,
    ProtocolViolation,
    server_error,
)
from chatapp.events import ChatRequested, EventSink, ignore
from chatapp.tls.fingerprint import parse_fingerprint
from chatapp.tls.transports import inner_transport
from chatapp.wire import (
    SERVER_MAX_LINE,
    LineBuffer,
    WireError,
    decode_line,
    escape_for_terminal,
    is_number,
    valid_password,
    valid_urlsafe,
    valid_username,
)

log = Logger()

T = TypeVar("T")

PING_INTERVAL = 60.0
DEFAULT_PORT = 8750

_STATES = frozenset({"online", "listening"})


# -- results ------------------------------------------------------------------


class WhoEntry(NamedTuple):
    """One row of ``WHO``: a logged-in user and whether they accept chats."""

    name: str
    state: str  # "online" or "listening"


@dataclass(frozen=True)
class PeerTicket:
    """What ``CONNECT`` returns: where the peer listens and the two secrets of the handshake (PROTOCOL.md 3.1)."""

    user: str
    host: str
    port: int
    token: str
    proof: str = field(repr=False)
    fingerprint: str = ""  # the target's key as the server vouches for it (PROTOCOL.md 4.2)


# -- connection states ------------------------------------------------------------


class LineState(enum.Enum):
    GREETING = "greeting"  # connected; calls wait (unsent) for * HELLO
    READY = "ready"  # greeted; calls go out as they are made
    QUITTING = "quitting"  # QUIT is sent or queued; no new calls; the end will be deliberate
    DROPPING = "dropping"  # we are hanging up (bad input, a refusal, a silent server); input is ignored
    CLOSED = "closed"  # the connection ended
    QUIT = "quit"  # the connection ended after our QUIT


_LINE_MOVES: dict[LineState, frozenset[LineState]] = {
    LineState.GREETING: frozenset({LineState.READY, LineState.QUITTING, LineState.DROPPING, LineState.CLOSED}),
    LineState.READY: frozenset({LineState.QUITTING, LineState.DROPPING, LineState.CLOSED}),
    LineState.QUITTING: frozenset({LineState.QUIT}),
    LineState.DROPPING: frozenset({LineState.CLOSED}),
    LineState.CLOSED: frozenset(),
    LineState.QUIT: frozenset(),
}

_LIVE = frozenset({LineState.GREETING, LineState.READY, LineState.QUITTING})


def line_move(current: LineState, new: LineState) -> LineState:
    """``new`` if the protocol may go there from ``current``; a bug (AssertionError-like) otherwise."""
    if new not in _LINE_MOVES[current]:
        raise RuntimeError(f"server connection: no move from {current.value} to {new.value}")
    return new


# -- argument checks (client side, before anything is sent) ---------------------


def check_username(user: str) -> str:
    if not isinstance(user, str) or not valid_username(user):
        raise InvalidArgument("user names are 1-32 characters of A-Z a-z 0-9 _ . - and do not start with . or -")
    return user


def check_password(password: str) -> str:
    if not isinstance(password, str):
        raise InvalidArgument("the password must be text")
    if "\r" in password or "\n" in password:
        raise InvalidArgument("a password cannot contain a line break")
    try:
        ok = valid_password(password)
    except UnicodeEncodeError:
        raise InvalidArgument("the password is not valid text") from None
    if not ok:
        raise InvalidArgument("passwords are 8-72 bytes long")
    return password


def check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        raise InvalidArgument("the listening port must be a number from 1024 to 65535")
    return port


def check_host(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except (ValueError, TypeError):
        raise InvalidArgument("the advertised host must be an IP address") from None
    return host


def check_token(token: str) -> str:
    if not isinstance(token, str) or not valid_urlsafe(token):
        raise InvalidArgument("a connection token is URL-safe text (A-Z a-z 0-9 _ -)")
    return token


def command_line(*parts: str) -> bytes:
    """Encode one command, refusing what could not be one line of at most SERVER_MAX_LINE bytes."""
    text = " ".join(parts)
    if "\r" in text or "\n" in text:
        raise InvalidArgument("a command cannot contain a line break")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("the command is not valid text") from None
    if len(data) > SERVER_MAX_LINE:
        raise InvalidArgument(f"the command is longer than {SERVER_MAX_LINE} bytes")
    return data + b"\r\n"


# -- reply parsing ----------------------------------------------------------------


def _split(rest: str | None) -> list[str]:
    """Single-space-separated non-empty fields; raises ValueError on an empty field."""
    if rest is None:
        return []
    parts = rest.split(" ")
    if any(p == "" for p in parts):
        raise ValueError("empty field")
    return parts


def _number(text: str, low: int, high: int) -> int:
    if not is_number(text) or not low <= int(text) <= high:
        raise ValueError(f"bad number {text!r}")
    return int(text)


def _user(text: str) -> str:
    if not valid_username(text):
        raise ValueError(f"bad user name {text!r}")
    return text


def _secret(text: str) -> str:
    if not valid_urlsafe(text):
        raise ValueError("bad token")
    return text


def _parse_nothing(f: list[str], rows: list[WhoEntry]) -> None:
    if f:
        raise ValueError("unexpected fields")


def _parse_user(f: list[str], rows: list[WhoEntry]) -> str:
    (name,) = f
    return _user(name)


def _parse_listen(f: list[str], rows: list[WhoEntry]) -> tuple[str, int]:
    host, port = f
    return host, _number(port, 1, 65535)


def _parse_who(f: list[str], rows: list[WhoEntry]) -> list[WhoEntry]:
    (count,) = f
    if _number(count, 0, 2**63 - 1) != len(rows):
        raise ValueError(f"WHO said {count} users but sent {len(rows)} rows")
    return list(rows)


def _parse_connect(f: list[str], rows: list[WhoEntry]) -> PeerTicket:
    user, host, port, token, proof, fingerprint = f
    return PeerTicket(
        _user(user), host, _number(port, 1, 65535), _secret(token), _secret(proof), parse_fingerprint(fingerprint)
    )


def _parse_verify(f: list[str], rows: list[WhoEntry]) -> tuple[str, str, str]:
    requester, proof, fingerprint = f
    return _user(requester), _secret(proof), parse_fingerprint(fingerprint)


_Parser = Callable[[list[str], list[WhoEntry]], Any]


@dataclass
class _Call:
    verb: str  # the verb the OK reply must carry
    parse: _Parser
    deferred: defer.Deferred[Any]
    line: bytes
    rows: list[WhoEntry] = field(default_factory=list)
    on_success: Callable[[Any], None] | None = None


# -- the protocol -----------------------------------------------------------------


# Decides, after the TLS handshake, whether this server is trusted: fires with its fingerprint, or fails
# with a ChatClientError that every waiting call then reports.
Gate = Callable[[Any], Coroutine[Any, Any, str]]


@implementer(IHandshakeListener)
class ServerClientProtocol(TwistedProtocol):
    """One connection to the chat server.

    ``clock`` schedules the keep-alive ``PING``; ``emit`` receives a
    :class:`~chatapp.events.ChatRequested` for each ``* REQUEST``.  After the
    connection ends, every call fails at once with
    :class:`~chatapp.client.errors.ConnectionClosed`.

    Inside TLS, ``gate`` decides about the server's certificate in ``handshakeCompleted``; until it
    has accepted it nothing is read (not even ``* HELLO``), so nothing is written either: a password
    never reaches a server that was not trusted.
    """

    def __init__(
        self,
        clock: IReactorTime,
        emit: EventSink = ignore,
        ping_interval: float = PING_INTERVAL,
        gate: Gate | None = None,
    ):
        self.clock = clock
        self._gate = gate
        self._held: bytes | None = None if gate is None else b""  # bytes read before the server was trusted
        self.server_fingerprint: str | None = None  # the server's key, once trusted
        self._deciding = False  # the gate is deciding about the server's certificate
        self.person_asked = False  # a person was asked whether to trust the server on this connection
        self._lost_while_deciding: Failure | None = None  # the end, told once the decision is made
        self.emit = emit
        self.ping_interval = ping_interval
        self.state = LineState.GREETING
        self.user: str | None = None  # the account name as signed up, once logged in
        self.listening: tuple[int, str | None] | None = None  # (port, host asked for) after OK LISTEN
        self.credentials: tuple[str, str] | None = None  # what the last successful login used (for reconnecting)
        self.server_version: str | None = None  # from * HELLO
        self.bye: str | None = None  # the reason of * BYE, if one came
        self.closed: ConnectionClosed | None = None  # how the connection ended, once it has
        self._lines = LineBuffer(SERVER_MAX_LINE)
        self._calls: deque[_Call] = deque()
        self._unsent: list[bytes] = []  # lines of calls made before HELLO
        self._refusal: ChatClientError | None = None  # * BLOCKED, or an ERR instead of the greeting
        self._end_reason: ConnectionClosed | None = None  # why we hang up ourselves (DROPPING)
        self._ping_timer: IDelayedCall | None = None
        self._ping_outstanding = False
        self._ready: list[defer.Deferred[ServerClientProtocol]] = []
        self._lost: list[defer.Deferred[ConnectionClosed]] = []

    def _move(self, new: LineState) -> None:
        self.state = line_move(self.state, new)

    # -- TLS ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        tcp = inner_transport(self.transport)
        if ITCPTransport.providedBy(tcp):
            tcp.setTcpNoDelay(True)  # small request/reply lines: no delayed-ACK stalls

    def handshakeCompleted(self) -> None:
        if self._gate is None or self.state not in _LIVE:
            return
        self._deciding = True
        deciding: defer.Deferred[str] = defer.ensureDeferred(self._gate(self.transport))
        deciding.addCallbacks(self._trusted, self._not_trusted)
        deciding.addErrback(self._bug_in_gate)
        deciding.addBoth(self._decided)

    def _decided(self, _: object) -> None:
        # A server that said its line (* BLOCKED, say) and closed while we decided: read the line first.
        self._deciding = False
        lost, self._lost_while_deciding = self._lost_while_deciding, None
        if lost is not None:
            self.connectionLost(lost)

    def _trusted(self, fingerprint: str) -> None:
        self.server_fingerprint = fingerprint
        held, self._held = self._held, None
        if held:
            self.dataReceived(held)

    def _not_trusted(self, failure: Failure) -> None:
        if self.state not in _LIVE:
            return
        error = failure.value
        if not isinstance(error, ChatClientError):
            failure.raiseException()
        self._refusal = error
        self._hang_up(ConnectionClosed(None, str(error)))

    def _bug_in_gate(self, failure: Failure) -> None:
        log.failure("deciding whether to trust the chat server failed", failure)
        self._refusal = ConnectionClosed(None, "could not decide whether to trust the server")
        self._hang_up(self._refusal)

    # -- connection life ----------------------------------------------------------

    @property
    def quitting(self) -> bool:
        """True once ``quit()`` was called: the end of this connection is deliberate."""
        return self.state in (LineState.QUITTING, LineState.QUIT)

    @property
    def logged_in(self) -> bool:
        return self.user is not None and self.closed is None

    def when_ready(self) -> defer.Deferred[ServerClientProtocol]:
        """Fires with this protocol once ``* HELLO`` came; fails if the connection ends first."""
        if self.closed is not None:
            return defer.fail(self._refusal or self.closed)
        if self.server_version is not None:
            return defer.succeed(self)
        d: defer.Deferred[ServerClientProtocol] = defer.Deferred()
        self._ready.append(d)
        return d

    def when_closed(self) -> defer.Deferred[ConnectionClosed]:
        """Fires with the :class:`ConnectionClosed` describing the end, once the connection is gone."""
        if self.closed is not None:
            return defer.succeed(self.closed)
        d: defer.Deferred[ConnectionClosed] = defer.Deferred()
        self._lost.append(d)
        return d

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.closed is not None:
            return
        if self._deciding:
            self._lost_while_deciding = reason
            return
        self._stop_pinging()
        if self._end_reason is not None:
            closed: ConnectionClosed = self._end_reason
        else:
            detail = "" if reason.check(ConnectionDone) or self.bye is not None else _describe(reason)
            closed = ConnectionClosed(self.bye, detail)
        self._move(LineState.QUIT if self.state is LineState.QUITTING else LineState.CLOSED)
        self.closed = closed
        log.info("server connection closed: {why}", why=str(closed))
        calls, self._calls = self._calls, deque()
        self._unsent.clear()
        error: ChatClientError = self._refusal if self._refusal is not None else closed
        # Those who watch the connection hear of its end before the calls on it fail: a caller that answers
        # its failure by connecting again finds the link already done with this connection.
        lost, self._lost = self._lost, []
        for waiter in lost:
            waiter.callback(closed)
        for call in calls:
            call.deferred.errback(error)
        ready, self._ready = self._ready, []
        for d in ready:
            d.errback(error)

    def drop(self) -> None:
        """Close the connection now, without ``QUIT`` (queued calls fail)."""
        # a TLS transport already torn down (connected false) has nothing left to close, and would raise
        if self.transport is not None and self.closed is None and getattr(self.transport, "connected", True):
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                self.transport.loseConnection()

    def _hang_up(self, why: ConnectionClosed) -> None:
        """Drop the connection because of something on this side; ``why`` is what calls and when_closed report."""
        self._end_reason = why
        if self.state in (LineState.GREETING, LineState.READY):
            self._move(LineState.DROPPING)
        self.drop()

    # -- incoming -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state not in _LIVE or self._end_reason is not None:
            return
        if self._held is not None:
            # Not trusted yet: keep (a bounded amount of) what came, read it once the decision is made.
            self._held += data
            if len(self._held) > 2 * SERVER_MAX_LINE:
                self._protocol_violation(b"", "the server sent too much before it was trusted")
            return
        lines, too_long = self._lines.feed(data)
        for raw in lines:
            self._ping_outstanding = False  # any line proves the server is alive
            try:
                self._line_received(raw)
            except (ValueError, WireError) as e:
                self._protocol_violation(raw, str(e) or type(e).__name__)
            if self.state not in _LIVE or self._end_reason is not None:
                return
        if too_long:
            self._protocol_violation(b"", f"a line longer than {SERVER_MAX_LINE} bytes")

    def _protocol_violation(self, raw: bytes, why: str) -> None:
        shown = escape_for_terminal(raw[:200].decode("utf-8", "replace"))
        log.warn("dropping the server connection: {why}: {line!r}", why=why, line=shown)
        self._hang_up(ProtocolViolation(why))

    def _line_received(self, raw: bytes) -> None:
        if not raw:
            return
        line = decode_line(raw)
        kind, _, rest = line.partition(" ")
        kind = kind.upper()
        greeted = self.server_version is not None
        if kind == "*":
            self._event(rest)
        elif not greeted and kind in ("OK", "+"):
            raise ValueError("a reply before the greeting")
        elif not greeted and kind == "ERR":
            self._refused(rest)
        elif kind == "OK":
            self._ok(rest)
        elif kind == "ERR":
            self._err(rest)
        elif kind == "+":
            self._row(rest)
        else:
            raise ValueError("not a reply or an event")

    def _event(self, rest: str) -> None:
        name, _, args = rest.partition(" ")
        f = _split(args) if args else []
        name = name.upper()
        if name == "HELLO":
            (version,) = f
            if self.server_version is not None:
                raise ValueError("a second HELLO")
            if version != PROTOCOL_VERSION:
                raise ValueError(f"unsupported server protocol {version!r} (this client speaks {PROTOCOL_VERSION})")
            self.server_version = version
            if self.state is LineState.GREETING:
                self._move(LineState.READY)
            unsent, self._unsent = self._unsent, []
            if unsent and self.transport is not None:
                self.transport.write(b"".join(unsent))
            ready, self._ready = self._ready, []
            for d in ready:
                d.callback(self)
        elif name == "REQUEST":
            (user,) = f
            self._emit(ChatRequested(_user(user)))
        elif name == "BYE":
            (reason,) = f
            self.bye = reason
            log.info("the server says goodbye: {reason}", reason=escape_for_terminal(reason))
        elif name == "BLOCKED":
            (seconds,) = f
            value = _number(seconds, 0, 2**63 - 1)
            self._refusal = Blocked(429, "blocked", (seconds,), "")
            log.warn("the server has blocked this address for {seconds} s", seconds=value)
        else:
            log.info("ignoring an unknown server event {event}", event=escape_for_terminal(name))

    def _emit(self, event: ChatRequested) -> None:
        try:
            self.emit(event)
        except Exception:
            # a bug in the application: say so and do not go on serving a connection in an unknown state
            log.failure("the application's event handler failed on {event!r}", event=event)
            self._hang_up(ConnectionClosed(None, "the application failed to handle a server event"))

    def _head(self, what: str) -> _Call:
        if not self._calls:
            raise ValueError(f"{what} with no command waiting for a reply")
        return self._calls[0]

    def _ok(self, rest: str) -> None:
        call = self._head("OK")
        verb, _, args = rest.partition(" ")
        if verb.upper() != call.verb:
            raise ValueError(f"OK {verb} in answer to {call.verb}")
        try:
            result = call.parse(_split(args) if args else [], call.rows)
        except (ValueError, TypeError) as e:
            raise ValueError(f"malformed OK {call.verb}: {e}") from None
        self._calls.popleft()
        if call.on_success is not None:
            call.on_success(result)
        call.deferred.callback(result)

    def _err(self, rest: str) -> None:
        call = self._head("ERR")
        error = _parse_error(rest)
        self._calls.popleft()
        call.deferred.errback(error)

    def _refused(self, rest: str) -> None:
        """An ``ERR`` instead of ``* HELLO`` (the server could not serve us): every waiting call gets it."""
        self._refusal = _parse_error(rest)
        log.warn("the server refused the connection: {error}", error=str(self._refusal))
        self._hang_up(ConnectionClosed(None, "the server refused the connection"))

    def _row(self, rest: str) -> None:
        call = self._head("a + row")
        if call.verb != "WHO":
            raise ValueError(f"a + row in answer to {call.verb}")
        kind, name, state = _split(rest)
        if kind.upper() != "USER" or state not in _STATES:
            raise ValueError("malformed WHO row")
        call.rows.append(WhoEntry(_user(name), state))

    # -- outgoing ---------------------------------------------------------------------

    def _call(
        self, line: bytes, verb: str, parse: _Parser, on_success: Callable[[Any], None] | None = None
    ) -> defer.Deferred[Any]:
        if self.closed is not None:
            return defer.fail(self.closed)
        if self._end_reason is not None:
            return defer.fail(self._end_reason)
        if self.state is LineState.QUITTING:
            return defer.fail(ConnectionClosed(None, "the connection is closing"))
        d: defer.Deferred[Any] = defer.Deferred()
        self._calls.append(_Call(verb, parse, d, line, on_success=on_success))
        if self.state is LineState.GREETING:
            self._unsent.append(line)
        elif self.transport is not None:
            self.transport.write(line)
        return d

    def signup(self, user: str, password: str) -> defer.Deferred[str]:
        """Create an account and log in; fires with the name as the server spells it."""
        line = command_line("SIGNUP", check_username(user), check_password(password))
        return self._call(line, "SIGNUP", _parse_user, lambda name: self._logged_in(name, password))

    def login(self, user: str, password: str) -> defer.Deferred[str]:
        """Log in; fires with the name as signed up (``Alice`` even if ``alice`` was typed)."""
        line = command_line("LOGIN", check_username(user), check_password(password))
        return self._call(line, "LOGIN", _parse_user, lambda name: self._logged_in(name, password))

    def passwd(self, current: str, new: str) -> defer.Deferred[None]:
        """Change this account's password; ``current`` is checked like a LOGIN (a wrong one counts as a failure)."""
        check_password(current)
        check_password(new)
        # PASSWD <n> <current><SP><new>: the byte length says where the current one ends, spaces and all.
        line = command_line("PASSWD", str(len(current.encode("utf-8"))), current, new)

        def changed(_: None) -> None:
            if self.credentials is not None:
                self.credentials = (self.credentials[0], new)

        return self._call(line, "PASSWD", _parse_nothing, changed)

    def listen(self, port: int, host: str | None = None) -> defer.Deferred[tuple[str, int]]:
        """Publish where we accept peers; fires with (host, port) as the server saw it."""
        parts = ["LISTEN", str(check_port(port))]
        if host is not None:
            parts.append(check_host(host))
        line = command_line(*parts)

        def published(_: tuple[str, int]) -> None:
            self.listening = (port, host)

        return self._call(line, "LISTEN", _parse_listen, published)

    def unlisten(self) -> defer.Deferred[None]:
        """Stop accepting peers (also fine when not listening)."""

        def withdrawn(_: None) -> None:
            self.listening = None

        return self._call(command_line("UNLISTEN"), "UNLISTEN", _parse_nothing, withdrawn)

    def who(self) -> defer.Deferred[list[WhoEntry]]:
        """Who is logged in: a list of (name, "online" | "listening"), ourselves included."""
        return self._call(command_line("WHO"), "WHO", _parse_who)

    def connect(self, user: str) -> defer.Deferred[PeerTicket]:
        """Ask for a ticket to chat with ``user``; the target gets ``* REQUEST``."""
        return self._call(command_line("CONNECT", check_username(user)), "CONNECT", _parse_connect)

    def key(self, fingerprint: str) -> defer.Deferred[None]:
        """Publish our identity key for this login (PROTOCOL.md 4.2)."""
        return self._call(command_line("KEY", parse_fingerprint(fingerprint)), "KEY", _parse_nothing)

    def verify(self, token: str) -> defer.Deferred[tuple[str, str, str]]:
        """Redeem a token a peer showed us; fires with (requester, proof, requester's fingerprint)."""
        return self._call(command_line("VERIFY", check_token(token)), "VERIFY", _parse_verify)

    def ping(self) -> defer.Deferred[None]:
        return self._call(command_line("PING"), "PONG", _parse_nothing)

    def quit(self) -> defer.Deferred[None]:
        """Say ``QUIT``; fires on ``OK QUIT`` (the server then closes).  Later calls fail."""
        d = self._call(command_line("QUIT"), "QUIT", _parse_nothing)
        if self.state in (LineState.GREETING, LineState.READY):
            self._move(LineState.QUITTING)
        self._stop_pinging()
        return d

    # -- keep-alive -------------------------------------------------------------------

    def _logged_in(self, name: str, password: str) -> None:
        self.user = name
        self.credentials = (name, password)
        if self._ping_timer is None and self.state is LineState.READY:
            self._ping_timer = self.clock.callLater(self.ping_interval, self._keepalive)

    def _keepalive(self) -> None:
        self._ping_timer = None
        if self.state is not LineState.READY:
            return
        if self._ping_outstanding:
            log.warn("the server did not answer for {seconds} s; dropping the connection", seconds=self.ping_interval)
            self._hang_up(ConnectionClosed(None, f"no answer from the server for {self.ping_interval:g} s"))
            return
        self._ping_outstanding = True
        self.ping().addErrback(lambda f: None)  # a failure here shows up as the connection ending
        self._ping_timer = self.clock.callLater(self.ping_interval, self._keepalive)

    def _stop_pinging(self) -> None:
        if self._ping_timer is not None and self._ping_timer.active():
            self._ping_timer.cancel()
        self._ping_timer = None


def _parse_error(rest: str) -> ChatClientError:
    """``<code> <reason> [fields] [human text…]`` of an ``ERR`` line, as its typed exception."""
    parts = rest.split(" ")
    if len(parts) < 2 or not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) != 3 or not parts[1]:
        raise ValueError("malformed ERR")
    code, reason = int(parts[0]), parts[1]
    count = FIELD_COUNTS.get(code, 0)
    extra = parts[2 : 2 + count]
    if len(extra) != count or not all(is_number(x) for x in extra):
        raise ValueError(f"ERR {code} without its number of seconds")
    optional = OPTIONAL_FIELDS.get((code, reason), 0)
    if optional and len(parts) > 2 + count and is_number(parts[2 + count]):
        extra = parts[2 : 2 + count + optional]
        count += optional
    return server_error(code, reason, tuple(extra), " ".join(parts[2 + count :]))


def _describe(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, SSL.Error):  # OpenSSL's own words are a list of tuples: say what it means here
        said = "; ".join(str(entry[-1]) for entry in value.args[0] if entry) if value.args and value.args[0] else ""
        if "wrong version number" in said or "packet length too long" in said:
            return "the server did not answer in TLS (a --no-tls server? then connect with --no-tls)"
        return f"TLS failed ({said or 'no reason given'})"
    text = str(value).strip() if value is not None else ""
    return text or type(value).__name__


class ServerClientFactory(Factory):
    """Builds :class:`ServerClientProtocol` instances sharing one clock and one ``emit``."""

    def __init__(
        self,
        clock: IReactorTime,
        emit: EventSink = ignore,
        ping_interval: float = PING_INTERVAL,
        gate: Gate | None = None,
    ):
        self.clock = clock
        self.emit = emit
        self.ping_interval = ping_interval
        self.gate = gate

    def buildProtocol(self, addr: object) -> ServerClientProtocol:
        protocol = ServerClientProtocol(self.clock, self.emit, self.ping_interval, self.gate)
        protocol.factory = self
        return protocol
