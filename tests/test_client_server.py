"""The server-protocol client on a StringTransport: request lines, reply parsing, pipelining, errors, events, PING."""

from __future__ import annotations

from typing import Any

import pytest
from deferreds import failure_of, result_of
from hypothesis import given, settings
from hypothesis import strategies as st
from logged_errors import LoggedErrors
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from chatapp.client import errors
from chatapp.client.server import LineState, PeerTicket, ServerClientProtocol, WhoEntry, command_line
from chatapp.events import ChatEvent, ChatRequested

PASSWORD = "correct horse battery"
FP = b"sha256:" + b"ab" * 32  # a fingerprint as the server sends it
HELLO = b"* HELLO chatapp/2\r\n"


class Recorder:
    """An ``emit`` keeping what the protocol told the application."""

    def __init__(self) -> None:
        self.seen: list[ChatEvent] = []

    def __call__(self, event: ChatEvent) -> None:
        self.seen.append(event)


class Harness:
    def __init__(self, greet: bool = True) -> None:
        self.clock = Clock()
        self.events = Recorder()
        self.proto = ServerClientProtocol(self.clock, self.events)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        if greet:
            self.feed(HELLO)

    def feed(self, data: bytes, one_byte_at_a_time: bool = False) -> None:
        if one_byte_at_a_time:
            for i in range(len(data)):
                self.proto.dataReceived(data[i : i + 1])
        else:
            self.proto.dataReceived(data)

    def sent(self) -> list[bytes]:
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\r\n")
        return data.split(b"\r\n")[:-1]

    def lose(self, reason: Exception | None = None) -> None:
        self.proto.connectionLost(Failure(reason or ConnectionDone()))

    def login(self, user: str = "alice") -> None:
        d = self.proto.login(user, PASSWORD)
        self.feed(f"OK LOGIN {user}\r\n".encode())
        assert result_of(d) == user
        self.sent()


# -- request lines and reply parsing -------------------------------------------------------------

# the length counts bytes (an a-umlaut is two); both passwords keep their spaces
_PASSWD_SPACES = "PASSWD 11 p\u00e4ss words  new  words ".encode()

CALLS: list[tuple[str, tuple[Any, ...], bytes, bytes, Any]] = [
    ("signup", ("Alice", PASSWORD), b"SIGNUP Alice correct horse battery", b"OK SIGNUP Alice", "Alice"),
    ("login", ("alice", PASSWORD), b"LOGIN alice correct horse battery", b"OK LOGIN Alice", "Alice"),
    ("login", ("bob", "  spaced  "), b"LOGIN bob   spaced  ", b"OK LOGIN bob", "bob"),
    ("passwd", (PASSWORD, "new secret words"), b"PASSWD 21 correct horse battery new secret words", b"OK PASSWD", None),
    ("passwd", ("p\u00e4ss words", " new  words "), _PASSWD_SPACES, b"OK PASSWD", None),
    ("listen", (40123,), b"LISTEN 40123", b"OK LISTEN 127.0.0.1 40123", ("127.0.0.1", 40123)),
    ("listen", (40123, "::1"), b"LISTEN 40123 ::1", b"OK LISTEN ::1 40123", ("::1", 40123)),
    ("unlisten", (), b"UNLISTEN", b"OK UNLISTEN", None),
    ("who", (), b"WHO", b"OK WHO 0", []),
    (
        "connect",
        ("bob",),
        b"CONNECT bob",
        b"OK CONNECT Bob 10.0.0.2 40000 tok_EN-1 pro_OF-2 " + FP.upper().replace(b"SHA", b"sha"),
        PeerTicket("Bob", "10.0.0.2", 40000, "tok_EN-1", "pro_OF-2", FP.decode()),
    ),
    (
        "verify",
        ("tok_EN-1",),
        b"VERIFY tok_EN-1",
        b"OK VERIFY Alice pro_OF-2 " + FP,
        ("Alice", "pro_OF-2", FP.decode()),
    ),
    ("key", (FP.decode(),), b"KEY " + FP, b"OK KEY", None),
    ("ping", (), b"PING", b"OK PONG", None),
    ("quit", (), b"QUIT", b"OK QUIT", None),
]


