"""Our own stdout is bounded (issue 11 follow-up): a reader that stops reading pauses the peers, never us.

A fake stdout (StringTransport standing in for StandardIO or the one-shots'
writer) that is never read, or read only when the test says so; real peer
sessions on StringTransports send the flood.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_peer_harness import make_peer, open_listener
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from chatapp.app import ChatClient
from chatapp.cli.commands import Conversations, console_sink
from chatapp.cli.errors import EXIT_OUTPUT
from chatapp.cli.output import PAUSE_REASON, BoundedOutput, OutputOverflow, PeerThrottle
from chatapp.cli.script import ScriptOutput
from chatapp.events import ChatRequested
from chatapp.peer import SessionState

KiB = 1024
MiB = 1024 * KiB
PIPE_BUFFER = 64 * KiB  # what the fake stdout holds before it says it is full, as a FileDescriptor does
LINE = b"MSG " + b"x" * 100 + b"\r\n"
FLOOD = 100_000


class UnreadStdout(StringTransport):
    """A stdout whose reader reads only in :meth:`drain`; past ``PIPE_BUFFER`` it pauses its producer."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.most = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.most = max(self.most, len(self.value()))
        if not self.paused and len(self.value()) > PIPE_BUFFER and self.producer is not None:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()
        return data


def console(tmp_path: Path, clock: Clock, stdout: UnreadStdout, **bounds: int) -> tuple[ChatClient, BoundedOutput]:
    """A listener "bob" whose events go to script lines on ``stdout``, through the throttle as the modes do."""
    factory, _ = make_peer(tmp_path, "bob", clock)
    client = ChatClient(clock, "tcp:127.0.0.1:1", listen=None)
    client.peers = factory
    bounded = BoundedOutput(stdout, **bounds)
    output = ScriptOutput(bounded.write, clock)
    factory.emit = PeerThrottle(bounded, client).sink(console_sink(Conversations(), output.emit, output.rates))
    return client, bounded


def test_a_flood_to_an_unread_stdout_pauses_the_peer_and_loses_nothing(tmp_path: Path, clock: Clock) -> None:
    stdout = UnreadStdout()
    client, bounded = console(tmp_path, clock, stdout)
    assert client.peers is not None
    mallory, mallory_transport = open_listener(client.peers, "alice", "tok-alice")
    bystander, bystander_transport = open_listener(client.peers, "bob", "tok-bob")

    mallory.dataReceived(LINE * FLOOD)
    while not bounded.backed_up and "budget" in mallory.gate.reasons:
        clock.advance(0)  # the peer's lines are handled a slice per reactor turn

    # held: what fd 1 holds, plus the pause mark, plus the line that crossed it
    assert stdout.most <= PIPE_BUFFER + bounded.pause_after + 2 * len(LINE)
    assert bounded.backed_up and not bounded.overflowed
    assert PAUSE_REASON in mallory.gate.reasons and mallory_transport.producerState == "paused"
    # a peer that produces no output is still served: PING gets its PONG at once
    assert bystander.gate.open
    bystander.dataReceived(b"PING\r\n")
    assert bystander_transport.value() == b"PONG\r\n"

    # the reader reads again: the peer is resumed, and every message arrives, in rounds that stay bounded
    read = [stdout.drain()]
    while not mallory.gate.open or stdout.value():
        read.append(stdout.drain())
        clock.advance(0)
    lines = b"".join(read).split(b"\n")
    assert sum(1 for line in lines if line.startswith(b"MSG alice ")) == FLOOD
    assert stdout.most <= PIPE_BUFFER + bounded.pause_after + 2 * len(LINE)
    assert mallory_transport.producerState == "producing" and mallory.state is SessionState.OPEN


def test_output_that_comes_anyway_ends_the_run_at_the_hard_bound(tmp_path: Path, clock: Clock) -> None:
    stdout = UnreadStdout()
    client, bounded = console(tmp_path, clock, stdout, pause_after=64 * KiB, close_after=1 * MiB)
    work: defer.Deferred[None] = defer.Deferred()
    run = bounded.guard(work)
    failures: list[OutputOverflow] = []

    def failed(failure: Failure) -> None:
        failure.trap(OutputOverflow)
        assert isinstance(failure.value, OutputOverflow)
        failures.append(failure.value)

    run.addErrback(failed)
    sink = client.peers.emit if client.peers is not None else None
    assert sink is not None
    for i in range(100_000):  # server-link events: no peer to pause
        sink(ChatRequested(f"user{i}"))
    assert bounded.overflowed and len(failures) == 1
    assert failures[0].code == EXIT_OUTPUT and "stdout is not being read" in str(failures[0])
    assert stdout.most <= PIPE_BUFFER + 1 * MiB + 200  # later lines were dropped, not kept
    work.callback(None)  # the work ending later changes nothing (and raises nothing)
    before = len(failures)
    bounded.guard(defer.Deferred()).addErrback(failed)
    assert len(failures) == before + 1  # a wait begun after the overflow fails at once


def test_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        BoundedOutput(pause_after=2 * MiB, close_after=1 * MiB)
