"""Peer-to-peer chat latency and throughput over 127.0.0.1: chatapp against a bare LineReceiver ping-pong.

Two cases, each a client process and an echo process (and, for chatapp, the
chat server in a third process, used only to open the chat):

- ``chatapp``: two real ``ChatClient``; the echo hears ``MessageReceived`` and sends
  every text back with ``session.send_message``; the client sends ``MSG``
  lines with ``session.send_message`` and hears them as ``MessageReceived`` events.
- ``bare LineReceiver``: the same ``MSG <text>`` lines between two bare
  ``LineReceiver`` protocols: the least Twisted can do.

Round trip: one message out, wait for its echo, next; ``--rounds`` of them
after a warm-up, p50/p90/p99 in microseconds. One way: ``--messages`` lines
sent in batches of 500 per reactor turn; the echo counts them and answers one
line at the end; messages/s from the first send to that answer.

    python bench/chat_latency.py            # about 30 s
    python bench/chat_latency.py --quick
    python bench/chat_latency.py --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stalls import StallWatch
from _transfer_util import (
    PASSWORD,
    Child,
    MiB,
    as_the_program,
    cpu_now,
    emit,
    machine,
    private_xdg,
    run_server,
    server_options,
    socket_of,
    table,
    tls_pair,
    usage_since,
)

SCRIPT = Path(__file__).resolve()
PAD = "x" * 32  # messages are about 40 bytes, a short chat line
BATCH = 500
WARMUP = 500


def nodelay(transport: Any) -> bool:
    """Is TCP_NODELAY set on the socket under ``transport`` (TLS or not)?"""
    import socket

    handle = socket_of(transport).getHandle()
    return bool(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


class Driver:
    """The measuring loop, the same for both cases: ``send(text)`` is given; call ``heard(text)`` on each reply."""

    def __init__(self, reactor: Any, send: Any, rounds: int, messages: int) -> None:
        from twisted.internet import defer

        self.reactor = reactor
        self.send = send
        self.rounds = rounds
        self.messages = messages
        self.samples: list[float] = []
        self.done: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._i = 0
        self._t = 0
        self._result: dict[str, Any] = {}

    def start(self) -> None:
        self._cpu = cpu_now()
        self._ping()

    def _ping(self) -> None:
        self._t = time.perf_counter_ns()
        self.send(f"e{self._i} {PAD}")

    def heard(self, text: str) -> None:
        if text.startswith("e"):
            now = time.perf_counter_ns()
            if self._i >= WARMUP:
                self.samples.append((now - self._t) / 1000)
            self._i += 1
            if self._i < WARMUP + self.rounds:
                self._ping()
            else:
                self._result["rtt_cpu"] = usage_since(self._cpu)
                self._one_way()
        elif text.startswith("got "):
            elapsed = time.perf_counter() - self._t0
            if int(text.split()[1]) != self.messages:
                self.done.errback(RuntimeError(f"the echo counted {text}, not {self.messages}"))
                return
            self._result.update(
                samples=self.samples,
                one_way_elapsed=elapsed,
                one_way_per_s=self.messages / elapsed,
                one_way_cpu=usage_since(self._cpu_one_way),
            )
            self.done.callback(self._result)

    def _one_way(self) -> None:
        self._cpu_one_way = cpu_now()
        self._t0 = time.perf_counter()
        self._sent = 0
        self._batch()

    def _batch(self) -> None:
        end = min(self.messages, self._sent + BATCH)
        for i in range(self._sent, end):
            self.send(f"c{i} {PAD}")
        self._sent = end
        if end < self.messages:
            self.reactor.callLater(0, self._batch)
        else:
            self.send("fin")


class Echo:
    """What the echo side does with a text: echo ``e...``, count ``c...``, answer ``fin`` with the count."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.count = 0
        self.start = cpu_now()

    def heard(self, text: str) -> None:
        if text.startswith("e"):
            self.send(text)
        elif text.startswith("c"):
            self.count += 1
        elif text == "fin":
            self.send(f"got {self.count}")
            self.count = 0


# -- chatapp roles ---------------------------------------------------------------------------------------------------