@pytest.mark.parametrize(("method", "args", "line", "reply", "result"), CALLS)
def test_each_call_sends_its_line_and_parses_its_reply(method, args, line, reply, result) -> None:
    h = Harness()
    d = getattr(h.proto, method)(*args)
    assert h.sent() == [line]
    assert not d.called
    h.feed(reply + b"\r\n")
    assert result_of(d) == result


def test_login_remembers_user_and_credentials_and_listen_state() -> None:
    h = Harness()
    assert not h.proto.logged_in
    d = h.proto.login("alice", PASSWORD)
    h.feed(b"OK LOGIN Alice\r\n")
    assert result_of(d) == "Alice"
    assert h.proto.logged_in and h.proto.user == "Alice"
    assert h.proto.credentials == ("Alice", PASSWORD)
    h.proto.listen(40123)
    h.feed(b"OK LISTEN 127.0.0.1 40123\r\n")
    assert h.proto.listening == (40123, None)
    h.proto.passwd(PASSWORD, "another password")
    h.feed(b"OK PASSWD\r\n")
    assert h.proto.credentials == ("Alice", "another password")
    h.proto.unlisten()
    h.feed(b"OK UNLISTEN\r\n")
    assert h.proto.listening is None
    h.lose()


def test_failed_login_remembers_nothing() -> None:
    h = Harness()
    d = h.proto.login("alice", PASSWORD)
    h.feed(b"ERR 401 bad-credentials wrong user name or password\r\n")
    assert isinstance(failure_of(d), errors.BadCredentials)
    assert h.proto.user is None and h.proto.credentials is None


def test_calls_before_hello_wait_and_go_out_in_order() -> None:
    h = Harness(greet=False)
    first = h.proto.login("alice", PASSWORD)
    second = h.proto.who()
    assert h.transport.value() == b""
    ready = h.proto.when_ready()
    h.feed(HELLO)
    assert result_of(ready) is h.proto
    assert h.sent() == [b"LOGIN alice correct horse battery", b"WHO"]
    h.feed(b"OK LOGIN alice\r\n+ USER alice online\r\nOK WHO 1\r\n")
    assert result_of(first) == "alice"
    assert result_of(second) == [WhoEntry("alice", "online")]
    assert h.proto.server_version == "chatapp/2" and h.proto.state is LineState.READY
    assert h.events.seen == []


# -- pipelining ---------------------------------------------------------------------------------

REPLIES = (
    b"OK LOGIN alice\r\n"
    b"+ USER alice listening\r\n"
    b"+ USER bob online\r\n"
    b"OK WHO 2\r\n"
    b"ERR 409 not-listening bob is online but not accepting chats\r\n"
    b"* REQUEST carol\r\n"
    b"OK PONG\n"  # a bare LF is a line end too
    b"OK CONNECT carol 127.0.0.3 40001 T0k3n Pr00f " + FP + b"\r\n"
)


@pytest.mark.parametrize("one_byte_at_a_time", [False, True])
def test_pipelined_calls_get_their_own_replies_in_order(one_byte_at_a_time: bool) -> None:
    h = Harness()
    login = h.proto.login("alice", PASSWORD)
    who = h.proto.who()
    bob = h.proto.connect("bob")
    ping = h.proto.ping()
    carol = h.proto.connect("carol")
    assert h.sent() == [b"LOGIN alice correct horse battery", b"WHO", b"CONNECT bob", b"PING", b"CONNECT carol"]
    h.feed(REPLIES, one_byte_at_a_time)
    assert result_of(login) == "alice"
    assert result_of(who) == [("alice", "listening"), ("bob", "online")]
    error = failure_of(bob)
    assert isinstance(error, errors.NotListening)
    assert error.text == "bob is online but not accepting chats"
    assert result_of(ping) is None
    assert result_of(carol) == PeerTicket("carol", "127.0.0.3", 40001, "T0k3n", "Pr00f", FP.decode())
    assert h.proto.server_version == "chatapp/2"
    assert h.events.seen == [ChatRequested("carol")]
    assert not h.transport.disconnecting


def test_a_cancelled_call_keeps_its_place_in_the_reply_order() -> None:
    h = Harness()
    first = h.proto.ping()
    second = h.proto.who()
    first.cancel()
    assert isinstance(failure_of(first), defer.CancelledError)
    h.feed(b"OK PONG\r\n+ USER a online\r\nOK WHO 1\r\n")
    assert result_of(second) == [("a", "online")]
    assert not h.transport.disconnecting


