"""Script mode: commands from stdin one per line, run strictly in order; events to stdout one per line.

Every line of output is ``WORD field... [text]`` (see docs/console.md), so a
script can ``grep`` or parse it.  Reading and writing go through Twisted's
``StandardIO``: stdin is non-blocking then, and output is written by the
reactor in order, bounded by :mod:`chatapp.cli.output` when nobody reads it.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatapp.app import ChatClient
from chatapp.events import TransferEnded, TransferProgress
from chatapp.peer import Direction, Transfer, TransferState

from .commands import CommandError, Conversations, Dispatcher, OfferTimers, console_sink
from .errors import EXIT_FAILED, EXIT_OK
from .events import Progress, Shown, TransferStalled
from .output import BoundedOutput, OutputOverflow, PeerThrottle
from .rates import Rates
from .render import script_line
from .run import Run, login_news

log = Logger()

PROGRESS_EVERY = 1.0  # seconds between PROGRESS lines of one transfer


@implementer(IHalfCloseableProtocol)
class LineInput(Protocol):
    """Splits stdin into text lines; stdin's end does not close stdout (half-close)."""

    def __init__(self, on_line: Callable[[str], None], on_eof: Callable[[], None]) -> None:
        self._on_line = on_line
        self._on_eof = on_eof
        self._buffer = b""
        self._ended = False
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            self._on_line(raw.rstrip(b"\r").decode("utf-8", "replace"))

    def readConnectionLost(self) -> None:
        if self._buffer:
            last, self._buffer = self._buffer, b""
            self._on_line(last.rstrip(b"\r").decode("utf-8", "replace"))
        if not self._ended:
            self._ended = True
            self._on_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.readConnectionLost()
        if not self.closed.called:
            self.closed.callback(None)


