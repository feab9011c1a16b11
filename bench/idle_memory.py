"""Where an idle, logged-in TLS connection's bytes go on the server: Python objects, C heap, malloc, kernel.

    python bench/idle_memory.py [--n 1500] [--rounds 3] [--tree NAME=PATH ...] [--top 12]

Servers, each started fresh per measurement under bench/_memprobe.py, interleaved round by round:

``twisted``     the bare line server (bench/_lineserver.py) with Twisted's own ``CertificateOptions``
``lineserver``  the same line server with the chat server's TLS context (what bench/idle_capacity.py uses)
``chatserver``  ``twistd chatserver`` (``--bcrypt-rounds 4``), logged in, ``KEY`` sent, listening
``NAME``        for each ``--tree NAME=PATH``: ``twistd chatserver`` with PATH first on PYTHONPATH
                (e.g. an exported older commit, to measure a change in the same run)

Each server holds N connections after the same exchange as bench/idle_capacity.py (from bench/_loadgen.py,
whose client is the stdlib ``ssl`` module) and is probed before (after a warm-up of 200 connections that
came and went) and while they are held.  Two runs per server and round: an untraced one for RSS,
``mallinfo2()`` and pymalloc's own statistics, and one under tracemalloc whose snapshots are diffed and
each allocation put in one part by the frames that asked for it (Twisted's TCP transport and reactor,
Twisted's TLS protocol, pyOpenSSL and cffi, the application protocol).  What the C heap holds beyond
Python's own large allocations is OpenSSL's (the SSL object, its record layers, session and keys).

Last, in this process, pyOpenSSL handshakes over memory BIOs with the chat server's context show what
one server-side SSL object costs at each stage and for each key exchange group: the load generator's
OpenSSL offers X25519 only, while chatapp's own clients (pyOpenSSL's bundled OpenSSL) offer the
post-quantum hybrid X25519MLKEM768 first.

Medians over the rounds, in bytes per connection.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import BENCH, PASSWORD, LoadGen, Server, exit_on_sigterm, machine, raise_fd_limit, sources, table, workdir
from _memprobe import MALLINFO2_FIELDS
from idle_capacity import sign_up

SOURCES = sources(40)
WARMUP = 200
USER = "idle"
PROBE = BENCH / "_memprobe.py"
TRACE_FRAMES = 12
PYMALLOC_MAX = 512  # CPython 3.11 serves requests up to this size from pymalloc's arenas, larger from malloc

# The parts of a connection, in the order of the tables.
PARTS = (
    "Twisted TCP transport + reactor",
    "Twisted TLS (TLSMemoryBIOProtocol)",
    "pyOpenSSL Connection + cffi",
    "application protocol",
    "other Python",
)
# Frames that only serve their caller (timers, Deferreds, logging, the stdlib): an allocation made
# there belongs to the nearest caller outside them.
_HELPERS = (
    "/twisted/internet/base.py",
    "/twisted/internet/defer.py",
    "/twisted/internet/task.py",
    "/twisted/python/",
    "/twisted/logger/",
    "/zope/",
)


def part_of(frames: list[str]) -> str:
    """The part an allocation belongs to, from its traceback's file names (most recent last)."""
    for filename in reversed(frames):
        name = filename.replace("\\", "/")
        if any(h in name for h in _HELPERS) or ("/site-packages/" not in name and "/chatapp/" not in name):
            if "/bench/_lineserver.py" in name:
                return "application protocol"
            continue  # the stdlib or a helper: look at who called it
        if "/chatapp/tls/contexts.py" in name:  # the connection creator: it makes the SSL.Connection
            return "pyOpenSSL Connection + cffi"
        if "/chatapp/" in name or "/twisted/protocols/basic.py" in name:
            return "application protocol"
        if any(f in name for f in ("/twisted/protocols/tls.py", "/twisted/protocols/policies.py", "/_sslverify.py")):
            return "Twisted TLS (TLSMemoryBIOProtocol)"
        if "/twisted/internet/" in name:
            return "Twisted TCP transport + reactor"
        if "/OpenSSL/" in name or "/cryptography/" in name or "/cffi/" in name:
            return "pyOpenSSL Connection + cffi"
        return "other Python"
    return "other Python"