# -- ERR families -------------------------------------------------------------------------------

ERRORS = [
    (b"ERR 400 unknown-command unknown command", errors.BadRequest, 400, "unknown-command", (), "unknown command"),
    (b"ERR 400 bad-port ports are 1024-65535", errors.BadRequest, 400, "bad-port", (), "ports are 1024-65535"),
    (
        b"ERR 401 bad-credentials wrong user name or password",
        errors.BadCredentials,
        401,
        "bad-credentials",
        (),
        "wrong user name or password",
    ),
    (
        b"ERR 401 bad-credentials 2 wrong user name or password",
        errors.BadCredentials,
        401,
        "bad-credentials",
        ("2",),
        "wrong user name or password",
    ),
    (b"ERR 403 not-logged-in log in first", errors.NotLoggedIn, 403, "not-logged-in", (), "log in first"),
    (
        b"ERR 403 bad-token unknown, expired or not yours",
        errors.BadToken,
        403,
        "bad-token",
        (),
        "unknown, expired or not yours",
    ),
    (b"ERR 403 something-new", errors.Forbidden, 403, "something-new", (), ""),
    (
        b"ERR 404 no-such-user there is no such user",
        errors.NoSuchUser,
        404,
        "no-such-user",
        (),
        "there is no such user",
    ),
    (b"ERR 409 user-exists that name is taken", errors.UserExists, 409, "user-exists", (), "that name is taken"),
    (b"ERR 409 already-logged-in x", errors.AlreadyLoggedIn, 409, "already-logged-in", (), "x"),
    (b"ERR 409 not-online bob is not online", errors.NotOnline, 409, "not-online", (), "bob is not online"),
    (b"ERR 409 not-listening bob", errors.NotListening, 409, "not-listening", (), "bob"),
    (b"ERR 409 who-knows", errors.Conflict, 409, "who-knows", (), ""),
    (
        b"ERR 413 line-too-long lines are at most 4096 bytes",
        errors.LineTooLong,
        413,
        "line-too-long",
        (),
        "lines are at most 4096 bytes",
    ),
    (
        b"ERR 429 blocked 300 too many failed logins from your address",
        errors.Blocked,
        429,
        "blocked",
        ("300",),
        "too many failed logins from your address",
    ),
    (b"ERR 429 locked 17 this account is locked", errors.Locked, 429, "locked", ("17",), "this account is locked"),
    (b"ERR 429 slow-down 3599", errors.SlowDown, 429, "slow-down", ("3599",), ""),
    (b"ERR 500 internal-error internal error", errors.InternalError, 500, "internal-error", (), "internal error"),
    (b"ERR 503 busy the server is busy; try again", errors.Busy, 503, "busy", (), "the server is busy; try again"),
    (b"ERR 418 teapot short and stout", errors.ServerError, 418, "teapot", (), "short and stout"),
]


@pytest.mark.parametrize(("line", "cls", "code", "reason", "fields", "text"), ERRORS)
def test_err_lines_become_typed_exceptions(line, cls, code, reason, fields, text) -> None:
    h = Harness()
    d = h.proto.ping()
    h.feed(line + b"\r\n")
    error = failure_of(d)
    assert type(error) is cls
    assert isinstance(error, errors.ServerError) and isinstance(error, errors.ChatClientError)
    assert (error.code, error.reason, error.fields, error.text) == (code, reason, fields, text)
    message = str(error)
    assert "\n" not in message and message
    assert not h.transport.disconnecting


def test_rate_limit_errors_carry_seconds_and_say_them() -> None:
    h = Harness()
    d = h.proto.login("alice", PASSWORD)
    h.feed(b"ERR 429 slow-down 90 too many new accounts from your address; try later\r\n")
    error = failure_of(d)
    assert isinstance(error, errors.SlowDown) and isinstance(error, errors.RateLimited)
    assert error.seconds == 90
    assert str(error) == "too many new accounts from your address; try later (429 slow-down); try again in 90 s"


def test_error_text_without_server_text_uses_the_class_default() -> None:
    assert str(errors.server_error(403, "bad-token")) == (
        "that connection token is unknown, expired or not meant for you (403 bad-token)"
    )
    assert str(errors.server_error(429, "blocked", ("600",))).endswith("try again in 10 min")


