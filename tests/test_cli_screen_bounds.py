"""Interactive output to a terminal that stopped reading (a stalled ssh session): bounded, peers paused,
drawing stopped past the hard bound and the screen drawn again once it reads.  Through a real StandardIO
on a pipe nobody reads; the bound asserted is the bytes held in its write buffer."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest_twisted
from twisted.internet import reactor, task

from chatapp.cli.output import PAUSE_REASON, PeerThrottle
from chatapp.cli.screen import SCREEN_LIMIT, SCREEN_PAUSE, ScreenOutput
from chatapp.cli.terminal import ConsoleProtocol, ConsoleServerProtocol, Interactive
from chatapp.events import MessageReceived
from chatapp.peer import PeerSession


def held(stdio: Any) -> int:
    writer = stdio._writer  # what StandardIO keeps for fd 1: the bound that matters
    return len(writer.dataBuffer) - writer.offset + writer._tempDataLen


@pytest_twisted.ensureDeferred
async def test_a_terminal_that_stops_reading_holds_a_bounded_screen_pauses_peers_and_is_redrawn_later() -> None:
    from twisted.internet.stdio import StandardIO

    run: Any = SimpleNamespace(reactor=reactor, settings=SimpleNamespace(accept_files=False))
    ui = Interactive(run)
    console = ConsoleProtocol(lambda line: None, lambda: None, lambda before: [], reactor, reactor.seconds)
    screen = ScreenOutput(ui.repaint)
    server = ConsoleServerProtocol(lambda: console)
    server.screen = screen
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stdio = StandardIO(server, stdin=stdin_r, stdout=stdout_w, reactor=reactor)  # type: ignore[call-arg]
    screen.attach(stdio)
    ui.console = console
    throttle = PeerThrottle(screen)
    peer = Mock(spec=PeerSession)
    peer.peer_name = "bob"
    peer.connections = [peer]
    throttle.client = SimpleNamespace(peers=SimpleNamespace(connections=[peer]))  # type: ignore[assignment]
    hear = throttle.sink(ui.show)
    try:
        # a peer floods 8 MiB of messages; nobody reads the terminal
        for n in range(8 * 1024):
            hear(MessageReceived(peer, f"{n:06d} " + "x" * 1000))
            assert held(stdio) <= 64 * 1024 + SCREEN_LIMIT + 4096
        assert screen.frozen and screen.backed_up
        peer.pause_reading.assert_called_with(PAUSE_REASON)  # the flood stops at its source
        assert len(ui.windows.current.lines) <= 2000  # the lines are kept, bounded, for the redraw
        # the terminal reads again: everything drains, the peers read again, the window is drawn anew
        os.set_blocking(stdout_r, False)
        seen = bytearray()
        for _ in range(10_000):
            try:
                chunk = os.read(stdout_r, 1 << 20)
                seen += chunk[-200_000:]
                del seen[:-400_000]
            except BlockingIOError:
                pass
            if not screen.frozen and held(stdio) == 0 and b"\x1b[2J" in seen:
                break
            await task.deferLater(reactor, 0, lambda: None)
        assert not screen.frozen and not screen.backed_up
        peer.resume_reading.assert_called_with(PAUSE_REASON)
        tail = bytes(seen[seen.rfind(b"\x1b[2J") :])
        assert b"008191 " in tail  # the last message is on the redrawn screen
        assert SCREEN_PAUSE < SCREEN_LIMIT
    finally:
        console.closed = True
        stdio.loseConnection()
        for fd in (stdin_w, stdout_r):
            os.close(fd)
        await task.deferLater(reactor, 0, lambda: None)
