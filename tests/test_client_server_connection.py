"""ServerConnection without sockets: a fake endpoint, StringTransports and a task.Clock drive backoff and re-login."""

from __future__ import annotations

from typing import Any

import pytest
from deferreds import failure_of, result_of
from logged_errors import LoggedErrors
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from chatapp.client import errors
from chatapp.client.connection import ServerConnection, State, endpoint_description
from chatapp.client.server import LineState, ServerClientProtocol, line_move
from chatapp.events import ChatEvent, ChatRequested, GaveUp, Reconnected, Reconnecting, ServerLost
from chatapp.tls.identity import new_identity

PASSWORD = "correct horse battery"
IDENTITY = new_identity()


class FakeEndpoint:
    """Records each connect(); the test decides whether it succeeds."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Factory, defer.Deferred[Any]]] = []

    def connect(self, factory: Factory) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.attempts.append((factory, d))
        return d

    def accept(self, greet: bytes = b"* HELLO chatapp/2\r\n") -> Server:
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, ServerClientProtocol)
        server = Server(protocol)
        d.callback(protocol)
        if greet:
            protocol.dataReceived(greet)
        return server

    def refuse(self) -> None:
        self.attempts[-1][1].errback(ConnectionRefusedError("Connection refused"))


class Server:
    """The server end of one fake connection."""

    def __init__(self, protocol: ServerClientProtocol) -> None:
        self.protocol = protocol
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)

    def answer_keys(self) -> None:
        """Say OK to every KEY the client sent (it comes right after each login)."""
        lines = self.transport.value().split(b"\r\n")
        keys = [line for line in lines if line.startswith(b"KEY sha256:")]
        if keys:
            rest = [line for line in lines if not line.startswith(b"KEY sha256:")]
            self.transport.clear()
            self.transport.write(b"\r\n".join(rest))
            self.protocol.dataReceived(b"OK KEY\r\n" * len(keys))

    def received(self) -> list[bytes]:
        data = self.transport.value()
        self.transport.clear()
        return data.split(b"\r\n")[:-1]

    def say(self, *lines: str) -> None:
        self.protocol.dataReceived("".join(line + "\r\n" for line in lines).encode())
        self.answer_keys()

    def close(self, reason: Exception | None = None) -> None:
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))


class Events:
    """An ``emit`` that keeps each event as a short tuple."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def __call__(self, event: ChatEvent) -> None:
        if isinstance(event, ChatRequested):
            self.seen.append(("request", event.user))
        elif isinstance(event, ServerLost):
            assert isinstance(event.error, errors.ConnectionClosed)
            self.seen.append(("lost", event.error.bye))
        elif isinstance(event, Reconnecting):
            self.seen.append(("reconnecting", event.delay, event.attempt))
        elif isinstance(event, Reconnected):
            self.seen.append(("reconnected", event.user, event.listening))
        elif isinstance(event, GaveUp):
            self.seen.append(("gave_up", type(event.error).__name__))
        else:
            raise AssertionError(f"not a server-link event: {event!r}")


class Rig:
    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.events = Events()
        options.setdefault("jitter", 0.0)
        # A fake endpoint carries no TLS (the loopback tests run the real thing); identities are not the point here.
        options.setdefault("no_tls", True)
        self.conn = ServerConnection(
            MemoryReactorClock(), "chat.example:9000", self.events, clock=self.clock, **options
        )
        self.conn.load_identity = lambda user: defer.succeed(  # type: ignore[method-assign]
            (IDENTITY, None, self.conn.host, self.conn.port)
        )
        self.endpoint = FakeEndpoint()
        self.conn.endpoint = self.endpoint  # type: ignore[assignment]

    def logged_in(self, listen: int | None = None) -> Server:
        d = self.conn.login("alice", PASSWORD)
        server = self.endpoint.accept()
        assert server.received() == [b"LOGIN alice correct horse battery"]
        server.say("OK LOGIN Alice")
        assert result_of(d) == "Alice"
        if listen is not None:
            ld = self.conn.listen(listen)
            assert server.received() == [f"LISTEN {listen}".encode()]
            server.say(f"OK LISTEN 192.0.2.1 {listen}")
            assert result_of(ld) == ("192.0.2.1", listen)
        return server


