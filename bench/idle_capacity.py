"""How many logged-in, listening clients one server process holds, and what each costs in memory.

For each N it starts a fresh ``twistd chatserver`` (``--bcrypt-rounds 4``) on a
database whose accounts were signed up beforehand, logs N clients in
(``LOGIN`` and ``LISTEN`` pipelined, from many 127.0.x.y source addresses),
and reads the server's VmRSS before and after.  The baseline is a bare
Twisted ``LineReceiver`` (bench/_lineserver.py) holding the same N connections
after the same exchange of lines.

    python bench/idle_capacity.py [--quick] [--sizes 1000,10000,50000]

N is capped by the hard limit on open files (``ulimit -Hn``): each side of a
connection takes one descriptor, and neither the server nor the load
generator can go past that limit without CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    PASSWORD,
    LoadGen,
    Server,
    exit_on_sigterm,
    machine,
    raise_fd_limit,
    run_loadgen,
    sources,
    start_chatserver,
    start_lineserver,
    table,
    workdir,
)

SOURCES = sources(40)
WARMUP = 200  # connections opened and closed before the "before" reading, so first-use allocations are not counted
USER = "idle"


def hold(server: Server, n: int, verb: str) -> dict[str, Any]:
    """Hold ``n`` logged-in, listening connections; return the load generator's report with the server's RSS."""
    config = {
        "mode": "hold",
        "host": "127.0.0.1",
        "port": server.port,
        "n": n,
        "sources": SOURCES,
        "verb": verb,
        "user_prefix": USER,
        "password": PASSWORD,
        "inflight": 50,
    }
    gen = LoadGen(config)
    try:
        cpu0 = server.cpu_seconds()
        ready = gen.event(280)
        ready["server_cpu"] = server.cpu_seconds() - cpu0
        time.sleep(0.5)  # let the last writes and timers settle
        ready["rss_kib"] = server.rss_kib()
        ready["alive"] = gen.release()["alive"]
    finally:
        gen.stop()
    return ready


def measure(start: Any, n: int, verb: str) -> dict[str, Any]:
    server: Server = start()
    try:
        hold(server, WARMUP, verb)
        time.sleep(0.5)
        before = server.rss_kib()
        result = hold(server, n, verb)
        result["before_kib"] = before
        result["per_conn"] = (result["rss_kib"] - before) * 1024 / n
        return result
    finally:
        server.stop()


def sign_up(work: Path, n: int, server_options: list[str]) -> float:
    """Create ``n`` accounts (SIGNUP then QUIT, 50 at a time) in ``work``'s database; return signups/s.

    Each signup is a committed (fsync'd) write, so they are made on a database
    in /dev/shm (memory) when there is one, and the file is then copied to
    ``work``: the measured servers run on the disk as a real one would.
    """
    shm = Path("/dev/shm")  # noqa: S108 - only a parent for mkdtemp, which is safe there
    with tempfile.TemporaryDirectory(prefix="bench-signup-", dir=shm if shm.is_dir() else work) as d:
        scratch = Path(d)
        rate = _sign_up(scratch, n, server_options)
        shutil.copyfile(scratch / "chat.sqlite3", work / "chat.sqlite3")  # closed cleanly: no WAL left
    return rate


def _sign_up(work: Path, n: int, server_options: list[str]) -> float:
    server = start_chatserver(work, *server_options, name="signup")
    try:
        config = {
            "mode": "hold",
            "quit": True,
            "host": "127.0.0.1",
            "port": server.port,
            "n": n,
            "sources": SOURCES,
            "verb": "SIGNUP",
            "user_prefix": USER,
            "password": PASSWORD,
            "inflight": 50,
            "timeout": 280,
        }
        result = run_loadgen(config)
        if result["ok"] != n:
            raise RuntimeError(f"signed up {result['ok']} of {n}: {result}")
        return n / result["elapsed"]
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 connections only")
    parser.add_argument("--sizes", default="1000,10000,50000", help="comma-separated N")
    args = parser.parse_args()
    exit_on_sigterm()
    hard = raise_fd_limit()
    wanted = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    ceiling = hard - 500  # the server's own files (database, pipes, epoll) and a margin
    sizes = sorted({min(n, ceiling) for n in wanted})
    print(machine())
    if any(n > ceiling for n in wanted):
        print(f"note: N is capped at {ceiling:,} by the hard limit of {hard:,} open files per process")
    per_address = max(sizes) // len(SOURCES) + WARMUP + 10
    options = [
        "--bcrypt-rounds",
        "4",
        "--max-connections-per-address",
        str(per_address),
        "--signups-per-hour",
        str(max(sizes) + WARMUP),
    ]
    rows = []
    with workdir("bench-idle-") as work:
        t0 = time.monotonic()
        rate = sign_up(work, max(sizes) + WARMUP, options)
        print(f"signed up {max(sizes) + WARMUP:,} accounts at {rate:,.0f}/s (bcrypt rounds 4, database in memory)")
        for n in sizes:
            base = measure(lambda: start_lineserver(work), n, "LOGIN")
            chat = measure(lambda: start_chatserver(work, *options), n, "LOGIN")
            for name, r in (("LineReceiver baseline", base), ("chatserver", chat)):
                rows.append(
                    [
                        name,
                        n,
                        r["alive"],
                        r["errors"] + r["busy"],
                        r["before_kib"] / 1024,
                        r["rss_kib"] / 1024,
                        r["per_conn"],
                        r["per_conn"] / base["per_conn"],
                        r["elapsed"],
                        n / r["elapsed"],
                        r["server_cpu"] / r["elapsed"] * 100,
                        r["server_cpu"] / n * 1000,
                        r["cpu"] / r["elapsed"] * 100,
                    ]
                )
            print(f"N={n:,} done after {time.monotonic() - t0:.0f}s", flush=True)
    print()
    print(
        table(
            [
                "server",
                "N",
                "held",
                "errors/busy",
                "RSS before MiB",
                "RSS after MiB",
                "bytes/conn",
                "x baseline",
                "login all s",
                "logins/s",
                "server CPU %",
                "server CPU ms/login",
                "loadgen CPU %",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
