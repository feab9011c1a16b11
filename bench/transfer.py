"""Peer-to-peer file transfer throughput over 127.0.0.1, against two baselines, sender and receiver in two processes.

What is measured (each case: a fresh receiver process, then a fresh sender process):

- ``chatapp``: the real client library: the chat server (in its own process),
  two ``ChatClient`` (sign up, LISTEN, CONNECT, peer handshake with VERIFY),
  ``OFFER``/``ACCEPT``, ``DATA`` chunks, SHA-256 on both sides, ``END``, the
  rename into the download folder and ``DONE``. Timed from ``send_file`` to
  ``DONE`` at the sender (the chat is opened before the clock starts).
- ``(a) raw sockets``: plain Python sockets, 1 MiB buffers, no hashing: the
  machine's copy speed through the loopback for one Python process a side.
- ``(b) minimal Twisted``: a push producer reading and hashing the file on one
  side, a raw-mode ``LineReceiver`` writing and hashing on the other, the
  same rename, nothing else. The ceiling for what the client library does.

The source file sits in /dev/shm; the receiving folder is tmpfs (/dev/shm,
so the disk does not hide our overhead) and a disk folder (``--disk-dir``,
default /tmp; written to the page cache, not fsync'd, ``sync`` between
cases). Then a sweep of the sender's chunk size against the receiving
transport's read size (``transport.bufferSize``) into tmpfs.

    python bench/transfer.py                 # 1 GiB, everything (about 2 minutes on 2 cores)
    python bench/transfer.py --quick         # 256 MiB
    python bench/transfer.py --no-sweep --repeat 3
    CHATAPP_SOURCE=/path/to/other/tree python bench/transfer.py --quick   # A/B a patched copy
    python bench/transfer.py --no-sweep --where tmpfs --twin --repeat 15   # with the noise floor

``--twin`` runs each minimal Twisted case a second time in every round, as if it
were another program: its ratio to the first copy is what the machine's noise
alone makes of two identical programs (an A/A test), the yardstick for a ratio
of chatapp to the ceiling.

MB/s are 10^6 bytes a second. CPU is user + system seconds of each process
over the transfer, scaled to one GiB; peak RSS is the process's VmHWM (its
whole life, imports included).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _transfer_util import (
    PASSWORD,
    Child,
    GiB,
    KiB,
    MiB,
    RoleFailed,
    as_the_program,
    count_io,
    cpu_now,
    emit,
    machine,
    parse_size,
    plain_peer_wiring,
    private_xdg,
    proc_status,
    run_server,
    server_options,
    size_text,
    socket_of,
    table,
    tls_pair,
    usage_since,
)

SCRIPT = Path(__file__).resolve()
RAW_BUFFER = MiB
FILE_NAME = "payload.bin"
SWEEP_CHUNKS = (64 * KiB, 256 * KiB, MiB)
SWEEP_READS = (64 * KiB, 256 * KiB, MiB)


# -- role: chatapp receiver / sender -----------------------------------------------------------------------------


async def chat_receiver(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.internet import defer

    as_the_program()

    from chatapp.app import ChatClient
    from chatapp.events import ChatEvent, PeerJoined, TransferEnded

    ended: defer.Deferred[Any] = defer.Deferred()
    sessions: list[Any] = []
    io = count_io()

    def on_event(event: ChatEvent) -> None:
        if isinstance(event, PeerJoined):
            sessions.append(event.session)
            if args.read_size:
                socket_of(event.session.transport).bufferSize = args.read_size
        elif isinstance(event, TransferEnded) and not ended.called:
            ended.callback(event.transfer)

    client = ChatClient(
        reactor,
        f"tcp:host=127.0.0.1:port={args.port}",
        on_event,
        downloads=args.downloads,
        listen="tcp:0:interface=127.0.0.1",
        auto_accept=True,
        server_options=server_options(args.server_fp),
    )
    if args.plain:
        plain_peer_wiring(client)
    await client.start(args.name, PASSWORD, signup=True)
    rss_ready = proc_status("VmRSS")
    start = cpu_now()
    emit("READY")
    transfer = await ended
    result = usage_since(start)
    read_size = socket_of(sessions[0].transport).bufferSize if sessions else None
    result.update(
        state=transfer.state.value,
        reason=transfer.reason,
        path=transfer.path,
        sha256=transfer.sha256,
        bytes=transfer.bytes_done,
        rss_ready_kib=rss_ready,
        read_size=read_size,
        io=io,
    )
    emit("RESULT", result)
    await client.stop()


async def chat_sender(reactor: Any, args: argparse.Namespace) -> None:
    as_the_program()
    from chatapp.app import ChatClient
    from chatapp.events import ignore

    io = count_io()
    client = ChatClient(
        reactor,
        f"tcp:host=127.0.0.1:port={args.port}",
        ignore,
        downloads=args.downloads,
        listen=None,
        chunk_size=args.chunk or None,
        server_options=server_options(args.server_fp),
    )
    if args.plain:
        plain_peer_wiring(client)
    await client.start(args.name, PASSWORD, signup=True)
    t = time.perf_counter()
    session = await client.chat(args.peer)
    handshake = time.perf_counter() - t
    rss_ready = proc_status("VmRSS")
    start = cpu_now()
    t0 = time.perf_counter()
    handle = await client.send_file(args.peer, args.file)
    transfer = await client.transfer(handle).when_done()
    elapsed = time.perf_counter() - t0
    result = usage_since(start)
    result.update(
        elapsed=elapsed,
        handshake=handshake,
        sha256=transfer.sha256,
        bytes=transfer.bytes_done,
        rss_ready_kib=rss_ready,
        chunk=client.peers.chunk_size if client.peers else None,
        write_threshold=socket_of(session.transport).bufferSize,
        io=io,
    )
    emit("RESULT", result)
    await client.stop()


# -- role: (b) minimal Twisted ------------------------------------------------------------------------------------


def twisted_receiver(args: argparse.Namespace) -> None:
    from _ceiling import CeilingReceiver
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory

    outcome: dict[str, Any] = {}
    io = count_io()

    class Receive(CeilingReceiver):
        def __init__(self) -> None:
            super().__init__(args.downloads, FILE_NAME, self.finished)

        def connectionMade(self) -> None:
            if args.read_size:
                socket_of(self.transport).bufferSize = args.read_size
            self.start = cpu_now()

        def finished(self, digest: str) -> None:
            self.transport.write(b"OK " + digest.encode() + b"\r\n")  # type: ignore[union-attr]
            read_size = socket_of(self.transport).bufferSize
            outcome.update(usage_since(self.start), sha256=digest, read_size=read_size, io=io)
            emit("RESULT", outcome)

        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()  # type: ignore[attr-defined]

    def listening(port: Any) -> None:
        emit("READY", str(port.getHost().port))

    factory: Any = Factory.forProtocol(Receive)
    if args.tls:  # mutual TLS 1.3 with chatapp's peer contexts: the same cipher, nothing else of chatapp
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(tls_pair()[0], False, factory)
    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined]


def twisted_sender(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.interfaces import IPushProducer
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    size = os.path.getsize(args.file)
    chunk = args.chunk or 256 * KiB
    io = count_io()

    @implementer(IPushProducer)
    class Pusher:
        """Reads, hashes and writes chunks until the transport pauses it."""

        def __init__(self, transport: Any, source: Any) -> None:
            self.transport = transport
            self.source = source
            self.hasher = hashlib.sha256()
            self.paused = False
            self.finished = False

        def resumeProducing(self) -> None:
            self.paused = False
            while not self.paused and not self.finished:
                data = self.source.read(chunk)
                if not data:
                    self.finished = True
                    self.transport.unregisterProducer()
                    return
                self.hasher.update(data)
                self.transport.write(data)

        def pauseProducing(self) -> None:
            self.paused = True

        def stopProducing(self) -> None:
            self.finished = True

    class Send(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.source = open(args.file, "rb")
            self.start = cpu_now()
            self.t0 = time.perf_counter()
            self.transport.write(b"SIZE %d\r\n" % size)  # type: ignore[union-attr]
            self.pusher = Pusher(self.transport, self.source)
            self.transport.registerProducer(self.pusher, True)  # type: ignore[union-attr]
            self.pusher.resumeProducing()

        def lineReceived(self, line: bytes) -> None:
            elapsed = time.perf_counter() - self.t0
            digest = self.pusher.hasher.hexdigest()
            result = usage_since(self.start)
            result.update(elapsed=elapsed, sha256=digest, ok=line.split()[1].decode() == digest, chunk=chunk, io=io)
            emit("RESULT", result)
            self.source.close()
            self.transport.loseConnection()  # type: ignore[union-attr]

        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()  # type: ignore[attr-defined]

    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port)
    if args.tls:
        from twisted.internet.endpoints import wrapClientTLS

        endpoint = wrapClientTLS(tls_pair()[1], endpoint)
    connectProtocol(endpoint, Send())
    reactor.run()  # type: ignore[attr-defined]


# -- role: (a) raw sockets -----------------------------------------------------------------------------------------


def raw_receiver(args: argparse.Namespace) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        emit("READY", str(listener.getsockname()[1]))
        conn, _ = listener.accept()
    start = cpu_now()
    with conn:
        header = b""
        while len(header) < 8:
            header += conn.recv(8 - len(header))
        (left,) = struct.unpack("!Q", header)
        partial = os.path.join(args.downloads, "." + FILE_NAME + ".part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        buffer = bytearray(RAW_BUFFER)
        view = memoryview(buffer)
        while left:
            n = conn.recv_into(view, min(RAW_BUFFER, left))
            if not n:
                raise EOFError("sender closed early")
            piece = view[:n]
            while piece:
                piece = piece[os.write(fd, piece) :]
            left -= n
        os.close(fd)
        os.rename(partial, os.path.join(args.downloads, FILE_NAME))
        conn.sendall(b"ok")
    emit("RESULT", usage_since(start))


def raw_sender(args: argparse.Namespace) -> None:
    size = os.path.getsize(args.file)
    buffer = bytearray(RAW_BUFFER)
    view = memoryview(buffer)
    with open(args.file, "rb", buffering=0) as source:
        start = cpu_now()
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", args.port)) as conn:
            conn.sendall(struct.pack("!Q", size))
            while n := source.readinto(buffer):
                conn.sendall(view[:n])
            ack = conn.recv(2)
        elapsed = time.perf_counter() - t0
    result = usage_since(start)
    result.update(elapsed=elapsed, ok=ack == b"ok")
    emit("RESULT", result)


# -- the coordinator -----------------------------------------------------------------------------------------------


class Source:
    """A file of random bytes in /dev/shm and its SHA-256."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 4 * MiB))
                digest.update(block)
                f.write(block)
                left -= len(block)
        self.digest = digest.hexdigest()


