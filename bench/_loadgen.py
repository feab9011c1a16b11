"""Load generator for the benchmarks: raw non-blocking sockets on one epoll loop.

It runs in its own process (started by the benchmark scripts) so that its
CPU is apart from the server's and can be reported.  It speaks just enough of
the server protocol: it sends lines, skips ``*`` events and ``+`` rows, and
takes every ``OK``/``ERR`` line as the final reply of the oldest request in
flight on that connection.

Usage: ``python bench/_loadgen.py '<json config>'``; results are JSON lines on
stdout.  Modes (``config["mode"]``):

``hold``
    open ``n`` connections (bound to the ``sources`` addresses in turn, at most
    ``inflight`` being set up at once), send ``SIGNUP`` or ``LOGIN`` and
    ``LISTEN`` pipelined, report ``ready`` once every one is logged in, then
    hold them until a line arrives on stdin.  With ``"quit": true`` each
    connection sends ``QUIT`` instead and the mode ends when all are closed
    (used to create accounts).
``rr``
    ``n`` connections sign up (or log in) and listen, then run one workload
    (``PING``, ``WHO`` or ``CONNECT``/``VERIFY`` pairs) with ``depth`` requests
    in flight per connection for ``duration`` seconds; reports requests/s,
    latency percentiles and the CPU of this process and of ``server_pid``.
``login``
    one connection sends ``PING`` every ``interval`` seconds while ``n`` other
    connections send ``LOGIN`` all at once; reports logins/s and the PING
    latencies measured while the logins were pending.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import select
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from typing import Any

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
CLK_TCK = os.sysconf("SC_CLK_TCK")


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    parts = stat.rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


class Conn:
    """One client connection: buffers, the requests in flight and a reply callback."""

    __slots__ = (
        "closed",
        "index",
        "inflight",
        "on_batch",
        "on_close",
        "on_reply",
        "pending",
        "rbuf",
        "ready",
        "sock",
        "state",
        "tls",
        "tls_in",
        "tls_out",
        "wbuf",
        "writing",
    )

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.rbuf = b""
        self.wbuf = bytearray()
        self.writing = False
        self.closed = False
        # (send time, kind) of each request awaiting its final reply, oldest first
        self.inflight: deque[tuple[float, str]] = deque()
        self.on_reply: Callable[[Conn, str, float, str], None] = _ignore_reply
        self.on_close: Callable[[Conn], None] = _ignore
        self.on_batch: Callable[[Conn], None] = _ignore  # after all the lines of one read
        self.state = 0
        # TLS (the chat server's default): an ssl.SSLObject over two memory BIOs; None for plain TCP.
        self.tls: ssl.SSLObject | None = None
        self.tls_in = ssl.MemoryBIO()
        self.tls_out = ssl.MemoryBIO()
        self.pending = bytearray()  # plaintext written before the handshake completed
        self.ready = False  # the TLS handshake completed


def tls_context() -> ssl.SSLContext:
    """TLS 1.3 without verification: the load generator talks to the benchmark's own server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


TLS_CONTEXT: ssl.SSLContext | None = None  # set by main() from the config's "tls" (default: on)


def _ignore_reply(conn: Conn, line: str, sent: float, kind: str) -> None:
    pass


def _ignore(conn: Conn) -> None:
    pass


