"""A connection to the chat server that survives drops: it reconnects, logs in again and re-publishes LISTEN.

:class:`ServerConnection` owns the endpoint (``clientFromString``, or a
``HOST[:PORT]`` shorthand) and at most one live
:class:`~chatapp.client.server.ServerClientProtocol`.  Once a login has
succeeded, a connection that drops is re-opened with exponential backoff
(1, 2, 4 ... seconds, capped at 30, with jitter), logged in again with the
remembered credentials, and ``LISTEN`` is sent again if it was listening.
The application hears about all of it through :class:`ConnectionEvents`.

It does not reconnect after a deliberate :meth:`ServerConnection.close` (or
``QUIT``), after ``* BYE replaced`` (the user logged in elsewhere: two
clients would throw each other out forever), or when logging in again is
refused (wrong password, blocked, locked): it gives up and says why.

Twisted's ``ClientService`` reconnects too, but it retries forever
including the very first connection and hides the delay it picked; here the
first connection fails fast, the app is told each delay, and a refused login
ends the loop, so a small explicit state machine is clearer.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.client.errors import (
    Busy,
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


class ConnectionEvents(Protocol):
    """What a :class:`ServerConnection` tells the application.  Methods must return quickly and not raise."""

    def request(self, user: str) -> None:
        """``user`` got a ticket to chat with us: their peer connection is on the way."""

    def connection_lost(self, error: ConnectionClosed) -> None:
        """The server connection dropped (not after :meth:`ServerConnection.close`); ``str(error)`` says why."""

    def reconnecting(self, delay: float, attempt: int) -> None:
        """The next reconnection attempt (1, 2, ...) starts in ``delay`` seconds."""

    def reconnected(self, user: str, listening: tuple[str, int] | None) -> None:
        """Connected and logged in again; ``listening`` is the re-published (host, port), if it was listening."""

    def gave_up(self, error: Exception) -> None:
        """No more reconnection attempts; ``str(error)`` is why (wrong password, blocked, replaced, ...)."""


class NoConnectionEvents:
    """A :class:`ConnectionEvents` that ignores everything (subclass it and override what you need)."""

    def request(self, user: str) -> None:
        pass

    def connection_lost(self, error: ConnectionClosed) -> None:
        pass

    def reconnecting(self, delay: float, attempt: int) -> None:
        pass

    def reconnected(self, user: str, listening: tuple[str, int] | None) -> None:
        pass

    def gave_up(self, error: Exception) -> None:
        pass


class State(enum.Enum):
    IDLE = "idle"  # no connection and none planned
    CONNECTING = "connecting"  # opening a connection the application asked for
    CONNECTED = "connected"  # a live protocol (logged in or not)
    WAITING = "waiting"  # a reconnection is scheduled
    RECONNECTING = "reconnecting"  # connecting and logging in again
    CLOSING = "closing"  # close() sent QUIT and waits for the end


class _Relay:
    """The protocol's events, passed on to the application (only ``REQUEST`` concerns it)."""

    def __init__(self, owner: ServerConnection) -> None:
        self._owner = owner

    def hello(self, version: str) -> None:
        pass

    def request(self, user: str) -> None:
        self._owner._emit("request", user)

    def bye(self, reason: str) -> None:
        log.info("the server says goodbye: {reason}", reason=escape_for_terminal(reason))

    def blocked(self, seconds: int) -> None:
        log.warn("the server has blocked this address for {seconds} s", seconds=seconds)


