"""The receiver and the disk: fsync before DONE, O_EXCL|O_NOFOLLOW partials, a slow disk pauses one session."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_peer_harness import lose, make_peer, open_listener, partial_path, partials_in, sender_stream, sha
from twisted.internet import defer
from twisted.internet.task import Clock

from chatapp.peer import TransferState
from chatapp.peer.writer import HIGH_WATER, MAX_WRITE, MIN_WRITE

T = TypeVar("T")
MiB = 1024 * 1024


class ManualRunner:
    """A runner whose jobs wait until the test runs them: a disk as slow as the test wants."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = []

    def run(self, func: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        d: defer.Deferred[T] = defer.Deferred()
        self.jobs.append((func, args, d))
        return d

    @property
    def pending(self) -> int:
        return len(self.jobs)

    def run_one(self) -> None:
        func, args, d = self.jobs.pop(0)
        d.callback(func(*args))

    def run_all(self) -> int:
        done = 0
        while self.jobs:
            func, args, d = self.jobs.pop(0)
            d.callback(func(*args))
            done += 1
        return done

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_file_and_folder_are_fsynced_before_done(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    steps: list[str] = []
    real_fsync, real_place = fb.downloads.fsync, fb.downloads.place

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        steps.append(f"fsync {kind}" + (" after DONE" if b"DONE" in transport.value() else ""))
        real_fsync(fd)

    def place(partial: str, name: str) -> str:
        steps.append("place")
        return real_place(partial, name)

    fb.downloads.fsync = fsync  # type: ignore[method-assign]
    fb.downloads.place = place  # type: ignore[method-assign]
    offer, body = sender_stream("f", b"durable bytes", "d.txt")
    session.dataReceived(offer + body)
    assert steps == ["fsync file", "place", "fsync folder"]
    assert transport.value() == b"ACCEPT f 0\r\nDONE f\r\n"
    assert eb.offers[0].state is TransferState.DONE
    assert Path(fb.downloads.root, "d.txt").read_bytes() == b"durable bytes"


def test_a_failed_fsync_fails_the_transfer_and_sends_no_done(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)

    def fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    fb.downloads.fsync = fsync  # type: ignore[method-assign]
    offer, body = sender_stream("f", b"lost", "lost.txt")
    session.dataReceived(offer + body + b"MSG still here\r\n")
    assert transport.value() == b"ACCEPT f 0\r\nFAIL f write-error\r\n"
    assert eb.offers[0].state is TransferState.FAILED and partials_in(fb) == []
    assert eb.messages == ["still here"] and not os.path.exists(os.path.join(fb.downloads.root, "lost.txt"))


def test_new_partial_is_never_a_planted_link_or_an_existing_file(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    offer, _ = sender_stream("f", b"x" * 10, "p.bin")
    session.dataReceived(offer)
    transfer = eb.offers[0]
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    path = partial_path(fb, "alice", "p.bin", 10)
    fb.downloads.remove = lambda path: False  # type: ignore[method-assign]  # as if planted after the clean-up
    fb.downloads.kept_size = lambda path: None  # type: ignore[method-assign]
    os.symlink(outside, path)
    session.accept(transfer)
    assert transport.value() == b"REJECT f write-error\r\n"  # O_EXCL: the name is taken, nothing followed
    assert outside.read_bytes() == b"keep me" and os.path.islink(path)
    os.unlink(path)
    Path(path).write_bytes(b"old")
    with pytest.raises(FileExistsError):
        fb.downloads.open_new(path)  # its clean-up is off: O_EXCL alone refuses
    assert Path(path).read_bytes() == b"old"


def test_a_kept_partial_swapped_for_a_link_is_not_followed(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"abc")
    path = partial_path(fb, "alice", "p.bin", 10)
    os.symlink(outside, path)
    with pytest.raises(OSError):
        fb.downloads.open_append(path, 3)  # O_NOFOLLOW: ELOOP, not outside.txt
    assert outside.read_bytes() == b"abc"


def test_a_slow_disk_pauses_only_that_session_and_writes_are_coalesced(tmp_path: Path, clock: Clock) -> None:
    disk = ManualRunner()
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True, runner=disk)
    session, transport = open_listener(fb)
    other, other_transport = open_listener(fb, peer="bob", ticket="tok-bob")
    content = os.urandom(HIGH_WATER + 4 * MiB)
    session.dataReceived(f"OFFER f {len(content)} big.bin\r\n".encode())
    chunk = 256 * 1024
    for start in range(0, len(content), chunk):
        session.dataReceived(f"DATA f {chunk}\r\n".encode() + content[start : start + chunk])
        if transport.producerState == "paused":
            break
    received = start + chunk
    assert transport.producerState == "paused" and HIGH_WATER < received <= HIGH_WATER + MiB
    assert len(disk.jobs) == 1  # one write in flight; the rest waits, to be joined
    other.dataReceived(b"MSG the other chat goes on\r\n")
    assert eb.messages == ["the other chat goes on"] and other_transport.producerState == "producing"
    writes: list[int] = []
    real_write = fb.downloads.write

    def write(fd: int, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        writes.append(sum(map(len, pieces)))
        real_write(fd, pieces)

    fb.downloads.write = write  # type: ignore[method-assign]
    disk.run_all()
    assert transport.producerState == "producing"
    assert max(writes) <= MAX_WRITE and len(writes) <= received // MAX_WRITE + 1
    for start in range(received, len(content), chunk):
        session.dataReceived(f"DATA f {chunk}\r\n".encode() + content[start : start + chunk])
        disk.run_all()
    session.dataReceived(f"END f {sha(content)}\r\n".encode())
    assert b"DONE" not in transport.value()  # the fsync has not run yet
    disk.run_all()
    assert transport.value().endswith(b"DONE f\r\n")
    assert Path(fb.downloads.root, "big.bin").read_bytes() == content


def test_a_slow_write_does_not_hold_a_dropped_connection(tmp_path: Path, clock: Clock) -> None:
    disk = ManualRunner()
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True, runner=disk)
    session, transport = open_listener(fb)
    # enough for a write to start (the writer gathers MIN_WRITE bytes first)
    offer, body = sender_stream("f", b"y" * (MIN_WRITE + 100), "slow.bin", chunk=64 * 1024)
    session.dataReceived(offer + body.split(b"END")[0])
    assert len(disk.jobs) == 1
    lose(session, transport)
    assert eb.offers[0].state is TransferState.CANCELLED
    disk.run_all()  # the write in flight ends; the file is closed and kept for a resume
    assert partials_in(fb) != []


def test_writer_finished_from_inside_its_backlog_callback_writes_every_byte(tmp_path: Path) -> None:
    """Easing the backlog resumes reading; over TLS the transport then delivers what it holds at once,
    so the last bytes and END (finish) can arrive inside the callback, while a write is due."""
    import hashlib
    import os

    from twisted.internet import defer

    from chatapp.peer.downloads import DownloadDir
    from chatapp.peer.writer import FileWriter
    from chatapp.runner import Runner

    class Deferring:
        """Runs each call when the test says, like a thread pool that answers later."""

        def __init__(self) -> None:
            self.due: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

        def run(self, func: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            self.due.append((func, args, d))
            return d

        def start(self) -> None: ...
        def stop(self) -> None: ...

    runner = Deferring()
    path = tmp_path / "out.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    downloads = DownloadDir(str(tmp_path), 2**30, 10)
    finished: list[str] = []
    writer: FileWriter

    def backlog(on: bool) -> None:
        if not on:  # the reader resumes: the rest and END come in at once
            writer.write(b"c" * 10)
            writer.finish().addCallback(finished.append)

    r: Runner = runner
    writer = FileWriter(r, downloads, fd, hashlib.sha256(), lambda e: None, backlog, lambda f: None, 15, 5)
    writer.write(b"a" * 10)
    writer.write(b"b" * 10)  # over the high water: backlogged
    while runner.due:
        func, args, d = runner.due.pop(0)
        d.callback(func(*args))
    assert path.read_bytes() == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert finished == [hashlib.sha256(path.read_bytes()).hexdigest()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(st.one_of(st.binary(min_size=1, max_size=40), st.just(b"")), min_size=1, max_size=60),
    resume_feeds=st.booleans(),
)
def test_at_most_one_write_of_a_file_is_ever_in_flight(tmp_path: Path, steps: list[bytes], resume_feeds: bool) -> None:
    """Bytes arrive (a piece) or the disk answers (an empty step), in any order; easing the backlog may
    deliver more bytes at once (as TLS does). Whatever the order, one write at a time, in order."""
    import hashlib

    from chatapp.peer.downloads import DownloadDir
    from chatapp.peer.writer import FileWriter, Stage

    runner = ManualRunner()
    path = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    downloads = DownloadDir(str(tmp_path), 2**30, 10)
    sent: list[bytes] = []
    writer: FileWriter

    def backlog(on: bool) -> None:
        # the reader resumes: more bytes may come at once, but never after END (finish)
        if not on and resume_feeds and writer.stage is Stage.WRITING:
            sent.append(b"r")
            writer.write(b"r")

    writer = FileWriter(runner, downloads, fd, hashlib.sha256(), lambda e: None, backlog, lambda f: None, 64, 16)
    for step in steps:
        if step:
            sent.append(step)
            writer.write(step)
        elif runner.pending:
            runner.run_one()
        assert runner.pending <= 1  # one write (or the final fsync) in flight, never two
    done: list[str] = []
    writer.finish().addCallback(done.append)
    while runner.pending:
        runner.run_one()
        assert runner.pending <= 1
    assert path.read_bytes() == b"".join(sent)
    assert done == [hashlib.sha256(b"".join(sent)).hexdigest()]


def test_a_resume_offered_while_the_cut_transfer_still_writes_waits_for_it(tmp_path: Path, clock: Clock) -> None:
    """The link drops with bytes still on their way to a slow disk; the sender reconnects at once and
    offers the file again. The kept partial is measured and hashed once those bytes are written, so
    the resume starts after all of them (not from what the file held at that moment, nor from 0)."""
    import hashlib

    disk = ManualRunner()
    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True, runner=disk)
    session, transport = open_listener(fb)
    content = os.urandom(3 * MIN_WRITE)
    received = MIN_WRITE + MIN_WRITE // 2  # one write in flight, half a write queued
    offer = b"OFFER f %d resume.bin\r\n" % len(content)
    session.dataReceived(offer + data_chunks(content, 0, received))
    assert disk.pending == 1
    lose(session, transport)
    again, again_transport = open_listener(fb)
    again.dataReceived(offer)
    assert b"ACCEPT" not in again_transport.value()  # the earlier writer is still at work
    disk.run_all()  # its write, the rest it held, the close; then the prefix hash of the kept partial
    assert again_transport.value() == b"ACCEPT f %d %s\r\n" % (received, sha(content[:received]).encode())
    again.dataReceived(data_chunks(content, received, len(content)) + b"END f %s\r\n" % sha(content).encode())
    disk.run_all()
    assert again_transport.value().endswith(b"DONE f\r\n")
    assert hashlib.sha256(Path(fb.downloads.root, "resume.bin").read_bytes()).hexdigest() == sha(content)
    assert fb.closing_partials == {}


def data_chunks(content: bytes, start: int, end: int) -> bytes:
    """DATA lines of ``f`` carrying ``content[start:end]`` in 1 MiB chunks (the largest allowed)."""
    return b"".join(
        b"DATA f %d\r\n" % len(content[at : min(at + MiB, end)]) + content[at : min(at + MiB, end)]
        for at in range(start, end, MiB)
    )


def test_a_cancelled_receive_keeps_every_byte_received_even_those_still_queued(tmp_path: Path, clock: Clock) -> None:
    """What a cancel reports as kept (bytes received) is what the partial holds once its writer closed it."""
    disk = ManualRunner()
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True, runner=disk)
    session, _ = open_listener(fb)
    content = os.urandom(2 * MIN_WRITE)
    received = MIN_WRITE + MIN_WRITE // 2  # one write in flight, half a write queued behind it
    session.dataReceived(b"OFFER f %d kept.bin\r\n" % len(content) + data_chunks(content, 0, received))
    transfer = eb.offers[0]
    session.cancel(transfer)
    assert transfer.state is TransferState.REJECTED and transfer.reason == "cancelled"  # REJECT f cancelled
    assert transfer.bytes_done == received
    disk.run_all()
    (partial,) = partials_in(fb)
    assert Path(fb.downloads.partial_root, partial).read_bytes() == content[:received]


def test_queued_views_pin_at_most_twice_what_they_count(tmp_path: Path) -> None:
    """A small view is copied unless the piece queued before it already holds its buffer alive (the
    two sides of a DATA line in one socket read): no copy that saves no memory."""
    import hashlib

    from chatapp.peer.downloads import DownloadDir
    from chatapp.peer.writer import FileWriter

    runner = ManualRunner()
    path = tmp_path / "out.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    writer = FileWriter(runner, DownloadDir(str(tmp_path), 2**30, 10), fd, hashlib.sha256(), print, print, print)
    read_one, read_two = os.urandom(256 * 1024), os.urandom(256 * 1024)
    first = memoryview(read_one)
    writer.write(first[: 200 * 1024])  # most of its buffer: kept
    writer.write(first[200 * 1024 + 20 :])  # small, but its buffer is held by the piece before
    writer.write(memoryview(read_two)[: 40 * 1024])  # small, and alone in holding its buffer: copied
    writer.finish()
    _fd, batch = runner.jobs[0][1]
    assert [getattr(piece, "obj", None) for piece in batch] == [read_one, read_one, None]
    assert [len(piece) for piece in batch] == [200 * 1024, 56 * 1024 - 20, 40 * 1024]
    runner.run_all()
    assert path.read_bytes() == read_one[: 200 * 1024] + read_one[200 * 1024 + 20 :] + read_two[: 40 * 1024]


def test_a_writer_cut_by_a_failed_write_is_not_intact(tmp_path: Path) -> None:
    """Its hash then covers bytes the partial lacks: a resume must hash the file itself."""
    import errno
    import hashlib

    from chatapp.peer.downloads import DownloadDir
    from chatapp.peer.writer import MIN_WRITE, FileWriter

    class FailingDisk(DownloadDir):
        def write(self, fd: int, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
            raise OSError(errno.EIO, "I/O error")

    runner = ManualRunner()
    fd = os.open(tmp_path / "out.part", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    writer = FileWriter(runner, FailingDisk(str(tmp_path), 2**30, 10), fd, hashlib.sha256(), print, print, print)
    writer.write(os.urandom(MIN_WRITE))  # a write starts
    assert writer.intact and runner.pending == 1
    writer.abandon()  # the transfer was cut while it was in flight
    runner.run_all()
    assert writer.closed.called and not writer.intact
