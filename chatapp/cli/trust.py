"""How the console trusts a chat server on first contact (PROTOCOL.md 4.1): the TLS options it gives the
client library, and the question asked on a terminal: on the plain terminal before the screen is up,
in the screen's input line once it is (a ``/reconnect`` or a reconnect to a server with a new name).

A changed key is never asked about: the library refuses it with the loud message. Without a terminal
and without ``--server-fingerprint`` or ``--trust-on-first-use`` an unknown server is refused with its
fingerprint in the message (exit code 11).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.internet import defer

from chatapp.wire import escape_for_terminal

from .asking import ask_in_thread
from .commands import CommandError
from .options import Settings

QUESTION = "trust this server? (yes/no) "
AGAIN = 'please answer "yes" or "no"'


def explanation(where: str, fingerprint: str) -> list[str]:
    return [
        f"The chat server at {escape_for_terminal(where)} is not known yet. Its key fingerprint is",
        f"    {fingerprint}",
        "Compare it with the one its operator publishes (chatapp-admin fingerprint) before you say yes.",
    ]


def answer_of(line: str) -> bool | None:
    """True for yes (or y), False for no (or n), None for anything else."""
    word = line.strip().lower()
    return True if word in ("yes", "y") else False if word in ("no", "n") else None


def ask_on_terminal(where: str, fingerprint: str, stdin: TextIO, stdout: TextIO) -> bool:
    """Show the fingerprint and ask; only "yes" (or "y") trusts. Blocking: run it in a thread."""
    stdout.write("".join(line + "\n" for line in explanation(where, fingerprint)))
    while True:
        stdout.write(QUESTION)
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input: no
            stdout.write("\n")
            return False
        answer = answer_of(line)
        if answer is not None:
            return answer
        stdout.write(AGAIN + "\n")


class TerminalTrust:
    """The ``confirm`` of the server link: asked on the terminal, or in ``console`` once the screen owns it.

    ``console`` is set by the interactive console while it runs (anything with ``show(line)`` and
    ``ask_line(prompt)``); reading stdin from a thread then would race the screen for every key.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.console: Any = None

    def __call__(self, where: str, fingerprint: str) -> defer.Deferred[bool]:
        if self.console is not None:
            return defer.ensureDeferred(self._ask_in_console(self.console, where, fingerprint))
        return ask_in_thread(self.reactor, ask_on_terminal, where, fingerprint, sys.stdin, sys.stdout, name="trust")

    async def _ask_in_console(self, console: Any, where: str, fingerprint: str) -> bool:
        for line in explanation(where, fingerprint):
            console.show(line)
        while True:
            try:
                line = await console.ask_line(QUESTION)
            except CommandError:  # Ctrl-C: no
                return False
            answer = answer_of(line)
            if answer is not None:
                return answer
            console.show(AGAIN)


class FirstUse:
    """``--trust-on-first-use``: an unknown server is trusted without asking, and the key is named.

    A pin nobody saw is what the option risks: the line lets a user check it later (stderr, or the
    screen's own lines while the console runs).
    """

    def __init__(self, question: TerminalTrust | None, stderr: TextIO | None = None) -> None:
        self.question = question
        self.stderr = stderr if stderr is not None else sys.stderr

    def __call__(self, where: str, fingerprint: str) -> defer.Deferred[bool]:
        line = f"trusting the chat server at {escape_for_terminal(where)} on first use: {fingerprint}"
        console = self.question.console if self.question is not None else None
        if console is not None:
            console.show(line)
        else:
            self.stderr.write(f"chatapp: {line}\n")
            self.stderr.flush()
        return defer.succeed(True)


def server_options(reactor: Any, settings: Settings, question: TerminalTrust | None = None) -> dict[str, Any]:
    """The TLS keyword arguments for ``ChatClient(server_options=...)``; ``question`` asks on a terminal."""
    options: dict[str, Any] = {
        "no_tls": settings.no_tls,
        "server_fingerprint": settings.server_fingerprint,
        "trust_on_first_use": settings.trust_on_first_use,
    }
    if settings.server_fingerprint is None and settings.trust_on_first_use:
        options["confirm"] = FirstUse(question)
    elif settings.server_fingerprint is None and sys.stdin.isatty() and sys.stdout.isatty():
        options["confirm"] = question if question is not None else TerminalTrust(reactor)
    return options
