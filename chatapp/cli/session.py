"""What every mode shares (log in, stop cleanly on a signal, say READY) and the chat mode's script front end."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.internet.stdio import StandardIO
from twisted.logger import Logger

from chatapp.app import ChatClient

from .commands import CommandError, Dispatcher, EventRelay
from .render import Event
from .script import LineInput, ScriptOutput, ScriptRunner

log = Logger()


@dataclass
class Run:
    """One run of the program: what main() decided, and the exit code a signal should leave."""

    reactor: Any
    settings: Any
    user: str
    password: str
    signup: bool
    outcome: Any = None  # main.Outcome: a signal may set its exit code
    client: ChatClient | None = None
    _stopping: defer.Deferred[None] | None = None

    def stop_on_shutdown(self, code_on_signal: int | None = None, message: str | None = None) -> None:
        """Stop the client cleanly (BYE to peers, QUIT to the server) when the reactor stops (SIGINT, SIGTERM)."""

        def before_shutdown() -> defer.Deferred[None]:
            if code_on_signal is not None and self._stopping is None and self.outcome is not None:
                self.outcome.code = code_on_signal
                self.outcome.message = message
            return self.stop()

        self.reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)

    def stop(self) -> defer.Deferred[None]:
        """Stop the client once; later calls share the first one's outcome."""
        if self._stopping is None:
            self._stopping = defer.ensureDeferred(self._stop())
        d: defer.Deferred[None] = defer.Deferred()

        def relay(result: object) -> object:
            d.callback(None)
            return result

        self._stopping.addBoth(relay)
        return d

    async def _stop(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            await defer.ensureDeferred(client.stop()).addTimeout(5, self.reactor)
            # BYE is on its way once the sessions are closing; give the bytes a moment to leave
            for _ in range(40):
                if not any(getattr(s.transport, "connected", False) for s in client.sessions()):
                    break
                await task.deferLater(self.reactor, 0.05, lambda: None)
        except Exception:
            log.failure("stopping the client")


async def start(run: Run, relay: EventRelay) -> ChatClient:
    from .main import login, make_client

    client = make_client(run.reactor, run.settings, relay)
    run.client = client
    await login(client, run.settings, run.user, run.password, run.signup)
    return client


async def ready_event(client: ChatClient) -> Event:
    """``READY <user> listening <host> <port>`` or ``READY <user> online``."""
    name = client.user or "?"
    if client.listening:
        try:
            host, port = await client.set_listening(True) or ("?", 0)
            return Event("READY", (name, "listening", host, str(port)))
        except Exception:
            log.failure("asking where we listen")
    return Event("READY", (name, "online"))


async def env_new_password() -> str:
    value = os.environ.get("CHATAPP_NEW_PASSWORD")
    if not value:
        raise CommandError("in script mode /passwd takes the new password from CHATAPP_NEW_PASSWORD; it is not set")
    return value


async def run_chat(run: Run) -> int:
    if run.settings.interactive:
        from .terminal import run_interactive

        return await run_interactive(run)
    return await run_script(run)


async def run_script(run: Run) -> int:
    """Commands from stdin in order, events on stdout; exit at /quit or EOF after open transfers."""
    early: list[str] = []
    stdio: list[StandardIO] = []

    def write(line: str) -> None:
        if stdio:
            stdio[0].write(line.encode("utf-8") + b"\n")
        else:
            early.append(line)

    output = ScriptOutput(write, run.reactor)
    relay = EventRelay(output.emit)
    client = await start(run, relay)
    dispatcher = Dispatcher(client, output.emit, env_new_password)
    relay.dispatcher = dispatcher
    run.stop_on_shutdown()
    runner = ScriptRunner(client, dispatcher)
    reader = LineInput(runner.line, runner.end)
    stdio.append(StandardIO(reader, reactor=run.reactor))
    for line in early:
        write(line)
    output.emit(await ready_event(client))
    failures = await runner.run()
    await run.stop()
    stdio[0].loseConnection()
    try:
        await reader.closed.addTimeout(5, run.reactor)
    except defer.TimeoutError:
        pass
    from .main import EXIT_FAILED, EXIT_OK

    return EXIT_FAILED if failures else EXIT_OK