# -- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "description"),
    [
        ("localhost", "tcp:host=localhost:port=8750:timeout=10"),
        ("chat.example.org:9000", "tcp:host=chat.example.org:port=9000:timeout=10"),
        ("192.0.2.7:1", "tcp:host=192.0.2.7:port=1:timeout=10"),
        ("[::1]:9000", "tcp:host=\\:\\:1:port=9000:timeout=10"),
        ("[::1]", "tcp:host=\\:\\:1:port=8750:timeout=10"),
        ("::1", "tcp:host=\\:\\:1:port=8750:timeout=10"),
        ("tcp:host=example.org:port=8750", "tcp:host=example.org:port=8750"),
        ("tcp:example.org:8750", "tcp:example.org:8750"),
        ("tls:example.org:8750", "tls:example.org:8750"),
        ("  localhost:8751 ", "tcp:host=localhost:port=8751:timeout=10"),
    ],
)
def test_addresses_become_endpoint_descriptions(address: str, description: str) -> None:
    assert endpoint_description(address) == description


@pytest.mark.parametrize("address", ["", "host:0", "host:65536", "host:http", "[::1", "[::1]x", ":8750", "a b:1"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        endpoint_description(address)


def test_an_unusable_endpoint_string_is_refused_at_construction() -> None:
    with pytest.raises(errors.InvalidArgument):
        ServerConnection(MemoryReactorClock(), "nosuchkind:x=1")


# -- connecting and calls -------------------------------------------------------------------------


def test_calls_while_disconnected_fail_fast_with_a_clear_error() -> None:
    rig = Rig()
    for d in (rig.conn.who(), rig.conn.ping(), rig.conn.connect("bob"), rig.conn.listen(40000)):
        error = failure_of(d)
        assert isinstance(error, errors.NotConnected)
        assert str(error) == "not connected to the chat server"
    with pytest.raises(errors.NotConnected):
        rig.conn.protocol  # noqa: B018
    assert rig.endpoint.attempts == []


def test_arguments_are_checked_before_connecting() -> None:
    rig = Rig()
    with pytest.raises(errors.InvalidArgument):
        rig.conn.login("bad name", PASSWORD)
    with pytest.raises(errors.InvalidArgument):
        rig.conn.signup("alice", "short")
    assert rig.endpoint.attempts == []


def test_login_connects_waits_for_hello_and_logs_in() -> None:
    rig = Rig()
    d = rig.conn.login("alice", PASSWORD)
    assert rig.conn.state is State.CONNECTING
    server = rig.endpoint.accept(greet=b"")
    assert server.received() == []
    server.say("* HELLO chatapp/2")
    assert server.received() == [b"LOGIN alice correct horse battery"]
    server.say("OK LOGIN Alice", "* REQUEST bob")
    assert result_of(d) == "Alice"
    assert rig.conn.state is State.CONNECTED and rig.conn.logged_in and rig.conn.user == "Alice"
    assert rig.events.seen == [("request", "bob")]
    who = rig.conn.who()
    server.say("+ USER Alice online", "OK WHO 1")
    assert result_of(who) == [("Alice", "online")]


def test_two_opens_share_one_connection_attempt() -> None:
    rig = Rig()
    first, second = rig.conn.open(), rig.conn.open()
    assert len(rig.endpoint.attempts) == 1
    server = rig.endpoint.accept()
    assert result_of(first) is result_of(second) is server.protocol


def test_connect_refused_fails_the_login_and_does_not_retry() -> None:
    rig = Rig()
    d = rig.conn.login("alice", PASSWORD)
    rig.endpoint.refuse()
    error = failure_of(d)
    assert isinstance(error, errors.ConnectFailed)
    assert "chat.example:9000" in str(error) and "refused" in str(error)
    rig.clock.advance(100)
    assert len(rig.endpoint.attempts) == 1
    assert rig.conn.state is State.IDLE
    assert rig.clock.getDelayedCalls() == []


def test_a_server_that_never_greets_times_out() -> None:
    rig = Rig(hello_timeout=5)
    d = rig.conn.open()
    server = rig.endpoint.accept(greet=b"")
    rig.clock.advance(5)
    assert server.transport.disconnecting
    server.close()
    assert "did not greet" in str(failure_of(d))


def test_a_plain_link_to_a_server_that_does_not_greet_says_so_within_ten_seconds() -> None:
    """--no-tls against a TLS server: both wait for the other's first bytes; the hint comes soon."""
    from chatapp.client.connection import PLAIN_HELLO_TIMEOUT

    rig = Rig()  # a plain link (no_tls), hello_timeout left at its 30 s default
    d = rig.conn.open()
    server = rig.endpoint.accept(greet=b"")
    rig.clock.advance(PLAIN_HELLO_TIMEOUT - 0.1)
    assert not server.transport.disconnecting
    rig.clock.advance(0.1)
    assert server.transport.disconnecting
    server.close()
    assert "did not greet us (it may speak TLS: leave out --no-tls)" in str(failure_of(d))


def test_blocked_at_connect_fails_the_login_with_blocked() -> None:
    rig = Rig()
    d = rig.conn.login("alice", PASSWORD)
    server = rig.endpoint.accept(greet=b"* BLOCKED 120\r\n")
    server.close()
    error = failure_of(d)
    assert isinstance(error, errors.Blocked) and error.seconds == 120


# -- reconnection -------------------------------------------------------------------------------


def test_a_drop_after_login_reconnects_logs_in_again_and_listens_again() -> None:
    rig = Rig()
    server = rig.logged_in(listen=40123)
    server.close(ConnectionLost("gone"))
    assert rig.events.seen == [("lost", None), ("reconnecting", 1.0, 1)]
    assert rig.conn.state is State.WAITING
    error = failure_of(rig.conn.who())
    assert isinstance(error, errors.NotConnected) and "reconnecting in 1 s" in str(error)
    rig.clock.advance(0.999)
    assert len(rig.endpoint.attempts) == 1
    rig.clock.advance(0.001)
    assert len(rig.endpoint.attempts) == 2
    assert rig.conn.state is State.RECONNECTING
    again = rig.endpoint.accept()
    assert again.received() == [b"LOGIN Alice correct horse battery"]
    again.say("OK LOGIN Alice")
    assert again.received() == [b"LISTEN 40123"]
    assert not rig.conn.logged_in  # not until LISTEN is back
    again.say("OK LISTEN 192.0.2.9 40123")
    assert rig.events.seen[-1] == ("reconnected", "Alice", ("192.0.2.9", 40123))
    assert rig.conn.state is State.CONNECTED and rig.conn.protocol is again.protocol
    ping = rig.conn.ping()
    again.say("OK PONG")
    assert result_of(ping) is None


def test_reconnect_uses_the_password_changed_meanwhile_and_forgets_unlisten() -> None:
    rig = Rig()
    server = rig.logged_in(listen=40123)
    rig.conn.passwd("the old password", "brand new password")
    rig.conn.unlisten()
    server.say("OK PASSWD", "OK UNLISTEN")
    server.close()
    rig.clock.advance(1)
    again = rig.endpoint.accept()
    assert again.received() == [b"LOGIN Alice brand new password"]
    again.say("OK LOGIN Alice")
    assert again.received() == []
    assert rig.events.seen[-1] == ("reconnected", "Alice", None)


def test_backoff_doubles_up_to_the_cap() -> None:
    rig = Rig()
    rig.logged_in().close()
    delays = []
    for _ in range(8):
        event = rig.events.seen[-1]
        assert event[0] == "reconnecting"
        delays.append(event[1])
        rig.clock.advance(event[1])
        rig.endpoint.refuse()
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [e[2] for e in rig.events.seen if e[0] == "reconnecting"] == list(range(1, 10))


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 1.6), (0.5, 2.0), (1.0, 2.4)])
def test_jitter_spreads_the_delay(draw: float, expected: float) -> None:
    rig = Rig(jitter=0.2, random=lambda: draw)
    rig.logged_in().close()
    rig.clock.advance(10)  # attempt 1 fires
    rig.endpoint.refuse()
    assert rig.events.seen[-1][0] == "reconnecting"
    assert rig.events.seen[-1][1] == pytest.approx(expected)