def test_server_text_is_escaped_for_the_terminal() -> None:
    h = Harness()
    d = h.proto.ping()
    h.feed(b"ERR 400 bad-arguments evil \x1b[2J\xe2\x80\xae text\r\n")
    message = str(failure_of(d))
    assert "\x1b" not in message and "\u202e" not in message
    assert "\\x1b[2J" in message and "\\u202e" in message


# -- events ---------------------------------------------------------------------------------------


def test_events_are_delivered_and_unknown_events_ignored() -> None:
    h = Harness()
    h.feed(b"* REQUEST bob\r\n* SOMETHING-NEW 1 2 3\r\n* REQUEST Carol\r\n* BYE shutdown\r\n")
    assert h.events.seen == [ChatRequested("bob"), ChatRequested("Carol")]
    assert h.proto.bye == "shutdown"
    assert not h.transport.disconnecting
    h.lose()
    assert h.proto.closed is not None and h.proto.closed.bye == "shutdown"


def test_a_failing_event_handler_is_logged_and_the_connection_closed(logged_errors: LoggedErrors) -> None:
    h = Harness()

    def explode(event: ChatEvent) -> None:
        raise RuntimeError("app bug")

    h.proto.emit = explode
    d = h.proto.ping()
    h.feed(b"* REQUEST bob\r\nOK PONG\r\n")
    [logged] = logged_errors.flush(RuntimeError)
    assert logged["log_failure"].getErrorMessage() == "app bug"
    assert h.transport.disconnecting and h.proto.state is LineState.DROPPING
    h.lose()
    assert "event" in str(failure_of(d))  # the PONG after the bad event was not taken


def test_blocked_before_hello_fails_the_waiting_calls_with_blocked() -> None:
    h = Harness(greet=False)
    login = h.proto.login("alice", PASSWORD)
    who = h.proto.who()
    ready = h.proto.when_ready()
    h.feed(b"* BLOCKED 287\r\n")
    h.lose()
    assert h.transport.value() == b""  # nothing was ever sent
    waiting: list[defer.Deferred[Any]] = [login, who, ready]
    for d in waiting:
        error = failure_of(d)
        assert isinstance(error, errors.Blocked)
        assert error.seconds == 287
    assert h.events.seen == []


def test_bye_before_hello_fails_the_waiting_calls_with_the_reason() -> None:
    h = Harness(greet=False)
    login = h.proto.login("alice", PASSWORD)
    ready = h.proto.when_ready()
    h.feed(b"* BYE too-many-connections\r\n")
    h.lose()
    for d in (login, ready):
        error = failure_of(d)
        assert isinstance(error, errors.ConnectionClosed)
        assert error.bye == "too-many-connections"
        assert "too many connections" in str(error)


# -- connection loss ----------------------------------------------------------------------------


def test_connection_lost_fails_every_waiting_call_with_the_bye_reason() -> None:
    h = Harness()
    h.login()
    calls: list[defer.Deferred[Any]] = [h.proto.who(), h.proto.ping(), h.proto.connect("bob")]
    closed = h.proto.when_closed()
    h.feed(b"* BYE replaced\r\n")
    h.lose()
    for d in calls:
        error = failure_of(d)
        assert isinstance(error, errors.ConnectionClosed)
        assert error.bye == "replaced"
        assert str(error) == "you logged in from somewhere else, so the server closed this connection"
    assert result_of(closed).bye == "replaced"
    assert not h.proto.logged_in


def test_connection_lost_without_bye_says_how() -> None:
    h = Harness()
    d = h.proto.ping()
    h.lose(ConnectionLost("Connection to the other side was lost"))
    error = failure_of(d)
    assert type(error) is errors.ConnectionClosed and error.bye is None
    assert "lost" in str(error)


def test_calls_after_the_connection_ended_fail_at_once() -> None:
    h = Harness()
    h.lose()
    assert isinstance(failure_of(h.proto.who()), errors.ConnectionClosed)
    assert isinstance(failure_of(h.proto.when_ready()), errors.ConnectionClosed)
    assert h.transport.value() == b""


