"""The one-shot commands: ``chatapp send USER PATH...`` and ``chatapp listen``."""

from __future__ import annotations

import os
import sys

from twisted.internet import defer

from chatapp.peer import TransferState

from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Fatal, explain
from .events import FileOfferSent
from .run import Run, ready_event
from .script import ScriptOutput


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_send(run: Run) -> int:
    """Offer every file, wait until each is DONE or ended; 0 only when all arrived."""
    output = ScriptOutput(_print, run.reactor)
    client = await run.start(output.emit)
    run.stop_on_shutdown(EXIT_FAILED, "interrupted before every file was delivered")
    output.emit(await ready_event(client))
    to = run.settings.send_to
    if to is None:  # parse_args sets it for `send`
        raise Fatal(EXIT_USAGE, "send: no user to send to")
    transfers = []
    try:
        for path in run.settings.paths:
            handle = await client.send_file(to, os.path.expanduser(path))
            t = client.transfer(handle)
            transfers.append(t)
            output.emit(FileOfferSent(handle, t.peer or to, t.size, t.name))
    except Exception as e:
        await run.stop()
        raise explain(e, run.settings, run.user) from None
    await defer.DeferredList([t.when_done() for t in transfers], consumeErrors=True)
    await run.stop()
    failed = [t for t in transfers if t.state is not TransferState.DONE]
    if failed:
        reasons = ", ".join(f"{t.name}: {t.reason}" for t in failed)
        raise Fatal(EXIT_FAILED, f"{len(failed)} of {len(transfers)} files not delivered ({reasons})")
    return EXIT_OK


async def run_listen(run: Run) -> int:
    """Stay logged in and print events until SIGINT or SIGTERM; then close cleanly and exit 0."""
    output = ScriptOutput(_print, run.reactor)
    client = await run.start(output.emit)
    run.stop_on_shutdown()
    output.emit(await ready_event(client))
    forever: defer.Deferred[int] = defer.Deferred()
    return await forever