def test_jitter_never_exceeds_the_cap() -> None:
    rig = Rig(jitter=0.5, random=lambda: 1.0, initial_delay=100.0)
    rig.logged_in().close()
    assert rig.events.seen[-1] == ("reconnecting", 30.0, 1)


def test_a_drop_during_reconnect_and_a_busy_server_are_retried() -> None:
    rig = Rig()
    rig.logged_in().close()
    rig.clock.advance(1)
    rig.endpoint.accept().close(ConnectionLost("reset"))  # dropped before login
    assert rig.events.seen[-1] == ("reconnecting", 2.0, 2)
    rig.clock.advance(2)
    busy = rig.endpoint.accept()
    busy.say("ERR 503 busy the server is busy; try again")
    assert busy.transport.disconnecting
    busy.close()
    assert rig.events.seen[-1] == ("reconnecting", 4.0, 3)
    rig.clock.advance(4)
    ok = rig.endpoint.accept()
    ok.say("OK LOGIN Alice")
    assert rig.events.seen[-1] == ("reconnected", "Alice", None)
    assert rig.clock.getDelayedCalls() != []  # only the keep-alive PING
    ok.close()


@pytest.mark.parametrize(
    ("reply", "gave_up_with"),
    [
        ("ERR 401 bad-credentials wrong user name or password", "BadCredentials"),
        ("ERR 429 locked 300 this account is locked after failed logins", "Locked"),
        ("ERR 429 blocked 300 too many failed logins from your address", "Blocked"),
    ],
)
def test_a_refused_login_ends_the_reconnection(reply: str, gave_up_with: str) -> None:
    rig = Rig()
    rig.logged_in().close()
    rig.clock.advance(1)
    server = rig.endpoint.accept()
    server.say(reply)
    assert server.transport.disconnecting  # the attempt's connection is dropped
    server.close()
    assert rig.events.seen[-1] == ("gave_up", gave_up_with)
    assert rig.conn.state is State.IDLE
    rig.clock.advance(1000)
    assert len(rig.endpoint.attempts) == 2
    assert rig.clock.getDelayedCalls() == []