class Loop:
    """An epoll loop over many ``Conn``; ``run`` stops when ``done()`` or at ``deadline``."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.stdin_lines: list[str] = []
        self.watch_stdin = False

    def connect(self, host: str, port: int, source: str | None, index: int) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            sock.bind((source, 0))
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(err, os.strerror(err))
        conn = Conn(sock, index)
        self.conns[sock.fileno()] = conn
        self.ep.register(sock.fileno(), EPOLLIN)
        if TLS_CONTEXT is not None:
            conn.tls = TLS_CONTEXT.wrap_bio(conn.tls_in, conn.tls_out)
            self._handshake(conn)
        return conn

    def _handshake(self, conn: Conn) -> bool:
        """Go on with the TLS handshake; True once it is complete (queued plaintext is then sent)."""
        assert conn.tls is not None
        try:
            conn.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._push_tls(conn)
            return False
        conn.ready = True
        if conn.pending:
            conn.tls.write(conn.pending)
            conn.pending.clear()
        self._push_tls(conn)
        return True

    def _push_tls(self, conn: Conn) -> None:
        out = conn.tls_out.read()
        if out:
            conn.wbuf += out
            self._flush(conn)

    def send(self, conn: Conn, data: bytes, kinds: list[str] | None = None) -> None:
        """Queue ``data``; each kind in ``kinds`` is one request that awaits a final reply."""
        if conn.closed:
            return
        now = time.perf_counter()
        if kinds:
            for kind in kinds:
                conn.inflight.append((now, kind))
        if conn.tls is None:
            conn.wbuf += data
            self._flush(conn)
        elif not conn.ready:
            conn.pending += data
        else:
            conn.tls.write(data)
            self._push_tls(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.wbuf) if conn.wbuf else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(conn)
            return
        del conn.wbuf[:sent]
        want = bool(conn.wbuf)
        if want != conn.writing:
            conn.writing = want
            self.ep.modify(conn.sock.fileno(), EPOLLIN | (EPOLLOUT if want else 0))

    def close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        fd = conn.sock.fileno()
        self.conns.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        conn.sock.close()
        conn.on_close(conn)

    def _readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            self.close(conn)
            return
        if not data:
            self.close(conn)
            return
        closing = False
        if conn.tls is not None:
            plain, closing = self._decrypt(conn, data)
            if plain is None:
                return
            data = plain
        buf = conn.rbuf + data
        *lines, conn.rbuf = buf.split(b"\n")
        now = time.perf_counter()
        for raw in lines:
            first = raw[:1]
            if first == b"O" or first == b"E":  # OK / ERR: a final reply
                if conn.inflight:
                    sent, kind = conn.inflight.popleft()
                else:
                    sent, kind = now, "?"
                conn.on_reply(conn, raw.rstrip(b"\r").decode(), now - sent, kind)
                if conn.closed:
                    return
            elif first == b"*" and raw.startswith(b"* BYE"):
                self.close(conn)
                return
            # "* HELLO", other events and "+" rows are skipped
        conn.on_batch(conn)
        if closing:
            self.close(conn)

    def _decrypt(self, conn: Conn, data: bytes) -> tuple[bytes | None, bool]:
        """(the plaintext in ``data``, the server said close_notify); None if the connection broke."""
        assert conn.tls is not None
        conn.tls_in.write(data)
        if not conn.ready:
            try:
                if not self._handshake(conn):
                    return b"", False
            except ssl.SSLError:
                self.close(conn)
                return None, False
        plain = []
        closing = False
        while True:
            try:
                piece = conn.tls.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closing = True
                break
            except ssl.SSLError:
                self.close(conn)
                return None, False
            if not piece:  # SSLObject.read gives b"" for the peer's close_notify
                closing = True
                break
            plain.append(piece)
        if closing:
            # Answer the server's close_notify: Twisted's TLS waits for ours before it closes the socket.
            try:
                conn.tls.unwrap()
            except ssl.SSLError:
                pass
        self._push_tls(conn)
        return b"".join(plain), closing

    def run(
        self,
        done: Callable[[], bool],
        deadline: float,
        tick: Callable[[], None] | None = None,
        tick_every: float = 0.05,
    ) -> None:
        if self.watch_stdin:
            self.ep.register(sys.stdin.fileno(), EPOLLIN)
        next_tick = time.perf_counter()
        try:
            while not done():
                now = time.perf_counter()
                if now >= deadline:
                    raise TimeoutError("load generator deadline passed")
                if tick is not None and now >= next_tick:
                    tick()
                    next_tick = now + tick_every
                    if done():
                        return
                timeout = min(deadline - now, max(0.0, next_tick - now) if tick else 0.5)
                for fd, mask in self.ep.poll(timeout, 4096):
                    if fd == 0:
                        self.stdin_lines.append(sys.stdin.readline())
                        continue
                    conn = self.conns.get(fd)
                    if conn is None:
                        continue
                    if mask & EPOLLOUT:
                        self._flush(conn)
                    if mask & (EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                        self._readable(conn)
        finally:
            if self.watch_stdin:
                self.ep.unregister(sys.stdin.fileno())


def _key(i: int) -> str:
    """A made-up identity key fingerprint for account ``i`` (the server only stores and vouches for it)."""
    return "sha256:" + hashlib.sha256(b"bench key %d" % i).hexdigest()


def _credentials(cfg: dict[str, Any], i: int) -> str:
    return f"{cfg['user_prefix']}{i} {cfg['password']}"


def mode_hold(cfg: dict[str, Any]) -> None:
    """Sign up or log in ``n`` connections, pipelined, ``inflight`` being set up at a time."""
    loop = Loop()
    host, port, n = cfg["host"], cfg["port"], cfg["n"]
    sources: list[str] = cfg["sources"]
    verb = cfg["verb"]  # SIGNUP or LOGIN
    quit_after = bool(cfg.get("quit"))
    inflight_max: int = cfg["inflight"]
    stats = {"ok": 0, "busy": 0, "errors": 0}
    first_error: list[str] = []
    pending = 0  # connections opened and not yet logged in (or, with quit, not yet closed)
    next_index = 0
    retry_at: deque[tuple[float, int]] = deque()  # (when, index), or (when, -1 - index) to reuse the connection
    redo_conns: dict[int, Conn] = {}

    def request(conn: Conn) -> None:
        i = conn.index
        if quit_after:
            loop.send(conn, f"{verb} {_credentials(cfg, i)}\r\nQUIT\r\n".encode(), [verb, "TAIL"])
        else:  # a real client's login: its identity key published, then listening
            tail = f"KEY {_key(i)}\r\nLISTEN {20000 + i % 40000}\r\n".encode()
            loop.send(conn, f"{verb} {_credentials(cfg, i)}\r\n".encode() + tail, [verb, "KEY", "TAIL"])

    def open_one(i: int) -> None:
        conn = loop.connect(host, port, sources[i % len(sources)], i)
        conn.on_reply = on_reply
        conn.on_close = on_close
        request(conn)

    def finish(conn: Conn) -> None:
        nonlocal pending
        if conn.state == 2:
            retry_at.append((time.perf_counter() + 0.02, conn.index))
        else:
            stats["ok" if conn.state == 1 else "errors"] += 1
            pending -= 1
            fill()
        conn.state = 4  # counted

    def on_reply(conn: Conn, line: str, latency: float, kind: str) -> None:
        if kind == verb:
            if line.startswith("OK"):
                conn.state = 1
            elif line.startswith("ERR 503"):
                stats["busy"] += 1
                conn.state = 2
            else:
                if not first_error:
                    first_error.append(line)
                conn.state = 3
        elif kind == "TAIL" and not quit_after:
            if conn.state == 2:  # try again on this connection: it stays open
                conn.state = 0
                retry_at.append((time.perf_counter() + 0.02, -1 - conn.index))
                redo_conns[conn.index] = conn
            else:
                finish(conn)

    def on_close(conn: Conn) -> None:
        if conn.state != 4:
            finish(conn)

    def fill() -> None:
        nonlocal pending, next_index
        while pending < inflight_max and next_index < n:
            next_index += 1
            pending += 1
            open_one(next_index - 1)

    def tick() -> None:
        now = time.perf_counter()
        while retry_at and retry_at[0][0] <= now:
            _, i = retry_at.popleft()
            if i >= 0:
                open_one(i)  # the refused connection was closed by its QUIT: open a new one
            else:
                request(redo_conns.pop(-1 - i))

    cpu0 = own_cpu()
    t0 = time.perf_counter()
    fill()
    loop.run(lambda: next_index >= n and pending == 0, t0 + cfg.get("timeout", 240), tick, 0.01)
    elapsed = time.perf_counter() - t0
    emit(event="ready", elapsed=elapsed, cpu=own_cpu() - cpu0, first_error=first_error[:1], **stats)
    if quit_after:
        return
    loop.watch_stdin = True
    loop.run(lambda: bool(loop.stdin_lines), time.perf_counter() + cfg.get("hold", 600))
    alive = len(loop.conns)
    for conn in list(loop.conns.values()):
        loop.close(conn)
    emit(event="closed", alive=alive)


def _setup(loop: Loop, cfg: dict[str, Any], n: int) -> list[Conn]:
    """``n`` connections that ``SIGNUP``/``LOGIN`` and ``LISTEN``; returns once all are done.

    A ``503 busy`` (too many password checks pending) is retried shortly after.
    """
    conns: list[Conn] = []
    done = 0
    failures: list[str] = []
    retry_at: deque[tuple[float, Conn]] = deque()
    verb = cfg["verb"]

    def request(conn: Conn) -> None:
        conn.state = 0
        data = f"{verb} {_credentials(cfg, conn.index)}\r\nKEY {_key(conn.index)}\r\nLISTEN {30000 + conn.index}\r\n"
        loop.send(conn, data.encode(), [verb, "KEY", "LISTEN"])

    def on_reply(conn: Conn, line: str, latency: float, kind: str) -> None:
        nonlocal done
        if kind == verb and line.startswith("ERR 503"):
            conn.state = 2
        elif kind == "LISTEN" and conn.state == 2:
            retry_at.append((time.perf_counter() + 0.05, conn))
        elif not line.startswith("OK"):
            failures.append(line)
        elif kind == "LISTEN":
            done += 1

    def tick() -> None:
        now = time.perf_counter()
        while retry_at and retry_at[0][0] <= now:
            request(retry_at.popleft()[1])

    for i in range(n):
        conn = loop.connect(cfg["host"], cfg["port"], cfg["sources"][i % len(cfg["sources"])], i)
        conn.on_reply = on_reply
        request(conn)
        conns.append(conn)
    loop.run(lambda: done >= n or bool(failures), time.perf_counter() + 120, tick, 0.01)
    if failures:
        raise RuntimeError(f"setup failed: {failures[0]}")
    return conns


def mode_rr(cfg: dict[str, Any]) -> None:
    """Request/response throughput with ``depth`` requests in flight per connection."""
    loop = Loop()
    n, depth, workload = cfg["n"], cfg["depth"], cfg["workload"]
    conns = _setup(loop, cfg, n)
    names = [f"{cfg['user_prefix']}{i}" for i in range(n)]
    verifies: list[deque[str]] = [deque() for _ in range(n)]
    latencies: list[float] = []
    counts = {"replies": 0, "errors": 0}
    first_error: list[str] = []
    measuring = False
    stopping = False
    # connect-only asks for tokens and never redeems them: they pile up in the server for 60 s
    redeem = workload == "connect"
    simple = {"ping": b"PING\r\n", "who": b"WHO\r\n", "echo": b"PING\r\n"}

    def fill(conn: Conn) -> None:
        if stopping:
            return
        room = depth - len(conn.inflight)
        if room <= 0:
            return
        if workload in simple:
            loop.send(conn, simple[workload] * room, ["R"] * room)
            return
        queue = verifies[conn.index]
        data: list[bytes] = []
        kinds: list[str] = []
        for _ in range(room):
            if queue and redeem:
                data.append(f"VERIFY {queue.popleft()}\r\n".encode())
                kinds.append("V")
            else:
                data.append(f"CONNECT {names[conn.index ^ 1]}\r\n".encode())
                kinds.append("C")
        loop.send(conn, b"".join(data), kinds)

    def on_reply(conn: Conn, line: str, latency: float, kind: str) -> None:
        if measuring:
            counts["replies"] += 1
            latencies.append(latency)
        if not line.startswith("OK"):
            counts["errors"] += 1
            if not first_error:
                first_error.append(line)
        elif kind == "C" and redeem:
            partner = conns[conn.index ^ 1]
            verifies[partner.index].append(line.split(" ")[5])  # OK CONNECT user host port TOKEN proof
            if len(partner.inflight) < depth:
                waiting.append(partner)

    waiting: list[Conn] = []  # partners that got a token to redeem during this read

    def on_batch(conn: Conn) -> None:
        # one send per read, whatever the number of replies it held
        fill(conn)
        for partner in waiting:
            fill(partner)
        waiting.clear()

    for conn in conns:
        conn.on_reply = on_reply
        conn.on_batch = on_batch
    for conn in conns:
        fill(conn)
    warmup, duration = cfg.get("warmup", 0.5), cfg["duration"]
    start = time.perf_counter()
    loop.run(lambda: time.perf_counter() - start >= warmup, start + warmup + 5)
    measuring = True
    server_pid = cfg.get("server_pid", 0)
    cpu0, scpu0, t0 = own_cpu(), proc_cpu(server_pid), time.perf_counter()
    marks: list[tuple[float, int]] = [(t0, 0)]  # (time, replies so far) each second, to see a rate that drifts

    def mark() -> None:
        now = time.perf_counter()
        if now - marks[-1][0] >= 1.0:
            marks.append((now, counts["replies"]))

    loop.run(lambda: time.perf_counter() - t0 >= duration, t0 + duration + 5, mark, 0.05)
    elapsed = time.perf_counter() - t0
    cpu, scpu = own_cpu() - cpu0, proc_cpu(server_pid) - scpu0
    measuring = False
    stopping = True
    emit(
        event="result",
        replies=counts["replies"],
        errors=counts["errors"],
        first_error=first_error[:1],
        rate=counts["replies"] / elapsed,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        per_second=[(b[1] - a[1]) / (b[0] - a[0]) for a, b in pairwise(marks)],
        loadgen_cpu=cpu / elapsed,
        server_cpu=scpu / elapsed,
    )
    for conn in conns:
        loop.close(conn)


def mode_login(cfg: dict[str, Any]) -> None:
    """``n`` LOGINs sent at once while one more connection PINGs every ``interval`` s."""
    loop = Loop()
    host, port, n = cfg["host"], cfg["port"], cfg["n"]
    interval = cfg["interval"]
    pinger = loop.connect(host, port, cfg["sources"][0], -1)
    logins = [loop.connect(host, port, cfg["sources"][i % len(cfg["sources"])], i) for i in range(n)]
    # PING each so that connection setup (and the greeting's database check) is over before we start
    ready = 0

    def on_setup(conn: Conn, line: str, latency: float, kind: str) -> None:
        nonlocal ready
        ready += 1

    for conn in [pinger, *logins]:
        conn.on_reply = on_setup
        loop.send(conn, b"PING\r\n", ["PING"])
    loop.run(lambda: ready >= n + 1, time.perf_counter() + 60)

    idle_samples: list[float] = []
    busy_samples: list[float] = []
    login_done: list[float] = []
    errors: list[str] = []
    phase = "idle"
    next_ping = time.perf_counter()

    def on_pong(conn: Conn, line: str, latency: float, kind: str) -> None:
        (idle_samples if phase == "idle" else busy_samples).append(latency)

    def on_login(conn: Conn, line: str, latency: float, kind: str) -> None:
        if line.startswith("OK"):
            login_done.append(time.perf_counter())
        else:
            errors.append(line)
        loop.close(conn)

    pinger.on_reply = on_pong

    def tick() -> None:
        nonlocal next_ping
        now = time.perf_counter()
        if not pinger.inflight and now >= next_ping:
            loop.send(pinger, b"PING\r\n", ["PING"])
            next_ping = now + interval

    t_idle = time.perf_counter()
    loop.run(lambda: time.perf_counter() - t_idle >= cfg.get("idle", 1.0), t_idle + 10, tick, interval / 4)
    phase = "busy"
    for conn in logins:
        conn.on_reply = on_login
    server_pid = cfg.get("server_pid", 0)
    cpu0, scpu0 = own_cpu(), proc_cpu(server_pid)
    t0 = time.perf_counter()
    for conn in logins:
        loop.send(conn, f"LOGIN {_credentials(cfg, conn.index)}\r\n".encode(), ["LOGIN"])
    loop.run(lambda: len(login_done) + len(errors) >= n, t0 + cfg.get("timeout", 200), tick, interval / 4)
    elapsed = (max(login_done) if login_done else time.perf_counter()) - t0
    emit(
        event="result",
        logins=len(login_done),
        errors=len(errors),
        first_error=errors[:1],
        elapsed=elapsed,
        rate=len(login_done) / elapsed,
        idle_p50_ms=percentile(idle_samples, 50) * 1000,
        idle_p99_ms=percentile(idle_samples, 99) * 1000,
        pings=len(busy_samples),
        p50_ms=percentile(busy_samples, 50) * 1000,
        p99_ms=percentile(busy_samples, 99) * 1000,
        max_ms=max(busy_samples, default=float("nan")) * 1000,
        loadgen_cpu=(own_cpu() - cpu0) / elapsed,
        server_cpu=(proc_cpu(server_pid) - scpu0) / elapsed,
    )
    loop.close(pinger)


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cfg = json.loads(sys.argv[1])
    global TLS_CONTEXT
    TLS_CONTEXT = tls_context() if cfg.get("tls", True) else None
    try:
        {"hold": mode_hold, "rr": mode_rr, "login": mode_login}[cfg["mode"]](cfg)
    except Exception as e:
        emit(event="error", error=f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
