"""Requests/s and latency of the registry commands, against a bare Twisted line server in the same run.

100 logged-in, listening clients (one load-generator process, raw epoll) run
one workload at a time for a few seconds, with 1 request in flight per
client (unpipelined) and with 8 (pipelined):

- ``PING``;
- ``WHO`` on a registry of the 100 clients;
- ``CONNECT``/``VERIFY`` pairs: each client asks for its partner, and the
  partner redeems the token (both requests count);
- ``CONNECT`` alone, never redeemed (last: its tokens stay in the server 60 s);
- the ceiling: ``PING`` against bench/_lineserver.py, a bare ``LineReceiver``
  that answers every line at once.

The CPU of the server and of the load generator during the measured window
is reported (100 % = one core), so a saturated load generator shows.

    python bench/registry_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
from typing import Any

from _common import (
    PASSWORD,
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

CLIENTS = 100
DEPTHS = (1, 8)
WORKLOADS = ("ping", "who", "connect")


def run(server: Server, workload: str, depth: int, duration: float, verb: str, prefix: str) -> dict[str, Any]:
    return run_loadgen(
        {
            "mode": "rr",
            "host": "127.0.0.1",
            "port": server.port,
            "server_pid": server.pid,
            "n": CLIENTS,
            "sources": sources(4),
            "verb": verb,
            "user_prefix": prefix,
            "password": PASSWORD,
            "workload": workload,
            "depth": depth,
            "duration": duration,
            "warmup": 0.5,
        },
        timeout=duration + 120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 s per measurement instead of 5 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement")
    args = parser.parse_args()
    exit_on_sigterm()
    duration = args.duration or (1.0 if args.quick else 5.0)
    raise_fd_limit()
    print(machine())
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with workdir("bench-registry-") as work:
        base = start_lineserver(work)
        try:
            for depth in DEPTHS:
                results["ceiling", depth] = run(base, "echo", depth, duration, "LOGIN", "x")
        finally:
            base.stop()
        chat = start_chatserver(
            work, "--bcrypt-rounds", "4", "--signups-per-hour", "1000", "--max-connections-per-address", "1000"
        )
        try:
            # The first run signs the clients up; every later one logs the same names in.
            verb = "SIGNUP"
            for workload in WORKLOADS:
                for depth in DEPTHS:
                    results[workload, depth] = run(chat, workload, depth, duration, verb, "reg")
                    verb = "LOGIN"
            # Last, as it leaves up to 60 s of unredeemed tokens behind in the server.
            results["connect-only", 8] = run(chat, "connect-only", 8, duration, verb, "reg")
        finally:
            chat.stop()
    rows = []
    for (workload, depth), r in results.items():
        ceiling = results["ceiling", depth]["rate"]
        label = (
            {
                "ceiling": "PING (LineReceiver ceiling)",
                "connect": "CONNECT/VERIFY",
                "connect-only": "CONNECT, never VERIFY",
            }[workload]
            if workload in ("ceiling", "connect", "connect-only")
            else workload.upper()
        )
        rows.append(
            [
                label,
                depth,
                r["rate"],
                r["rate"] / ceiling,
                r["p50_ms"],
                r["p99_ms"],
                r["errors"],
                r["server_cpu"] * 100,
                r["server_cpu"] / r["rate"] * 1e6,
                r["loadgen_cpu"] * 100,
            ]
        )
    print()
    print(
        f"{CLIENTS} clients, {duration:g} s per row; CPU: 100 % = one core. On a shared machine the CPU each "
        "process gets varies; CPU per reply does not, and is the fairer comparison."
    )
    print(
        table(
            [
                "workload",
                "in flight",
                "replies/s",
                "x ceiling",
                "p50 ms",
                "p99 ms",
                "errors",
                "server CPU %",
                "server CPU us/reply",
                "loadgen CPU %",
            ],
            rows,
        )
    )
    drift = results["connect-only", 8]["per_second"]
    if drift:
        print(
            f"CONNECT without VERIFY, replies/s second by second: {', '.join(f'{r:,.0f}' for r in drift)} "
            "(each unredeemed token stays 60 s in the registry)"
        )


if __name__ == "__main__":
    main()