def test_blocked_at_reconnect_gives_up() -> None:
    rig = Rig()
    rig.logged_in().close()
    rig.clock.advance(1)
    rig.endpoint.accept(greet=b"* BLOCKED 250\r\n").close()
    assert rig.events.seen[-1] == ("gave_up", "Blocked")
    assert rig.clock.getDelayedCalls() == []


def test_bye_replaced_is_not_reconnected() -> None:
    rig = Rig()
    server = rig.logged_in()
    server.say("* BYE replaced")
    server.close()
    assert rig.events.seen == [("lost", "replaced"), ("gave_up", "ConnectionClosed")]
    assert rig.clock.getDelayedCalls() == []
    assert len(rig.endpoint.attempts) == 1


def test_bye_shutdown_is_reconnected() -> None:
    rig = Rig()
    server = rig.logged_in()
    server.say("* BYE shutdown")
    server.close()
    assert rig.events.seen == [("lost", "shutdown"), ("reconnecting", 1.0, 1)]
    rig.conn.close()
    assert rig.clock.getDelayedCalls() == []


def test_a_drop_before_login_is_not_reconnected() -> None:
    rig = Rig()
    rig.conn.open()
    server = rig.endpoint.accept()
    server.say("* BYE login-timeout")
    server.close()
    assert rig.events.seen == []  # no logged-in session was lost: whoever was logging in hears the failure
    assert rig.conn.state is State.IDLE
    assert rig.clock.getDelayedCalls() == []


def test_max_attempts_gives_up() -> None:
    rig = Rig(max_attempts=2)
    rig.logged_in().close()
    rig.clock.advance(1)
    rig.endpoint.refuse()
    rig.clock.advance(2)
    rig.endpoint.refuse()
    assert rig.events.seen[-1] == ("gave_up", "ConnectFailed")
    assert rig.clock.getDelayedCalls() == []


# -- deliberate ends ------------------------------------------------------------------------------


def test_close_says_quit_and_does_not_reconnect() -> None:
    rig = Rig()
    server = rig.logged_in(listen=40123)
    done = rig.conn.close()
    assert server.received() == [b"QUIT"]
    assert not done.called
    server.say("OK QUIT")
    server.close()
    assert result_of(done) is None
    assert rig.events.seen == []
    assert rig.conn.state is State.IDLE
    assert rig.clock.getDelayedCalls() == []


def test_close_drops_a_server_that_does_not_hang_up() -> None:
    rig = Rig(close_timeout=5)
    server = rig.logged_in()
    done = rig.conn.close()
    rig.clock.advance(5)
    assert server.transport.disconnecting
    server.close()
    assert result_of(done) is None
    assert rig.clock.getDelayedCalls() == []


def test_quit_on_the_protocol_is_deliberate_too() -> None:
    rig = Rig()
    server = rig.logged_in()
    rig.conn.protocol.quit()
    server.say("OK QUIT")
    server.close()
    assert rig.events.seen == []
    assert rig.clock.getDelayedCalls() == []


