"""FileWriter and DownloadDir.write: what a received file costs in memory and calls on its way to disk."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from test_peer_disk import ManualRunner

from chatapp.peer import downloads as downloads_module
from chatapp.peer.downloads import DownloadDir
from chatapp.peer.writer import MAX_WRITE, MIN_WRITE, SMALL_PIECE, FileWriter

MiB = 1024 * 1024


class Recorded(DownloadDir):
    """A download folder that remembers the pieces of every write."""

    def __init__(self, root: str) -> None:
        super().__init__(root, 2**30, 10)
        self.writes: list[int] = []  # pieces per write

    def write(self, fd: int, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        self.writes.append(len(pieces))
        super().write(fd, pieces)


def new_writer(tmp_path: Path, runner: ManualRunner, **marks: Any) -> tuple[FileWriter, Recorded, Path]:
    downloads = Recorded(str(tmp_path))
    path = tmp_path / "out.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    def unexpected(problem: object) -> None:
        pytest.fail(f"the writer reported {problem!r}")

    writer = FileWriter(runner, downloads, fd, hashlib.sha256(), unexpected, lambda on: None, unexpected, **marks)
    return writer, downloads, path


def finish(writer: FileWriter, runner: ManualRunner) -> str:
    done: list[str] = []
    writer.finish().addCallback(done.append)
    runner.run_all()
    assert len(done) == 1
    return done[0]


def test_a_flood_of_one_byte_pieces_is_held_in_a_few_buffers(tmp_path: Path) -> None:
    runner = ManualRunner()
    low_water = 64 * 1024  # a write starts at 64 KiB: the test stays quick under tracemalloc
    writer, downloads, path = new_writer(tmp_path, runner, high_water=4 * low_water, low_water=low_water)
    count = 3 * low_water // 2
    tracemalloc.start()
    try:
        for _ in range(count):
            writer.write(b"x")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one bytes object a piece would be ~50 bytes each with the queue; copied into buffers it is the bytes themselves
    assert peak < 2 * count, peak
    assert writer.buffered == count and runner.pending == 1  # the first 64 KiB went out as one write
    digest = finish(writer, runner)
    assert path.read_bytes() == b"x" * count
    assert digest == hashlib.sha256(b"x" * count).hexdigest()
    assert downloads.writes == [1, 1]


def test_a_small_view_of_a_big_buffer_is_copied_a_large_one_is_not(tmp_path: Path) -> None:
    runner = ManualRunner()
    writer, _, path = new_writer(tmp_path, runner)
    small_source, large_source = os.urandom(MiB), os.urandom(MiB)
    small_before, large_before = sys.getrefcount(small_source), sys.getrefcount(large_source)
    writer.write(memoryview(small_source)[: MiB // 4])  # a quarter: copied, the megabyte is not kept alive
    writer.write(memoryview(large_source)[: 3 * MiB // 4])  # three quarters: queued as it is
    assert sys.getrefcount(small_source) == small_before
    assert sys.getrefcount(large_source) == large_before + 1
    finish(writer, runner)
    assert path.read_bytes() == small_source[: MiB // 4] + large_source[: 3 * MiB // 4]
    assert sys.getrefcount(large_source) == large_before  # written: let go


def test_pieces_are_hashed_as_they_come_and_written_together(tmp_path: Path) -> None:
    runner = ManualRunner()
    writer, downloads, path = new_writer(tmp_path, runner)
    rng = random.Random(7)
    pieces = [rng.randbytes(rng.choice((1, 100, SMALL_PIECE - 1, SMALL_PIECE, 200_000))) for _ in range(200)]
    for piece in pieces:
        writer.write(piece)
        if rng.random() < 0.1:
            runner.run_all()
    digest = finish(writer, runner)
    content = b"".join(pieces)
    assert path.read_bytes() == content and digest == hashlib.sha256(content).hexdigest()
    assert len(downloads.writes) <= len(content) // MIN_WRITE + 25  # few writes, each of many pieces
    assert max(downloads.writes) <= 2 * MAX_WRITE // SMALL_PIECE  # never more iovecs than writev takes


def test_a_short_write_goes_on_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev
    calls: list[int] = []

    def short_writev(fd: int, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        calls.append(len(buffers))
        head = b"".join(bytes(b) for b in buffers)[: random.randint(1, 5000)]
        return real_writev(fd, [head])

    monkeypatch.setattr(os, "writev", short_writev)
    rng = random.Random(3)
    pieces = [rng.randbytes(rng.randint(0, 40)) for _ in range(3000)]
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        DownloadDir(str(tmp_path), 2**30, 10).write(fd, pieces)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(pieces)
    assert max(calls) <= downloads_module.IOV_LIMIT


def test_a_trickle_is_written_within_a_second_not_held_until_a_megabyte(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from chatapp.peer.writer import FLUSH_AFTER

    runner, clock = ManualRunner(), Clock()
    writer, _, path = new_writer(tmp_path, runner, clock=clock)
    writer.write(b"a" * 1000)
    clock.advance(FLUSH_AFTER / 2)
    writer.write(b"b" * 1000)
    assert runner.pending == 0  # under MIN_WRITE, waited less than FLUSH_AFTER
    clock.advance(FLUSH_AFTER / 2)
    assert runner.pending == 1  # the first byte waited FLUSH_AFTER: both pieces go
    writer.write(b"c" * 1000)  # while that write is in flight
    runner.run_all()
    assert path.read_bytes() == b"a" * 1000 + b"b" * 1000 and writer.buffered == 1000
    clock.advance(FLUSH_AFTER)
    runner.run_all()
    assert writer.buffered == 0 and path.stat().st_size == 3000
    assert finish(writer, runner) == hashlib.sha256(b"a" * 1000 + b"b" * 1000 + b"c" * 1000).hexdigest()
    assert clock.getDelayedCalls() == []
