"""``chatapp``: the console client's entry point: read the command line, ask what is missing, run the mode.

The modes live in :mod:`~chatapp.cli.script` (chat without a terminal),
:mod:`~chatapp.cli.terminal` (chat on a terminal) and
:mod:`~chatapp.cli.oneshot` (``send``, ``listen``); how a run ends (exit
codes, one-line errors) in :mod:`~chatapp.cli.errors`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from chatapp.memory import keep_freed_memory

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Fatal, Outcome, explain, format_error
from .login import Terminal, ask_password, asked_in_a_thread, credentials
from .logs import start_logging
from .oneshot import run_listen, run_send
from .options import Settings, UsageError, parse_args
from .run import Run
from .script import run_script
from .terminal import restore_terminal, run_interactive

log = Logger()


def runner_for(settings: Settings) -> Callable[[Run], Awaitable[int]]:
    """The front end for the mode: interactive or script chat, or a one-shot."""
    if settings.mode == "send":
        return run_send
    if settings.mode == "listen":
        return run_listen
    return run_interactive if settings.interactive else run_script


async def _main(reactor: Any, run: Run) -> None:
    try:
        run.outcome.code = await runner_for(run.settings)(run)
    except Exception as e:
        if run.outcome.code == EXIT_INTERRUPTED:
            # Ctrl-C or SIGTERM before the login ended: the shutdown cut the connection, and what failed
            # then (a lost connection) is its consequence, not news
            log.info("stopped while logging in: {error}", error=str(e))
            return
        if not isinstance(e, Fatal):
            log.failure("chatapp failed")
        fatal = explain(e, run.settings, run.user)
        run.outcome.code, run.outcome.message = fatal.code, str(fatal)


NO_TLS_WARNING = (
    "warning: --no-tls: your password and everything you send the server cross the network in clear text"
    " (meant for a server behind a TLS-terminating proxy on the same host)"
)


def _say(message: str) -> None:
    print(f"chatapp: {format_error(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``chatapp`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = parse_args(args)
    except UsageError as e:
        _say(f"{e} (chatapp --help)")
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    term = Terminal()
    interactive = settings.mode == "chat" and term.interactive() and sys.stdout.isatty()
    try:
        user, password, signup = credentials(settings, term, ask_later=True)
    except UsageError as e:
        _say(str(e))
        return EXIT_USAGE
    except Fatal as e:
        _say(str(e))
        return e.code
    except (EOFError, KeyboardInterrupt):
        print("", file=sys.stderr)
        return EXIT_USAGE
    settings.interactive = interactive
    if settings.no_tls:  # the server logs this too, but the person typing the password must see it
        _say(NO_TLS_WARNING)
    start_logging(settings, interactive)
    keep_freed_memory()  # received files: freed buffers used again, not faulted in again (chatapp.memory)
    outcome = Outcome()
    saved = _terminal_state()

    def start(reactor: Any) -> defer.Deferred[None]:
        run = Run(reactor, settings, user, password or "", signup, outcome)
        if password is None:
            run.ask_password = asked_in_a_thread(reactor, lambda: ask_password(term, confirm=signup))
            run.say = term.say

        def interrupted_while_starting() -> None:
            if not run.started and outcome.code == EXIT_OK and outcome.message is None:
                print("", file=sys.stderr)  # a prompt may have left its line open
                outcome.code, outcome.message = EXIT_INTERRUPTED, "interrupted"

        reactor.addSystemEventTrigger("before", "shutdown", interrupted_while_starting)
        return defer.ensureDeferred(_main(reactor, run))

    try:
        task.react(start)
    except SystemExit:
        pass
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        restore_terminal()
        _restore_terminal_state(saved)
        _blocking_again()
    if outcome.message:
        _say(outcome.message)
    return outcome.code


def _blocking_again() -> None:
    """StandardIO leaves stdin/stdout non-blocking (shared with the shell's terminal); undo that."""
    for fd in (0, 1, 2):
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass


def _terminal_state() -> list[Any] | None:
    """stdin's terminal settings, to put back if a password prompt was cut short (echo off)."""
    try:
        import termios

        return termios.tcgetattr(0)
    except Exception:
        return None


def _restore_terminal_state(saved: list[Any] | None) -> None:
    if saved is None:
        return
    import termios

    try:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
    except (OSError, termios.error) as e:
        log.debug("could not restore the terminal settings: {error}", error=e)
