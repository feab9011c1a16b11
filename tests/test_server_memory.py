"""What an idle, logged-in connection costs the server, bounded: timers, Python objects, OpenSSL's heap.

The server holds tens of thousands of such connections; bench/idle_memory.py says where each one's bytes
go. These tests keep the parts that are chatapp's from growing back.
"""

from __future__ import annotations

import ctypes
import gc
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import make_factory
from OpenSSL import SSL
from server_harness import PASSWORD, Conn, key_of
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock

from chatapp.server.factory import ServerConfig
from chatapp.tls.contexts import ServerLinkClientTLS, ServerLinkServerTLS
from chatapp.tls.identity import new_identity

# Python objects of one idle, logged-in connection on a StringTransport, the transport and the test's
# address object included: ~2.0 KB today; ~2.5 KB with an empty set each of its own for pauses and
# logged limits, ~2.9 KB with a second timer made at login for the idle deadline too.
MAX_PYTHON_BYTES_PER_CONNECTION = 2400
# OpenSSL's heap for one idle server-side TLS connection after the handshake and a line each way, the
# client offering its default key exchange (X25519MLKEM768): ~33 KB with the record buffers released
# while empty, ~66 KB when they are kept.
MAX_OPENSSL_BYTES_PER_CONNECTION = 48 * 1024


class CountingClock(Clock):
    """A Clock that remembers every call scheduled: a real reactor keeps cancelled calls for a while."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled: list[Callable[..., Any]] = []

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> IDelayedCall:
        self.scheduled.append(callable)
        return super().callLater(delay, callable, *args, **kw)


def test_a_connection_makes_one_timer_from_connect_to_idle(tmp_path: Path) -> None:
    clock = CountingClock()
    clock.advance(1_000_000)
    factory = make_factory(str(tmp_path / "chat.sqlite3"), clock)
    conn = Conn(factory)
    conn.send(f"SIGNUP alice {PASSWORD}\r\nKEY {key_of('alice')}\r\nLISTEN 4000\r\n")
    for _ in range(20):
        clock.advance(10)
        conn.send(b"PING\r\n")
    assert conn.lines()[-1] == "OK PONG"
    mine = [c for c in clock.scheduled if getattr(c, "__self__", None) is conn.proto]
    assert len(mine) == 1, mine
    clock.advance(300)
    assert conn.lines() == ["* BYE idle-timeout"]
    factory.store.close()


def test_an_idle_logged_in_connection_holds_a_bounded_size_of_python_objects(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1_000_000)
    config = ServerConfig(signups_per_hour=1000, max_connections_per_address=1000)
    factory = make_factory(str(tmp_path / "chat.sqlite3"), clock, config)

    def logged_in(i: int) -> Conn:
        conn = Conn(factory)
        conn.send(f"SIGNUP user{i} {PASSWORD}\r\nKEY {key_of(str(i))}\r\nLISTEN {4000 + i}\r\n")
        assert conn.lines()[-1].startswith("OK LISTEN ")
        return conn

    held = [logged_in(i) for i in range(20)]  # first-use caches and interned strings are not counted
    count = 200
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held += [logged_in(i) for i in range(20, 20 + count)]
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # Log events wait in Twisted's start-up buffer when no observer has begun logging: not the connection's.
    not_logging = [tracemalloc.Filter(False, "*/twisted/logger/*")]
    diff = after.filter_traces(not_logging).compare_to(before.filter_traces(not_logging), "filename")
    grown = sum(stat.size_diff for stat in diff)
    assert len(factory.connections) == 20 + count
    assert grown / count <= MAX_PYTHON_BYTES_PER_CONNECTION, grown / count
    for conn in held:
        conn.drop()
    factory.store.close()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _c_heap_in_use() -> int:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for source, sink in ((a, b), (b, a)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            sink.bio_write(data)
            moved = True


def test_an_idle_server_tls_connection_releases_its_record_buffers() -> None:
    server = ServerLinkServerTLS(new_identity("server"))
    client = ServerLinkClientTLS("chat.example", trust_roots=[])

    def idle_server_side() -> SSL.Connection:
        s = server.serverConnectionForTLS(None)
        s.set_accept_state()
        c = client.clientConnectionForTLS(None)
        c.set_connect_state()
        for _ in range(10):
            for side in (c, s):
                try:
                    side.do_handshake()
                except SSL.WantReadError:
                    pass
            _pump(c, s)
        c.send(b"LOGIN alice correct horse battery\r\n")
        _pump(c, s)
        assert s.recv(4096) == b"LOGIN alice correct horse battery\r\n"
        s.send(b"OK LOGIN alice\r\n")
        _pump(s, c)
        assert c.recv(4096) == b"OK LOGIN alice\r\n"
        return s

    for _ in range(10):
        idle_server_side()
    count = 100
    gc.collect()
    start = _c_heap_in_use()
    held = [idle_server_side() for _ in range(count)]
    gc.collect()
    grown = _c_heap_in_use() - start
    assert len(held) == count
    assert grown / count <= MAX_OPENSSL_BYTES_PER_CONNECTION, grown / count
