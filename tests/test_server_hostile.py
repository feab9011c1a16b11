"""Hostile input and faults against the server: fuzzing, greedy clients, kill -9 under load."""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from conftest import make_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from line_client import connect_lines
from processes import LineSocket, start_server, stop
from server_harness import PASSWORD, Conn
from twisted.internet.task import Clock

from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.wire import SERVER_MAX_LINE

REASONS = {
    "400": {"unknown-command", "bad-arguments", "bad-username", "bad-password", "bad-port", "bad-host", "bad-encoding"},
    "401": {"bad-credentials"},
    "403": {"not-logged-in", "bad-token"},
    "404": {"no-such-user"},
    "409": {"user-exists", "already-logged-in", "not-online", "not-listening"},
    "413": {"line-too-long"},
    "429": {"blocked", "locked", "slow-down"},
    "503": {"busy"},
}
VALID_LINE = re.compile(r"(OK [A-Z]+( \S+)*|\+ USER \S+ (online|listening)|\* [A-Z]+( \S+)*|ERR \d{3} [a-z-]+( .*)?)")

VERBS = ["SIGNUP", "LOGIN", "PASSWD", "LISTEN", "UNLISTEN", "WHO", "CONNECT", "VERIFY", "PING", "QUIT", "login", "Frob"]
ARGS = ["alice", "bob", "Alice", PASSWORD, "wrongpassword1", "4000", "65536", "127.0.0.1", "::1", "x" * 40, "", " "]


@st.composite
def near_valid_lines(draw: st.DrawFn) -> bytes:
    words = [draw(st.sampled_from(VERBS)), *draw(st.lists(st.sampled_from(ARGS), max_size=4))]
    line = " ".join(words).encode()
    if draw(st.booleans()):
        line = draw(st.binary(max_size=8)) + line
    return line + draw(st.sampled_from([b"\r\n", b"\n", b"\r", b""]))


streams = st.lists(
    st.one_of(near_valid_lines(), st.binary(max_size=64), st.just(b"x" * (SERVER_MAX_LINE + 3))),
    max_size=12,
)


@pytest.fixture(scope="module")
def shared_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerFactory, Clock]]:
    clock = Clock()
    clock.advance(1_000_000)
    factory = make_factory(
        str(tmp_path_factory.mktemp("fuzz") / "db"),
        clock,
        ServerConfig(signups_per_hour=1000, max_connections_per_address=10**6),
    )
    yield factory, clock
    factory.store.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=streams, splits=st.lists(st.integers(min_value=1, max_value=50), min_size=1), host=st.integers(1, 20))
def test_fuzzed_input_never_raises_and_every_reply_is_well_formed(
    shared_factory: tuple[ServerFactory, Clock], chunks: list[bytes], splits: list[int], host: int
) -> None:
    factory, clock = shared_factory
    conn = Conn(factory, host=f"127.0.5.{host}")
    data = b"".join(chunks)
    position, i = 0, 0
    while position < len(data):
        size = splits[i % len(splits)]
        conn.proto.dataReceived(data[position : position + size])  # must never raise
        position += size
        i += 1
        assert len(conn.proto._lines._buffer) <= SERVER_MAX_LINE + 2
    clock.advance(1)
    output = conn.transport.value().decode("utf-8")
    assert output == "" or output.endswith("\r\n")
    for line in output.split("\r\n")[:-1]:
        assert VALID_LINE.fullmatch(line), line
        if line.startswith("ERR"):
            code, reason = line.split(" ")[1:3]
            assert reason in REASONS[code], line
        if line.startswith("ERR 413"):
            assert conn.transport.disconnecting
    conn.drop()
    assert conn.proto not in factory.connections


@pytest_twisted.ensureDeferred
async def test_500_idle_connections_from_one_address_do_not_stop_a_login_from_another(tmp_path: Path) -> None:
    from live_server import start_server as start_service

    service, port = await start_service(str(tmp_path / "db"), "--max-connections-per-address", "20")
    try:
        hogs = [await connect_lines(port, source="127.0.9.9", greeting=None) for _ in range(500)]
        first_lines = [await hog.next_line() for hog in hogs]
        assert first_lines.count("* HELLO chatapp/2") == 20
        assert first_lines.count("* BYE too-many-connections") == 480
        honest = await connect_lines(port, source="127.0.9.10")
        assert await honest.ask(f"SIGNUP honest {PASSWORD}") == "OK SIGNUP honest"
        await honest.close()
        for hog in hogs:
            await hog.close()
    finally:
        await service.stopService()


@pytest.mark.slow
def test_kill_9_during_50_concurrent_signups_loses_no_acknowledged_account(tmp_path: Path) -> None:
    process, port = start_server(
        tmp_path, "--db", "db", "--signups-per-hour", "1000", "--max-connections-per-address", "100"
    )
    acknowledged: list[str] = []
    lock = threading.Lock()

    def sign_up(i: int) -> None:
        try:
            client = LineSocket(port)
            client.line()
            if client.ask(f"SIGNUP user{i} {PASSWORD}") == f"OK SIGNUP user{i}":
                with lock:
                    acknowledged.append(f"user{i}")
        except (OSError, EOFError):
            pass  # cut by the kill: such a signup was never acknowledged

    # a few signups first, so the kill lands while the server is busy with the rest
    threads = [threading.Thread(target=sign_up, args=(i,)) for i in range(50)]
    for t in threads[:10]:
        t.start()
    for t in threads[:10]:
        t.join(10)
    for t in threads[10:]:
        t.start()
    stop(process, signal.SIGKILL)
    for t in threads[10:]:
        t.join(10)
    assert len(acknowledged) >= 10

    db = sqlite3.connect(tmp_path / "db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    process, port = start_server(tmp_path, "--db", "db")
    try:
        for name in acknowledged:
            client = LineSocket(port)
            client.line()
            assert client.ask(f"LOGIN {name} {PASSWORD}") == f"OK LOGIN {name}"
            assert client.ask("WHO") == f"+ USER {name} online"  # the registry started empty
            client.close()
    finally:
        stop(process)
