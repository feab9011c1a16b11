"""What bench/transfer.py and bench/chat_latency.py share: role processes, the in-process server, /proc readings.

Both scripts start copies of themselves with ``--role <name>``; a role process
talks to the coordinator in lines on its stdout (``READY ...``, ``RESULT
{json}``) and reads orders from its stdin. Its stderr goes to a log file in the
run's temporary folder, shown if the role fails.

``chatapp`` is imported from the working tree this file lives in, or from the
folder named by the environment variable ``CHATAPP_SOURCE`` (to compare a
patched copy against the tree without touching it).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import terminate

BENCH = Path(__file__).resolve().parent
SOURCE = Path(os.environ.get("CHATAPP_SOURCE") or BENCH.parent).resolve()
if str(SOURCE) not in sys.path:
    sys.path.insert(0, str(SOURCE))

PASSWORD = "benchmark password"  # noqa: S105 - throwaway accounts on a throwaway server
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class RoleFailed(RuntimeError):
    pass


class Child:
    """A role process: ``expect`` reads its stdout lines, ``say`` writes to its stdin."""

    def __init__(self, script: Path, role: str, args: list[str], logdir: Path, tree: str | None = None) -> None:
        self.role = role
        self.log = logdir / f"{role}-{time.monotonic_ns()}.log"
        self._err = open(self.log, "wb")
        argv = [sys.executable, str(script), "--role", role, *args]
        spy = os.environ.get("CHATAPP_BENCH_PYSPY")  # a folder: sample every role but the server with py-spy
        if spy and role != "server":
            out = Path(spy) / f"{role}-{time.monotonic_ns()}.txt"
            argv = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-r",
                "400",
                "-f",
                "raw",
                "-o",
                str(out),
                "--",
                *argv,
            ]
        # --pin: every sender on CPU 0, every receiver on CPU 1 (threads included), the same for each case
        cpus = None
        if os.environ.get("CHATAPP_BENCH_PIN"):
            cpus = {0} if role.endswith("-send") else {1} if role.endswith("-recv") else None
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=os.environ | {"CHATAPP_SOURCE": tree} if tree else None,  # import chatapp from that tree
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self._buffer = b""

    def expect(self, prefix: str, timeout: float = 120.0) -> str:
        """The rest of the next stdout line starting with ``prefix`` (other lines are skipped)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        want = prefix.encode()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.startswith(want):
                    return line[len(want) :].decode().strip()
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            data = os.read(fd, 65536) if ready else b""
            if not data:
                self.stop()
                why = "timed out" if not ready else f"exited with {self.proc.poll()}"
                raise RoleFailed(f"{self.role} {why} before {prefix!r}; its log:\n{self.tail()}")
            self._buffer += data

    def result(self, timeout: float = 300.0) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.expect("RESULT ", timeout))
        return found

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def wait(self, timeout: float = 30.0) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()

    def stop(self) -> None:
        terminate(self.proc, 10)
        self._err.close()


def emit(kind: str, payload: Any = "") -> None:
    """A line for the coordinator."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    sys.stdout.write(f"{kind} {text}\n")
    sys.stdout.flush()


def cpu_now() -> tuple[float, float, int]:
    """(user, system) CPU seconds of this process so far, and its minor page faults."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def proc_status(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmHWM: peak RSS, VmRSS: current RSS), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def usage_since(start: tuple[float, float, int]) -> dict[str, float]:
    user, system, faults = cpu_now()
    return {
        "user": user - start[0],
        "system": system - start[1],
        # fresh pages the process touched: memory given back to the system and taken again costs a fault and
        # a zeroed page each time
        "minor_faults": faults - start[2],
        "hwm_kib": proc_status("VmHWM"),
        "rss_kib": proc_status("VmRSS"),
    }


def count_io() -> dict[str, int]:
    """Count the TCP sends and receives of this process (calls and bytes) in the returned dict.

    Wraps ``twisted.internet.tcp.Connection.writeSomeData`` and ``doRead``: a
    fraction of a microsecond a call, the same for every Twisted case.
    """
    from twisted.internet import tcp

    counts = {"sends": 0, "sent": 0, "reads": 0, "read": 0}
    write_some, do_read = tcp.Connection.writeSomeData, tcp.Connection.doRead

    def writeSomeData(self: Any, data: Any) -> Any:
        n = write_some(self, data)
        counts["sends"] += 1
        if isinstance(n, int):
            counts["sent"] += n
        return n

    def doRead(self: Any) -> Any:
        counts["reads"] += 1
        return do_read(self)

    tcp.Connection.writeSomeData = writeSomeData  # type: ignore[method-assign]
    tcp.Connection.doRead = doRead  # type: ignore[method-assign]
    return counts


