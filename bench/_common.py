"""What the benchmark scripts share: starting servers and the load generator, reading /proc, printing tables."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TWISTD = Path(sys.executable).parent / "twistd"
PASSWORD = "benchmark password"  # noqa: S105 - the throwaway accounts of a benchmark
CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
_LISTENING = re.compile(r"listening on IPv4Address\(type='TCP', host='127\.0\.0\.1', port=(\d+)\)")


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _child_setup() -> None:
    """In a child before exec: the raised file limit, and SIGTERM when this script dies (Linux prctl)."""
    raise_fd_limit()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that the ``finally`` blocks stop the children."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def sources(count: int) -> list[str]:
    """``count`` loopback source addresses, 127.0.0.2 onwards (each has its own ephemeral ports)."""
    return [f"127.0.{1 + i // 250}.{2 + i % 250}" for i in range(count)]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


class Server:
    """A server subprocess whose output goes to a log file; ``port`` is read from its log."""

    def __init__(self, argv: list[str], log: Path, what: str) -> None:
        self.what = what
        self.log = log
        self._out = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_child_setup
        )
        self.pid = self.proc.pid
        self.port = self._wait_for_port(30.0)

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.what} did not start; its log:\n{self.log.read_text(errors='replace')[-2000:]}")

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        terminate(self.proc, 20)
        self._out.close()


def terminate(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM a child, and SIGKILL it if it has not gone after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_chatserver(workdir: Path, *options: str, name: str = "chatserver") -> Server:
    """``twistd -n chatserver`` on a free loopback port with its database in ``workdir``.

    The listen backlog is raised from Twisted's default of 50 so that a burst of
    connects is not dropped and retried by the kernel (that measures SYN
    retransmission, not the server).
    """
    argv = [
        str(TWISTD),
        "-n",
        "--pidfile=",
        "chatserver",
        "--listen",
        "tcp:0:interface=127.0.0.1:backlog=1024",
        "--db",
        str(workdir / "chat.sqlite3"),
        *options,
    ]
    return Server(argv, workdir / f"{name}.log", name)


def start_lineserver(workdir: Path, tls: bool = True) -> Server:
    """The bare ``LineReceiver`` baseline (bench/_lineserver.py): TLS 1.3 like the chat server by default."""
    argv = [sys.executable, str(BENCH / "_lineserver.py"), *([] if tls else ["--no-tls"])]
    return Server(argv, workdir / "lineserver.log", "lineserver")


class LoadGen:
    """bench/_loadgen.py in a subprocess: a JSON config in, JSON events out."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "_loadgen.py"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_child_setup,
        )

    def event(self, timeout: float = 300.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"load generator gave no result (exit {self.proc.poll()})")
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == "error":
            raise RuntimeError(f"load generator failed: {event['error']}")
        return event

    def release(self) -> dict[str, Any]:
        """Tell a holding load generator to close its connections; return its last event."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        event = self.event(120)
        self.proc.wait(30)
        return event

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_loadgen(config: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Run a load generator mode that ends by itself; return its one result event."""
    gen = LoadGen(config)
    try:
        event = gen.event(timeout)
        gen.proc.wait(30)
        return event
    finally:
        gen.stop()


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def machine() -> str:
    """One line about this machine: cores, CPU model, RAM, Python and Twisted versions."""
    import twisted

    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return (
        f"{os.cpu_count()} cores, {model}, {mem_kib / 2**20:.1f} GiB RAM, "
        f"Python {platform.python_version()}, Twisted {twisted.__version__}, "
        f"fd hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, columns padded to line up in a terminal too."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return (
            "| "
            + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