# -- running a probed server ---------------------------------------------------------------------------


@contextmanager
def _pythonpath(tree: Path | None) -> Iterator[None]:
    """PYTHONPATH for the server started inside (its children inherit os.environ)."""
    saved = os.environ.get("PYTHONPATH")
    if tree is not None:
        os.environ["PYTHONPATH"] = str(tree)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


class Probed:
    """A server under bench/_memprobe.py; ``probe()`` returns its next report."""

    def __init__(self, server_argv: list[str], work: Path, trace: bool, tree: Path | None) -> None:
        self.reports = Path(tempfile.mkdtemp(prefix="probe-", dir=work))
        argv = [sys.executable, str(PROBE), str(self.reports), *(["--trace", str(TRACE_FRAMES)] if trace else [])]
        with _pythonpath(tree):
            self.server = Server([*argv, "--", *server_argv], work / "probed.log", server_argv[0])
        self.count = 0

    def probe(self) -> dict[str, Any]:
        os.kill(self.server.pid, signal.SIGUSR1)
        path = self.reports / f"{self.count}.json"
        deadline = time.monotonic() + 300
        while not path.exists():
            if time.monotonic() > deadline or self.server.proc.poll() is not None:
                log = self.server.log.read_text()[-2000:]
                raise RuntimeError(f"no report from {self.server.what}; its log:\n{log}")
            time.sleep(0.05)
        report: dict[str, Any] = json.loads(path.read_text())
        snapshot = self.reports / f"{self.count}.snapshot"
        report["snapshot"] = snapshot if snapshot.exists() else None
        report["kernel"] = _kernel_socket_bytes()
        self.count += 1
        return report

    def stop(self) -> None:
        self.server.stop()


# The kernel's caches a TCP connection's socket takes objects from: the socket, its inode, the open file,
# its dentry, the epoll entry. Machine-wide, and loopback holds both ends of each connection here.
_SOCKET_SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")


def _kernel_socket_bytes() -> float:
    """Bytes in use in the kernel caches of ``_SOCKET_SLABS`` (NaN where /proc/slabinfo cannot be read)."""
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()
    except OSError:
        return float("nan")
    total = 0
    for line in lines:
        words = line.split()
        if words and words[0] in _SOCKET_SLABS:
            total += int(words[1]) * int(words[3])  # active objects x object size
    return float(total)


def _hold(port: int, n: int) -> LoadGen:
    gen = LoadGen(
        {
            "mode": "hold",
            "host": "127.0.0.1",
            "port": port,
            "n": n,
            "sources": SOURCES,
            "verb": "LOGIN",
            "user_prefix": USER,
            "password": PASSWORD,
            "inflight": 50,
        }
    )
    ready = gen.event(280)
    if ready["ok"] != n:
        gen.stop()
        raise RuntimeError(f"held {ready['ok']} of {n}: {ready}")
    return gen


def measure(server_argv: list[str], work: Path, n: int, trace: bool, tree: Path | None) -> dict[str, Any]:
    """Probe a fresh server before and while it holds ``n`` connections; return both reports."""
    probed = Probed(server_argv, work, trace, tree)
    try:
        warm = _hold(probed.server.port, WARMUP)
        warm.release()
        time.sleep(0.5)  # the server closes its side
        before = probed.probe()
        gen = _hold(probed.server.port, n)
        try:
            time.sleep(0.5)  # the last replies written and their buffers released
            after = probed.probe()
        finally:
            gen.release()
        return {"before": before, "after": after}
    finally:
        probed.stop()


# -- what the reports say -----------------------------------------------------------------------------

_ALLOCATED = re.compile(r"# bytes in allocated blocks\s*=\s*([\d,]+)")
_AVAILABLE = re.compile(r"# bytes in available blocks\s*=\s*([\d,]+)")
_ARENAS = re.compile(r"(\d+) arenas \* (\d+) bytes/arena")


def _heap_used(info: dict[str, int]) -> int:
    return info["uordblks"] + info["hblkhd"]


