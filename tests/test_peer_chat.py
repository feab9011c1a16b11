"""Chat on an open peer session (PROTOCOL.md 3.1 point 5 and 3.2): MSG, PING, BYE, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from logged_errors import LoggedErrors
from test_peer_harness import Pair, lose, make_peer, open_listener
from twisted.internet.task import Clock

from chatapp.peer import PeerError, SessionState
from chatapp.peer.chat import split_message
from chatapp.wire import PEER_MAX_LINE


def test_messages_both_ways(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock)
    pair.a.send_message("hi bob")
    pair.b.send_message("hi  alice, with  spaces ")
    pair.flush()
    assert pair.eb.messages == ["hi bob"]
    assert pair.ea.messages == ["hi  alice, with  spaces "]


def test_multi_line_and_long_text_is_split(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock)
    long_line = "é" * 20000  # 40000 bytes of UTF-8
    count = pair.a.send_message("one\r\ntwo\n\nthree\r" + long_line)
    pair.flush()
    assert pair.eb.messages[:3] == ["one", "two", "three"]
    assert "".join(pair.eb.messages[3:]) == long_line
    assert count == len(pair.eb.messages) == 6
    assert all(len(("MSG " + m).encode()) <= PEER_MAX_LINE for m in pair.eb.messages)


def test_split_message_never_cuts_a_character() -> None:
    pieces = split_message("a" + "€" * 10000)
    assert "".join(pieces) == "a" + "€" * 10000
    assert all(len(p.encode()) <= PEER_MAX_LINE - 4 for p in pieces)
    assert split_message("\n\r\n") == []


def test_empty_msg_is_ignored(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"MSG\r\nMSG \r\nmsg lower case verb\r\n")
    assert eb.messages == ["lower case verb"]
    assert transport.value() == b""


def test_msg_keeps_control_characters_for_the_ui_to_escape(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, _ = open_listener(fb)
    session.dataReceived(b"MSG \x1b[31mred\x07\r\n")
    assert eb.messages == ["\x1b[31mred\x07"]


def test_ping_pong(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"PING\r\n")
    assert transport.value() == b"PONG\r\n"
    transport.clear()
    session.dataReceived(b"PONG\r\n")
    assert transport.value() == b""
    session.ping()
    assert transport.value() == b"PING\r\n"


def test_unknown_verb_keeps_connection(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"FROB x y\r\nMSG still here\r\n")
    assert transport.value() == b"ERR 400 unknown-command unknown command\r\n"
    assert not transport.disconnecting and eb.messages == ["still here"]


def test_bad_encoding_keeps_connection(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"MSG \xff\xfe\r\nMSG ok\r\n")
    assert transport.value().startswith(b"ERR 400 bad-encoding")
    assert not transport.disconnecting and eb.messages == ["ok"]


@pytest.mark.parametrize("line", [b"OK WHATEVER", b"ERR 400 unknown-command", b"ERR", b"* EVENT x", b"ok lower"])
def test_ok_err_star_never_answered(tmp_path: Path, clock: Clock, line: bytes) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(line + b"\r\n\r\n\n")
    assert transport.value() == b""
    assert not transport.disconnecting


def test_bad_arguments(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"PING extra\r\n")
    assert transport.value().startswith(b"ERR 400 bad-arguments")
    assert not transport.disconnecting


def test_line_too_long_closes(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"MSG first\r\nMSG " + b"x" * PEER_MAX_LINE + b"\r\nMSG never\r\n")
    assert eb.messages == ["first"]
    assert transport.value().startswith(b"ERR 413 line-too-long")
    assert transport.disconnecting
    lose(session, transport)
    assert eb.left == ["line-too-long"]


def test_longest_line_is_fine(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    text = "y" * (PEER_MAX_LINE - 4)
    session.dataReceived(b"MSG " + text.encode() + b"\r\n")
    assert eb.messages == [text] and transport.value() == b""


def test_bye_closes_both_without_reply(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock)
    pair.a.close()
    pair.flush()
    assert pair.a.state is SessionState.CLOSED and pair.b.state is SessionState.CLOSED
    assert pair.ea.left == ["closed"] and pair.eb.left == ["bye"]
    assert pair.fa.sessions == {} and pair.fb.sessions == {}
    with pytest.raises(PeerError):
        pair.a.send_message("gone")


def test_bye_from_peer_on_string_transport(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"BYE\r\nMSG after bye\r\n")
    assert transport.value() == b"" and transport.disconnecting
    assert eb.messages == []


def test_connection_drop_without_bye(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    lose(session, transport)
    assert eb.left == ["connection-lost"] and fb.sessions == {}
    lose(session, transport)  # a second report changes nothing
    assert eb.left == ["connection-lost"]


def test_an_event_handler_that_raises_is_logged_and_closes_the_session(
    tmp_path: Path, clock: Clock, logged_errors: LoggedErrors
) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)

    def boom(session: object, text: str) -> None:
        raise RuntimeError("handler bug")

    eb.message = boom  # type: ignore[method-assign]
    session.dataReceived(b"MSG one\r\nPING\r\n")
    [logged] = logged_errors.flush(RuntimeError)
    assert logged["log_failure"].getErrorMessage() == "handler bug"
    assert transport.value() == b"BYE\r\n"  # the PING after the bug is not answered: the session is closing
    assert transport.disconnecting and session.state is SessionState.CLOSING
    lose(session, transport)
    assert eb.left == ["internal-error"] and fb.sessions == {}