def test_calls_after_quit_fail_at_once() -> None:
    h = Harness()
    h.proto.quit()
    assert isinstance(failure_of(h.proto.who()), errors.ConnectionClosed)
    assert h.sent() == [b"QUIT"]
    assert h.proto.quitting


# -- malformed server lines ---------------------------------------------------------------------

BAD_LINES = [
    b"HELLO there",  # not a reply kind
    b"OK PONG",  # no command waiting (set up below with a WHO first? no: nothing waits)
    b"\xff\xfe",  # not UTF-8
    b"OK LOGIN",  # missing the name
    b"OK WHO 1",  # count does not match the rows
    b"+ USER bob sleeping",  # unknown state
    b"+ USER bob",  # short row
    b"OK CONNECT bob 1.2.3.4 99999 tok proof",  # port out of range
    b"OK CONNECT bob 1.2.3.4 4000 tok",  # missing the proof
    b"ERR abc bad",  # code not a number
    b"ERR 429 blocked soon",  # 429 without seconds
    b"ERR 400",  # no reason
    b"* HELLO chatapp/3",  # a second HELLO (and a version we do not speak)
    b"* REQUEST",  # no user
    b"* BLOCKED -1",
    b"OK  LOGIN alice",  # empty field
    b"x" * 5000,  # longer than any server line
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_a_malformed_server_line_drops_the_connection_without_raising(line: bytes) -> None:
    h = Harness()
    if line != b"OK PONG":
        waiting = h.proto.who() if line.startswith(b"+") or line.startswith(b"OK WHO") else h.proto.login("a", PASSWORD)
    else:
        waiting = None
    h.feed(line + b"\r\nOK LOGIN a\r\n")
    assert h.transport.disconnecting
    h.lose()
    if waiting is not None:
        error = failure_of(waiting)
        assert isinstance(error, errors.ProtocolViolation) and isinstance(error, errors.ConnectionClosed)
        assert "unexpected" in str(error)


def test_an_unsupported_greeting_drops_the_connection() -> None:
    h = Harness(greet=False)
    d = h.proto.login("alice", PASSWORD)
    h.feed(b"* HELLO chatapp/9\r\n")
    assert h.transport.disconnecting and h.transport.value() == b""
    h.lose()
    assert "chatapp/9" in str(failure_of(d))


# -- arguments refused before anything is sent -----------------------------------------------------

BAD_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("login", ("", PASSWORD)),
    ("login", (".alice", PASSWORD)),
    ("login", ("-alice", PASSWORD)),
    ("login", ("a" * 33, PASSWORD)),
    ("login", ("al ice", PASSWORD)),
    ("login", ("alïce", PASSWORD)),
    ("signup", ("alice", "short")),
    ("signup", ("alice", "x" * 73)),
    ("signup", ("alice", "é" * 37)),  # 74 bytes
    ("signup", ("alice", "line\r\nbreak!")),
    ("signup", ("alice", "line\nbreak!!")),
    ("passwd", (PASSWORD, "short")),
    ("passwd", ("short", PASSWORD)),
    ("passwd", (PASSWORD, "new\rpassword")),
    ("listen", (80,)),
    ("listen", (65536,)),
    ("listen", (40000, "not-an-ip")),
    ("listen", (40000, "1.2.3.4 5")),
    ("connect", ("bob\r\nQUIT",)),
    ("verify", ("bad token",)),
    ("verify", ("",)),
]


@pytest.mark.parametrize(("method", "args"), BAD_CALLS)
def test_bad_arguments_raise_value_errors_without_sending(method: str, args: tuple[Any, ...]) -> None:
    h = Harness()
    with pytest.raises(errors.InvalidArgument) as info:
        getattr(h.proto, method)(*args)
    assert isinstance(info.value, ValueError)
    assert str(info.value)
    assert h.transport.value() == b""


def test_good_edge_arguments_are_accepted() -> None:
    h = Harness()
    h.proto.signup("A" * 32, "x" * 72)
    h.proto.signup("_a.b-c", "é" * 36)
    h.proto.listen(1024)
    h.proto.listen(65535)
    assert len(h.sent()) == 4


def test_no_line_longer_than_the_server_limit_is_built() -> None:
    assert command_line("X" * 4094).endswith(b"\r\n")
    with pytest.raises(errors.InvalidArgument):
        command_line("X" * 4097)


# -- keep-alive -------------------------------------------------------------------------------------


