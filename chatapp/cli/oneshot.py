"""The one-shot commands: ``chatapp send USER PATH...`` and ``chatapp listen``.

Both print script lines (docs/console.md) on a bounded, non-blocking stdout
(:mod:`~chatapp.cli.output`): a reader that stops reading pauses the peers
that talk, never the reactor.  Neither can type ``/reconnect``:
when a login elsewhere ends the server session they stop with
:data:`~chatapp.cli.errors.EXIT_REPLACED` rather than run on unregistered;
``send`` cancels an offer nobody answered after ``--offer-timeout``.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer

from chatapp.app import ChatClient
from chatapp.client import NoSuchUser, NotOnline
from chatapp.events import ChatEvent, EventSink, GaveUp
from chatapp.peer import Transfer, TransferState

from .commands import TIMED_OUT, Conversations, OfferTimers, console_sink, replaced
from .errors import EXIT_FAILED, EXIT_OK, EXIT_REPLACED, EXIT_USAGE, Fatal, explain
from .events import FileOfferSent, SessionReplaced
from .output import BoundedOutput, OutputOverflow, PeerThrottle, StdoutWriter
from .run import Run, login_news
from .script import ScriptOutput

REPLACED_EXIT_TEXT = "you logged in elsewhere: the server closed this session, so this one stops"


def _stdout(run: Run) -> tuple[BoundedOutput, ScriptOutput, PeerThrottle]:
    """Script lines for a bounded, non-blocking stdout (never a blocking write on the reactor thread).

    fd 1 is attached after the login (:func:`_logged_in`): until then a
    terminal may be asked to confirm the server's key, with blocking writes.
    """
    bounded = BoundedOutput()
    return bounded, ScriptOutput(bounded.write, run.reactor), PeerThrottle(bounded)


def _logged_in(run: Run, bounded: BoundedOutput, throttle: PeerThrottle, client: ChatClient) -> None:
    throttle.client = client
    bounded.attach(StdoutWriter(run.reactor))


async def run_send(run: Run) -> int:
    """Offer every file, wait until each is DONE or ended; 0 only when all arrived."""
    bounded, output, throttle = _stdout(run)
    gone: defer.Deferred[None] = defer.Deferred()
    client = await run.start(throttle.sink(_one_shot_sink(output, gone)))
    _logged_in(run, bounded, throttle, client)
    run.stop_on_shutdown(EXIT_FAILED, "interrupted before every file was delivered")
    for news in login_news(client):
        output.emit(news)
    to = run.settings.send_to
    if to is None:  # parse_args sets it for `send`
        raise Fatal(EXIT_USAGE, "send: no user to send to")
    timers = OfferTimers(client, run.reactor, run.settings.offer_timeout, output.emit)
    transfers = []
    path = ""
    try:
        for path in run.settings.paths:
            handle = await client.send_file(to, os.path.expanduser(path))
            t = client.transfer(handle)
            transfers.append(t)
            output.emit(FileOfferSent(handle, t.peer or to, t.size, t.name))
            timers.watch(t)
    except Exception as e:
        timers.stop()
        await run.stop()
        fatal = explain(e, run.settings, run.user)
        if isinstance(e, (NoSuchUser, NotOnline)):  # say which file did not go
            raise Fatal(fatal.code, f"{path}: not sent: {fatal}") from None
        raise fatal from None
    all_done = defer.DeferredList([t.when_done() for t in transfers], consumeErrors=True)
    race: list[defer.Deferred[Any]] = [all_done, gone]
    try:
        await bounded.guard(defer.DeferredList(race, fireOnOneCallback=True, consumeErrors=True))
    except OutputOverflow:
        timers.stop()
        await run.stop()
        raise
    timers.stop()
    await run.stop()
    if gone.called and not all_done.called:
        raise Fatal(EXIT_REPLACED, REPLACED_EXIT_TEXT)
    failed = [t for t in transfers if t.state is not TransferState.DONE]
    if failed:
        reasons = ", ".join(f"{t.name}: {_why(t, timers.seconds)}" for t in failed)
        raise Fatal(EXIT_FAILED, f"{len(failed)} of {len(transfers)} files not delivered ({reasons})")
    return EXIT_OK


async def run_listen(run: Run) -> int:
    """Stay logged in and print events until SIGINT or SIGTERM; then close cleanly and exit 0.

    If the client gives up on the server for good (a login elsewhere, a changed server key, a password
    that no longer works...), nobody can reach us any more: stop with that reason's exit code.
    """
    bounded, output, throttle = _stdout(run)
    gone: defer.Deferred[None] = defer.Deferred()
    given_up: list[Exception] = []
    client = await run.start(throttle.sink(_one_shot_sink(output, gone, given_up)))
    _logged_in(run, bounded, throttle, client)
    run.stop_on_shutdown()
    for news in login_news(client):
        output.emit(news)
    output.watch_stalls()
    try:
        await bounded.guard(gone)  # else runs until SIGINT or SIGTERM stop the reactor
    except OutputOverflow:
        output.stop()
        await run.stop()
        raise
    output.stop()
    await run.stop()
    if given_up:
        raise explain(given_up[0], run.settings, run.user)
    raise Fatal(EXIT_REPLACED, REPLACED_EXIT_TEXT)


def _one_shot_sink(
    output: ScriptOutput, gone: defer.Deferred[None], given_up: list[Exception] | None = None
) -> EventSink:
    """Script lines with recent rates and summaries; ``gone`` fires when a login elsewhere ended our session,
    and, given ``given_up``, when the client gave up on the server for any other reason (put in it)."""
    show = console_sink(Conversations(), output.emit, output.rates)

    def hear(event: ChatEvent) -> None:
        if replaced(event):
            output.emit(SessionReplaced(REPLACED_EXIT_TEXT))
            if not gone.called:
                gone.callback(None)
            return
        show(event)
        if given_up is not None and isinstance(event, GaveUp) and not gone.called:
            given_up.append(event.error)
            gone.callback(None)

    return hear


def _why(t: Transfer, offer_timeout: float | None) -> str:
    """Why a file did not go, for the one line on stderr."""
    if t.reason == TIMED_OUT and offer_timeout is not None:
        return f"no answer within {offer_timeout:g} s"
    return t.reason
