"""A connection to the chat server that survives drops: Twisted's ClientService keeps a logged-in session.

:class:`ServerConnection` is what the application holds.  Each login session
(from :meth:`~ServerConnection.open` until :meth:`~ServerConnection.close` or
giving up) is one :class:`~twisted.application.internet.ClientService`, which
owns the retry loop: the backoff policy (1, 2, 4 ... seconds, capped at 30,
with jitter), the pending try, and ``stopService()``, which cancels it or
closes the connection and fires once that is done.

The endpoint ClientService dials is the session itself (:class:`_Session`): it
connects, waits for ``* HELLO`` and, on a reconnection, logs in again with the
remembered credentials and re-sends ``LISTEN``; only a connection that got that
far is handed to ClientService.  A try that fails (refused, busy, dropped
before login) is a failed attempt and is retried with backoff; a refused login
(wrong password, blocked, locked), ``* BYE replaced`` (two clients would throw
each other out forever), a drop before any login, ``QUIT`` and
:meth:`~ServerConnection.close` stop the service instead.  The application
hears about it through ``emit``: :class:`~chatapp.events.ChatRequested`,
:class:`~chatapp.events.ServerLost`, :class:`~chatapp.events.Reconnecting`,
:class:`~chatapp.events.Reconnected`, :class:`~chatapp.events.GaveUp`.

Why the handshake is in the endpoint and not in ClientService's
``prepareConnection`` (Twisted 26.10): ClientService wraps the protocol before
``prepareConnection`` runs, and when such a connection closes while
``prepareConnection`` is pending or after it failed, the close reaches its
state machine in a state with no transition for it (automat ``NoTransition``
raised from ``connectionLost``).  Every refused re-login ends with the
connection closed, so the handshake has to finish (or fail, with its
connection dropped) before ClientService sees a connection.  For the same
reason its ``whenConnected`` is not used: its Deferreds fire inside the state
machine, where an application going on to call :meth:`close` (``stopService``)
would hit automat's re-entrancy error; the application's Deferreds here fire
from the protocol's own events.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatapp.client.errors import (
    Busy,
    ChatClientError,
    ConnectFailed,
    ConnectionClosed,
    InternalError,
    InvalidArgument,
    NotConnected,
    ServerError,
)
from chatapp.client.server import (
    DEFAULT_PORT,
    PING_INTERVAL,
    PeerTicket,
    ServerClientFactory,
    ServerClientProtocol,
    WhoEntry,
    check_host,
    check_password,
    check_port,
    check_token,
    check_username,
)
from chatapp.client.trust import Confirm, ServerLinkTLS
from chatapp.events import ChatEvent, EventSink, GaveUp, Reconnected, Reconnecting, ServerLost, ignore
from chatapp.runner import ReactorPool
from chatapp.tls.fingerprint import BadFingerprint
from chatapp.tls.identity import Identity, load_or_create_identity
from chatapp.tls.known_hosts import KnownServers
from chatapp.tls.paths import identity_path
from chatapp.tls.records import GatheringTLSEndpoint
from chatapp.wire import escape_for_terminal

log = Logger()

_ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "ssl", "tls", "unix", "tor", "onion", "systemd"})


def endpoint_description(address: str, timeout: int = 10) -> str:
    """A client endpoint string for ``address``.

    A Twisted endpoint description (``tcp:host=example.org:port=8750``,
    ``tls:...``, anything with ``=``) is returned as it is; otherwise
    ``address`` is ``HOST``, ``HOST:PORT``, ``[IPV6]`` or ``[IPV6]:PORT``
    (a bare IPv6 address is a host) and becomes a ``tcp:`` description,
    port 8750 unless given.
    """
    address = address.strip()
    if not address or any(c.isspace() for c in address):
        raise InvalidArgument("the server address must be HOST[:PORT] or an endpoint like tcp:host=...:port=...")
    prefix = address.split(":", 1)[0].lower()
    if "=" in address or (":" in address and prefix in _ENDPOINT_TYPES):
        return address
    port_text: str | None = None
    if address.startswith("["):
        host, bracket, after = address[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise InvalidArgument(f"cannot read the server address {escape_for_terminal(address)!r}")
        port_text = after[1:] if after else None
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    else:
        host = address
    port = DEFAULT_PORT
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            shown = escape_for_terminal(port_text)
            raise InvalidArgument(f"the server port must be a number from 1 to 65535, not {shown!r}")
        port = int(port_text)
    if not host:
        raise InvalidArgument("the server address has no host")
    return f"tcp:host={quoteStringArgument(host)}:port={port}:timeout={timeout}"


def server_host_port(description: str) -> tuple[str, int]:
    """The ``host`` and ``port`` of a client endpoint description: what pins and identities are filed under."""
    values: dict[str, str] = {}
    kind, _, rest = description.partition(":")
    positional: list[str] = []
    for part in rest.split(":"):
        name, equals, value = part.partition("=")
        if equals:
            values[name] = value
        else:
            positional.append(part)
    host = values.get("host") or (positional[0] if positional else "")
    port_text = values.get("port") or (positional[1] if len(positional) > 1 else "")
    if kind == "unix":
        return values.get("path") or host or "localhost", 0
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else DEFAULT_PORT
    return host.replace("\\", ""), port


class State(enum.Enum):
    IDLE = "idle"  # no session: nothing connected, nothing planned
    CONNECTING = "connecting"  # the application's open(): the first connection of a session
    CONNECTED = "connected"  # a greeted protocol is live (logged in or not)
    WAITING = "waiting"  # the server was lost; ClientService waits before the next try
    RECONNECTING = "reconnecting"  # a try is under way: connecting, logging in, listening again
    CLOSING = "closing"  # close(): QUIT said, waiting until the connection and the service are down


_MOVES: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.CONNECTING}),
    State.CONNECTING: frozenset({State.CONNECTED, State.IDLE, State.CLOSING}),
    State.CONNECTED: frozenset({State.WAITING, State.IDLE, State.CLOSING}),
    State.WAITING: frozenset({State.RECONNECTING, State.CONNECTING, State.IDLE, State.CLOSING}),
    State.RECONNECTING: frozenset({State.CONNECTED, State.WAITING, State.CONNECTING, State.IDLE, State.CLOSING}),
    State.CLOSING: frozenset({State.IDLE}),
}


def _retryable(error: BaseException) -> bool:
    """A try that failed this way is worth repeating (the server is down, busy, or the line dropped)."""
    if isinstance(error, ConnectionClosed):
        return error.bye != "replaced"
    return isinstance(error, ConnectFailed | Busy | InternalError)


# The greeting timeout of a --no-tls link (a TLS link's covers the handshake too: hello_timeout).
PLAIN_HELLO_TIMEOUT = 10.0


@implementer(IStreamClientEndpoint)
class _Session:
    """One login session: the endpoint its ClientService dials, and what a reconnection sends again.

    ClientService is given a stand-in protocol per connection that finished
    the handshake; the stand-in's ``connectionLost`` is called when the real
    connection ends, after this session decided whether that end is retried.
    """

    def __init__(self, link: ServerConnection) -> None:
        self.link = link
        self.service = ClientService(self, Factory.forProtocol(Protocol), retryPolicy=self._delay, clock=link.clock)
        self.credentials: tuple[str, str] | None = None  # set once a logged-in connection was lost
        self.listening: tuple[int, str | None] | None = None  # LISTEN to send again after re-login
        self.attempt = 0  # the number of the try being made or waited for (0: none since the last success)
        self.delay = 0.0  # what the retry policy said for that try
        self.candidate: ServerClientProtocol | None = None  # the protocol of the try under way
        self.published: tuple[str, int] | None = None  # what the server said to the re-sent LISTEN
        self._work: defer.Deferred[ServerClientProtocol] | None = None
        self._dialing = False  # inside connect(): ClientService's state machine is mid-move
        self._greeting: defer.Deferred[Any] | None = None  # the try's wait for the greeting
        self._greeting_late: IDelayedCall | None = None  # ends that wait after hello_timeout
        self.greeting_timed_out = False

    def person_deciding(self, deciding: bool) -> None:
        """A person is asked whether to trust the server (``True``), or answered: the time to greet us
        does not run meanwhile, and starts again in full after the answer."""
        self._stop_greeting_clock()
        if not deciding:
            self._start_greeting_clock()

    def _start_greeting_clock(self) -> None:
        if self._greeting is not None and not self._greeting.called:
            self._greeting_late = self.link.clock.callLater(self.link.hello_timeout, self._greeting_timeout)

    def _stop_greeting_clock(self) -> None:
        late, self._greeting_late = self._greeting_late, None
        if late is not None and late.active():
            late.cancel()

    def _greeting_timeout(self) -> None:
        self._greeting_late = None
        if self._greeting is not None and not self._greeting.called:
            self.greeting_timed_out = True
            self._greeting.cancel()

    def _delay(self, attempt: int) -> float:
        self.attempt = attempt
        self.delay = self.link.retry_delay(attempt)
        return self.delay

    # -- IStreamClientEndpoint, as ClientService uses it ------------------------------------

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        self.link._trying(self)
        attempt: defer.Deferred[IProtocol] = defer.Deferred(self._abandon)
        work = defer.ensureDeferred(self._handshake())
        self._work = work
        self._dialing = True
        try:
            # a bug in _made is a bug, not a failed try to retry: it goes to _bug, not to _failed
            work.addCallbacks(self._made, self._failed, callbackArgs=(factory, attempt), errbackArgs=(attempt,))
            work.addErrback(self._bug, "a connection attempt")
        finally:
            self._dialing = False
        return attempt

    async def _handshake(self) -> ServerClientProtocol:
        link = self.link
        try:
            protocol = await link.endpoint.connect(link.factory)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise ConnectFailed(f"cannot reach the chat server at {escape_for_terminal(link.address)}: {e}") from None
        assert isinstance(protocol, ServerClientProtocol)
        self.candidate = protocol
        try:
            ready = self._greeting = protocol.when_ready()
            self.greeting_timed_out = False
            self._start_greeting_clock()
            try:
                await ready
            except defer.CancelledError:
                if not self.greeting_timed_out:
                    raise
                where = escape_for_terminal(link.address)
                # a TLS server waits for our TLS hello as we wait for its greeting: say what may be wrong
                hint = " (it may speak TLS: leave out --no-tls)" if link.tls is None else ""
                raise ConnectFailed(f"the chat server at {where} did not greet us{hint}") from None
            finally:
                self._stop_greeting_clock()  # greeted, or gone
                self._greeting = None
            if self.credentials is not None:
                await protocol.login(*self.credentials)
                await link._publish_key(protocol)
                self.published = None
                if self.listening is not None:
                    try:
                        self.published = await protocol.listen(*self.listening)
                    except ServerError as e:
                        log.warn("could not publish the listening port again: {error}", error=str(e))
            if protocol.closed is not None:
                raise protocol.closed
        except BaseException:
            protocol.drop()
            raise
        return protocol

    def _made(self, protocol: ServerClientProtocol, factory: IProtocolFactory, attempt: defer.Deferred[Any]) -> None:
        self.candidate = None
        self._work = None
        stand_in = factory.buildProtocol(protocol.transport.getPeer())  # type: ignore[union-attr]
        assert stand_in is not None
        stand_in.makeConnection(protocol.transport)  # type: ignore[arg-type]
        protocol.when_closed().addCallback(self._lost, protocol, stand_in).addErrback(self._bug, "a lost connection")
        again = self.credentials is not None
        attempt.callback(stand_in)  # ClientService: connected; the backoff starts over
        self.attempt = 0
        self.link._connected(self, protocol, again)

    def _failed(self, failure: Failure, attempt: defer.Deferred[Any]) -> None:
        self._work = None
        if self.candidate is not None:
            self.candidate.drop()
        self.candidate = None
        if failure.check(defer.CancelledError) or self.link._session is not self:
            return  # abandoned: stopService() or a new open() cancelled this try
        if self._dialing:
            # the endpoint failed before connect() returned, inside ClientService's own move:
            # stopService() cannot run there, so decide on the next turn of the reactor
            self.link.clock.callLater(0, self._failed, failure, attempt)
            return
        error: BaseException = failure.value  # type: ignore[assignment]
        first = self.credentials is None
        last = self.link.max_attempts is not None and self.attempt >= self.link.max_attempts
        if first or not _retryable(error) or last:
            if not isinstance(error, ChatClientError):
                log.failure("connecting to the chat server failed unexpectedly", failure)
            self.stop()  # cancels `attempt`: ClientService stops without scheduling a retry
            self.link._ended(self, error, first)
            return
        log.info("connection attempt {attempt} failed: {error}", attempt=self.attempt, error=str(error))
        attempt.errback(failure)  # ClientService schedules the next try through the retry policy
        self.link._waiting(self)

    def _abandon(self, attempt: defer.Deferred[Any]) -> None:
        """ClientService cancels the try under way (stopService): stop the work and hang up its connection."""
        work, self._work = self._work, None
        if work is not None:
            work.cancel()
        if self.candidate is not None:
            self.candidate.drop()

    def _lost(self, closed: ConnectionClosed, protocol: ServerClientProtocol, stand_in: IProtocol) -> None:
        link = self.link
        current = link._session is self and link.state is State.CONNECTED
        retry = current and not protocol.quitting and protocol.user is not None and closed.bye != "replaced"
        if retry:
            self.credentials = protocol.credentials
            self.listening = protocol.listening
        else:
            self.stop()  # before ClientService hears of the end, so that it does not retry
        stand_in.connectionLost(Failure(closed))  # ClientService: stopped, or waiting for the next try
        if current:
            # a connection that never logged in is no loss to tell of: whoever was logging in hears the failure
            link._lost(self, closed, retry, deliberate=protocol.quitting or protocol.user is None)

    def _bug(self, failure: Failure, what: str) -> None:
        log.failure("a bug while handling {what} to the chat server", failure, what=what)
        self.stop()
        self.link._ended(self, failure.value or RuntimeError(what), False)

    # -- stopping -------------------------------------------------------------------------

    def stop(self) -> defer.Deferred[None]:
        """Stop trying and close what is open; fires when the connection is closed and no try is pending."""
        candidate = self.candidate
        stopped: defer.Deferred[Any] = self.service.stopService() if self.service.running else defer.succeed(None)
        waits = [stopped]
        if candidate is not None:
            waits.append(candidate.when_closed())
        done = defer.gatherResults(waits, consumeErrors=True)
        return done.addCallback(lambda _: None)


class ServerConnection:
    """Connects to the chat server at ``address`` and keeps the login alive across drops.

    ``emit`` receives the server-link events (``chatapp.events``).  ``clock``
    (default: ``reactor``) times the backoff and keep-alive.  The delay before
    reconnection try *n* is ``initial_delay * factor**(n-1)``, spread by
    ``jitter`` (0.2 = +/-20 %) and at most ``max_delay``.  ``max_attempts``
    None retries forever.
    """

    def __init__(
        self,
        reactor: Any,
        address: str,
        emit: EventSink = ignore,
        *,
        clock: IReactorTime | None = None,
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        max_attempts: int | None = None,
        hello_timeout: float = 30.0,
        close_timeout: float = 5.0,
        ping_interval: float = PING_INTERVAL,
        random: Callable[[], float] = _random.random,
        no_tls: bool = False,
        server_fingerprint: str | None = None,
        trust_on_first_use: bool = False,
        confirm: Confirm | None = None,
        known_servers: KnownServers | None = None,
        trust_roots: Any = None,
    ) -> None:
        """TLS (PROTOCOL.md 4.1): ``server_fingerprint`` must match on first contact; ``confirm(where,
        fingerprint)`` asks the user then (a Deferred[bool]); ``trust_on_first_use`` pins without asking;
        with none of them an unknown server is refused. ``no_tls`` speaks plain TCP (only to a
        ``--no-tls`` server: nothing falls back to it by itself). ``known_servers`` and ``trust_roots``
        replace the user's file and the system roots (tests)."""
        self.reactor = reactor
        self.address = address
        self.description = endpoint_description(address)
        self.host, self.port = server_host_port(self.description)
        try:
            endpoint: IStreamClientEndpoint = clientFromString(reactor, self.description)
        except Exception as e:
            raise InvalidArgument(f"not a usable server address {escape_for_terminal(address)!r}: {e}") from None
        self.tls: ServerLinkTLS | None = None
        if not no_tls and self.description.split(":", 1)[0].lower() in ("ssl", "tls"):
            # TLS is added (and its certificate checked) here: a tls: endpoint would wrap TLS in TLS.
            raise InvalidArgument("give the server as HOST:PORT or a tcp: endpoint; TLS is added by itself")
        if not no_tls:
            try:
                self.tls = ServerLinkTLS(
                    reactor,
                    self.host,
                    self.port,
                    server_fingerprint=server_fingerprint,
                    trust_on_first_use=trust_on_first_use,
                    confirm=self._timed_apart(confirm) if confirm is not None else None,
                    known_servers=known_servers,
                    trust_roots=trust_roots,
                )
            except BadFingerprint as e:
                raise InvalidArgument(str(e)) from None
            endpoint = GatheringTLSEndpoint(self.tls.creator, endpoint)
        self.endpoint = endpoint
        self.identity: Identity | None = None  # this account's identity on this server, once logged in
        self._identity_of: str | None = None  # the (case-folded) account self.identity belongs to
        self.identity_made: Path | None = None  # the file of an identity a login of this run made (not loaded)
        # the host:port this account's identity and contacts are kept under: ours, or another name of the
        # same server (same key) under which an identity was made before
        self.files_host, self.files_port = self.host, self.port
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.emit = emit
        self.max_delay = max_delay
        self.jitter = jitter
        self.max_attempts = max_attempts
        # A plain server greets as soon as it accepts; one that does not in a few seconds is most likely a
        # TLS server waiting for our TLS hello, and the user should hear that soon, not after 30 s.
        self.hello_timeout = min(hello_timeout, PLAIN_HELLO_TIMEOUT) if no_tls else hello_timeout
        self.close_timeout = close_timeout
        self._random = random
        # Twisted's policy gives initial * factor**n; ours starts at the initial delay for try 1
        self._backoff = backoffPolicy(initial_delay / factor, max_delay, factor, jitter=lambda: 0.0)
        gate = self.tls.accept if self.tls is not None else None
        self.factory = ServerClientFactory(self.clock, self._emit, ping_interval, gate)
        self.state = State.IDLE
        self._session: _Session | None = None
        self._protocol: ServerClientProtocol | None = None
        self._next_try: float | None = None
        self._waiters: list[defer.Deferred[ServerClientProtocol]] = []  # callers of open() while CONNECTING
        self._closing: defer.Deferred[None] | None = None

    def _timed_apart(self, confirm: Confirm) -> Confirm:
        """``confirm``, with the time a person takes to answer kept out of ``hello_timeout``."""

        def asked(where: str, fingerprint: str) -> defer.Deferred[bool]:
            session = self._session
            if session is not None:
                session.person_deciding(True)
                if session.candidate is not None:
                    session.candidate.person_asked = True

            def answered(result: Any) -> Any:
                if session is not None:
                    session.person_deciding(False)
                return result

            return confirm(where, fingerprint).addBoth(answered)

        return asked

    def retry_delay(self, attempt: int) -> float:
        """Seconds before reconnection try ``attempt`` (1, 2, ...): the backoff, spread, never above the cap."""
        spread = 1.0 + self.jitter * (2.0 * self._random() - 1.0)
        return max(0.0, min(self.max_delay, self._backoff(attempt) * spread))

    def _move(self, new: State) -> None:
        if new not in _MOVES[self.state]:
            raise RuntimeError(f"server connection: no move from {self.state.value} to {new.value}")
        self.state = new

    def _emit(self, event: ChatEvent) -> None:
        try:
            self.emit(event)
        except Exception:
            # a bug in the application: logged, and the connection it was about is not trusted further
            log.failure("the application's event handler failed on {event!r}", event=event)
            if self._protocol is not None:
                self._protocol.drop()

    # -- what the application reads ------------------------------------------

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.closed is None

    @property
    def logged_in(self) -> bool:
        return self._protocol is not None and self._protocol.logged_in

    @property
    def user(self) -> str | None:
        """The logged-in account name (as signed up), or None."""
        return self._protocol.user if self.logged_in and self._protocol is not None else None

    @property
    def protocol(self) -> ServerClientProtocol:
        """The live protocol; raises :class:`NotConnected` when there is none."""
        p = self._current()
        if p is None:
            raise self._not_connected()
        return p

    def _current(self) -> ServerClientProtocol | None:
        if self._protocol is not None and self._protocol.closed is None:
            return self._protocol
        return None

    def _not_connected(self) -> NotConnected:
        if self.state is State.WAITING and self._next_try is not None:
            left = max(0.0, self._next_try - self.clock.seconds())
            return NotConnected(f"not connected to the chat server (reconnecting in {left:.0f} s)")
        if self.state is State.RECONNECTING:
            return NotConnected("not connected to the chat server (reconnecting now)")
        if self.state is State.CONNECTING:
            return NotConnected("still connecting to the chat server")
        return NotConnected("not connected to the chat server")

    # -- opening ------------------------------------------------------------------

    def open(self) -> defer.Deferred[ServerClientProtocol]:
        """Connect (without logging in) unless connected; fires with the protocol once the server said HELLO.

        A reconnection in progress is abandoned: this is the application asking anew.
        """
        current = self._current()
        if current is not None:
            return defer.succeed(current)
        if self.state is State.CLOSING:
            return defer.fail(NotConnected("the connection is closing"))
        waiter: defer.Deferred[ServerClientProtocol] = defer.Deferred()
        self._waiters.append(waiter)
        if self.state is not State.CONNECTING:
            self._abandon_session()
            self._move(State.CONNECTING)
            session = self._session = _Session(self)
            session.service.startService()
        return waiter

    def _abandon_session(self) -> None:
        session, self._session = self._session, None
        self._protocol = None
        self._next_try = None
        if session is not None:
            session.stop().addErrback(lambda f: log.failure("stopping an abandoned session failed", f))

    # -- what a session reports (called by _Session, outside ClientService's moves) ------------

    def _trying(self, session: _Session) -> None:
        if session is self._session and self.state is State.WAITING:
            self._next_try = None
            self._move(State.RECONNECTING)

    def _connected(self, session: _Session, protocol: ServerClientProtocol, again: bool) -> None:
        if session is not self._session:
            return
        self._protocol = protocol
        self._move(State.CONNECTED)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(protocol)
        if again:
            log.info("reconnected to the chat server as {user}", user=protocol.user)
            self._emit(Reconnected(protocol.user or "", session.published))

    def _waiting(self, session: _Session) -> None:
        if session is not self._session:
            return
        self._next_try = self.clock.seconds() + session.delay
        self._move(State.WAITING)
        log.info("reconnecting to the chat server in {delay:.1f} s (try {n})", delay=session.delay, n=session.attempt)
        self._emit(Reconnecting(session.delay, session.attempt))

    def _lost(self, session: _Session, closed: ConnectionClosed, retry: bool, deliberate: bool) -> None:
        self._protocol = None
        if retry:
            self._emit(ServerLost(closed))
            self._waiting(session)
            return
        self._session = None
        self._move(State.IDLE)
        if not deliberate:
            self._emit(ServerLost(closed))
        if closed.bye == "replaced":
            log.warn("not reconnecting to the chat server: {error}", error=str(closed))
            self._emit(GaveUp(closed))

    def _ended(self, session: _Session, error: BaseException, first: bool) -> None:
        """The session stopped trying; ``first``: it was the application's own open() that failed."""
        if session is not self._session:
            return
        self._session = None
        self._protocol = None
        self._next_try = None
        self._move(State.IDLE)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(Failure(error))
        if not first:
            log.warn("not reconnecting to the chat server: {error}", error=str(error))
            self._emit(GaveUp(error if isinstance(error, Exception) else ConnectionClosed(None, repr(error))))

    # -- calls --------------------------------------------------------------------

    def signup(self, user: str, password: str) -> defer.Deferred[str]:
        """Connect if needed, create the account and log in; fires with the name as signed up."""
        check_username(user)
        check_password(password)
        return self._on_open(lambda p: p.signup(user, password))

    def login(self, user: str, password: str) -> defer.Deferred[str]:
        """Connect if needed and log in; fires with the name as signed up."""
        check_username(user)
        check_password(password)
        return self._on_open(lambda p: p.login(user, password))

    def _on_open(self, call: Callable[[ServerClientProtocol], defer.Deferred[str]]) -> defer.Deferred[str]:
        async def logged_in(protocol: ServerClientProtocol) -> str:
            try:
                name = await call(protocol)
            except ConnectionClosed as e:
                # The server gives a connection a minute to log in; a person comparing fingerprints may take
                # longer. Their answer is remembered by now (or they said no, and we never got here), so
                # the next connection is not asked about: connect again, once, rather than fail the login.
                if not (protocol.person_asked and e.bye == "login-timeout"):
                    raise
                log.info("the chat server stopped waiting while the person decided whether to trust it: again")
                protocol = await self.open()
                name = await call(protocol)
            await self._publish_key(protocol)
            return name

        d: defer.Deferred[Any] = self.open()
        d.addCallback(lambda protocol: defer.ensureDeferred(logged_in(protocol)))
        return d

    def load_identity(self, user: str) -> defer.Deferred[tuple[Identity, Path | None, str, int]]:
        """In a thread (files, key generation, fsync): find or make the identity of ``user``; fires with it,
        its file if this made it (else None), and the host and port it is kept under."""

        def find_or_make() -> tuple[Identity, Path | None, str, int]:
            path, host, port = self._identity_file(user)
            identity, made = load_or_create_identity(path)
            return identity, path if made else None, host, port

        return ReactorPool(self.reactor).run(find_or_make)

    def _identity_file(self, user: str) -> tuple[Path, str, int]:
        """The identity file of ``user``, and the host:port it is kept under (blocking: reads files).

        A server reached under another name with the same key (``localhost`` and ``127.0.0.1``) is the
        same server: an identity made under the other name is used, not replaced by a new key that every
        contact would see as a changed one.
        """
        path = identity_path(self.host, self.port, user)
        if path.exists() or self.tls is None:
            return path, self.host, self.port
        for host, port in self.tls.other_names():
            other = identity_path(host, port, user)
            if other.exists():
                log.info("the identity of {user} here is kept under {host}:{port}", user=user, host=host, port=port)
                return other, host, port
        return path, self.host, self.port

    async def _publish_key(self, protocol: ServerClientProtocol) -> None:
        """Right after a login: load (or make, at the first login) this account's identity, then send KEY."""
        user = protocol.user
        assert user is not None
        if self.identity is None or self._identity_of != user.casefold():
            identity, made, self.files_host, self.files_port = await self.load_identity(user)
            if made is not None:
                log.info("made a new identity key for {user}: {path}", user=user, path=str(made))
                self.identity_made = made
            self.identity, self._identity_of = identity, user.casefold()
        await protocol.key(self.identity.fingerprint)

    def listen(self, port: int, host: str | None = None) -> defer.Deferred[tuple[str, int]]:
        """Publish where we accept peers (re-published after a reconnection); fires with (host, port)."""
        check_port(port)
        if host is not None:
            check_host(host)
        p = self._current()
        return p.listen(port, host) if p is not None else defer.fail(self._not_connected())

    def unlisten(self) -> defer.Deferred[None]:
        p = self._current()
        return p.unlisten() if p is not None else defer.fail(self._not_connected())

    def who(self) -> defer.Deferred[list[WhoEntry]]:
        p = self._current()
        return p.who() if p is not None else defer.fail(self._not_connected())

    def connect(self, user: str) -> defer.Deferred[PeerTicket]:
        check_username(user)
        p = self._current()
        return p.connect(user) if p is not None else defer.fail(self._not_connected())

    def verify(self, token: str) -> defer.Deferred[tuple[str, str, str]]:
        check_token(token)
        p = self._current()
        return p.verify(token) if p is not None else defer.fail(self._not_connected())

    def passwd(self, current: str, new: str) -> defer.Deferred[None]:
        """Change the password: ``current`` is checked like a LOGIN, so a wrong one counts toward the lockout."""
        check_password(current)
        check_password(new)
        p = self._current()
        return p.passwd(current, new) if p is not None else defer.fail(self._not_connected())

    def ping(self) -> defer.Deferred[None]:
        p = self._current()
        return p.ping() if p is not None else defer.fail(self._not_connected())

    # -- closing ------------------------------------------------------------------

    def close(self) -> defer.Deferred[None]:
        """Log out for good: say ``QUIT``, stop reconnecting, and fire once the connection is closed.

        When it fires no try is pending and no timer of this connection is left on the reactor.
        """
        if self.state is State.CLOSING and self._closing is not None:
            return _follow(self._closing)
        session, protocol = self._session, self._current()
        if session is None:
            return defer.succeed(None)
        self._session = None
        self._protocol = None
        self._next_try = None
        self._move(State.CLOSING)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(NotConnected("the connection was closed"))
        waits: list[defer.Deferred[Any]] = []
        if protocol is not None:
            protocol.quit().addErrback(lambda _: None)  # the end of the connection is what counts
            timer = self.clock.callLater(self.close_timeout, protocol.drop)
            closed = protocol.when_closed()
            closed.addCallback(lambda _: timer.cancel() if timer.active() else None)
            waits.append(closed)
        waits.append(session.stop())
        done: defer.Deferred[None] = defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)
        self._closing = done

        def finished(_: None) -> None:
            self._closing = None
            self._move(State.IDLE)

        done.addCallback(finished)
        done.addErrback(lambda f: log.failure("closing the server connection failed", f))
        return _follow(done)

    def quit(self) -> defer.Deferred[None]:
        """The same as :meth:`close`."""
        return self.close()


def _follow(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A new Deferred that fires (with None) when ``d`` does, so that many callers can wait on one close."""
    follower: defer.Deferred[None] = defer.Deferred()
    d.addBoth(lambda _: follower.callback(None))
    return follower