class Case:
    """One configuration; ``runs`` collects each repetition's sender and receiver results."""

    def __init__(
        self,
        kind: str,
        where: str,
        source: Source,
        chunk: int = 0,
        read_size: int = 0,
        sweep: bool = False,
        tree: tuple[str, str] | None = None,
        twin: bool = False,
    ):
        self.tree = tree  # (label, folder): chatapp imported from another tree (--compare)
        self.twin = twin  # a second copy of a ceiling case (--twin): the noise floor
        self.kind = kind
        self.where = where
        self.source = source
        self.chunk = chunk
        self.read_size = read_size
        self.sweep = sweep
        self.runs: list[dict[str, Any]] = []

    def record(self) -> dict[str, Any]:
        ordered = sorted(self.runs, key=lambda r: r["mbps"])
        best = ordered[(len(ordered) - 1) // 2]  # the median run (the lower one of an even count)
        return {
            "kind": self.kind,
            "tree": self.tree[0] if self.tree else None,
            "twin": self.twin,
            "where": self.where,
            "sweep": self.sweep,
            "size": self.source.size,
            "chunk": best["sent"].get("chunk", self.chunk) or 0,
            "read_size": best["received"].get("read_size", self.read_size) or 0,
            "mbps": best["mbps"],
            "all_mbps": [r["mbps"] for r in self.runs],
            "all_io": [[r[side].get("io") for side in ("sent", "received")] for r in self.runs],
            "tls": self.kind in TLS_KINDS,
            "all_recv_cpu": [r["received"]["user"] + r["received"]["system"] for r in self.runs],
            "all_recv_faults": [r["received"].get("minor_faults") for r in self.runs],
            "all_cpu": [
                [round(r[side]["user"] + r[side]["system"], 3) for side in ("sent", "received")] for r in self.runs
            ],
            # user time alone: the page-cache copy into tmpfs (system time) varies from round to round on
            # this VM far more than the work of either program does
            "all_user": [[round(r[side]["user"], 3) for side in ("sent", "received")] for r in self.runs],
            "sent": best["sent"],
            "received": best["received"],
        }


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, shm: Path) -> None:
        self.args = args
        self.work = work
        self.shm = shm
        self.server: Child | None = None
        self.server_port = 0
        self.server_fp = ""
        self.serial = 0

    def start_server(self) -> None:
        self.server = Child(SCRIPT, "server", ["--db", str(self.work / "chat.sqlite3")], self.work)
        port, self.server_fp = self.server.expect("READY ", 60).split()
        self.server_port = int(port)

    def where_path(self, where: str) -> Path:
        return self.shm.parent if where == "tmpfs" else Path(self.args.disk_dir)

    def folder(self, where: str) -> Path:
        self.serial += 1
        root = self.shm if where == "tmpfs" else Path(self.args.disk_dir) / self.work.name
        folder = root / f"dl-{self.serial}"
        folder.mkdir(parents=True)
        return folder

    def pair(self, kind: str, case: Case, recv_args: list[str], send_args: list[str]) -> tuple[dict, dict]:
        folder = self.folder(case.where)
        source = case.source
        os.sync()  # earlier cases' dirty pages are not this case's business
        receiver = sender = None
        try:
            tree = case.tree[1] if case.tree else None
            receiver = Child(SCRIPT, f"{kind}-recv", ["--downloads", str(folder), *recv_args], self.work, tree)
            ready = receiver.expect("READY", 60)
            port = ready if ready else str(self.server_port)
            sender = Child(
                SCRIPT,
                f"{kind}-send",
                ["--port", port, "--file", str(source.path), "--downloads", str(folder), *send_args],
                self.work,
                tree,
            )
            sent = sender.result(600)
            received = receiver.result(60)
            sender.wait()
            receiver.wait()
            final = Path(received.get("path") or folder / FILE_NAME)
            if not final.is_file() or final.stat().st_size != source.size:
                raise RoleFailed(f"{kind}: {final} missing or of the wrong size")
            if source.digest not in (sent.get("sha256", source.digest), received.get("sha256", source.digest)):
                raise RoleFailed(f"{kind}: SHA-256 differs from the source's")
            if sent.get("sha256", source.digest) != received.get("sha256", source.digest):
                raise RoleFailed(f"{kind}: SHA-256 differs between the sides")
            if sent.get("ok") is False:
                raise RoleFailed(f"{kind}: the sender saw a bad acknowledgement")
            return sent, received
        finally:
            for child in (sender, receiver):
                if child is not None:
                    child.stop()
            shutil.rmtree(folder, ignore_errors=True)

    def run(self, case: Case) -> None:
        knobs = []
        if case.chunk:
            knobs += ["--chunk", str(case.chunk)]
        if case.read_size:
            knobs += ["--read-size", str(case.read_size)]
        if case.kind in ("chatapp", "chatapp-plain"):
            self.serial += 1
            receiver_name, sender_name = f"rcv{self.serial}", f"snd{self.serial}"
            knobs += ["--server-fp", self.server_fp]
            if case.kind == "chatapp-plain":
                knobs.append("--plain")  # the benchmark-only plain-TCP peer link
            sent, received = self.pair(
                "chat",
                case,
                ["--port", str(self.server_port), "--name", receiver_name, *knobs],
                ["--name", sender_name, "--peer", receiver_name, "--downloads", str(self.work / "sent"), *knobs],
            )
            if received.get("state") != "done":
                raise RoleFailed(f"chatapp transfer ended {received.get('state')} ({received.get('reason')})")
        else:
            if case.kind == "twisted-tls":
                knobs.append("--tls")
            sent, received = self.pair("raw" if case.kind == "raw" else "tw", case, knobs, knobs)
        case.runs.append({"sent": sent, "received": received, "mbps": case.source.size / sent["elapsed"] / 1e6})
        print(f"  {describe(case.record())}: {case.runs[-1]['mbps']:.0f} MB/s", flush=True)