def test_close_while_waiting_cancels_the_reconnection() -> None:
    rig = Rig()
    rig.logged_in().close()
    assert result_of(rig.conn.close()) is None
    assert rig.clock.getDelayedCalls() == []
    assert rig.conn.state is State.IDLE
    rig.clock.advance(100)
    assert len(rig.endpoint.attempts) == 1


def test_close_while_reconnecting_abandons_the_attempt() -> None:
    rig = Rig()
    rig.logged_in().close()
    rig.clock.advance(1)
    server = rig.endpoint.accept()
    assert server.received() == [b"LOGIN Alice correct horse battery"]
    rig.conn.close()
    assert server.transport.disconnecting
    server.close()
    server.say("OK LOGIN Alice")  # a late reply changes nothing
    assert rig.conn.state is State.IDLE
    assert rig.events.seen == [("lost", None), ("reconnecting", 1.0, 1)]
    assert rig.clock.getDelayedCalls() == []


def test_login_while_waiting_connects_at_once() -> None:
    rig = Rig()
    rig.logged_in().close()
    d = rig.conn.login("bob", PASSWORD)
    assert len(rig.endpoint.attempts) == 2
    server = rig.endpoint.accept()
    assert server.received() == [b"LOGIN bob correct horse battery"]
    server.say("OK LOGIN bob")
    assert result_of(d) == "bob"
    rig.clock.advance(100)  # the old schedule is gone
    assert len(rig.endpoint.attempts) == 2
    assert rig.conn.user == "bob"


def test_an_internal_error_instead_of_hello_at_reconnect_is_retried() -> None:
    rig = Rig()
    rig.logged_in().close()
    rig.clock.advance(1)
    rig.endpoint.accept(greet=b"ERR 500 internal-error the server cannot serve you right now\r\n").close()
    assert rig.events.seen[-1] == ("reconnecting", 2.0, 2)
    rig.conn.close()
    assert rig.clock.getDelayedCalls() == []


def test_a_silent_server_is_detected_by_the_keepalive_and_reconnected() -> None:
    rig = Rig()
    server = rig.logged_in()
    rig.clock.advance(60)
    assert server.received() == [b"PING"]
    rig.clock.advance(60)  # no PONG came: the connection is presumed dead
    assert server.transport.disconnecting
    server.close()  # what the reactor does after abortConnection
    assert rig.events.seen == [("lost", None), ("reconnecting", 1.0, 1)]
    rig.conn.close()
    assert rig.clock.getDelayedCalls() == []


# -- states, delays and application bugs ----------------------------------------------------------


def test_the_reconnecting_delay_is_the_one_on_the_clock() -> None:
    rig = Rig(jitter=0.2, random=lambda: 0.9)
    rig.logged_in().close()
    (_, delay, attempt) = rig.events.seen[-1]
    (retry,) = rig.clock.getDelayedCalls()
    assert attempt == 1 and retry.getTime() - rig.clock.seconds() == pytest.approx(delay) == 1.16


def test_moves_between_link_states_are_checked() -> None:
    rig = Rig()
    with pytest.raises(RuntimeError, match="no move from idle to waiting"):
        rig.conn._move(State.WAITING)
    assert rig.conn.state is State.IDLE
    with pytest.raises(RuntimeError, match="no move from closed to ready"):
        line_move(LineState.CLOSED, LineState.READY)


def test_an_emit_that_raises_is_logged_and_the_retry_goes_on(logged_errors: LoggedErrors) -> None:
    rig = Rig()
    server = rig.logged_in()

    def broken(event: ChatEvent) -> None:
        raise RuntimeError("app bug")

    rig.conn.emit = broken
    server.close(ConnectionLost("gone"))
    logged = logged_errors.flush(RuntimeError)
    assert [e["log_failure"].getErrorMessage() for e in logged] == ["app bug", "app bug"]
    assert rig.conn.state is State.WAITING
    rig.clock.advance(1)
    assert len(rig.endpoint.attempts) == 2
    rig.conn.close()
    assert rig.clock.getDelayedCalls() == []


def test_close_fires_only_when_the_abandoned_attempt_is_closed_too() -> None:
    rig = Rig()
    rig.logged_in().close()
    rig.clock.advance(1)
    server = rig.endpoint.accept()
    done = rig.conn.close()
    assert rig.conn.state is State.CLOSING and not done.called
    server.close()
    assert result_of(done) is None
    assert rig.conn.state is State.IDLE and rig.clock.getDelayedCalls() == []