class ServerConnection:
    """Connects to the chat server at ``address`` and keeps the login alive across drops.

    ``clock`` (default: ``reactor``) times the backoff and keep-alive.  The
    delay before reconnection attempt *n* is ``initial_delay * factor**(n-1)``,
    at most ``max_delay``, spread by ``jitter`` (0.2 = +/-20 %).
    ``max_attempts`` None retries forever.
    """

    def __init__(
        self,
        reactor: Any,
        address: str,
        events: ConnectionEvents | None = None,
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
    ) -> None:
        self.address = address
        self.description = endpoint_description(address)
        try:
            self.endpoint: IStreamClientEndpoint = clientFromString(reactor, self.description)
        except Exception as e:
            raise InvalidArgument(f"not a usable server address {escape_for_terminal(address)!r}: {e}") from None
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.events: ConnectionEvents = events if events is not None else NoConnectionEvents()
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.max_attempts = max_attempts
        self.hello_timeout = hello_timeout
        self.close_timeout = close_timeout
        self._random = random
        self._factory = ServerClientFactory(self.clock, _Relay(self), ping_interval)
        self.state = State.IDLE
        self._protocol: ServerClientProtocol | None = None
        self._credentials: tuple[str, str] | None = None
        self._listening: tuple[int, str | None] | None = None
        self._attempt = 0
        self._timer: IDelayedCall | None = None
        self._next_try: float | None = None
        self._work: defer.Deferred[Any] | None = None  # the connection (or reconnection) in progress
        self._candidate: ServerClientProtocol | None = None  # its protocol, before it becomes current
        self._waiters: list[defer.Deferred[ServerClientProtocol]] = []  # callers of open() during CONNECTING

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
        if self._protocol is None or self._protocol.closed is not None:
            raise self._not_connected()
        return self._protocol

    def _not_connected(self) -> NotConnected:
        if self.state is State.WAITING and self._next_try is not None:
            left = max(0.0, self._next_try - self.clock.seconds())
            return NotConnected(f"not connected to the chat server (reconnecting in {left:.0f} s)")
        if self.state is State.RECONNECTING:
            return NotConnected("not connected to the chat server (reconnecting now)")
        if self.state is State.CONNECTING:
            return NotConnected("still connecting to the chat server")
        return NotConnected("not connected to the chat server")

    def _emit(self, method: str, *args: Any) -> None:
        try:
            getattr(self.events, method)(*args)
        except Exception:
            log.failure("the {method} connection event handler failed", method=method)

    # -- opening ------------------------------------------------------------------

    def open(self) -> defer.Deferred[ServerClientProtocol]:
        """Connect (without logging in) unless connected; fires with the protocol once the server said HELLO.

        A reconnection in progress is abandoned: this is the application asking anew.
        """
        if self.connected and self._protocol is not None:
            return defer.succeed(self._protocol)
        if self.state is State.CLOSING:
            return defer.fail(NotConnected("the connection is closing"))
        waiter: defer.Deferred[ServerClientProtocol] = defer.Deferred()
        if self.state is State.CONNECTING and self._work is not None:
            self._waiters.append(waiter)
            return waiter
        self._stop_reconnecting()
        self.state = State.CONNECTING
        self._waiters = [waiter]
        work = defer.ensureDeferred(self._connect())
        self._work = work

        def opened(protocol: ServerClientProtocol) -> None:
            if work is self._work:
                self._work = None
                self._candidate = None
                self._protocol = protocol
                self.state = State.CONNECTED
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(protocol)

        def failed(failure: Failure) -> None:
            if work is self._work:
                self._work = None
                self._candidate = None
                self.state = State.IDLE
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.errback(failure)

        work.addCallbacks(opened, failed)
        return waiter

    async def _connect(self) -> ServerClientProtocol:
        try:
            protocol = await self.endpoint.connect(self._factory)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise ConnectFailed(f"cannot reach the chat server at {escape_for_terminal(self.address)}: {e}") from None
        assert isinstance(protocol, ServerClientProtocol)
        self._candidate = protocol
        protocol.when_closed().addCallback(self._lost, protocol)
        ready = protocol.when_ready()
        ready.addTimeout(self.hello_timeout, self.clock)
        try:
            await ready
        except defer.TimeoutError:
            protocol.drop()
            raise ConnectFailed(f"the chat server at {escape_for_terminal(self.address)} did not greet us") from None
        except BaseException:
            protocol.drop()
            raise
        return protocol

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
        d: defer.Deferred[Any] = self.open()
        d.addCallback(call)
        return d

    def _current(self) -> ServerClientProtocol | None:
        if self._protocol is not None and self._protocol.closed is None:
            return self._protocol
        return None

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

    def verify(self, token: str) -> defer.Deferred[tuple[str, str]]:
        check_token(token)
        p = self._current()
        return p.verify(token) if p is not None else defer.fail(self._not_connected())

    def passwd(self, new: str) -> defer.Deferred[None]:
        check_password(new)
        p = self._current()
        return p.passwd(new) if p is not None else defer.fail(self._not_connected())

    def ping(self) -> defer.Deferred[None]:
        p = self._current()
        return p.ping() if p is not None else defer.fail(self._not_connected())

    # -- closing ------------------------------------------------------------------

    def close(self) -> defer.Deferred[None]:
        """Log out for good: stop reconnecting, say ``QUIT`` and wait until the connection is closed."""
        self._stop_reconnecting()
        protocol = self._protocol
        self._credentials = None
        self._listening = None
        if protocol is None or protocol.closed is not None:
            self.state = State.IDLE
            return defer.succeed(None)
        self.state = State.CLOSING
        protocol.quit().addErrback(lambda _: None)
        timer = self.clock.callLater(self.close_timeout, protocol.drop)
        done = protocol.when_closed()

        def closed(_: ConnectionClosed) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(closed)

    def quit(self) -> defer.Deferred[None]:
        """The same as :meth:`close`."""
        return self.close()

    def _stop_reconnecting(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._next_try = None
        work, self._work = self._work, None
        candidate, self._candidate = self._candidate, None
        if self.state in (State.WAITING, State.RECONNECTING, State.CONNECTING):
            self.state = State.IDLE
        if work is not None:
            work.addErrback(lambda _: None)
            work.cancel()
        if candidate is not None:
            candidate.drop()

    # -- losing and reconnecting ----------------------------------------------------

    def _lost(self, closed: ConnectionClosed, protocol: ServerClientProtocol) -> None:
        if protocol is not self._protocol:
            return  # a connection that never became current: its own attempt handles the failure
        self._protocol = None
        if self.state is State.CLOSING or protocol.quitting:
            self.state = State.IDLE
            return
        if protocol.credentials is not None:
            self._credentials = protocol.credentials
        self._listening = protocol.listening
        self._emit("connection_lost", closed)
        if closed.bye == "replaced":
            self._give_up(closed)
        elif protocol.user is not None and self._credentials is not None:
            self._attempt = 0
            self._schedule()
        else:
            self.state = State.IDLE

    def _delay(self, attempt: int) -> float:
        base = min(self.max_delay, self.initial_delay * self.factor ** (attempt - 1))
        spread = 1.0 + self.jitter * (2.0 * self._random() - 1.0)
        return max(0.0, min(self.max_delay, base * spread))

    def _schedule(self) -> None:
        self._attempt += 1
        delay = self._delay(self._attempt)
        self.state = State.WAITING
        self._next_try = self.clock.seconds() + delay
        self._timer = self.clock.callLater(delay, self._try_again)
        log.info("reconnecting to the chat server in {delay:.1f} s (attempt {n})", delay=delay, n=self._attempt)
        self._emit("reconnecting", delay, self._attempt)

    def _try_again(self) -> None:
        self._timer = None
        self._next_try = None
        self.state = State.RECONNECTING
        work = defer.ensureDeferred(self._reconnect())
        self._work = work
        work.addErrback(self._attempt_failed, work)

    async def _reconnect(self) -> None:
        assert self._credentials is not None
        user, password = self._credentials
        listening = self._listening
        protocol = await self._connect()
        try:
            name = await protocol.login(user, password)
        except BaseException:
            protocol.drop()
            raise
        published: tuple[str, int] | None = None
        if listening is not None:
            try:
                published = await protocol.listen(*listening)
            except ConnectionClosed:
                raise
            except Exception as e:
                log.warn("could not publish the listening port again: {error}", error=str(e))
        if protocol.closed is not None:
            raise protocol.closed
        self._work = None
        self._candidate = None
        self._protocol = protocol
        self._attempt = 0
        self.state = State.CONNECTED
        log.info("reconnected to the chat server as {user}", user=name)
        self._emit("reconnected", name, published)

    def _attempt_failed(self, failure: Failure, work: defer.Deferred[None]) -> None:
        if work is not self._work:
            return  # cancelled by close() or open()
        self._work = None
        self._candidate = None
        error = failure.value
        if not isinstance(error, Exception):
            self.state = State.IDLE
            return
        retry = isinstance(error, ConnectFailed | Busy | InternalError) or (
            isinstance(error, ConnectionClosed) and error.bye != "replaced"
        )
        if not retry:
            if not isinstance(error, ConnectFailed | ConnectionClosed | ServerError):
                log.failure("reconnecting failed unexpectedly", failure)
            self._give_up(error)
        elif self.max_attempts is not None and self._attempt >= self.max_attempts:
            self._give_up(error)
        else:
            log.info("reconnection attempt {attempt} failed: {error}", attempt=self._attempt, error=str(error))
            self._schedule()

    def _give_up(self, error: Exception) -> None:
        self.state = State.IDLE
        self._listening = None
        log.warn("not reconnecting to the chat server: {error}", error=str(error))
        self._emit("gave_up", error)
