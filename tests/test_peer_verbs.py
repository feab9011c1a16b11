"""The peer side shares the server's verb splitting (chatapp/wire.py): ASCII verbs only, OK/ERR/* never answered."""

from __future__ import annotations

from pathlib import Path

from test_peer_harness import make_peer, open_listener
from twisted.internet.task import Clock


def test_non_ascii_verbs_are_unknown_and_reply_lines_get_no_answer(tmp_path: Path, clock: Clock) -> None:
    factory, events = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(factory)
    lines = ["p\u0131ng", "\u017fing", "OK", "ERR 400 unknown-command", "* HELLO", "ok x", "PING"]
    session.dataReceived("".join(line + "\r\n" for line in lines).encode())
    assert transport.value() == (
        b"ERR 400 unknown-command unknown command\r\nERR 400 unknown-command unknown command\r\nPONG\r\n"
    )
    session.dataReceived("m\u0455g hi\r\n".encode())  # a Cyrillic dze in MSG
    assert events.messages == []
