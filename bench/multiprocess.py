"""More than one server process: logins/s, CONNECT+VERIFY, idle connections, and what PostgreSQL costs.

Starts its own PostgreSQL and Redis (tests/services.py: loopback ports, a temporary directory),
one ``twistd chatserver`` on SQLite and the memory registry ("1p sqlite+mem"), and four on
PostgreSQL and Redis; "Np pg+redis" spreads the clients over the first N of those four. The
variants run interleaved, round after round, and each table gives the median, the spread
(min-max) and the median of the per-round ratio to the one-process SQLite server.

- logins/s at cost 12 and at cost 4: the accounts are written straight into the database with a
  cost-12 or a cost-4 bcrypt hash (the check runs at the stored hash's cost; the servers' own
  ``--bcrypt-rounds 4`` only covers new hashes). Connections are opened (TLS, greeting) before
  the clock starts; at most 16 LOGINs are in flight per process (the busy limit is 64).
- CONNECT+VERIFY: a requester on process i, its target on process i+1 (mod N): one pair in turn
  (round trip) and 8 pairs at once (pairs/s).
- idle: 4 processes hold logged-in connections (LOGIN, KEY, LISTEN) from 4 client processes,
  one per server; RSS per connection per process, and whether a WHO still answers.
- store cost: signup, the LOGIN's last_login write and a block write, one after another, on
  SQLite (synchronous=FULL, on disk) and on a PostgreSQL with durable commits (fsync on).

    python bench/multiprocess.py [--quick] [--rounds 5] [--idle 1000] [--idle-only]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import re
import resource
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import bcrypt  # noqa: E402
from _common import machine, rss_kib, table  # noqa: E402
from services import Postgres, Redis, ServiceError, _pg_bin, _run  # noqa: E402

TWISTD = Path(sys.executable).parent / "twistd"
PASSWORD = "benchmark password"  # noqa: S105 - the throwaway accounts of a benchmark
FINGERPRINT = "sha256:" + "ab" * 32
LISTENING = re.compile(r"chatserver listening on .*port=(\d+)")
IN_FLIGHT = 16  # LOGINs in flight per process (the server answers 503 busy beyond 64 pending checks)
SETUP_AT_ONCE = 32  # connections being opened at once per client
PROCESSES = 4
_PR_SET_PDEATHSIG = 1
SERVER_OPTIONS = (
    "--bcrypt-rounds", "4", "--max-connections-per-address", "100000", "--signups-per-hour", "100000",
    "--idle-timeout", "3600", "--login-timeout", "600",
)  # fmt: skip


# ---------------------------------------------------------------- processes


def _child_setup() -> None:
    """Before exec: the descriptor limit raised to the hard limit, and SIGTERM when this script dies."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Twistd:
    """One ``twistd -n chatserver`` whose output goes to a log file; ``port`` is read from it."""

    def __init__(self, cwd: Path, name: str, *options: str) -> None:
        self.log = cwd / f"{name}.log"
        self._out = open(self.log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "chatserver", "--listen", "tcp:0:interface=127.0.0.1:backlog=1024",
             *SERVER_OPTIONS, *options],
            cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_child_setup,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = LISTENING.search(self.log.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return
            time.sleep(0.05)  # waiting for a child to start
        self.stop()
        raise RuntimeError(f"{name} did not start; its log:\n{self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


class DurablePostgres(Postgres):
    """The test cluster of tests/services.py, but with fsync and synchronous commits on, as in production."""

    def start(self) -> None:
        _run(
            [*self._prefix, _pg_bin("initdb"), "-D", str(self.data), "-U", "chatapp_test", "--auth=trust",
             "--encoding=UTF8", "--locale=C"],
            "initdb",
        )  # fmt: skip
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c max_connections=200"
        )
        _run(
            [*self._prefix, _pg_bin("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w",
             "-t", "30", "-o", options],
            f"pg_ctl start (log: {self.log_text()!r})",
        )  # fmt: skip


def add_accounts(db: str, names: Sequence[str], hashed: bytes) -> None:
    """Accounts written straight into the database (a signup each would measure signups)."""
    now = time.time()
    rows = [(n.lower(), n, hashed, now) for n in names]
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (name_folded, name, password_hash, created) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                rows,
            )
        return
    with sqlite3.connect(db, timeout=30) as lite:
        lite.executemany(
            "INSERT OR IGNORE INTO users (name_folded, name, password_hash, created) VALUES (?, ?, ?, ?)", rows
        )


# ---------------------------------------------------------------- a TLS line client (asyncio)


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a benchmark of the server, not of certificate checks
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


CONTEXT = client_context()


class Line:
    """One TLS connection to a chatserver; ``ask`` returns the final reply (``*`` events are counted and dropped)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.events = 0
        self.rows = 0

    @classmethod
    async def open(cls, port: int) -> Line:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=CONTEXT, limit=1 << 20), 60
        )
        line = cls(reader, writer)
        hello = await line.read()
        if not hello.startswith("* HELLO"):
            raise RuntimeError(f"greeting: {hello!r}")
        return line

    async def read(self) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), 120)
        if not raw:
            raise EOFError("connection closed")
        return raw.decode().rstrip("\r\n")

    async def ask(self, command: str) -> str:
        self.writer.write(command.encode() + b"\r\n")
        while True:
            reply = await self.read()
            if reply.startswith("* "):
                self.events += 1
            elif reply.startswith("+ "):
                self.rows += 1
            else:
                return reply

    async def expect(self, command: str, prefix: str) -> str:
        reply = await self.ask(command)
        if not reply.startswith(prefix):
            raise RuntimeError(f"{command.split()[0]}: {reply!r} (wanted {prefix!r})")
        return reply

    def abort(self) -> None:
        self.writer.transport.abort()


async def bounded(jobs: Sequence[Callable[[], Awaitable[Any]]], at_once: int) -> list[Any]:
    """Run ``jobs`` with at most ``at_once`` running; results in order."""
    gate = asyncio.Semaphore(at_once)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def open_many(ports: Sequence[int], count: int) -> list[Line]:
    """``count`` greeted connections, spread round-robin over ``ports``."""

    def one(i: int) -> Callable[[], Awaitable[Line]]:
        return lambda: Line.open(ports[i % len(ports)])

    return await bounded([one(i) for i in range(count)], SETUP_AT_ONCE)


async def logged_in(port: int, name: str, listen: bool) -> Line:
    line = await Line.open(port)
    await line.expect(f"LOGIN {name} {PASSWORD}", "OK LOGIN")
    if listen:
        await line.expect(f"KEY {FINGERPRINT}", "OK KEY")
        await line.expect("LISTEN 40000", "OK LISTEN")
    return line


# ---------------------------------------------------------------- measurements


async def logins_per_second(ports: Sequence[int], prefix: str, count: int) -> float:
    """``count`` LOGINs (distinct accounts) on connections opened beforehand, ``IN_FLIGHT`` per process."""
    lines = await open_many(ports, count)
    try:
        lanes: list[list[tuple[Line, str]]] = [[] for _ in range(IN_FLIGHT * len(ports))]
        for i, line in enumerate(lines):
            lanes[i % len(lanes)].append((line, f"{prefix}{i}"))

        async def lane(work: list[tuple[Line, str]]) -> None:
            for line, name in work:
                await line.expect(f"LOGIN {name} {PASSWORD}", "OK LOGIN")

        start = time.perf_counter()
        await asyncio.gather(*(lane(w) for w in lanes))
        return count / (time.perf_counter() - start)
    finally:
        for line in lines:
            line.abort()


async def connect_verify(ports: Sequence[int], pairs: int, seconds: float, first: int) -> tuple[float, float]:
    """Pairs (requester on process i, target on i+1) doing CONNECT then VERIFY: (pairs/s, median ms)."""
    n = len(ports)

    def side(k: int, target: int) -> Callable[[], Awaitable[Line]]:
        return lambda: logged_in(ports[(k + target) % n], f"c{first + 2 * k + target}", True)

    requesters = await bounded([side(k, 0) for k in range(pairs)], SETUP_AT_ONCE)
    targets = await bounded([side(k, 1) for k in range(pairs)], SETUP_AT_ONCE)
    times: list[float] = []
    try:
        end = time.perf_counter() + seconds

        async def pair(k: int) -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                answer = await requesters[k].expect(f"CONNECT c{first + 2 * k + 1}", "OK CONNECT")
                await targets[k].expect(f"VERIFY {answer.split()[5]}", "OK VERIFY")
                times.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(pair(k) for k in range(pairs)))
        return len(times) / (time.perf_counter() - start), statistics.median(times) * 1000
    finally:
        for line in (*requesters, *targets):
            line.abort()


class Results:
    """Per kind, per variant, one value a round; printed as median, spread and the median per-round ratio."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.values: dict[str, dict[str, list[float]]] = {}

    def add(self, kind: str, variant: str, value: float) -> None:
        self.values.setdefault(kind, {}).setdefault(variant, []).append(value)

    def table(self, kind: str, unit: str) -> str:
        by_variant = self.values[kind]
        base = by_variant[self.base]
        rows = []
        for variant, values in by_variant.items():
            ratios = [v / b for v, b in zip(values, base, strict=False) if b]
            rows.append(
                [variant, statistics.median(values), f"{min(values):.2f}-{max(values):.2f}",
                 f"{statistics.median(ratios):.2f}x", len(values)]
            )  # fmt: skip
        return table([kind, f"median {unit}", "min-max", f"ratio to {self.base}", "rounds"], rows)


async def interleaved(clusters: dict[str, list[int]], rounds: int, quick: bool) -> Results:
    results = Results("1p sqlite+mem")
    slow, fast = (6, 100) if quick else (16, 200)
    seconds = 0.3 if quick else 1.0
    names = list(clusters)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # a different variant first each round
        for variant in order:
            results.add("logins/s, cost 12", variant, await logins_per_second(clusters[variant], "s", slow))
        for variant in order:
            results.add("logins/s, cost 4", variant, await logins_per_second(clusters[variant], "f", fast))
        for variant in order:
            _, ms = await connect_verify(clusters[variant], 1, seconds, 0)
            results.add("CONNECT+VERIFY round trip, 1 pair", variant, ms)
        for variant in order:
            rate, _ = await connect_verify(clusters[variant], 8, seconds, 100)
            results.add("CONNECT+VERIFY pairs/s, 8 pairs", variant, rate)
        print(f"round {r + 1}/{rounds} done", flush=True)
    return results


# ---------------------------------------------------------------- idle connections (one client process per server)


async def hold(port: int, first: int, count: int) -> None:
    """Worker: ``count`` logged-in, listening connections to ``port``; report, then hold until stdin closes."""
    start = time.perf_counter()

    def login(i: int) -> Callable[[], Awaitable[Line]]:
        return lambda: logged_in(port, f"i{first + i}", True)

    lines = await bounded([login(i) for i in range(count)], SETUP_AT_ONCE)
    print(json.dumps({"held": len(lines), "seconds": time.perf_counter() - start}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for line in lines:
        line.abort()


async def who(port: int) -> tuple[str, float, int]:
    line = await logged_in(port, "i_watch", False)
    try:
        start = time.perf_counter()
        try:
            reply = await line.ask("WHO")
        except (EOFError, ConnectionError) as e:
            reply = f"connection closed ({type(e).__name__})"
        return reply, (time.perf_counter() - start) * 1000, line.rows
    finally:
        line.abort()


def idle(servers: list[Twistd], per_process: int) -> str:
    before = [rss_kib(s.proc.pid) for s in servers]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--hold", f"{s.port}:{i * per_process}:{per_process}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_child_setup,
        )
        for i, s in enumerate(servers)
    ]
    try:
        reports = []
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline()
            if not line:
                raise RuntimeError(f"an idle-connection worker failed (exit {w.wait()})")
            reports.append(json.loads(line))
        after = [rss_kib(s.proc.pid) for s in servers]
        reply, ms, rows = asyncio.run(who(servers[0].port))
        rows_out = [
            [f"process {i + 1}", r["held"], round(r["seconds"]), (a - b) / 1024, (a - b) * 1024 / r["held"]]
            for i, (r, b, a) in enumerate(zip(reports, before, after, strict=True))
        ]
        total = sum(r["held"] for r in reports)
        text = table(["server", "connections held", "setup s", "RSS growth MiB", "bytes/connection"], rows_out)
        who_line = f"WHO on process 1 while they are held: {reply!r} after {ms:,.0f} ms ({rows:,} rows)"
        return f"{text}\n\n{total:,} held in all; {who_line}"
    finally:
        for w in workers:
            if w.stdin is not None:
                w.stdin.close()
        for w in workers:
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(10)


# ---------------------------------------------------------------- store cost (a Twisted worker)


def store_cost(sqlite_path: str, pg_url: str, count: int, rounds: int) -> str:
    out = subprocess.run(
        [sys.executable, __file__, "--store-cost", json.dumps([sqlite_path, pg_url, count, rounds])],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"store cost worker failed: {out.stderr[-2000:]}")
    values: dict[str, dict[str, list[float]]] = json.loads(out.stdout)
    rows = []
    for op in values["sqlite"]:
        lite, pg = values["sqlite"][op], values["postgres"][op]
        ratios = [p / s for p, s in zip(pg, lite, strict=True)]
        rows.append(
            [op, statistics.median(lite), f"{min(lite):.0f}-{max(lite):.0f}", statistics.median(pg),
             f"{min(pg):.0f}-{max(pg):.0f}", f"{statistics.median(ratios):.2f}x"]
        )  # fmt: skip
    return table(["operation (µs, one after another)", "SQLite", "min-max", "PostgreSQL", "min-max", "ratio"], rows)


def store_cost_worker(sqlite_path: str, pg_url: str, count: int, rounds: int) -> None:
    from twisted.internet import defer, task

    from chatapp.runner import ThreadRunner
    from chatapp.server.store import NAME, PostgresStore, SQLiteStore

    async def measure(store: Any, tag: str, into: dict[str, list[float]]) -> None:
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4))

        async def timed(op: str, step: Callable[[int], Any]) -> None:
            start = time.perf_counter()
            for i in range(count):
                await step(i)
            into.setdefault(op, []).append((time.perf_counter() - start) / count * 1e6)

        now = time.time()
        await timed("signup (INSERT)", lambda i: store.create_account(f"{tag}{i}", hashed, now))
        await timed("LOGIN's account read", lambda i: store.get_account(f"{tag}{i}"))
        await timed("LOGIN's last_login write", lambda i: store.record_login(f"{tag}{i}", now + 1 + i))
        await timed("block write (and prune)", lambda i: store.set_block(NAME, f"{tag}{i}", now + 300, now))

    async def main(reactor: Any) -> None:
        stores: dict[str, Any] = {
            "sqlite": SQLiteStore(sqlite_path, ThreadRunner(reactor, 1, "bench-sqlite")),
            "postgres": PostgresStore(pg_url, reactor),
        }
        for store in stores.values():
            await store.open()
        values: dict[str, dict[str, list[float]]] = {name: {} for name in stores}
        for r in range(rounds):
            for name in list(stores) if r % 2 == 0 else list(reversed(stores)):
                await measure(stores[name], f"w{r}x", values[name])
        for store in stores.values():
            await store.close()
        print(json.dumps(values))

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> None:
    rounds = args.rounds or (3 if args.quick else 5)
    per_process = args.idle if args.idle is not None else (200 if args.quick else 1000)
    print(machine(), flush=True)
    started = time.monotonic()
    pg, redis = DurablePostgres(), Redis()
    servers: list[Twistd] = []
    with tempfile.TemporaryDirectory(prefix="bench-multiprocess-") as folder:
        work = Path(folder)
        try:
            try:
                pg.start()
                redis.start()
            except ServiceError as e:
                sys.exit(f"cannot start PostgreSQL or Redis: {e}")
            pg_url = pg.create_database()
            lite = str(work / "chat.sqlite3")
            cost = ""
            if not args.idle_only:
                cost = store_cost(str(work / "cost.sqlite3"), pg.create_database(), 50 if args.quick else 200, rounds)
            servers.append(Twistd(work, "sqlite", "--db", lite))
            for i in range(PROCESSES):
                servers.append(Twistd(work, f"pg{i + 1}", "--db", pg_url, "--registry", redis.url()))
            slow_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12))
            fast_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4))
            for db in (lite, pg_url):
                add_accounts(db, [f"s{i}" for i in range(16)], slow_hash)
                add_accounts(db, [f"f{i}" for i in range(200)], fast_hash)
                add_accounts(db, [f"c{i}" for i in range(200)], fast_hash)
            add_accounts(pg_url, [f"i{i}" for i in range(PROCESSES * per_process)] + ["i_watch"], fast_hash)
            clusters = {"1p sqlite+mem": [servers[0].port]}
            for n in range(1, PROCESSES + 1):
                clusters[f"{n}p pg+redis"] = [s.port for s in servers[1 : 1 + n]]
            results = None if args.idle_only else asyncio.run(interleaved(clusters, rounds, args.quick))
            idle_text = idle(servers[1:], per_process)
        finally:
            for server in servers:
                server.stop()
            redis.stop()
            pg.stop()
    print()
    for kind, unit in (
        ("logins/s, cost 12", "/s"),
        ("logins/s, cost 4", "/s"),
        ("CONNECT+VERIFY round trip, 1 pair", "ms"),
        ("CONNECT+VERIFY pairs/s, 8 pairs", "/s"),
    ):
        if results is not None:
            print(results.table(kind, unit) + "\n")
    print(f"Idle connections on {PROCESSES} PostgreSQL+Redis processes ({per_process:,} each):\n")
    print(idle_text + "\n")
    if cost:
        print("Store cost (PostgreSQL with fsync on, SQLite synchronous=FULL, both on this disk):\n")
        print(cost + "\n")
    print(f"whole run: {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes (under a minute)")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved variants (default 5, --quick 3)")
    parser.add_argument("--idle", type=int, help="idle connections per process (default 1000, --quick 200)")
    parser.add_argument("--idle-only", action="store_true", help="only the idle connections (for large --idle)")
    parser.add_argument("--hold", help=argparse.SUPPRESS)
    parser.add_argument("--store-cost", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.hold:
        port, first, count = (int(x) for x in args.hold.split(":"))
        asyncio.run(hold(port, first, min(count, hard - 100)))
    elif args.store_cost:
        sqlite_path, pg_url, count, rounds = json.loads(args.store_cost)
        store_cost_worker(sqlite_path, pg_url, count, rounds)
    else:

        def _exit(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _exit)  # so that the finally blocks stop every child
        run(args)


if __name__ == "__main__":
    main()
