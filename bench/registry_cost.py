"""Cost per registry operation added by Redis: the memory registry vs the Redis one, same run.

Starts its own redis-server on a free 127.0.0.1 port (nothing saved), runs a bounded number of each
operation one after another (latency, not throughput), prints microseconds per operation and the ratio.

    python bench/registry_cost.py [--count 2000]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.task import Clock

from chatapp.server.limits import MemorySignups, SignupLimiter
from chatapp.server.lockout import Attempt, LoginLockout, MemoryLockout
from chatapp.server.registry import Issued, MemoryRegistry
from chatapp.server.registry.redis import RedisLink, RedisLockout, RedisRegistry, RedisSignups, parse_redis_url


class Quiet:
    def kick(self, reason: str) -> None:
        pass

    def event(self, *parts: str) -> None:
        pass


async def measure(registry: Any, lockout: Any, signups: Any, clock: Clock, count: int) -> dict[str, float]:
    times: dict[str, float] = {}
    conns = [Quiet() for _ in range(count)]

    async def timed(name: str, step: Any) -> None:
        start = time.perf_counter()
        for i in range(count):
            await step(i)
        times[name] = (time.perf_counter() - start) / count * 1e6

    await timed("login", lambda i: registry.login(f"user{i}", conns[i]))
    await timed("listen", lambda i: registry.listen(f"user{i}", conns[i], "127.0.0.1", 4000))
    await timed("get", lambda i: registry.get(f"user{i}"))

    async def connect_verify(i: int) -> None:
        issued = await registry.issue(f"user{i}", f"user{(i + 1) % count}", clock.seconds())
        assert isinstance(issued, Issued)
        assert await registry.redeem(issued.token, f"user{(i + 1) % count}", clock.seconds()) is not None

    await timed("issue+redeem", connect_verify)

    async def login_check(i: int) -> None:
        attempt = await lockout.admit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user{i}")
        assert isinstance(attempt, Attempt)
        await lockout.settle(attempt, True)

    await timed("admit+settle", login_check)
    await timed("signup slot", lambda i: signups.reserve(f"10.1.{i // 256 % 256}.{i % 256}", clock.seconds()))
    start = time.perf_counter()
    await registry.online()
    times[f"WHO of {count}"] = (time.perf_counter() - start) * 1e6
    await timed("logout", lambda i: registry.logout(f"user{i}", conns[i]))
    return times


async def main(reactor: Any, count: int) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    try:
        clock = Clock()
        clock.advance(1_000_000)
        memory = await measure(
            MemoryRegistry(), MemoryLockout(LoginLockout(clock, 3, 300)), MemorySignups(SignupLimiter(5)), clock, count
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await task.deferLater(reactor, 0.05, lambda: None)
        link = RedisLink(parse_redis_url(f"redis://127.0.0.1:{port}/0"), clock)
        registry: RedisRegistry[Any] = RedisRegistry(link)
        await registry.open()
        shared = await measure(registry, RedisLockout(link, 3, 300), RedisSignups(link, 5), clock, count)
        await registry.close()
        print(f"{'operation':<16}{'memory µs':>12}{'redis µs':>12}{'ratio':>8}   ({count} each, sequential)")
        for name, mem in memory.items():
            print(f"{name:<16}{mem:>12.1f}{shared[name]:>12.1f}{shared[name] / max(mem, 0.01):>8.0f}")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, min(args.count, 20_000))))
