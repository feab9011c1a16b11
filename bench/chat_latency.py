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

from _transfer_util import (
    PASSWORD,
    Child,
    cpu_now,
    emit,
    machine,
    run_server,
    table,
    usage_since,
)

SCRIPT = Path(__file__).resolve()
PAD = "x" * 32  # messages are about 40 bytes, a short chat line
BATCH = 500
WARMUP = 500


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

    from chatapp.app import ChatClient
    from chatapp.events import ChatEvent, MessageReceived, PeerLeft

    left: defer.Deferred[None] = defer.Deferred()
    echoes: dict[Any, Echo] = {}

    def on_event(event: ChatEvent) -> None:
        if isinstance(event, MessageReceived):
            echo = echoes.get(event.session)
            if echo is None:
                echo = echoes[event.session] = Echo(event.session.send_message)
            echo.heard(event.text)
        elif isinstance(event, PeerLeft) and not left.called:
            left.callback(None)

    client = ChatClient(
        reactor,
        f"tcp:host=127.0.0.1:port={args.port}",
        on_event,
        downloads=args.downloads,
        listen="tcp:0:interface=127.0.0.1",
    )
    await client.start(args.name, PASSWORD, signup=True)
    start = cpu_now()
    emit("READY")
    await left
    emit("RESULT", usage_since(start))
    await client.stop()


async def chat_client(reactor: Any, args: argparse.Namespace) -> None:
    from chatapp.app import ChatClient
    from chatapp.events import ChatEvent, MessageReceived

    driver: Driver | None = None

    def on_event(event: ChatEvent) -> None:
        if isinstance(event, MessageReceived) and driver is not None:
            driver.heard(event.text)

    server = f"tcp:host=127.0.0.1:port={args.port}"
    client = ChatClient(reactor, server, on_event, downloads=args.downloads, listen=None)
    await client.start(args.name, PASSWORD, signup=True)
    session = await client.chat(args.peer)
    driver = Driver(reactor, session.send_message, args.rounds, args.messages)
    driver.start()
    result = await driver.done
    emit("RESULT", result)
    await client.stop()


# -- bare LineReceiver roles ---------------------------------------------------------------------------------------


def line_echo(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    class EchoLines(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
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

    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(EchoLines)).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined]


def line_client(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.protocols.basic import LineReceiver

    class Lines(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
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

    connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", args.port), Lines())
    reactor.run()  # type: ignore[attr-defined]


# -- the coordinator -----------------------------------------------------------------------------------------------


def run_case(kind: str, args: argparse.Namespace, work: Path, server_port: int, serial: int) -> dict[str, Any]:
    knobs = ["--rounds", str(args.rounds), "--messages", str(args.messages)]
    echo = client = None
    try:
        if kind == "chatapp":
            echo_name, client_name = f"echo{serial}", f"talk{serial}"
            common = ["--port", str(server_port), "--downloads", str(work / "downloads")]
            echo = Child(SCRIPT, "chat-echo", [*common, "--name", echo_name], work)
            echo.expect("READY", 60)
            client = Child(SCRIPT, "chat-client", [*common, "--name", client_name, "--peer", echo_name, *knobs], work)
        else:
            echo = Child(SCRIPT, "line-echo", [], work)
            port = echo.expect("READY ", 60)
            client = Child(SCRIPT, "line-client", ["--port", port, *knobs], work)
        result = client.result(240)
        result["echo"] = echo.result(60)
        client.wait()
        echo.wait()
        return result
    finally:
        for child in (client, echo):
            if child is not None:
                child.stop()


def summary(kind: str, runs: list[dict[str, Any]], rounds: int, messages: int) -> dict[str, Any]:
    for r in runs:
        r["p50"] = percentile(r["samples"], 50)
    best = min(runs, key=lambda r: r["p50"])
    samples = best["samples"]
    return {
        "kind": kind,
        "p50": best["p50"],
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "mean": sum(samples) / len(samples),
        "all_p50": [r["p50"] for r in runs],
        "per_s": max(r["one_way_per_s"] for r in runs),
        "all_per_s": [r["one_way_per_s"] for r in runs],
        "client_cpu_us": (best["rtt_cpu"]["user"] + best["rtt_cpu"]["system"]) / rounds * 1e6,
        "one_way_cpu_us": (best["one_way_cpu"]["user"] + best["one_way_cpu"]["system"]) / messages * 1e6,
        "client_hwm_mib": best["one_way_cpu"]["hwm_kib"] / 1024,
        "echo_hwm_mib": best["echo"]["hwm_kib"] / 1024,
    }


def spread(values: list[float], digits: int = 0) -> str:
    if len(values) < 2:
        return ""
    return f" ({min(values):.{digits}f}-{max(values):.{digits}f})"


def coordinate(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: below (children, files)
    work = Path(tempfile.mkdtemp(prefix="chatapp-latency-"))
    server = None
    try:
        server = Child(SCRIPT, "server", ["--db", str(work / "chat.sqlite3")], work)
        server_port = int(server.expect("READY ", 60))
        runs: dict[str, list[dict[str, Any]]] = {"line": [], "chatapp": []}
        for i in range(args.repeat):
            for kind in ("line", "chatapp"):  # interleaved, so both see the same noise
                runs[kind].append(run_case(kind, args, work, server_port, i))
                print(f"  {kind} run {i + 1}: p50 {percentile(runs[kind][-1]['samples'], 50):.0f} us", flush=True)
        line = summary("line", runs["line"], args.rounds, args.messages)
        chat = summary("chatapp", runs["chatapp"], args.rounds, args.messages)
        info = machine()
        print(
            f"\nmachine: {info['cores']} cores, {info['cpu']}, {info['ram']} RAM, Python {info['python']}, "
            f"Twisted {info['twisted']}; {args.rounds} round trips after {WARMUP} warm-up, "
            f"{args.messages} one-way messages of ~40 bytes; best of {args.repeat} (range in brackets)\n"
        )
        rows = []
        for label, s in (("bare LineReceiver", line), ("chatapp (ChatClient <-> ChatClient)", chat)):
            rows.append(
                [
                    label,
                    f"{s['p50']:.0f}{spread(s['all_p50'])}",
                    f"{s['p90']:.0f}",
                    f"{s['p99']:.0f}",
                    f"{s['p50'] / line['p50']:.2f}x",
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
            "p50 vs bare",
            "one-way msg/s",
            "client CPU us/round trip",
            "sender CPU us/msg",
            "peak RSS MiB client / echo",
        ]
        print(table(headers, rows))
        verdict = "met" if chat["p50"] <= 2 * line["p50"] else "missed"
        print(f"\ntarget p50 within 2x of the bare LineReceiver: {verdict} ({chat['p50'] / line['p50']:.2f}x)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10000, help="timed round trips (default 10000)")
    parser.add_argument("--messages", type=int, default=100000, help="one-way messages (default 100000)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each case, interleaved (default 2)")
    parser.add_argument("--quick", action="store_true", help="2000 round trips, 20000 messages, one run")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--downloads", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.messages, args.repeat = 2000, 20000, 1
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