def describe(r: dict[str, Any]) -> str:
    label = {
        "raw": "(a) raw sockets",
        "twisted": "(b) minimal Twisted, plain TCP",
        "twisted-tls": "(c) minimal Twisted, mutual TLS 1.3",
        "chatapp": "chatapp, mutual TLS 1.3",
        "chatapp-plain": "chatapp, plain TCP (bench-only wiring)",
    }[r["kind"]]
    if r.get("tree"):
        label += f" [{r['tree']}]"
    if r.get("twin"):
        label += " [run again]"
    if r["kind"] != "raw":
        label += f", chunk {size_text(r['chunk'])}, read {size_text(r['read_size'])}"
    return f"{label} -> {r['where']}"


TLS_KINDS = ("twisted-tls", "chatapp")


def ceiling_of(r: dict[str, Any], main: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The minimal Twisted case over the same transport (plain or TLS), same read size if run."""
    kind = "twisted-tls" if r["tls"] else "twisted"
    same = [b for b in main if b["kind"] == kind and not b.get("twin")]
    return next((b for b in same if b["read_size"] == r["read_size"]), same[0] if same else None)


def paired_ratios(main: list[dict[str, Any]]) -> list[str]:
    """Each case's rate over its ceiling's in the same round: the median and the range of those ratios."""
    lines = []
    for r in main:
        ceiling = ceiling_of(r, main) if r["kind"].startswith("chatapp") or r.get("twin") else None
        if ceiling is None or ceiling is r:
            continue
        ratios = sorted(a / b for a, b in zip(r["all_mbps"], ceiling["all_mbps"], strict=True))
        if len(ratios) > 1:
            middle = statistics.median(ratios)
            lines.append(
                f"per-round ratio to the ceiling, {describe(r).split(', chunk')[0]}: median {middle:.2f}x "
                f"({ratios[0]:.2f}-{ratios[-1]:.2f}), {sum(x >= 0.95 for x in ratios)} of {len(ratios)} rounds >= 0.95x"
            )
    return ["\n" + "\n".join(lines)] if lines else []


def fmt_rate(r: dict[str, Any]) -> str:
    text = f"{r['mbps']:.0f}"
    if len(r["all_mbps"]) > 1:
        text += f" ({min(r['all_mbps']):.0f}-{max(r['all_mbps']):.0f})"
    return text


def recv_cpu_ratio(r: dict[str, Any], ceiling: dict[str, Any]) -> str:
    """Median receiver CPU of ``r`` over the ceiling's (both per GiB of the same file)."""
    ours, theirs = sorted(r["all_recv_cpu"]), sorted(ceiling["all_recv_cpu"])
    return f"{ours[(len(ours) - 1) // 2] / theirs[(len(theirs) - 1) // 2]:.2f}x"


def per_gib(side: dict[str, Any], size: int) -> str:
    return f"{(side['user'] + side['system']) * GiB / size:.2f}"


def faults_per_gib(side: dict[str, Any], size: int) -> str:
    faults = side.get("minor_faults")
    return "-" if faults is None else f"{faults * GiB / size:,.0f}"


def peak(side: dict[str, Any]) -> str:
    grown = side["hwm_kib"] - side.get("rss_ready_kib", side["hwm_kib"])
    text = f"{side['hwm_kib'] / 1024:.0f}"
    if "rss_ready_kib" in side:
        text += f" (+{grown / 1024:.0f})"
    return text


def io_text(side: dict[str, Any], amount: str | None, calls: str, size: int = 0) -> str:
    """Mean KiB per send() (sender) or per recv() (receiver, the file size over the reads)."""
    io = side.get("io")
    if not io or not io[calls]:
        return "-"
    total = io[amount] if amount else size
    return f"{total / io[calls] / KiB:.0f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace, paths: dict[str, Path]) -> str:
    out = []
    info = machine()
    out.append(
        f"machine: {info['cores']} cores, {info['cpu']}, {info['ram']} RAM, Python {info['python']}, "
        f"Twisted {info['twisted']}, Linux {info['kernel']}; median of {args.repeat} interleaved runs "
        "(range in brackets); MB/s = 10^6 bytes/s; peak RSS = VmHWM (growth over the RSS before the transfer)"
    )
    headers = [
        "case",
        "MB/s",
        "vs (a)",
        "vs ceiling",
        "recv CPU vs ceiling",
        "CPU s/GiB send",
        "CPU s/GiB recv",
        "peak RSS MiB send",
        "peak RSS MiB recv",
        "recv page faults/GiB",
        "send KiB/call",
        "recv KiB/call",
    ]
    for where in ("tmpfs", "disk"):
        main = [r for r in results if r["where"] == where and not r["sweep"]]
        if not main:
            continue
        raw = next((r for r in main if r["kind"] == "raw"), None)
        rows = []
        for r in main:
            ceiling = ceiling_of(r, main) if r["kind"].startswith("chatapp") or r.get("twin") else None
            rows.append(
                [
                    describe(r).rsplit(" -> ", 1)[0],
                    fmt_rate(r),
                    f"{r['mbps'] / raw['mbps']:.0%}" if raw else "-",
                    f"{r['mbps'] / ceiling['mbps']:.2f}x" if ceiling else "-",
                    recv_cpu_ratio(r, ceiling) if ceiling else "-",
                    per_gib(r["sent"], r["size"]),
                    per_gib(r["received"], r["size"]),
                    peak(r["sent"]),
                    peak(r["received"]),
                    faults_per_gib(r["received"], r["size"]),
                    io_text(r["sent"], "sent", "sends"),
                    io_text(r["received"], None, "reads", r["size"]),
                ]
            )
        size = size_text(main[0]["size"])
        out.append(f"\n{size} into {where} ({paths[where]}):\n")
        out.append(table(headers, rows))
        tls = next((r for r in main if r["kind"] == "chatapp"), None)
        plain = next((r for r in main if r["kind"] == "chatapp-plain"), None)
        if tls and plain:
            out.append(f"\nchatapp mutual TLS / chatapp plain TCP: {tls['mbps'] / plain['mbps']:.2f}x (medians)")
        out.extend(paired_ratios(main))
    sweep = [r for r in results if r["sweep"]]
    if sweep:
        size = size_text(sweep[0]["size"])
        out.append(f"\nsweep, {size} into tmpfs: MB/s (receiver CPU s/GiB, receiver peak RSS MiB)\n")
        reads = sorted({r["read_size"] for r in sweep})
        rows = []
        for kind in ("twisted", "chatapp"):
            for chunk in sorted({r["chunk"] for r in sweep if r["kind"] == kind}):
                row = [f"{'(b)' if kind == 'twisted' else 'chatapp'} chunk {size_text(chunk)}"]
                for read in reads:
                    hit = [r for r in sweep if r["kind"] == kind and r["chunk"] == chunk and r["read_size"] == read]
                    if hit:
                        h = hit[0]
                        cpu, rss = per_gib(h["received"], h["size"]), h["received"]["hwm_kib"] // 1024
                        row.append(f"{fmt_rate(h)} ({cpu}, {rss})")
                    else:
                        row.append("-")
                rows.append(row)
        out.append(table(["sender chunk \\ receiver read size", *(size_text(r) for r in reads)], rows))
    return "\n".join(out)


def coordinate(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: below (children, files)
    work = Path(tempfile.mkdtemp(prefix="chatapp-transfer-"))
    private_xdg(work)  # known servers, known peers and identity keys of the run's accounts
    shm = Path(tempfile.mkdtemp(prefix="chatapp-transfer-", dir="/dev/shm"))
    bench = Bench(args, work, shm)
    try:
        print(f"writing a {size_text(args.size)} source file in {shm}", flush=True)
        main_source = Source(shm / "source.bin", args.size)
        cases: list[Case] = []
        for where in args.where:
            if "raw" in args.cases:
                cases.append(Case("raw", where, main_source))
            for kind in ("twisted", "twisted-tls"):
                if kind in args.cases:
                    for read in args.b_reads:
                        cases.append(Case(kind, where, main_source, args.chunk or 256 * KiB, read))
                        if args.twin and read == args.b_reads[0]:
                            cases.append(Case(kind, where, main_source, args.chunk or 256 * KiB, read, twin=True))
            for kind in ("chatapp", "chatapp-plain"):
                if kind in args.cases:
                    cases.append(Case(kind, where, main_source, args.chunk, args.read_size))
            for label, folder in args.compare:
                for kind in ("chatapp", "chatapp-plain"):  # each compared tree as the main one, interleaved
                    if kind in args.cases:
                        tree = (label, folder)
                        cases.append(Case(kind, where, main_source, args.chunk, args.read_size, tree=tree))
        if args.sweep:
            sweep_source = main_source
            if args.sweep_size != args.size:
                sweep_source = Source(shm / "sweep.bin", args.sweep_size)
            for read in SWEEP_READS:
                cases.append(Case("twisted", "tmpfs", sweep_source, 256 * KiB, read, sweep=True))
            for chunk in SWEEP_CHUNKS:
                for read in SWEEP_READS:
                    cases.append(Case("chatapp", "tmpfs", sweep_source, chunk, read, sweep=True))
        bench.start_server()
        for i in range(args.repeat):  # round robin, so that a noisy moment hits every case alike
            print(f"run {i + 1} of {args.repeat}:", flush=True)
            for case in cases:
                bench.run(case)
        results = [case.record() for case in cases]
        text = report(results, args, {w: bench.where_path(w) for w in ("tmpfs", "disk")})
        print("\n" + text)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"args": vars(args) | {"cases": sorted(args.cases)}, "results": results}, indent=1)
            )
    finally:
        if bench.server is not None:
            bench.server.stop()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(Path(args.disk_dir) / work.name, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--size", type=parse_size, default=GiB, help="file size (e.g. 1G, 256M); default 1 GiB")
    parser.add_argument("--quick", action="store_true", help="256 MiB, and 128 MiB for the sweep")
    parser.add_argument("--sweep-size", type=parse_size, default=256 * MiB, help="file size for the sweep (256M)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case, round robin (the median is shown)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the chunk/read-size sweep")
    parser.add_argument("--where", default="tmpfs,disk", help="tmpfs, disk or both (comma-separated)")
    parser.add_argument("--disk-dir", default=tempfile.gettempdir(), help="a folder on disk (default: /tmp)")
    parser.add_argument(
        "--cases",
        default="raw,twisted,twisted-tls,chatapp,chatapp-plain",
        help="which of raw, twisted, twisted-tls, chatapp, chatapp-plain to run",
    )
    parser.add_argument("--chunk", type=parse_size, default=0, help="sender chunk (default: the library's)")
    parser.add_argument("--read-size", type=parse_size, default=0, help="chatapp receiver read size (default: as is)")
    parser.add_argument(
        "--b-reads", default="256K", help="receiver read sizes for (b) and (c) (default 256K, chatapp's)"
    )
    parser.add_argument(
        "--compare",
        default="",
        help="more chatapp cases with chatapp imported from other trees: label=folder,label=folder",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run every sender on CPU 0 and every receiver on CPU 1 (the scheduler cannot move them)",
    )
    parser.add_argument(
        "--twin", action="store_true", help="run each minimal Twisted case twice a round: the noise floor (A/A)"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--server-fp", help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--downloads", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.sweep_size = 256 * MiB, 128 * MiB
    args.cases = {c.strip() for c in args.cases.split(",")}
    args.compare = [tuple(item.split("=", 1)) for item in args.compare.split(",") if item.strip()]
    args.b_reads = [parse_size(r) for r in args.b_reads.split(",") if r.strip()]
    args.where = [w.strip() for w in args.where.split(",") if w.strip()]
    role = args.role
    if role is None:
        if args.pin:
            os.environ["CHATAPP_BENCH_PIN"] = "1"  # read by each Child as it starts
        coordinate(args)
    elif role == "server":
        run_server(args.db)
    elif role in ("chat-recv", "chat-send"):
        from twisted.internet import defer, task

        run = chat_receiver if role == "chat-recv" else chat_sender
        profile_dir = os.environ.get("CHATAPP_BENCH_PROFILE")
        if profile_dir:  # cProfile the role; read with python -m pstats
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            try:
                task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))
            finally:
                profiler.disable()
                profiler.dump_stats(os.path.join(profile_dir, f"{role}-{os.getpid()}.pstats"))
        else:
            task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))
    elif role == "tw-recv":
        twisted_receiver(args)
    elif role == "tw-send":
        twisted_sender(args)
    elif role == "raw-recv":
        raw_receiver(args)
    elif role == "raw-send":
        raw_sender(args)
    else:
        parser.error(f"unknown role {role}")


if __name__ == "__main__":
    main()