def heap_figures(run: dict[str, Any], n: int) -> dict[str, float]:
    """Bytes per connection from an untraced run: RSS, the C heap, pymalloc, the kernel's socket objects.

    The "before" figures are those after ``malloc_trim(0)``: the warm-up's connections left free heap
    behind, which the held ones would reuse and so look cheaper than they are.
    """
    b, a = run["before"], run["after"]
    return {
        "rss": (a["rss_kib"] - b["trimmed_rss_kib"]) * 1024 / n,
        "rss_trimmed": (a["trimmed_rss_kib"] - b["trimmed_rss_kib"]) * 1024 / n,
        "malloc_used": (_heap_used(a["trimmed_mallinfo2"]) - _heap_used(b["trimmed_mallinfo2"])) / n,
        "malloc_free": (a["mallinfo2"]["fordblks"] - b["trimmed_mallinfo2"]["fordblks"]) / n,
        "malloc_free_trimmed": (a["trimmed_mallinfo2"]["fordblks"] - b["trimmed_mallinfo2"]["fordblks"]) / n,
        "pymalloc_used": (_pymalloc(a)[0] - _pymalloc(b)[0]) / n,
        "pymalloc_free": (_pymalloc(a)[1] - _pymalloc(b)[1]) / n,
        "kernel_socket": (a["kernel"] - b["kernel"]) / n / 2,
    }


def _pymalloc(report: dict[str, Any]) -> tuple[int, int]:
    """(bytes in allocated blocks, bytes of the arenas not in allocated blocks) from sys._debugmallocstats."""
    text = report["pymalloc"]
    used = int(_ALLOCATED.search(text).group(1).replace(",", ""))  # type: ignore[union-attr]
    arenas = _ARENAS.search(text)
    total = int(arenas.group(1)) * int(arenas.group(2)) if arenas else used
    return used, total - used


def _by_traceback(path: Path) -> tuple[dict[tuple[str, ...], int], int]:
    """Bytes per traceback (file names only) and the bytes in allocations too large for pymalloc."""
    snapshot = tracemalloc.Snapshot.load(str(path))
    sizes: dict[tuple[str, ...], int] = defaultdict(int)
    large = 0
    for trace in snapshot.traces:
        sizes[tuple(f"{frame.filename}:{frame.lineno}" for frame in trace.traceback)] += trace.size
        if trace.size > PYMALLOC_MAX:
            large += trace.size
    return sizes, large


def trace_figures(run: dict[str, Any], n: int) -> tuple[dict[str, float], dict[str, float]]:
    """Bytes per connection from a traced run: per part, plus "python" (all) and "python_large"; and per line."""
    before, large0 = _by_traceback(run["before"]["snapshot"])
    after, large1 = _by_traceback(run["after"]["snapshot"])
    parts: dict[str, float] = dict.fromkeys(PARTS, 0.0)
    lines: dict[str, float] = defaultdict(float)
    for key in set(before) | set(after):
        grown = (after.get(key, 0) - before.get(key, 0)) / n
        if not grown:
            continue
        files = [frame.rsplit(":", 1)[0] for frame in key]
        part = part_of(files)
        parts[part] += grown
        lines[f"{part}: {_short(key)}"] += grown
    parts["python"] = sum(parts[p] for p in PARTS)
    parts["python_large"] = (large1 - large0) / n
    return parts, lines


def _short(key: tuple[str, ...]) -> str:
    """The innermost frame outside the stdlib, as package/file:line."""
    for frame in reversed(key):
        if "/site-packages/" in frame or "/chatapp/" in frame or "/bench/" in frame:
            tail = frame.split("/site-packages/", 1)[-1]
            return tail[tail.find("chatapp/") :] if "chatapp/" in tail else tail
    return key[-1].rsplit("/", 1)[-1] if key else "?"


def type_counts(run: dict[str, Any], n: int, top: int) -> list[tuple[str, float]]:
    """Live Python objects per connection by type, the most numerous first."""
    b, a = run["before"]["types"], run["after"]["types"]
    grown = {k: (a.get(k, 0) - b.get(k, 0)) / n for k in set(a) | set(b)}
    return sorted(((k, v) for k, v in grown.items() if v >= 0.5), key=lambda kv: -kv[1])[:top]