async def chat_echo(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.internet import defer

    as_the_program()

    from chatapp.app import ChatClient
    from chatapp.events import ChatEvent, FileOffered, MessageReceived, PeerLeft, TransferEnded

    left: defer.Deferred[None] = defer.Deferred()
    echoes: dict[Any, Echo] = {}
    nodelays: list[bool] = []
    watch = StallWatch(reactor)
    stalls: dict[str, Any] = {}

    def on_event(event: ChatEvent) -> None:
        if isinstance(event, FileOffered):
            watch.start()  # the file and the round trips timed during it
        elif isinstance(event, TransferEnded):
            stalls.update(watch.report())
        elif isinstance(event, MessageReceived):
            echo = echoes.get(event.session)
            if echo is None:
                echo = echoes[event.session] = Echo(event.session.send_message)
                nodelays.append(nodelay(event.session.transport))
            if event.text == "quit":  # the client opens and closes many chats: it says when it is done
                if not left.called:
                    left.callback(None)
                return
            echo.heard(event.text)
        elif isinstance(event, PeerLeft):
            echoes.pop(event.session, None)

    client = ChatClient(
        reactor,
        f"tcp:host=127.0.0.1:port={args.port}",
        on_event,
        downloads=args.downloads,
        listen="tcp:0:interface=127.0.0.1",
        auto_accept=True,
        server_options=server_options(args.server_fp),
    )
    await client.start(args.name, PASSWORD, signup=True)
    start = cpu_now()
    emit("READY")
    await left
    emit("RESULT", usage_since(start) | {"nodelay_peer_listener": all(nodelays) and bool(nodelays), "stalls": stalls})
    await client.stop()


async def chat_client(reactor: Any, args: argparse.Namespace) -> None:
    as_the_program()
    from chatapp.app import ChatClient
    from chatapp.events import ChatEvent, MessageReceived

    driver: Driver | None = None
    busy: RoundTrips | None = None

    def on_event(event: ChatEvent) -> None:
        if isinstance(event, MessageReceived):
            if busy is not None:
                busy.heard(event.text)
            elif driver is not None:
                driver.heard(event.text)

    server = f"tcp:host=127.0.0.1:port={args.port}"
    client = ChatClient(
        reactor, server, on_event, downloads=args.downloads, listen=None, server_options=server_options(args.server_fp)
    )
    await client.start(args.name, PASSWORD, signup=True)
    session = await client.chat(args.peer)
    driver = Driver(reactor, session.send_message, args.rounds, args.messages)
    driver.start()
    result = await driver.done
    result["nodelay_server_link"] = nodelay(client.server._protocol.transport)  # type: ignore[union-attr]
    result["nodelay_peer_connector"] = nodelay(session.transport)
    # Opening a chat: CONNECT on the server link, TCP connect, mutual TLS, HELLO/VERIFY/WELCOME.
    session.close()
    await session.when_closed()
    opens: list[float] = []
    for _ in range(args.opens):
        t = time.perf_counter_ns()
        session = await client.chat(args.peer)
        opens.append((time.perf_counter_ns() - t) / 1000)
        session.close()
        await session.when_closed()
    result["open_samples"] = opens
    # Round trips on a session that is also carrying a file.
    session = await client.chat(args.peer)
    busy = RoundTrips(session.send_message)
    watch = StallWatch(reactor)
    watch.start()
    handle = await client.send_file(args.peer, args.file)
    carried = client.transfer(handle).when_done()
    result["busy_samples"] = await busy.run(lambda: carried.called, args.busy_rounds)
    result["busy_during_file"] = not carried.called
    await carried
    result["stalls"] = watch.report()
    session.send_message("quit")
    emit("RESULT", result)
    await client.stop()


class RoundTrips:
    """Round trips one at a time until ``stop()`` says so or ``rounds`` are done; samples in us."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.waiting: Any = None

    def heard(self, text: str) -> None:
        if self.waiting is not None and text.startswith("e"):
            waiting, self.waiting = self.waiting, None
            waiting.callback(None)

    async def run(self, stop: Any, rounds: int) -> list[float]:
        from twisted.internet import defer

        samples: list[float] = []
        for i in range(rounds):
            if stop():
                break
            self.waiting = defer.Deferred()
            t = time.perf_counter_ns()
            self.send(f"e{i} {PAD}")
            await self.waiting
            samples.append((time.perf_counter_ns() - t) / 1000)
        return samples


# -- bare LineReceiver roles ---------------------------------------------------------------------------------------


def line_echo(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    class EchoLines(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            socket_of(self.transport).setTcpNoDelay(True)
            self.echo = Echo(self.say)

        def say(self, text: str) -> None:
            self.transport.write(b"MSG " + text.encode() + b"\r\n")  # type: ignore[union-attr]

        def lineReceived(self, line: bytes) -> None:
            if line.startswith(b"MSG "):
                self.echo.heard(line[4:].rstrip(b"\r").decode())

        def connectionLost(self, reason: Any = None) -> None:
            emit("RESULT", usage_since(self.echo.start))
            reactor.stop()  # type: ignore[attr-defined]

    def listening(port: Any) -> None:
        emit("READY", str(port.getHost().port))

    factory: Any = Factory.forProtocol(EchoLines)
    if args.tls:  # mutual TLS 1.3 with chatapp's peer contexts, TCP_NODELAY as chatapp sets it
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(tls_pair()[0], False, factory)
    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined]


def line_client(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.protocols.basic import LineReceiver

    class Lines(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            socket_of(self.transport).setTcpNoDelay(True)
            self.driver = Driver(reactor, self.say, args.rounds, args.messages)
            self.driver.done.addCallback(self.finished)
            self.driver.start()

        def say(self, text: str) -> None:
            self.transport.write(b"MSG " + text.encode() + b"\r\n")  # type: ignore[union-attr]

        def lineReceived(self, line: bytes) -> None:
            if line.startswith(b"MSG "):
                self.driver.heard(line[4:].rstrip(b"\r").decode())

        def finished(self, result: dict[str, Any]) -> None:
            emit("RESULT", result)
            self.transport.loseConnection()  # type: ignore[union-attr]

        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()  # type: ignore[attr-defined]

    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port)
    if args.tls:
        from twisted.internet.endpoints import wrapClientTLS

        endpoint = wrapClientTLS(tls_pair()[1], endpoint)
    connectProtocol(endpoint, Lines())
    reactor.run()  # type: ignore[attr-defined]


# -- the coordinator -----------------------------------------------------------------------------------------------


def run_case(kind: str, args: argparse.Namespace, work: Path, server: tuple[int, str], serial: int) -> dict[str, Any]:
    server_port, server_fp = server
    knobs = ["--rounds", str(args.rounds), "--messages", str(args.messages)]
    echo = client = None
    try:
        if kind == "chatapp":
            echo_name, client_name = f"echo{serial}", f"talk{serial}"
            common = ["--port", str(server_port), "--server-fp", server_fp, "--downloads", str(args.shm / "dl")]
            echo = Child(SCRIPT, "chat-echo", [*common, "--name", echo_name], work)
            echo.expect("READY", 60)
            knobs += ["--opens", str(args.opens), "--busy-rounds", str(args.busy_rounds), "--file", str(args.file)]
            client = Child(SCRIPT, "chat-client", [*common, "--name", client_name, "--peer", echo_name, *knobs], work)
        else:
            tls = ["--tls"] if kind == "line-tls" else []
            echo = Child(SCRIPT, "line-echo", tls, work)
            port = echo.expect("READY ", 60)
            client = Child(SCRIPT, "line-client", ["--port", port, *knobs, *tls], work)
        result = client.result(240)
        result["echo"] = echo.result(60)
        client.wait()
        echo.wait()
        shutil.rmtree(args.shm / "dl", ignore_errors=True)
        return result
    finally:
        for child in (client, echo):
            if child is not None:
                child.stop()


def summary(kind: str, runs: list[dict[str, Any]], rounds: int, messages: int) -> dict[str, Any]:
    for r in runs:
        r["p50"] = percentile(r["samples"], 50)
    best = sorted(runs, key=lambda r: r["p50"])[(len(runs) - 1) // 2]  # the median run
    samples = best["samples"]
    extra: dict[str, Any] = {}
    if "open_samples" in best:
        opens = [x for r in runs for x in r["open_samples"]]
        busy = [x for r in runs for x in r["busy_samples"]]
        extra = {
            "open_p50": percentile(opens, 50),
            "open_p99": percentile(opens, 99),
            "all_open_p50": [percentile(r["open_samples"], 50) for r in runs],
            "all_open_p99": [percentile(r["open_samples"], 99) for r in runs],
            "busy_p50": percentile(busy, 50),
            "busy_p99": percentile(busy, 99),
            "all_busy_p99": [percentile(r["busy_samples"], 99) for r in runs],
            "busy_n": len(busy),
            "busy_during_file": all(r["busy_during_file"] for r in runs),
            "nodelay": {
                k: all(r.get(k, r["echo"].get(k)) for r in runs)
                for k in ("nodelay_server_link", "nodelay_peer_connector", "nodelay_peer_listener")
            },
        }
    return extra | {
        "kind": kind,
        "p50": best["p50"],
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "mean": sum(samples) / len(samples),
        "all_p50": [r["p50"] for r in runs],
        "per_s": sorted(r["one_way_per_s"] for r in runs)[(len(runs) - 1) // 2],
        "all_per_s": [r["one_way_per_s"] for r in runs],
        "client_cpu_us": (best["rtt_cpu"]["user"] + best["rtt_cpu"]["system"]) / rounds * 1e6,
        "one_way_cpu_us": (best["one_way_cpu"]["user"] + best["one_way_cpu"]["system"]) / messages * 1e6,
        "client_hwm_mib": best["one_way_cpu"]["hwm_kib"] / 1024,
        "echo_hwm_mib": best["echo"]["hwm_kib"] / 1024,
    }


def stall_text(stalls: dict[str, Any]) -> str:
    if not stalls:
        return "-"
    pauses = ", ".join(f"{reason} {n}x max {ms:.1f} ms" for reason, (n, ms) in sorted(stalls["pauses"].items()))
    return (
        f"reactor late max {stalls['lag_max_ms']:.1f} ms (p99 {stalls['lag_p99_ms']:.1f}, "
        f"{stalls['lags_over_5ms']} over 5 ms), gen1/2 GC {stalls['gc_count']}x max {stalls['gc_max_ms']:.1f} ms"
        + (f", reading paused: {pauses}" if pauses else "")
    )


def spread(values: list[float], digits: int = 0) -> str:
    if len(values) < 2:
        return ""
    return f" ({min(values):.{digits}f}-{max(values):.{digits}f})"


def coordinate(args: argparse.Namespace) -> None:
    import os

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: below (children, files)
    work = Path(tempfile.mkdtemp(prefix="chatapp-latency-"))
    args.shm = Path(tempfile.mkdtemp(prefix="chatapp-latency-", dir="/dev/shm"))
    private_xdg(work)  # known servers, known peers and identity keys of the run's accounts
    server = None
    try:
        args.file = args.shm / "carried.bin"
        with open(args.file, "wb") as f:  # the file carried while round trips are timed
            for _ in range(args.file_size // (4 * MiB)):
                f.write(os.urandom(4 * MiB))
        server = Child(SCRIPT, "server", ["--db", str(work / "chat.sqlite3")], work)
        port, fingerprint = server.expect("READY ", 60).split()
        kinds = ("line", "line-tls", "chatapp")
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for i in range(args.repeat):
            for kind in kinds:  # interleaved, so all see the same noise
                runs[kind].append(run_case(kind, args, work, (int(port), fingerprint), i))
                last = runs[kind][-1]
                print(f"  {kind} run {i + 1}: p50 {percentile(last['samples'], 50):.0f} us", flush=True)
                if kind == "chatapp":
                    sender, receiver = stall_text(last["stalls"]), stall_text(last["echo"]["stalls"])
                    busy = last["busy_samples"]
                    print(
                        f"    busy p50 {percentile(busy, 50) / 1000:.1f} ms, p99 {percentile(busy, 99) / 1000:.1f} ms; "
                        f"while the file streamed: sender {sender}; receiver {receiver}"
                    )
        line = summary("line", runs["line"], args.rounds, args.messages)
        line_tls = summary("line-tls", runs["line-tls"], args.rounds, args.messages)
        chat = summary("chatapp", runs["chatapp"], args.rounds, args.messages)
        info = machine()
        print(
            f"\nmachine: {info['cores']} cores, {info['cpu']}, {info['ram']} RAM, Python {info['python']}, "
            f"Twisted {info['twisted']}; {args.rounds} round trips after {WARMUP} warm-up, "
            f"{args.messages} one-way messages of ~40 bytes; median run of {args.repeat} (range of p50 in brackets)\n"
        )
        rows = []
        cases = (
            ("bare LineReceiver, plain TCP", line),
            ("bare LineReceiver, mutual TLS 1.3", line_tls),
            ("chatapp (ChatClient <-> ChatClient), mutual TLS 1.3", chat),
        )
        for label, s in cases:
            rows.append(
                [
                    label,
                    f"{s['p50']:.0f}{spread(s['all_p50'])}",
                    f"{s['p90']:.0f}",
                    f"{s['p99']:.0f}",
                    f"{s['p50'] / line_tls['p50']:.2f}x",
                    f"{s['per_s']:,.0f}{spread(s['all_per_s'])}",
                    f"{s['client_cpu_us']:.0f}",
                    f"{s['one_way_cpu_us']:.1f}",
                    f"{s['client_hwm_mib']:.0f} / {s['echo_hwm_mib']:.0f}",
                ]
            )
        headers = [
            "case",
            "RTT p50 us",
            "p90",
            "p99",
            "p50 vs bare TLS",
            "one-way msg/s",
            "client CPU us/round trip",
            "sender CPU us/msg",
            "peak RSS MiB client / echo",
        ]
        print(table(headers, rows))
        n = args.opens * args.repeat
        print(
            f"\nopening a chat (CONNECT -> WELCOME, mutual TLS), {n} opens: p50 {chat['open_p50'] / 1000:.2f} ms"
            f"{spread([x / 1000 for x in chat['all_open_p50']], 2)}, p99 {chat['open_p99'] / 1000:.2f} ms"
            f"{spread([x / 1000 for x in chat['all_open_p99']], 2)} (targets 5 / 20 ms)"
        )
        print(
            f"MSG round trip while the session carries a {args.file_size // MiB} MiB file, {chat['busy_n']} samples: "
            f"p50 {chat['busy_p50'] / 1000:.2f} ms, p99 {chat['busy_p99'] / 1000:.2f} ms"
            f"{spread([x / 1000 for x in chat['all_busy_p99']], 2)} (target p99 15 ms)"
            + ("" if chat["busy_during_file"] else "; the file finished before the last sample")
        )
        print(f"TCP_NODELAY set: {chat['nodelay']}")
        ratio = chat["p50"] / line_tls["p50"]
        print(f"MSG round trip p50 vs a bare TLS LineReceiver: {ratio:.2f}x (target 1.5x)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(args.shm, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10000, help="timed round trips (default 10000)")
    parser.add_argument("--messages", type=int, default=100000, help="one-way messages (default 100000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case, interleaved (default 5)")
    parser.add_argument("--opens", type=int, default=100, help="chats opened and closed per run (default 100)")
    parser.add_argument("--busy-rounds", type=int, default=1000, help="round trips timed during a file (1000)")
    parser.add_argument("--file-size", type=int, default=1024, help="MiB of the file carried meanwhile (1024)")
    parser.add_argument("--quick", action="store_true", help="2000 round trips, 20000 messages, one run")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--server-fp", help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--downloads", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.file_size *= MiB  # --quick below sets bytes
    if args.quick:
        args.rounds, args.messages, args.repeat, args.opens, args.file_size = 2000, 20000, 1, 30, 256 * MiB
    if args.role is None:
        coordinate(args)
    elif args.role == "server":
        run_server(args.db)
    elif args.role in ("chat-echo", "chat-client"):
        from twisted.internet import defer, task

        run = chat_echo if args.role == "chat-echo" else chat_client
        task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))
    elif args.role == "line-echo":
        line_echo(args)
    elif args.role == "line-client":
        line_client(args)
    else:
        parser.error(f"unknown role {args.role}")


if __name__ == "__main__":
    main()
