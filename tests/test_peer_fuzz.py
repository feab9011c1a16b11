"""Random and near-valid bytes into the peer protocol: before the handshake, after it, and inside DATA."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_peer_harness import lose, make_peer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.peer import PeerFactory, PeerSession
from chatapp.wire import PEER_MAX_LINE

VERBS = ["HELLO", "WELCOME", "MSG", "PING", "PONG", "BYE", "OFFER", "ACCEPT", "REJECT", "DATA", "END", "DONE"]
VERBS += ["FAIL", "CANCEL", "OK", "ERR", "*", "hello", "Frob"]
ARGS = ["chatapp/2", "alice", "tok-alice", "f1", "f2", "0", "5", "100", "1048577", "../x", "a b.txt", "", "\x1b[2J"]
ARGS += ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]
REPLY = re.compile(
    r"(WELCOME chatapp/2 bob \S+|PONG|MSG .*|ACCEPT \S+ \d+( [0-9a-f]{64})?|REJECT \S+ [a-z-]+|DONE \S+"
    r"|FAIL \S+ [a-z-]+|CANCEL \S+ [a-z-]+|BYE|ERR (400|403|413|503) [a-z-]+( .*)?)"
)


@st.composite
def near_valid_lines(draw: st.DrawFn) -> bytes:
    words = [draw(st.sampled_from(VERBS)), *draw(st.lists(st.sampled_from(ARGS), max_size=4))]
    line = " ".join(words).encode()
    if draw(st.booleans()):
        line += b"\r\n" + draw(st.binary(max_size=40))  # raw bytes, as after a DATA line
    return line + draw(st.sampled_from([b"\r\n", b"\n", b""]))


streams = st.lists(
    st.one_of(near_valid_lines(), st.binary(max_size=64), st.just(b"x" * (PEER_MAX_LINE + 3))), max_size=12
)


def fresh_listener(tmp_path: Path, clock: Clock, handshake: bool) -> tuple[PeerFactory, PeerSession, StringTransport]:
    factory, _ = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session = factory.buildProtocol(None)
    transport = StringTransport()
    session.makeConnection(transport)
    if handshake:
        session.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")
    return factory, session, transport


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=streams,
    splits=st.lists(st.integers(min_value=1, max_value=50), min_size=1),
    handshake=st.booleans(),
    in_data=st.booleans(),
)
def test_fuzzed_peer_input_never_raises_and_stays_in_the_download_folder(
    tmp_path: Path, chunks: list[bytes], splits: list[int], handshake: bool, in_data: bool
) -> None:
    clock = Clock()
    factory, session, transport = fresh_listener(tmp_path, clock, handshake)
    prefix = b"OFFER f9 64 fuzz.bin\r\nDATA f9 64\r\n" if handshake and in_data else b""
    data = prefix + b"".join(chunks)
    position, i = 0, 0
    while position < len(data):
        size = splits[i % len(splits)]
        session.dataReceived(data[position : position + size])  # must never raise
        position += size
        i += 1
        assert len(session.framer._buffer) - session.framer._pos <= PEER_MAX_LINE + 2 + 50
    clock.advance(120)  # every deadline passes: handshake, DATA chunk
    output = transport.value().decode("utf-8")
    for line in output.split("\r\n")[:-1]:
        assert REPLY.fullmatch(line), line
    lose(session, transport)
    root = Path(factory.downloads.root)
    # nothing outside the download folder; inside it only regular files
    for dirpath, _dirnames, filenames in os.walk(tmp_path):
        for name in filenames:
            path = Path(dirpath) / name
            assert root in path.parents or path.name.endswith((".sqlite3",)), path
            assert not path.is_symlink()
