"""Logins/s at bcrypt cost 12, and whether the reactor stays responsive while they run.

One ``twistd chatserver --bcrypt-rounds 12`` (its bcrypt pool has one thread
per core).  50 accounts are signed up, then 50 connections send ``LOGIN`` at
the same moment while one more connection sends ``PING`` every 5 ms (the next
one after the reply, at the earliest) and records each reply's latency.  The
expected rate is cores / (one bcrypt check's time), the check being timed in
this process first; as the machine is shared, each round also reports the
rate of a pool of ``cores`` threads checking in this process just before it.

    python bench/login_load.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

import bcrypt
from _common import (
    PASSWORD,
    exit_on_sigterm,
    machine,
    raise_fd_limit,
    run_loadgen,
    sources,
    start_chatserver,
    table,
    workdir,
)

ROUNDS = 12
LOGINS = 50
USER = "load"


def one_check_seconds(samples: int) -> float:
    """The fastest of ``samples`` bcrypt checks at cost 12, on this thread."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(ROUNDS))
    best = float("inf")
    for _ in range(samples):
        t0 = time.perf_counter()
        bcrypt.checkpw(PASSWORD.encode(), hashed)
        best = min(best, time.perf_counter() - t0)
    return best


def parallel_rate(threads: int, per_thread: int) -> float:
    """Checks/s of ``threads`` threads doing bcrypt checks at once here: what the server's pool could reach now."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(ROUNDS))

    def work() -> None:
        for _ in range(per_thread):
            bcrypt.checkpw(PASSWORD.encode(), hashed)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * per_thread / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one round of logins instead of three")
    args = parser.parse_args()
    exit_on_sigterm()
    raise_fd_limit()
    rounds = 1 if args.quick else 5
    print(machine())
    check = one_check_seconds(3)
    cores = os.cpu_count() or 1
    expected = cores / check
    print(
        f"one bcrypt check at cost {ROUNDS}: {check * 1000:.0f} ms -> expected {expected:.2f} logins/s on {cores} cores"
    )
    results: list[dict[str, Any]] = []
    with workdir("bench-login-") as work:
        # The TLS server (the default) and, as the same-run comparison only, one with --no-tls.
        options = ["--bcrypt-rounds", str(ROUNDS), "--signups-per-hour", "1000"]
        options += ["--max-connections-per-address", "1000"]
        tls_dir, plain_dir = work / "tls", work / "plain"
        tls_dir.mkdir()
        plain_dir.mkdir()
        servers = {"TLS": start_chatserver(tls_dir, *options, name="tls")}
        try:
            servers["plain"] = start_chatserver(plain_dir, *options, "--no-tls", name="plain")
            commons = {}
            for label, server in servers.items():
                commons[label] = {
                    "host": "127.0.0.1",
                    "port": server.port,
                    "server_pid": server.pid,
                    "n": LOGINS,
                    "sources": sources(5),
                    "user_prefix": USER,
                    "password": PASSWORD,
                    "tls": label == "TLS",
                }
                t0 = time.perf_counter()
                signed = run_loadgen(
                    {**commons[label], "mode": "hold", "quit": True, "verb": "SIGNUP", "inflight": LOGINS}
                )
                if signed["ok"] != LOGINS:
                    raise RuntimeError(f"signup failed: {signed}")
                print(f"signed up {LOGINS} accounts on the {label} server in {time.perf_counter() - t0:.1f} s")
            for _ in range(rounds):
                for label in ("TLS", "plain"):  # interleaved: both see the same noise
                    # bcrypt releases the GIL: the rate the machine gives a pool of `cores` threads right now
                    local = parallel_rate(cores, 3)
                    result = run_loadgen({**commons[label], "mode": "login", "interval": 0.005, "idle": 1.0})
                    result["local"] = local
                    result["server"] = label
                    results.append(result)
                    print(f"  {label}: {result['rate']:.2f} logins/s", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    rows = [
        [
            i // 2 + 1,
            r["server"],
            r["logins"],
            r["errors"],
            r["elapsed"],
            r["rate"],
            r["rate"] / expected,
            r["local"],
            r["rate"] / r["local"],
            r["idle_p99_ms"],
            r["pings"],
            r["p50_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["server_cpu"] * 100,
            r["loadgen_cpu"] * 100,
        ]
        for i, r in enumerate(results)
    ]
    print()
    print(f"{LOGINS} LOGINs sent at once; PING every 5 ms on another connection; CPU: 100 % = one core")
    print(
        f"expected = {cores} cores / one check = {expected:.2f}/s; local pool = {cores} threads checking "
        "in this process just before the round (the same measure under the machine's load at that time)"
    )
    print(
        table(
            [
                "round",
                "server",
                "logins",
                "errors",
                "all done s",
                "logins/s",
                "x expected",
                "local pool/s",
                "x local",
                "idle PING p99 ms",
                "PINGs",
                "PING p50 ms",
                "PING p99 ms",
                "PING max ms",
                "server CPU %",
                "loadgen CPU %",
            ],
            rows,
        )
    )
    tls = sorted(r["rate"] for r in results if r["server"] == "TLS")
    plain = sorted(r["rate"] for r in results if r["server"] == "plain")
    median_tls, median_plain = tls[(len(tls) - 1) // 2], plain[(len(plain) - 1) // 2]
    print(
        f"\nlogins/s, median of {len(tls)}: TLS {median_tls:.2f} ({tls[0]:.2f}-{tls[-1]:.2f}), "
        f"plain {median_plain:.2f} ({plain[0]:.2f}-{plain[-1]:.2f}): TLS / plain = {median_tls / median_plain:.2f}x "
        "(target within 10 %)"
    )


if __name__ == "__main__":
    main()
