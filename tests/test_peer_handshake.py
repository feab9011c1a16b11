"""The peer handshake (PROTOCOL.md 3.1): HELLO / VERIFY / WELCOME, refusals, timeout, handshake limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from logged_errors import LoggedErrors
from test_peer_harness import (
    Pair,
    Recorder,
    identity_of,
    key_of,
    lose,
    make_peer,
    open_connector,
    open_listener,
    secure,
)
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from chatapp.peer import HandshakeFailed, PeerFactory, PeerSession, Role, ServerUnavailable, SessionState


def listener(factory: PeerFactory, host: str = "192.0.2.1") -> tuple[PeerSession, StringTransport]:
    session = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    session.makeConnection(transport)
    return session, transport


def connector(
    factory: PeerFactory, target: str = "bob", proof: str = "proof-alice"
) -> tuple[PeerSession, StringTransport]:
    session = PeerSession(factory, Role.CONNECTOR, target, "tok-alice", proof, key_of(target))
    transport = StringTransport()
    session.makeConnection(transport)
    secure(session)
    return session, transport


def failure_of(d: defer.Deferred[Any]) -> BaseException:
    errors: list[BaseException] = []

    def record(failure: Any) -> None:
        errors.append(failure.value)

    d.addErrback(record)
    assert errors, "the Deferred did not fail"
    return errors[0]


def test_pair_opens_both_ways(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock)
    assert pair.a.peer_name == "bob" and pair.b.peer_name == "alice"
    assert pair.ea.joined == ["bob"] and pair.eb.joined == ["alice"]
    assert pair.fa.session_for("BOB") is pair.a
    assert pair.fb.sessions == {"alice": pair.b}
    assert pair.a.role is Role.CONNECTOR and pair.b.role is Role.LISTENER
    got: list[PeerSession] = []
    pair.a.when_open().addCallback(got.append)
    assert got == [pair.a]


def test_connector_sends_hello_and_then_waits(tmp_path: Path, clock: Clock) -> None:
    fa, _ = make_peer(tmp_path, "alice", clock)
    session, transport = connector(fa)
    assert transport.value() == b"HELLO chatapp/2 alice tok-alice\r\n"
    with pytest.raises(Exception, match="not open"):
        session.send_message("too early")
    assert transport.value() == b"HELLO chatapp/2 alice tok-alice\r\n"


def test_welcome_with_name_in_other_case_opens(tmp_path: Path, clock: Clock) -> None:
    fa, ea = make_peer(tmp_path, "alice", clock)
    session, _transport = connector(fa)
    session.dataReceived(b"WELCOME chatapp/2 BoB proof-alice\r\n")
    assert session.state is SessionState.OPEN
    assert session.peer_name == "BoB"
    assert fa.session_for("bob") is session and ea.joined == ["BoB"]


@pytest.mark.parametrize(
    "welcome",
    [
        b"WELCOME chatapp/2 bob wrong-proof\r\n",
        b"WELCOME chatapp/2 mallory proof-alice\r\n",
        b"WELCOME chatapp/3 bob proof-alice\r\n",
        b"WELCOME chatapp/2 bob\r\n",
        b"MSG hi\r\n",
        b"\xff\xfe\r\n",
    ],
)
def test_bad_welcome_closes_without_a_word(tmp_path: Path, clock: Clock, welcome: bytes) -> None:
    fa, ea = make_peer(tmp_path, "alice", clock)
    session, transport = connector(fa)
    opened = session.when_open()
    transport.clear()
    session.dataReceived(welcome + b"MSG sneaky\r\n")
    assert transport.value() == b""
    assert transport.disconnecting
    lose(session, transport)
    assert session.state is SessionState.CLOSED
    assert isinstance(failure_of(opened), HandshakeFailed)
    assert ea.joined == [] and ea.messages == [] and fa.sessions == {}


def test_welcome_name_must_be_a_user_name(tmp_path: Path, clock: Clock) -> None:
    fa, _ = make_peer(tmp_path, "alice", clock)
    session, transport = connector(fa, target="kim")
    session.dataReceived("WELCOME chatapp/2 \u212aim proof-alice\r\n".encode())  # KELVIN SIGN lower-cases to k
    assert transport.disconnecting and session.state is SessionState.CLOSING


def test_err_from_listener_fails_connect_with_its_reason(tmp_path: Path, clock: Clock) -> None:
    fa, _ = make_peer(tmp_path, "alice", clock)
    session, transport = connector(fa)
    opened = session.when_open()
    transport.clear()
    session.dataReceived(b"ERR 503 server-unavailable\r\n")
    assert transport.value() == b"" and transport.disconnecting
    lose(session, transport)
    error = failure_of(opened)
    assert isinstance(error, HandshakeFailed) and error.reason == "server-unavailable"


def test_bad_token_gets_err_403_and_close_over_iosim(tmp_path: Path, clock: Clock) -> None:
    from twisted.test.iosim import connectedServerAndClient

    fa, ea = make_peer(tmp_path, "alice", clock)
    fb, eb = make_peer(tmp_path, "bob", clock)
    a = PeerSession(fa, Role.CONNECTOR, "bob", "not-a-token", "proof-alice", key_of("bob"))
    b = fb.buildProtocol(None)
    received: list[bytes] = []
    original = a.dataReceived

    def spy(data: bytes) -> None:
        received.append(data)
        original(data)

    a.dataReceived = spy  # type: ignore[method-assign]
    opened = a.when_open()
    _, _, pump = connectedServerAndClient(lambda: b, lambda: a, clock=clock)
    secure(a)
    pump.flush()
    assert b"".join(received) == b"ERR 403 bad-token\r\n"
    assert a.state is SessionState.CLOSED and b.state is SessionState.CLOSED
    error = failure_of(opened)
    assert isinstance(error, HandshakeFailed) and error.reason == "bad-token"
    assert eb.joined == [] and ea.joined == [] and eb.left == []


def test_token_of_someone_else_is_bad_token(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = listener(fb)
    session.dataReceived(b"HELLO chatapp/2 mallory tok-alice\r\n")  # the token names alice
    assert transport.value() == b"ERR 403 bad-token\r\n"
    assert transport.disconnecting and session.state is SessionState.CLOSING
    lose(session, transport)
    assert session.state is SessionState.CLOSED and fb.sessions == {}


def test_hello_name_compared_case_insensitively(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = listener(fb)
    session.dataReceived(b"HELLO chatapp/2 ALICE tok-alice\r\n")
    assert transport.value() == b"WELCOME chatapp/2 bob proof-alice\r\n"
    assert session.state is SessionState.OPEN and eb.joined == ["ALICE"]


def test_server_unavailable(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, verify=lambda token: defer.fail(ServerUnavailable("link down")))
    session, transport = listener(fb)
    with capturedLogs() as logged:
        session.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")
    assert transport.value() == b"ERR 503 server-unavailable\r\n"
    assert transport.disconnecting
    # the operator learns why peers are turned away, as a warning: it is no bug of ours
    warnings = [e for e in logged if e.get("log_format", "").startswith("could not verify")]
    assert [(e["log_level"], e["reason"]) for e in warnings] == [(LogLevel.warn, "link down")]


def test_any_other_verify_failure_is_server_unavailable(
    tmp_path: Path, clock: Clock, logged_errors: LoggedErrors
) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, verify=lambda token: defer.fail(ConnectionError("down")))
    session, transport = listener(fb)
    session.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")
    assert transport.value() == b"ERR 503 server-unavailable\r\n"
    [logged] = logged_errors.flush(ConnectionError)
    assert logged["log_failure"].getErrorMessage() == "down"


def _first_lines_answer(tmp_path: Path, clock: Clock, lines: bytes) -> bytes:
    """What bob, listening, answers to ``lines``; asserts he closed without asking his server."""
    calls: list[str] = []

    def verify(token: str) -> defer.Deferred[tuple[str, str, str]]:
        calls.append(token)
        return defer.succeed(("alice", "proof-alice", key_of("alice")))

    fb, _ = make_peer(tmp_path, "bob", clock, verify=verify)
    session, transport = listener(fb)
    session.dataReceived(lines)
    assert transport.disconnecting and calls == []
    return transport.value()


@pytest.mark.parametrize(
    "first",
    [
        b"MSG hello\r\n",
        b"HELLO chatapp/2 alice\r\n",
        b"HELLO chatapp/2 al ice tok-alice\r\n",
        b"HELLO chatapp/2 -alice tok-alice\r\n",
        b"HELLO chatapp/2 alice tok/alice\r\n",
        b"PING\r\n",
        b"\xc3\x28\r\n",
    ],
)
def test_not_authenticated(tmp_path: Path, clock: Clock, first: bytes) -> None:
    answer = _first_lines_answer(tmp_path, clock, first + b"HELLO chatapp/2 alice tok-alice\r\n")
    assert answer == b"ERR 403 not-authenticated\r\n"


@pytest.mark.parametrize("version", [b"chatapp/1", b"chatapp/3"])
def test_another_version_is_unsupported_and_never_verified(tmp_path: Path, clock: Clock, version: bytes) -> None:
    answer = _first_lines_answer(tmp_path, clock, b"HELLO " + version + b" alice tok-alice\r\n")
    assert answer == b"ERR 400 unsupported-version this peer speaks chatapp/2\r\n"


@pytest.mark.parametrize("first", [b"OK HELLO", b"ERR 403 bad-token", b"* HELLO chatapp/2", b"ok"])
def test_ok_err_star_before_hello_closes_without_answer(tmp_path: Path, clock: Clock, first: bytes) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = listener(fb)
    session.dataReceived(first + b"\r\nHELLO chatapp/2 alice tok-alice\r\n")
    assert transport.value() == b"" and transport.disconnecting


def test_second_line_before_welcome_is_not_authenticated(tmp_path: Path, clock: Clock) -> None:
    pending: defer.Deferred[tuple[str, str, str]] = defer.Deferred()
    fb, eb = make_peer(tmp_path, "bob", clock, verify=lambda token: pending)
    session, transport = listener(fb)
    session.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\nHELLO chatapp/2 alice tok-alice\r\n")
    assert transport.value() == b"ERR 403 not-authenticated\r\n"
    pending.callback(("alice", "proof-alice", key_of("alice")))  # a late answer changes nothing
    assert transport.value() == b"ERR 403 not-authenticated\r\n"
    lose(session, transport)
    assert eb.joined == []


def test_empty_lines_before_hello_are_ignored(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = listener(fb)
    session.dataReceived(b"\r\n\nHELLO chatapp/2 alice tok-alice\n")
    assert transport.value() == b"WELCOME chatapp/2 bob proof-alice\r\n"


@pytest.mark.parametrize("role", ["listener", "connector"])
def test_handshake_times_out_after_30s(tmp_path: Path, clock: Clock, role: str) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, verify=lambda token: defer.Deferred())
    if role == "listener":
        session, transport = listener(fb)
        session.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")
    else:
        session, transport = connector(fb, target="carol")
    opened = session.when_open()
    clock.advance(29.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
    lose(session, transport)
    error = failure_of(opened)
    assert isinstance(error, HandshakeFailed) and error.reason == "handshake-timeout"
    assert clock.getDelayedCalls() == []


def test_timer_cancelled_once_open(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    assert clock.getDelayedCalls() == [session.keepalive._call]  # the handshake clocks are gone
    clock.advance(100)
    assert not transport.disconnecting and session.state is SessionState.OPEN


def test_ninth_handshake_closed_at_once_while_all_are_verifying(tmp_path: Path, clock: Clock) -> None:
    pending: list[defer.Deferred[tuple[str, str, str]]] = []

    def verify(token: str) -> defer.Deferred[tuple[str, str, str]]:
        d: defer.Deferred[tuple[str, str, str]] = defer.Deferred()
        pending.append(d)
        return d

    fb, _ = make_peer(tmp_path, "bob", clock, verify=verify)
    held = [listener(fb, f"192.0.2.{i}") for i in range(8)]
    for session, _transport in held:
        session.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")
    ninth, ninth_transport = listener(fb, "192.0.2.99")
    assert ninth_transport.disconnecting and ninth_transport.value() == b""
    ninth.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")
    assert ninth_transport.value() == b"" and len(pending) == 8
    lose(ninth, ninth_transport)
    assert not any(t.disconnecting for _, t in held)
    # one handshake finishes: there is room again
    pending[0].callback(("alice", "proof-alice", key_of("alice")))
    assert held[0][0].state is SessionState.OPEN
    _tenth, tenth_transport = listener(fb)
    assert not tenth_transport.disconnecting
    # a closed handshake frees its slot too
    lose(*held[1])
    _eleventh, eleventh_transport = listener(fb)
    assert not eleventh_transport.disconnecting
    # full again: a new one displaces the oldest that has not said HELLO (the tenth), never one verifying
    _twelfth, twelfth_transport = listener(fb)
    assert not twelfth_transport.disconnecting
    assert tenth_transport.disconnecting and not eleventh_transport.disconnecting
    assert not any(t.disconnecting for _, t in held[2:])


def test_second_session_with_same_user_replaces_the_first(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    first, first_transport = open_listener(fb)
    second, second_transport = open_listener(fb, peer="Alice")
    assert fb.sessions == {"alice": second}
    assert first_transport.value() == b"BYE\r\n" and first_transport.disconnecting
    lose(first, first_transport)
    assert fb.sessions == {"alice": second}  # the old one leaving does not remove the new one
    assert eb.left == []  # the chat goes on: a replacement is no leave for the user
    assert second.state is SessionState.OPEN and not second_transport.disconnecting


def test_sessions_with_different_users(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, verify=lambda token: defer.succeed((token, "p", key_of(token))))
    alice, _ = open_listener(fb, peer="alice", ticket="alice")
    carol, _ = open_listener(fb, peer="carol", ticket="carol")
    assert fb.sessions == {"alice": alice, "carol": carol}


def test_connect_validates_arguments(tmp_path: Path, clock: Clock) -> None:
    fa, _ = make_peer(tmp_path, "alice", clock)
    with pytest.raises(ValueError):
        fa.connect_endpoint(object(), "bob", "tok en", "proof", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fa.connect_endpoint(object(), "bo b", "tok", "proof", None)  # type: ignore[arg-type]


def test_factory_rejects_bad_settings(tmp_path: Path, clock: Clock) -> None:
    me = identity_of("alice")
    with pytest.raises(ValueError):
        PeerFactory(
            "alice",
            lambda t: defer.fail(Exception()),
            str(tmp_path),
            Recorder(),
            clock,
            identity=me,
            chunk_size=0,
        )
    with pytest.raises(ValueError):
        PeerFactory(
            "alice",
            lambda t: defer.fail(Exception()),
            str(tmp_path),
            Recorder(),
            clock,
            identity=me,
            chunk_size=2**20 + 1,
        )
    with pytest.raises(ValueError):
        PeerFactory(
            "not a name",
            lambda t: defer.fail(Exception()),
            str(tmp_path),
            Recorder(),
            clock,
            identity=me,
        )


def test_stop_closes_sessions_in_every_state(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, verify=lambda token: defer.Deferred())
    waiting, waiting_transport = listener(fb)
    calling, calling_transport = connector(fb, target="carol")
    fb.verify = lambda token: defer.succeed(("alice", "p", key_of("alice")))
    opened, opened_transport = open_listener(fb)
    done: list[object] = []
    fb.stop().addCallback(done.append)
    assert waiting_transport.disconnecting and calling_transport.disconnecting and opened_transport.disconnecting
    assert opened_transport.value() == b"BYE\r\n" and waiting_transport.value() == b""
    for session, transport in [(waiting, waiting_transport), (calling, calling_transport), (opened, opened_transport)]:
        assert done == []  # not before every connection is gone
        lose(session, transport)
    assert done == [None]
    assert eb.left == ["closed"] and fb.sessions == {}
    assert clock.getDelayedCalls() == []


def test_stop_aborts_connections_that_do_not_close_in_time(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    stuck, stuck_transport = open_listener(fb)
    closing, closing_transport = open_listener(fb, peer="bob", ticket="tok-bob")
    done: list[object] = []
    fb.stop().addCallback(done.append)
    lose(closing, closing_transport)
    clock.advance(fb.stop_timeout - 0.1)
    assert done == [] and not stuck_transport.disconnected
    clock.advance(0.1)
    assert stuck_transport.disconnected and done == []
    lose(stuck, stuck_transport)  # what an aborted TCP connection does at once
    assert done == [None] and clock.getDelayedCalls() == []


@pytest.mark.parametrize("listener_first", [True, False])
def test_crossing_dials_keep_the_connection_dialled_by_the_smaller_name(
    tmp_path: Path, clock: Clock, listener_first: bool
) -> None:
    # bob's side: alice dialled bob (bob listens) while bob dialled alice; both keep alice's call
    fb, eb = make_peer(tmp_path, "bob", clock)
    if listener_first:
        from_alice, from_alice_transport = open_listener(fb)
        to_alice, to_alice_transport = open_connector(fb, target="alice")
    else:
        to_alice, to_alice_transport = open_connector(fb, target="alice")
        from_alice, from_alice_transport = open_listener(fb)
    assert fb.sessions == {"alice": from_alice}
    assert to_alice_transport.disconnecting  # (its BYE was written before the helper cleared the transport)
    assert not from_alice_transport.disconnecting
    lose(to_alice, to_alice_transport)
    assert fb.sessions == {"alice": from_alice} and eb.left == []


def test_a_call_long_after_the_first_is_no_crossing_and_replaces(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    _from_alice, from_alice_transport = open_listener(fb)
    clock.advance(31)  # alice's side may have died without a word: bob's new call wins
    to_alice, _ = open_connector(fb, target="alice")
    assert fb.sessions == {"alice": to_alice}
    assert from_alice_transport.value() == b"BYE\r\n"