# -- one server-side SSL object, in this process -------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]


def openssl_stages(count: int = 500) -> list[list[object]]:
    """The C heap one server-side ``SSL.Connection`` holds at each stage, with the chat server's context."""
    sys.path.insert(0, str(BENCH.parent))
    from OpenSSL import SSL
    from OpenSSL._util import lib

    from chatapp.tls.contexts import ServerLinkServerTLS
    from chatapp.tls.identity import new_identity

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2

    def used() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    identity = new_identity("probe")
    server = ServerLinkServerTLS(identity)
    # The same context with the record buffers kept (what it was before it set MODE_RELEASE_BUFFERS);
    # cleared before any connection uses it, as pyOpenSSL requires.
    keeping = ServerLinkServerTLS(identity)
    keeping._context.clear_mode(SSL.MODE_RELEASE_BUFFERS)

    def client_context(groups: bytes | None) -> SSL.Context:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        if groups is not None and lib.SSL_CTX_set1_curves_list(context._context, groups) != 1:
            raise RuntimeError(f"unknown groups {groups!r}")
        return context

    def pump(a: SSL.Connection, b: SSL.Connection) -> None:
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

    def one(client: SSL.Context | None, lines: bool, creator: ServerLinkServerTLS = server) -> SSL.Connection:
        s = creator.serverConnectionForTLS(None)
        s.set_accept_state()
        if client is None:
            return s
        c = SSL.Connection(client, None)
        c.set_connect_state()
        for _ in range(10):
            for side in (c, s):
                try:
                    side.do_handshake()
                except SSL.WantReadError:
                    pass
            pump(c, s)
        if lines:
            c.send(b"LOGIN someone a password\r\n")
            pump(c, s)
            s.recv(4096)
            s.send(b"OK logged in\r\n")
            pump(s, c)
            c.recv(4096)
        return s

    def cost(client: SSL.Context | None, lines: bool, creator: ServerLinkServerTLS) -> tuple[float, str]:
        for _ in range(20):
            one(client, lines, creator)
        gc.collect()
        start = used()
        held = [one(client, lines, creator) for _ in range(count)]
        gc.collect()
        group = held[0].get_group_name() if client is not None else None
        return (used() - start) / count, (group or "-")

    rows: list[list[object]] = []
    x25519, defaults = client_context(b"X25519"), client_context(None)
    for label, client, lines, creator in (
        ("SSL.Connection made, no handshake", None, False, server),
        ("handshake done, client offers X25519 only", x25519, False, server),
        ("+ one line each way, client offers X25519 only", x25519, True, server),
        ("+ one line each way, client offers its defaults", defaults, True, server),
        ("X25519, a line each way, record buffers kept", x25519, True, keeping),
        ("defaults, a line each way, record buffers kept", defaults, True, keeping),
    ):
        per, group = cost(client, lines, creator)
        rows.append([label, group, per])
    return rows


