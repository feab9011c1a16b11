"""One bound on what every received file together holds in memory while the disk is slower than the network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_peer_disk import ManualRunner
from test_peer_harness import TOKENS, dict_verify, make_peer, open_listener, sha
from twisted.internet.task import Clock

from chatapp.peer import TransferState
from chatapp.peer.backlog import DiskBacklog
from chatapp.peer.downloads import DownloadDir
from chatapp.peer.writer import MIN_WRITE, FileWriter, Stage

MiB = 1024 * 1024
CHUNK = 64 * 1024


class Waiter:
    def __init__(self, total: DiskBacklog, take: int = 0) -> None:
        self.total = total
        self.take = take  # bytes taken at once when let go (a TLS transport delivers what it holds)
        self.eased = 0

    def backlog_eased(self) -> None:
        self.eased += 1
        if self.take:
            self.total.grow(self.take)


def test_the_total_stops_at_its_limit_and_lets_go_at_the_resume_mark() -> None:
    passed: list[int] = []
    total = DiskBacklog(limit=100, resume_at=40, on_over=lambda: passed.append(total.total))
    total.grow(100)
    assert not total.over  # at the limit, not past it
    total.grow(1)
    assert total.over
    first, second = Waiter(total), Waiter(total)
    total.hold(first)
    total.hold(second)
    total.shrink(60)
    assert total.over and (first.eased, second.eased) == (0, 0)  # 41 waits: above the resume mark
    total.shrink(1)
    assert not total.over and (first.eased, second.eased) == (1, 1) and total.held == 0
    total.grow(100)
    total.grow(5)
    assert passed == [101, 140]  # each time it passes the limit, not for each byte over it


def test_a_writer_let_go_that_takes_the_total_over_again_keeps_the_rest_waiting() -> None:
    total = DiskBacklog(limit=100, resume_at=50)
    total.grow(101)
    greedy, patient = Waiter(total, take=60), Waiter(total)
    total.hold(greedy)
    total.hold(patient)
    total.shrink(51)  # 50: let go, in the order they stopped; the first takes 60 at once
    assert greedy.eased == 1 and patient.eased == 0 and total.over and total.held == 1
    total.shrink(60)
    assert patient.eased == 1 and total.held == 0


def test_a_limit_must_be_positive() -> None:
    try:
        DiskBacklog(limit=0)
    except ValueError:
        return
    raise AssertionError("a zero limit was taken")


def test_sessions_stop_reading_once_all_files_together_pass_the_limit(tmp_path: Path, clock: Clock) -> None:
    """Three peers send at once to a disk that does not answer; each file stays far under its own
    16 MiB mark. Past the factory's 2 MiB the sessions that take more stop reading; a session that
    sends no file goes on chatting; when the disk catches up every file is written whole."""
    disk = ManualRunner()
    tokens = TOKENS | {"tok-carol": ("carol", "proof-carol"), "tok-dave": ("dave", "proof-dave")}
    fb, eb = make_peer(
        tmp_path, "bob", clock, dict_verify(tokens), auto_accept=True, runner=disk, disk_backlog_limit=2 * MiB
    )
    senders = {name: open_listener(fb, peer=name, ticket=f"tok-{name}") for name in ("alice", "carol", "dave")}
    chatter, chatter_transport = open_listener(fb, peer="bob", ticket="tok-bob")
    contents = {name: os.urandom(2 * MiB) for name in senders}
    for name, (session, _) in senders.items():
        session.dataReceived(f"OFFER {name} {len(contents[name])} {name}.bin\r\n".encode())
    sent = dict.fromkeys(senders, 0)

    def send(name: str, count: int) -> None:
        session, _ = senders[name]
        for _ in range(count):
            start = sent[name]
            session.dataReceived(f"DATA {name} {CHUNK}\r\n".encode() + contents[name][start : start + CHUNK])
            sent[name] += CHUNK

    assert 13 * CHUNK < MIN_WRITE  # so no write starts below on a writer's own count
    send("alice", 12)  # 768 KiB, gathered for a write
    send("carol", 12)  # 1.5 MiB in all
    assert all(t.producerState == "producing" for _, t in senders.values())
    send("dave", 9)  # 2.06 MiB: past the total; dave's session, the one taking, stops
    assert fb.limits_hit.get("peer-disk-backlog") == 1  # logged once, counted
    states = {name: t.producerState for name, (_, t) in senders.items()}
    assert states == {"alice": "producing", "carol": "producing", "dave": "paused"}
    assert fb.disk_backlog.total == 33 * CHUNK and fb.disk_backlog.over
    send("alice", 1)  # alice takes one more chunk while the total is over: she stops too
    assert senders["alice"][1].producerState == "paused"
    chatter.dataReceived(b"MSG the chat without a file goes on\r\n")
    assert eb.messages == ["the chat without a file goes on"] and chatter_transport.producerState == "producing"
    # every stopped writer has its bytes on their way to the disk at once, not after FLUSH_AFTER
    assert disk.pending == 2
    disk.run_all()
    assert not fb.disk_backlog.over and fb.disk_backlog.held == 0
    assert all(t.producerState == "producing" for _, t in senders.values())
    for name, (session, transport) in senders.items():
        while sent[name] < len(contents[name]):
            send(name, 1)
            disk.run_all()
        session.dataReceived(f"END {name} {sha(contents[name])}\r\n".encode())
        disk.run_all()
        assert transport.value().endswith(f"DONE {name}\r\n".encode()), transport.value()
        assert Path(fb.downloads.root, f"{name}.bin").read_bytes() == contents[name]
    assert fb.disk_backlog.total == 0 and fb.disk_backlog.held == 0
    assert all(t.state is TransferState.DONE for t in eb.offers)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.one_of(st.binary(min_size=1, max_size=40), st.just(b""))),
        min_size=1,
        max_size=80,
    ),
    resume_feeds=st.booleans(),
)
def test_writers_sharing_a_total_always_count_it_exactly_and_never_wait_for_nothing(
    tmp_path: Path, steps: list[tuple[int, bytes]], resume_feeds: bool
) -> None:
    """Three writers, each with its own slow disk, report to one total. Bytes arrive or a disk answers in
    any order; a writer let go may take bytes at once (as TLS delivers). The total is always the sum of
    what the writers hold; a writer told to stop always has a write in flight that will ease it; each
    file is written whole and in order."""
    total = DiskBacklog(limit=200, resume_at=80)  # more than the three can hold below their first write
    runners = [ManualRunner() for _ in range(3)]
    writers: list[FileWriter] = []
    stopped = [False, False, False]
    sent: list[list[bytes]] = [[], [], []]
    base = len(list(tmp_path.iterdir()))
    paths = [tmp_path / f"out-{base}-{i}.part" for i in range(3)]

    def on_backlog(index: int, over: bool) -> None:
        stopped[index] = over
        writer = writers[index]
        if not over and resume_feeds and writer.stage is Stage.WRITING:
            sent[index].append(b"r")
            writer.write(b"r")

    downloads = DownloadDir(str(tmp_path), 2**30, 10)

    def unexpected(problem: object) -> None:
        raise AssertionError(f"the writer reported {problem!r}")

    for index, path in enumerate(paths):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)

        def report(over: bool, index: int = index) -> None:
            on_backlog(index, over)

        writer = FileWriter(
            runners[index], downloads, fd, hashlib.sha256(), unexpected, report, unexpected, 64, 16, backlog=total
        )
        writers.append(writer)

    def check() -> None:
        assert total.total == sum(w.buffered for w in writers)
        for index, runner in enumerate(runners):
            assert runner.pending <= 1
            if stopped[index]:
                assert runner.pending == 1, f"writer {index} stopped with nothing on its way to the disk"

    for index, piece in steps:
        if piece:
            if not stopped[index]:  # a stopped session reads nothing
                sent[index].append(piece)
                writers[index].write(piece)
        elif runners[index].pending:
            runners[index].run_one()
        check()
    for index in range(len(writers)):
        while runners[index].pending:  # what a stopped session waits for
            runners[index].run_one()
            check()
    digests: list[list[str]] = [[], [], []]
    for index, writer in enumerate(writers):
        writer.finish().addCallback(digests[index].append)
        while runners[index].pending:
            runners[index].run_one()
            check()
    for index, path in enumerate(paths):
        assert path.read_bytes() == b"".join(sent[index])
        assert digests[index] == [hashlib.sha256(path.read_bytes()).hexdigest()]
    assert total.total == 0 and total.held == 0 and not any(stopped)