def test_ping_every_sixty_seconds_while_logged_in() -> None:
    h = Harness()
    h.clock.advance(600)
    assert h.sent() == []  # not before login
    h.login()
    h.clock.advance(59)
    assert h.sent() == []
    h.clock.advance(1)
    assert h.sent() == [b"PING"]
    h.feed(b"OK PONG\r\n")
    h.clock.advance(60)
    assert h.sent() == [b"PING"]
    h.feed(b"OK PONG\r\n")
    h.lose()
    assert h.clock.getDelayedCalls() == []


def test_an_unanswered_ping_drops_the_connection_at_the_next_one() -> None:
    h = Harness()
    h.login()
    h.clock.advance(60)
    assert h.sent() == [b"PING"]
    h.clock.advance(60)
    assert h.transport.disconnecting
    assert h.sent() == []
    h.lose()
    assert "no answer" in str(h.proto.closed)
    assert h.clock.getDelayedCalls() == []


def test_quit_stops_the_pings() -> None:
    h = Harness()
    h.login()
    h.proto.quit()
    assert h.clock.getDelayedCalls() == []


def test_an_err_instead_of_the_greeting_fails_the_waiting_calls_with_it() -> None:
    h = Harness(greet=False)
    login = h.proto.login("alice", PASSWORD)
    ready = h.proto.when_ready()
    h.feed(b"ERR 500 internal-error the server cannot serve you right now\r\n* HELLO chatapp/2\r\n")
    assert h.transport.disconnecting and h.transport.value() == b""  # nothing after the refusal is read
    h.lose()
    for d in (login, ready):
        error = failure_of(d)
        assert isinstance(error, errors.InternalError)
        assert error.text == "the server cannot serve you right now"


def test_a_reply_before_the_greeting_is_a_protocol_violation() -> None:
    h = Harness(greet=False)
    login = h.proto.login("alice", PASSWORD)
    h.feed(b"OK LOGIN alice\r\n")
    assert h.transport.disconnecting and h.transport.value() == b""
    h.lose()
    assert isinstance(failure_of(login), errors.ProtocolViolation)


# -- whatever the server sends, the client never raises ----------------------------------------

_PIECES = [
    b"* HELLO chatapp/2\r\n",
    b"OK LOGIN alice\r\n",
    b"OK WHO 1\r\n",
    b"+ USER bob online\r\n",
    b"ERR 429 blocked 5 x\r\n",
    b"ERR 4",
    b"* BYE replaced\r\n",
    b"* REQUEST \x1b\r\n",
    b"OK PONG\r\n",
    b"\xff\r\n",
    b"\r\n",
    b"\n",
    b" ",
    b"x" * 4200,
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=40)), max_size=12),
    st.lists(st.integers(min_value=1, max_value=50), max_size=10),
)
def test_arbitrary_server_bytes_never_raise(pieces: list[bytes], cuts: list[int]) -> None:
    h = Harness(greet=False)
    calls: list[defer.Deferred[Any]] = [h.proto.login("alice", PASSWORD), h.proto.who(), h.proto.ping()]
    data = b"".join(pieces)
    position = 0
    for cut in [*cuts, len(data)]:
        h.proto.dataReceived(data[position : position + cut])
        position += cut
    h.proto.dataReceived(data[position:])
    h.lose()
    for d in calls:  # every call ends, one way or the other, with a value or a ChatClientError
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        assert outcome
        if isinstance(outcome[0], Failure):
            assert isinstance(outcome[0].value, errors.ChatClientError)
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("line", "tries_left", "text"),
    [
        (b"ERR 401 bad-credentials 2 wrong user name or password", 2, "2 more wrong passwords block your address"),
        (b"ERR 401 bad-credentials 1 wrong user name or password", 1, "one more wrong password blocks your address"),
        (b"ERR 401 bad-credentials wrong user name or password", None, "wrong user name or password (401"),
    ],
)
def test_bad_credentials_say_how_many_tries_are_left(line: bytes, tries_left: int | None, text: str) -> None:
    h = Harness()
    d = h.proto.login("alice", PASSWORD)
    h.feed(line + b"\r\n")
    error = failure_of(d)
    assert isinstance(error, errors.BadCredentials)
    assert error.tries_left == tries_left
    assert text in str(error)