# -- main ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1500, help="connections held (default 1500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, servers interleaved (default 3)")
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH: also a chatserver from PATH")
    parser.add_argument("--servers", default="twisted,lineserver,chatserver", help="which of the built-in servers")
    parser.add_argument("--top", type=int, default=12, help="lines and types listed per server (default 12)")
    args = parser.parse_args()
    exit_on_sigterm()
    raise_fd_limit()
    print(machine())
    from OpenSSL import SSL

    print(f"server OpenSSL: {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()} (pyOpenSSL's, from cryptography)")
    print(f"N={args.n:,} connections, {args.rounds} rounds, medians in bytes per connection")
    n = args.n
    options = [
        "--bcrypt-rounds",
        "4",
        "--max-connections-per-address",
        str(n // len(SOURCES) + WARMUP + 10),
        "--signups-per-hour",
        str(n + WARMUP),
    ]
    with workdir("bench-idlemem-") as work:
        chat = ["twistd", "-n", "--pidfile=", "chatserver", "--listen", "tcp:0:interface=127.0.0.1:backlog=1024"]
        chat += ["--db", str(work / "chat.sqlite3"), *options]
        builtin: dict[str, tuple[list[str], Path | None]] = {
            "twisted": (["lineserver", "--twisted-tls"], None),
            "lineserver": (["lineserver"], None),
            "chatserver": (chat, None),
        }
        servers = {name: builtin[name] for name in args.servers.split(",") if name}
        for spec in args.tree:
            name, path = spec.split("=", 1)
            servers[name] = (chat, Path(path).resolve())
        if any(argv[0] == "twistd" for argv, _ in servers.values()):
            rate = sign_up(work, n + WARMUP, options)
            print(f"signed up {n + WARMUP:,} accounts at {rate:,.0f}/s")
        heap: dict[str, list[dict[str, float]]] = defaultdict(list)
        traced: dict[str, list[dict[str, float]]] = defaultdict(list)
        lines: dict[str, list[dict[str, float]]] = defaultdict(list)
        types: dict[str, list[tuple[str, float]]] = {}
        t0 = time.monotonic()
        for r in range(args.rounds):
            for name, (argv, tree) in servers.items():
                t1 = time.monotonic()
                run = measure(argv, work, n, False, tree)
                heap[name].append(heap_figures(run, n))
                types[name] = type_counts(run, n, args.top)
                run = measure(argv, work, n, True, tree)
                parts, by_line = trace_figures(run, n)
                traced[name].append(parts)
                lines[name].append(by_line)
                print(f"  {name}: {time.monotonic() - t1:.0f}s", flush=True)
            print(f"round {r + 1} done after {time.monotonic() - t0:.0f}s", flush=True)
    names = list(servers)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run.get(key, 0.0) for run in runs)

    rows: list[list[object]] = []
    for part in PARTS:
        rows.append([f"Python: {part}", *(med(traced[s], part) for s in names)])
    rows.append(["Python objects, all (tracemalloc)", *(med(traced[s], "python") for s in names)])
    rows.append(["  of which > 512 B, from malloc", *(med(traced[s], "python_large") for s in names)])
    openssl = [med(heap[s], "malloc_used") - med(traced[s], "python_large") for s in names]
    rows.append(["C heap not Python's: OpenSSL (SSL, record layers, keys)", *openssl])
    rows.append(["malloc in use (mallinfo2 uordblks+hblkhd)", *(med(heap[s], "malloc_used") for s in names)])
    rows.append(["malloc free chunks (fordblks)", *(med(heap[s], "malloc_free") for s in names)])
    rows.append(["  ... after malloc_trim(0)", *(med(heap[s], "malloc_free_trimmed") for s in names)])
    rows.append(["pymalloc blocks in use", *(med(heap[s], "pymalloc_used") for s in names)])
    rows.append(["pymalloc arenas' free space", *(med(heap[s], "pymalloc_free") for s in names)])
    rows.append(["RSS (VmRSS)", *(med(heap[s], "rss") for s in names)])
    rows.append(["  ... after malloc_trim(0)", *(med(heap[s], "rss_trimmed") for s in names)])
    rows.append(["kernel socket objects, one end (not in RSS)", *(med(heap[s], "kernel_socket") for s in names)])
    first = names[0]
    rows.append([f"RSS x {first}", *(med(heap[s], "rss") / med(heap[first], "rss") for s in names)])
    print()
    print(table(["bytes per connection", *names], rows))
    for name in names:
        merged: dict[str, list[float]] = defaultdict(list)
        for by_line in lines[name]:
            for key in set(by_line) | set(merged):
                merged[key].append(by_line.get(key, 0.0))
        top = sorted(((k, statistics.median(v)) for k, v in merged.items()), key=lambda kv: -abs(kv[1]))
        print()
        print(table([f"{name}: Python bytes/conn by allocating line", "bytes"], [[k, v] for k, v in top[: args.top]]))
        print()
        by_type = [[k, v] for k, v in types[name]]
        print(table([f"{name}: live Python objects per connection by type", "objects"], by_type))
    print()
    print(table(["one server-side SSL.Connection (in process)", "group", "C heap bytes"], openssl_stages()))


if __name__ == "__main__":
    main()
