"""Three real ``twistd -n chatserver`` processes on one Redis and one database, end to end.

The database is one SQLite file all three open (the blocks are shared through it); on a
PostgreSQL branch the same test runs with ``--db postgresql://…``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from chat_harness import PASSWORD, start_client
from processes import FINGERPRINT, LISTENING, LineSocket, pin_server, stop, twistd, wait_for_output
from twisted.internet import reactor, task

from chatapp.app import ChatClient
from chatapp.events import GaveUp, TransferEnded
from chatapp.peer import TransferState
from chatapp.server.registry.redis import HEARTBEAT_EVERY, HEARTBEAT_TTL


class Cluster:
    def __init__(self, tmp_path: Path, redis_url: str, postgres_url: str) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.postgres_url = postgres_url
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            # One working directory, so one certificate (chatserver-tls.pem, made by the first):
            # clients see one fingerprint behind any process.
            process = twistd(
                "-n", "--pidfile=", "chatserver", "--listen", "tcp:0:interface=127.0.0.1", "--bcrypt-rounds", "4",
                "--db", self.postgres_url, "--registry", self.redis_url,
                cwd=self.tmp_path,
            )  # fmt: skip
            self.processes.append(process)
            fingerprint = wait_for_output(process, FINGERPRINT).group(1)
            port = int(wait_for_output(process, LISTENING).group(1))
            pin_server(port, fingerprint)
            self.ports.append(port)

    def stop(self) -> None:
        for process in self.processes:
            stop(process)


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, postgres_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, redis_url, postgres_url)
    try:
        c.start(3)
        yield c
    finally:
        c.stop()


def logged_in(port: int, name: str, signup: bool = False) -> LineSocket:
    line = LineSocket(port)
    assert line.line().startswith("* HELLO")
    verb = "SIGNUP" if signup else "LOGIN"
    assert line.ask(f"{verb} {name} {PASSWORD}") == f"OK {verb} {name}"
    return line


def who(line: LineSocket) -> set[str]:
    line.send("WHO")
    names = set()
    while (row := line.line()).startswith("+ USER"):
        names.add(row.split()[2])
    assert row.startswith("OK WHO")
    return names


@pytest_twisted.async_yield_fixture
async def clients() -> AsyncIterator[list[ChatClient]]:
    held: list[ChatClient] = []
    yield held
    for client in held:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_three_processes_one_service(cluster: Cluster, clients: list[ChatClient], tmp_path: Path) -> None:
    one, two, three = cluster.ports
    # alice on process 1 chats with and sends a file to bob on process 3.
    alice, _ = await start_client(one, "alice", tmp_path, auto_accept=True)
    clients.append(alice)
    bob, b = await start_client(three, "bob", tmp_path, auto_accept=True)
    clients.append(bob)
    await alice.send_message("bob", "hello from process 1")
    await b.until(lambda: ("alice", "hello from process 1") in b.messages())
    sent = tmp_path / "note.txt"
    sent.write_bytes(b"across processes\n" * 1000)
    await alice.send_file("bob", str(sent))
    await b.until(lambda: any(t.state is TransferState.DONE for t in b.ended()))
    assert (tmp_path / "bob" / "downloads" / "note.txt").read_bytes() == sent.read_bytes()

    # bob logs in again on process 2: the session on process 3 gets "* BYE replaced".
    bob_again, _ = await start_client(two, "bob", tmp_path / "again", signup=False)
    clients.append(bob_again)
    await b.until(lambda: bool(b.of(GaveUp)))
    assert "replaced" in str(b.of(GaveUp)[0].error) or "somewhere else" in str(b.of(GaveUp)[0].error)
    assert not [e for e in b.events if isinstance(e, TransferEnded) and e.transfer.state is not TransferState.DONE]

    # carol on process 3, a watcher on process 1.
    carol = logged_in(three, "carol", signup=True)
    watcher = logged_in(one, "dave", signup=True)
    assert {"alice", "bob", "carol", "dave"} <= who(watcher)

    # 3 wrong passwords spread over three processes block the address everywhere.
    answers = []
    for port in (one, two, three):
        line = LineSocket(port)
        line.line()
        answers.append(line.ask("LOGIN alice wrong-password-here"))
        line.close()
    assert answers[0].startswith("ERR 401 bad-credentials 2 ")
    assert answers[1].startswith("ERR 401 bad-credentials 1 ")
    assert answers[2].startswith("ERR 429 blocked ")
    late = LineSocket(two)
    assert late.line().startswith("* BLOCKED ")
    late.close()

    # Process 3 dies without a word: its users leave WHO on the others within the heartbeat's bound.
    cluster.processes[2].send_signal(signal.SIGKILL)
    cluster.processes[2].wait(10)
    killed = time.monotonic()
    bound = HEARTBEAT_TTL + HEARTBEAT_EVERY + 2.0
    while "carol" in who(watcher):
        assert time.monotonic() - killed < bound, "carol still listed after the heartbeat ran out"
        await task.deferLater(reactor, 0.25, lambda: None)
    assert "dave" in who(watcher) and "alice" in who(watcher)
    carol.close()
    watcher.close()