def stdin_lines(reactor: Any, on_line: Any) -> None:
    """Call ``on_line(text)`` for each line the coordinator writes; stop the reactor when it closes stdin."""
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    class Orders(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            on_line(line.decode().strip())

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Orders(), reactor=reactor)


def run_server(db: str) -> None:
    """Role ``server``: the real chat server service in this process on a free 127.0.0.1 port."""
    from twisted.internet import reactor

    from chatapp.server.tap import Options, build_service

    options = Options()
    options.parseOptions(
        [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--db",
            db,
            "--bcrypt-rounds",
            "4",
            "--signups-per-hour",
            "10000",
            "--max-connections-per-address",
            "1000",
        ]
    )
    service = build_service(options, reactor)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]

    def ready(_: object) -> None:
        assert service.port is not None
        # the port, then the server's TLS fingerprint: clients pin it (--server-fingerprint)
        emit("READY", f"{service.port.getHost().port} {service.fingerprint}")  # type: ignore[attr-defined]

    def failed(failure: Any) -> None:
        print(failure.getErrorMessage(), file=sys.stderr)  # the coordinator times out waiting for READY
        reactor.stop()  # type: ignore[attr-defined]

    started = service.whenStarted()
    started.addCallback(ready)
    started.addErrback(failed)
    stdin_lines(reactor, lambda line: None)
    reactor.run()  # type: ignore[attr-defined]


def private_xdg(work: Path) -> None:
    """Point this process and its children at folders in ``work`` for known servers, known peers and
    identity keys, so that a benchmark never touches the user's own files."""
    for variable in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        folder = work / variable.lower()
        folder.mkdir(mode=0o700, exist_ok=True)
        os.environ[variable] = str(folder)


def server_options(fingerprint: str | None) -> dict[str, Any]:
    """``ChatClient(server_options=...)`` for the bench's own server: its fingerprint pinned."""
    return {"server_fingerprint": fingerprint} if fingerprint else {}


def tls_pair() -> tuple[Any, Any]:
    """(listener, connector) OpenSSL connection creators for a minimal mutual TLS 1.3 link: the
    same contexts (cipher, curve, options) as chatapp's peer link, each side with a fresh key."""
    from chatapp.tls.contexts import PeerConnectorTLS, PeerListenerTLS
    from chatapp.tls.identity import new_identity

    return PeerListenerTLS(new_identity("bench-listener")), PeerConnectorTLS(new_identity("bench-connector"))


def socket_of(transport: Any) -> Any:
    """The TCP transport under any TLS wrapper (socket options and the read size belong there)."""
    from chatapp.tls.transports import inner_transport

    return inner_transport(transport)


def plain_peer_wiring(client: Any) -> None:
    """BENCHMARK ONLY: make ``client``'s peer links plain TCP, to measure the peer protocol's own costs.

    Not reachable from any command line: chatapp has no plain-TCP peer link. Call before
    ``client.start``; the key checks are given the fingerprints the server vouched for (no TLS
    shows one), so the handshake runs its usual lines.
    """
    import chatapp.peer.factory as factory_module
    from chatapp.peer.session import PeerSession
    from chatapp.peer.states import Role

    for name in ("GatheringTLSFactory", "TLSMemoryBIOFactory"):  # chatapp's TLS wrapper, as each tree names it
        if hasattr(factory_module, name):
            setattr(factory_module, name, lambda creator, is_client, wrapped, reactor=None: wrapped)
    vouched: list[str] = []
    made = PeerSession.connectionMade

    def connectionMade(self: Any) -> None:
        made(self)
        if self.transport is not None and self.transport.connected:
            self.handshakeCompleted()  # there is no TLS handshake to wait for

    def peer_key(session: Any) -> str:
        if session.role is Role.CONNECTOR:
            return str(session.handshake._vouched)
        return vouched[-1] if vouched else ""

    PeerSession.connectionMade = connectionMade  # type: ignore[method-assign]
    factory_module._tls_peer_key = peer_key  # type: ignore[attr-defined]
    verify = client._verify

    def recording_verify(token: str) -> Any:
        def seen(result: Any) -> Any:
            vouched.append(result[2])
            del vouched[:-1]
            return result

        return verify(token).addCallback(seen)

    client._verify = recording_verify


def machine() -> dict[str, str]:
    import twisted

    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kib / 2**20:.1f} GiB",
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "kernel": platform.release(),
    }


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def size_text(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def parse_size(text: str) -> int:
    text = text.strip().upper().replace("IB", "").replace("B", "")
    for suffix, scale in (("K", KiB), ("M", MiB), ("G", GiB)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * scale)
    return int(text)


def as_the_program() -> None:
    """What the ``chatapp`` program does at start and the library does not (``chatapp.memory``), so that a
    chat role measures what ships; a tree from before it has nothing to do."""
    try:
        from chatapp.memory import keep_freed_memory
    except ImportError:
        return
    keep_freed_memory()