class ScriptOutput:
    """Renders events as script lines through ``write``, with PROGRESS thinned to one a second per transfer.

    PROGRESS carries the rate over the last seconds (:class:`Rates`), and a
    transfer that stops moving gets one ``STALLED`` line per stall, checked
    once a second while :meth:`watch_stalls` runs.
    """

    def __init__(self, write: Callable[[str], None], clock: Any) -> None:
        self.write = write
        self.clock = clock
        self.rates = Rates(clock)
        self._last_progress: dict[int, float] = {}  # by transfer handle; dropped at the transfer's end
        self._stalled: set[int] = set()  # handles whose current stall was said
        self._watch: task.LoopingCall | None = None

    def emit(self, event: Shown) -> None:
        if isinstance(event, TransferProgress):
            handle = event.transfer.handle
            self._stalled.discard(handle)
            now = self.clock.seconds()
            last = self._last_progress.get(handle)
            if last is not None and now - last < PROGRESS_EVERY and event.transfer.bytes_done < event.transfer.size:
                return
            self._last_progress[handle] = now
            event = Progress(event.transfer, self.rates.speed(event.transfer).rate)
        elif isinstance(event, TransferEnded):
            self._last_progress.pop(event.transfer.handle, None)
            self._stalled.discard(event.transfer.handle)
        self.write(script_line(event))

    def watch_stalls(self) -> None:
        """Say STALLED for a transfer that stopped moving (checked every second until :meth:`stop`)."""
        self._watch = task.LoopingCall(self._check_stalls)
        self._watch.clock = self.clock
        self._watch.start(1.0, now=False).addErrback(lambda f: log.failure("watching for stalls", f))

    def _check_stalls(self) -> None:
        for transfer, seconds in self.rates.stalled():
            if transfer.handle not in self._stalled and not transfer.finished:
                self._stalled.add(transfer.handle)
                self.write(script_line(TransferStalled(transfer, seconds)))

    def stop(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()


def waits_for(transfer: Transfer) -> bool:
    """Whether an exit at the end of input waits for ``transfer``: ours, or accepted; not an unanswered offer."""
    if transfer.finished:
        return False
    return transfer.direction is Direction.SEND or transfer.state is not TransferState.OFFERED


class ScriptRunner:
    """Feeds input lines to a :class:`Dispatcher` one at a time; :meth:`run` ends at ``/quit`` or at EOF."""

    def __init__(self, client: ChatClient, dispatcher: Dispatcher) -> None:
        self.client = client
        self.dispatcher = dispatcher
        self.queue: list[str] = []
        self.eof = False
        self.failures = 0
        self._wake: defer.Deferred[None] | None = None

    def line(self, text: str) -> None:
        self.queue.append(text)
        self._kick()

    def end(self) -> None:
        self.eof = True
        self._kick()

    def _kick(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    async def run(self) -> int:
        """Run until /quit or the end of input (then wait for the transfers under way); returns the failure count."""
        while True:
            if self.queue:
                ok = await self.dispatcher.run_line(self.queue.pop(0))
                if not ok:
                    self.failures += 1
                if self.dispatcher.quitting:
                    return self.failures
                continue
            if self.eof:
                break
            self._wake = defer.Deferred()
            await self._wake
        self.failures += await wait_for_transfers(self.client)
        return self.failures


async def wait_for_transfers(client: ChatClient) -> int:
    """Wait until no transfer we wait for is open (new ones may start meanwhile); returns how many failed."""
    failed = 0
    seen: set[int] = set()
    while True:
        pending = [t for t in client.transfers() if waits_for(t)]
        if not pending:
            break
        results = await defer.DeferredList([t.when_done() for t in pending], consumeErrors=True)
        for transfer, (success, _) in zip(pending, results, strict=True):
            if not success and id(transfer) not in seen:
                seen.add(id(transfer))
                failed += 1
    return failed


def env_new_password(login_password: str) -> Callable[[], Awaitable[tuple[str, str]]]:
    """``/passwd`` in script mode: the passwords come from the environment, never from stdin.

    The new one from ``CHATAPP_NEW_PASSWORD``; the current one from
    ``CHATAPP_CURRENT_PASSWORD``, else the password this run logged in with.
    """

    async def passwords() -> tuple[str, str]:
        new = os.environ.get("CHATAPP_NEW_PASSWORD")
        if not new:
            raise CommandError(
                "in script mode /passwd takes the new password from CHATAPP_NEW_PASSWORD; it is not set"
            )
        return os.environ.get("CHATAPP_CURRENT_PASSWORD") or login_password, new

    return passwords


async def run_script(run: Run) -> int:
    """Commands from stdin in order, events on stdout; exit at /quit or EOF after open transfers.

    stdout is a :class:`~chatapp.cli.output.BoundedOutput`: while it is backed
    up, stdin and the peers that produce output are not read; past its hard
    bound the run ends with :data:`~chatapp.cli.errors.EXIT_OUTPUT`.
    """
    bounded = BoundedOutput()
    output = ScriptOutput(bounded.write, run.reactor)
    chats = Conversations()
    throttle = PeerThrottle(bounded)
    client = await run.start(throttle.sink(console_sink(chats, output.emit, output.rates)))
    throttle.client = client
    dispatcher = Dispatcher(client, chats, output.emit, env_new_password(run.password), run.password)
    dispatcher.offer_timers = OfferTimers(client, run.reactor, run.settings.offer_timeout, output.emit)
    output.watch_stalls()
    run.stop_on_shutdown()
    runner = ScriptRunner(client, dispatcher)
    reader = LineInput(runner.line, runner.end)
    stdio = StandardIO(reader, reactor=run.reactor)
    bounded.attach(stdio)
    # our own commands' replies count too: no more of them while stdout is backed up
    bounded.listeners.append(lambda backed_up: stdio.pauseProducing() if backed_up else stdio.resumeProducing())
    try:
        for news in login_news(client):
            output.emit(news)
        failures = await bounded.guard(defer.ensureDeferred(runner.run()))
    except OutputOverflow:
        dispatcher.offer_timers.stop()
        output.stop()
        await run.stop()
        raise
    dispatcher.offer_timers.stop()
    output.stop()
    await run.stop()
    stdio.loseConnection()
    try:
        await reader.closed.addTimeout(5, run.reactor)
    except defer.TimeoutError:
        pass
    return EXIT_FAILED if failures else EXIT_OK
