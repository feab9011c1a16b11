"""Memory stays flat whatever the file size: the sender reads a chunk at a time, the receiver writes as bytes come."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

from test_peer_harness import key_of, make_peer, open_listener, secure, sha
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.peer import PeerSession, Role, TransferState
from chatapp.peer.writer import MIN_WRITE

SIZE = 48 * 1024 * 1024
CHUNK = 256 * 1024


class DiscardingTransport(StringTransport):
    """Counts what is written and drops it; pauses the producer after each chunk, like a full TCP buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.chunks = 0
        self.tail = b""

    def write(self, data: bytes) -> None:
        self.count += len(data)
        self.tail = (self.tail + data)[-200:]
        if len(data) > 1000 and self.producer is not None:
            self.chunks += 1
            self.producer.pauseProducing()


def test_sender_memory_is_flat(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(SIZE)  # sparse: reads as zeros, costs no disk
    fa, _ = make_peer(tmp_path, "alice", clock, chunk_size=CHUNK)
    session = PeerSession(fa, Role.CONNECTOR, "bob", "tok-alice", "proof-alice", key_of("bob"))
    transport = DiscardingTransport()
    session.makeConnection(transport)
    secure(session)
    session.dataReceived(b"WELCOME chatapp/2 bob proof-alice\r\n")
    tracemalloc.start()
    try:
        sent = session.send_file(str(path))
        session.dataReceived(f"ACCEPT {sent.id} 0\r\n".encode())
        turns = 0
        while sent.state is TransferState.SENDING:
            clock.advance(0)
            assert transport.producer is not None
            transport.producer.resumeProducing()
            turns += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent.state is TransferState.ENDED
    assert transport.chunks == SIZE // CHUNK and turns <= SIZE // CHUNK  # one chunk per "buffer drained"
    assert transport.tail.endswith(f"END {sent.id} {sha(bytes(SIZE))}\r\n".encode())
    assert peak < 4 * CHUNK, peak  # not the file: a few chunks at most


def test_receiver_memory_is_flat(tmp_path: Path, clock: Clock) -> None:
    fb, _eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    piece = os.urandom(1024 * 1024)
    total = 24 * len(piece)
    hasher = hashlib.sha256()
    for _ in range(24):
        hasher.update(piece)
    digest = hasher.hexdigest()
    stream = f"DATA f {len(piece)}\r\n".encode() + piece
    tracemalloc.start()
    try:
        session.dataReceived(f"OFFER f {total} big.bin\r\n".encode())
        for _ in range(24):
            for start in range(0, len(stream), 65536):  # as TCP delivers it
                session.dataReceived(stream[start : start + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    session.dataReceived(f"END f {digest}\r\n".encode())
    assert transport.value() == b"ACCEPT f 0\r\nDONE f\r\n"
    assert os.path.getsize(os.path.join(fb.downloads.root, "big.bin")) == total
    # what one write gathers plus a few 64 KiB segments, never the file
    assert peak < MIN_WRITE + 4 * 65536, peak
