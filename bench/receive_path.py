"""CPU of receiving a file above TLS, in one process with no sockets: what the peer session adds to the ceiling.

The end-to-end benchmark (bench/transfer.py) runs sender and receiver on the
same two cores, so its CPU figures move with everything else on the machine.
This one replays the plaintext a TLS layer hands up, from memory, into:

- ``ceiling``: a raw-mode ``LineReceiver`` that writes and hashes each piece as
  it comes (the receiver of transfer.py's minimal Twisted case);
- ``chatapp``: a real ``PeerSession`` (framer, receiver, ``FileWriter``, fsync,
  rename, ``DONE``), its handshake done over a ``StringTransport`` (a
  benchmark-only wiring: the key check is given the peer's key, there is no TLS).

Pieces are cut as Twisted's TLS hands them up (``record``: one 16 KiB record per
``dataReceived``) or as chatapp's ``GatheringTLSFactory`` does (``read``: what one
256 KiB socket read decrypted to). The writer runs inline or on a real thread
pool, its results handed back through a queue standing in for the reactor.
Files go to /dev/shm. CPU is the process's (all threads), per GiB; medians of
``--repeat`` interleaved rounds.

    python bench/receive_path.py [--size 256M] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _transfer_util import GiB, MiB, parse_size, table

CHUNK = 256 * 1024  # the sender's DATA chunk
RECORD = 16 * 1024
READ = 256 * 1024 + 64  # a socket read of 256 KiB decrypts to a little less; any cut not on a frame edge will do


class HandBack:
    """Stands in for the reactor: ``callFromThread`` queues, ``drain`` runs what was queued."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.calls.put((lambda: f(*args, **kw), ()))

    def drain(self, wait: bool = False) -> None:
        while True:
            try:
                f, _ = self.calls.get(block=wait, timeout=5 if wait else None)
            except queue.Empty:
                return
            f()
            wait = False


def stream(size: int) -> tuple[bytes, int, str]:
    """1 MiB of DATA frames (replayed to make ``size``), the number of replays, the file's SHA-256."""
    content = os.urandom(CHUNK)
    frames = (f"DATA f {CHUNK}\r\n".encode() + content) * (MiB // CHUNK)
    replays = size // MiB
    hasher = hashlib.sha256()
    for _ in range(replays * (MiB // CHUNK)):
        hasher.update(content)
    return frames, replays, hasher.hexdigest()


def chatapp_receive(folder: Path, frames: bytes, replays: int, digest: str, piece: int, threads: bool) -> float:
    from twisted.internet import defer
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from chatapp.events import ignore
    from chatapp.peer import PeerFactory
    from chatapp.runner import InlineRunner
    from chatapp.tls.identity import new_identity

    hand_back = HandBack()
    pool = ThreadPool(0, 2, "bench-disk")

    class PoolRunner:
        def run(self, func: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
            return deferToThreadPool(hand_back, pool, func, *args)  # type: ignore[arg-type]

        def start(self) -> None:
            pool.start()

        def stop(self) -> None:
            pool.stop()

    runner: Any = PoolRunner() if threads else InlineRunner()
    runner.start()
    alice = new_identity("alice")

    def verify(token: str) -> defer.Deferred[tuple[str, str, str]]:
        return defer.succeed(("alice", "proof", alice.fingerprint))

    factory = PeerFactory(
        "bob", verify, str(folder), ignore, Clock(), identity=new_identity("bob"), runner=runner, auto_accept=True
    )
    factory.peer_key = lambda session: alice.fingerprint  # no TLS here: the key it would have shown
    session = factory.buildProtocol(None)
    transport = StringTransport()
    session.makeConnection(transport)
    session.dataReceived(b"HELLO chatapp/2 alice tok\r\n")
    session.dataReceived(f"OFFER f {replays * MiB} big.bin\r\n".encode())
    pieces = [frames[i : i + piece] for i in range(0, len(frames), piece)]
    start = time.process_time()
    for _ in range(replays):
        for data in pieces:
            session.dataReceived(data)
            hand_back.drain()
        while "disk" in session.gate.reasons:
            hand_back.drain(wait=True)
    session.dataReceived(f"END f {digest}\r\n".encode())
    while not transport.value().endswith(b"DONE f\r\n"):
        hand_back.drain(wait=True)
    used = time.process_time() - start
    runner.stop()
    return used


def ceiling_receive(folder: Path, frames: bytes, replays: int, digest: str, piece: int, threads: bool) -> float:
    from _ceiling import CeilingReceiver
    from twisted.internet.testing import StringTransport

    digests: list[str] = []
    receiver = CeilingReceiver(str(folder), "big.bin", digests.append)
    receiver.makeConnection(StringTransport())
    receiver.dataReceived(f"OFFER {replays * MiB}\n".encode())
    content = frames[len(f"DATA f {CHUNK}\r\n") :][:CHUNK]  # the same bytes, without the DATA lines
    pieces = [content[i : i + piece] for i in range(0, len(content), piece)]
    start = time.process_time()
    for _ in range(replays * (MiB // CHUNK)):
        for data in pieces:
            receiver.dataReceived(data)
    used = time.process_time() - start
    assert digests == [digest]
    return used


CASES: list[tuple[str, Callable[..., float], int, bool]] = [
    ("ceiling: raw LineReceiver, hash + write per 16 KiB record", ceiling_receive, RECORD, False),
    ("chatapp, a 16 KiB record per dataReceived, writer inline", chatapp_receive, RECORD, False),
    ("chatapp, one socket read per dataReceived, writer inline", chatapp_receive, READ, False),
    ("chatapp, one socket read per dataReceived, writer on a thread pool", chatapp_receive, READ, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=256 * MiB, help="bytes received per case (256M)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (5)")
    args = parser.parse_args()
    frames, replays, digest = stream(args.size)
    cpu: dict[str, list[float]] = {label: [] for label, *_ in CASES}
    for _ in range(args.repeat):
        for label, receive, piece, threads in CASES:
            folder = Path(tempfile.mkdtemp(prefix="chatapp-recv-", dir="/dev/shm"))
            try:
                cpu[label].append(receive(folder, frames, replays, digest, piece, threads) * GiB / (replays * MiB))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    ceiling = statistics.median(cpu[CASES[0][0]])
    rows = [
        [label, f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})", f"{statistics.median(v) / ceiling:.2f}x"]
        for label, v in cpu.items()
    ]
    print(f"{args.size // MiB} MiB per case into /dev/shm, median of {args.repeat} interleaved rounds\n")
    print(table(["case", "CPU s/GiB", "vs ceiling"], rows))


if __name__ == "__main__":
    main()
