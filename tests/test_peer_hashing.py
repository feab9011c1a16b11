"""Prefix hashing for a resume: the right bytes, a short file refused, and never on the reactor thread."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_peer_harness import make_peer
from twisted.internet import defer
from twisted.internet.task import Clock

from chatapp.peer.hashing import ShortFile, hash_file_prefix
from chatapp.runner import ThreadRunner


def result_of(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0] if out else None


def descriptor(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 10_000])
def test_sizes_around_the_slice(tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * 100
    fd = descriptor(tmp_path, data)
    assert hash_file_prefix(fd, size, slice_size=4096).hexdigest() == hashlib.sha256(data[:size]).hexdigest()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


def test_short_file_fails(tmp_path: Path) -> None:
    fd = descriptor(tmp_path, b"abc")
    with pytest.raises(ShortFile):
        hash_file_prefix(fd, 10)


@pytest_twisted.ensureDeferred
async def test_a_send_resumes_from_a_hash_made_off_the_reactor_thread(tmp_path: Path) -> None:
    """The file we send is hashed up to the receiver's offset on a disk thread, then read from there."""
    from twisted.internet import reactor

    import chatapp.peer.factory as factory_module

    data = os.urandom(300_000)
    path = tmp_path / "send.bin"
    path.write_bytes(data)
    threads: list[str] = []
    real = hash_file_prefix

    def recorded(fd: int, length: int) -> Any:
        threads.append(threading.current_thread().name)
        return real(fd, length)

    runner = ThreadRunner(reactor, 1, "test-disk")
    runner.start()
    fb, _ = make_peer(tmp_path, "alice", Clock(), runner=runner)
    factory_module.hash_file_prefix = recorded  # type: ignore[assignment]
    try:
        with path.open("rb") as source:
            hasher = await fb.hash_source(source, 123_456).addTimeout(10, reactor)
            assert hasher.hexdigest() == hashlib.sha256(data[:123_456]).hexdigest()
            assert source.read(10) == data[123_456:123_466]  # positioned at the offset
            # from the start: nothing to read, no thread
            assert result_of(fb.hash_source(source, 0)).hexdigest() == hashlib.sha256(b"").hexdigest()
    finally:
        factory_module.hash_file_prefix = real
        runner.stop()
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
