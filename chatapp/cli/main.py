"""``chatapp``: the console client's entry point, its exit codes and its one-line error messages.

Nothing the user did wrong and nothing the network did ends in a traceback:
errors are caught here and said in one line on stderr, with an exit code of
their own (the table is :data:`EXIT_CODES`, documented in docs/console.md);
details go to a debug log only with ``--debug``.
"""

from __future__ import annotations

import getpass
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import implementer

from chatapp.app import ChatClient
from chatapp.client import (
    BadCredentials,
    BadRequest,
    Blocked,
    Busy,
    ChatClientError,
    ConnectionClosed,
    InvalidArgument,
    Locked,
    NotConnected,
    SlowDown,
    UserExists,
)
from chatapp.wire import escape_for_terminal, valid_password, valid_username

from .options import Settings, UsageError, parse_args

log = Logger()

EXIT_OK = 0
EXIT_FAILED = 1  # a command or a transfer failed, or an unexpected error
EXIT_USAGE = 2  # bad command line, or a missing user name/password with no terminal to ask on
EXIT_UNREACHABLE = 3  # the server cannot be reached (or dropped us before login)
EXIT_CREDENTIALS = 4  # wrong user name or password
EXIT_BLOCKED = 5  # this address is blocked after failed logins
EXIT_LOCKED = 6  # this account is locked after failed logins
EXIT_TAKEN = 7  # --signup with a name that is taken
EXIT_BAD_INPUT = 8  # a user name or password the server cannot take (form, length)
EXIT_LATER = 9  # the server asks to come back later (busy, too many signups)

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_FAILED: "a command or transfer failed, or something unexpected happened",
    EXIT_USAGE: "bad command line, or a missing user name or password and no terminal to ask on",
    EXIT_UNREACHABLE: "the server cannot be reached",
    EXIT_CREDENTIALS: "wrong user name or password",
    EXIT_BLOCKED: "your address is blocked for a while after failed logins",
    EXIT_LOCKED: "the account is locked for a while after failed logins",
    EXIT_TAKEN: "the user name is taken (--signup)",
    EXIT_BAD_INPUT: "the user name or password is not acceptable (form, length)",
    EXIT_LATER: "the server is busy or refuses more signups for now; try later",
}


@dataclass
class Outcome:
    """How the run ended: the exit code, and the one line to print on stderr (if any)."""

    code: int = EXIT_OK
    message: str | None = None


class Fatal(Exception):
    """Ends the program with ``code`` after printing ``str()`` on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def minutes(seconds: int | None) -> str:
    if seconds is None:
        return "a while"
    m = max(1, math.ceil(seconds / 60))
    return f"{m} more minute" + ("" if m == 1 else "s")


def explain(error: BaseException, settings: Settings, user: str | None = None) -> Fatal:
    """The exit code and the one line for an error while starting (connect, log in, sign up, listen)."""
    name = escape_for_terminal(user or settings.user or "")
    if isinstance(error, Fatal):
        return error
    if isinstance(error, Blocked):
        return Fatal(EXIT_BLOCKED, f"too many failed logins: your address is blocked for {minutes(error.seconds)}")
    if isinstance(error, Locked):
        return Fatal(EXIT_LOCKED, f"the account {name} is locked after failed logins, for {minutes(error.seconds)}")
    if isinstance(error, BadCredentials):
        return Fatal(
            EXIT_CREDENTIALS,
            "wrong user name or password; after a few more failures your address is blocked for a while",
        )
    if isinstance(error, UserExists):
        return Fatal(EXIT_TAKEN, f"the name {name} is taken: pick another, or log in (leave out --signup)")
    if isinstance(error, InvalidArgument):
        return Fatal(EXIT_BAD_INPUT, str(error))
    if isinstance(error, BadRequest) and error.reason in ("bad-username", "bad-password"):
        what = (
            "user names are 1-32 characters of A-Z a-z 0-9 _ . -"
            if error.reason == "bad-username"
            else ("passwords are 8-72 bytes long")
        )
        return Fatal(EXIT_BAD_INPUT, f"the server refused that: {what}")
    if isinstance(error, SlowDown):
        return Fatal(EXIT_LATER, f"too many new accounts from your address; try again in {minutes(error.seconds)}")
    if isinstance(error, Busy):
        return Fatal(EXIT_LATER, "the server is busy; try again in a moment")
    if isinstance(error, (NotConnected, ConnectionClosed)):
        text = str(error)
        if settings.server not in text:
            text = f"{text} (server {escape_for_terminal(settings.server)})"
        return Fatal(EXIT_UNREACHABLE, text)
    if isinstance(error, CannotListenError):
        return Fatal(EXIT_FAILED, f"cannot listen for chats on {settings.listen}: {error.socketError}")
    if isinstance(error, ChatClientError):
        return Fatal(EXIT_FAILED, str(error))
    if isinstance(error, (ValueError, OSError)):
        return Fatal(EXIT_FAILED, f"{type(error).__name__}: {error}")
    return Fatal(EXIT_FAILED, f"unexpected error: {type(error).__name__}: {error}")


# -- credentials ---------------------------------------------------------------------


class Terminal:
    """The prompts, behind a seam so tests can answer them."""

    def __init__(self, stdin: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.stdin = stdin or sys.stdin
        self.stderr = stderr or sys.stderr

    def interactive(self) -> bool:
        try:
            return self.stdin.isatty()
        except (AttributeError, ValueError):
            return False

    def ask(self, prompt: str) -> str:
        self.stderr.write(prompt)
        self.stderr.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def secret(self, prompt: str) -> str:
        return getpass.getpass(prompt)

    def say(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()


def credentials(
    settings: Settings, term: Terminal, environ: dict[str, str] | os._Environ[str] = os.environ
) -> tuple[str, str, bool]:
    """(user, password, signup), asked on the terminal for what the command line left open."""
    on_terminal = term.interactive()
    signup = settings.signup
    if signup is None:
        if on_terminal and settings.user is None:
            while signup is None:
                answer = term.ask("log in or sign up? [l/s] ").strip().lower()
                if answer in ("l", "login", "log in", ""):
                    signup = False
                elif answer in ("s", "signup", "sign up"):
                    signup = True
        else:
            signup = False
    user = settings.user
    if user is None:
        if not on_terminal:
            raise UsageError("no user name: give --user NAME")
        while True:
            user = term.ask("user name: ").strip()
            if valid_username(user):
                break
            term.say("user names are 1-32 characters of A-Z a-z 0-9 _ . - and do not start with . or -")
    elif not valid_username(user):
        raise Fatal(EXIT_BAD_INPUT, "user names are 1-32 characters of A-Z a-z 0-9 _ . - and do not start with . or -")
    password = password_from(settings, environ)
    if password is None:
        if not on_terminal:
            raise UsageError(
                "no password: set CHATAPP_PASSWORD or use --password-file PATH (never on the command line)"
            )
        password = ask_password(term, confirm=signup)
    return user, password, signup


def password_from(settings: Settings, environ: Any = os.environ) -> str | None:
    if settings.password_file is not None:
        try:
            with open(os.path.expanduser(settings.password_file), encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the password file {settings.password_file}: {e}") from None
    value = environ.get("CHATAPP_PASSWORD")
    return value if value else None


def ask_password(term: Terminal, confirm: bool, prompt: str = "Password: ") -> str:
    """Ask without echo; with ``confirm``, twice, until both match and the length is right (3 tries)."""
    for _ in range(3):
        first = term.secret(prompt)
        if not confirm:
            return first
        if not valid_password(first):
            term.say("passwords are 8-72 bytes long; try again")
            continue
        if term.secret("Repeat the password: ") == first:
            return first
        term.say("the two passwords differ; try again")
    raise Fatal(EXIT_BAD_INPUT, "no password agreed on")


# -- logging -------------------------------------------------------------------------


@implementer(ILogObserver)
def _discard(event: dict[str, Any]) -> None:
    pass


def start_logging(settings: Settings, interactive: bool) -> None:
    if not settings.debug:
        globalLogBeginner.beginLoggingTo([_discard], discardBuffer=True, redirectStandardIO=False)
        return
    path = settings.debug_log or ("chatapp-debug.log" if interactive else None)
    stream: TextIO = open(path, "a", encoding="utf-8") if path else sys.stderr
    observer = FilteringLogObserver(
        textFileLogObserver(stream), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


# -- running -------------------------------------------------------------------------


def make_client(reactor: Any, settings: Settings, events: Any) -> ChatClient:
    try:
        return ChatClient(
            reactor,
            settings.server,
            events,
            downloads=settings.downloads,
            listen=settings.listen,
            max_file_size=settings.max_file_size,
            auto_accept=settings.accept_files,
        )
    except InvalidArgument as e:
        raise Fatal(EXIT_USAGE, str(e)) from None


async def login(client: ChatClient, settings: Settings, user: str, password: str, signup: bool) -> str:
    """Start the client; every failure becomes a :class:`Fatal` (the client is stopped first)."""
    try:
        return await client.start(user, password, signup=signup)
    except Exception as e:
        log.failure("start failed")
        try:
            await client.stop()
        except Exception:
            log.failure("stop after a failed start")
        raise explain(e, settings, user) from None


async def _main(reactor: Any, settings: Settings, user: str, password: str, signup: bool, outcome: Outcome) -> None:
    from .oneshot import run_listen, run_send
    from .session import Run, run_chat

    runners: dict[str, Callable[[Run], Any]] = {"chat": run_chat, "send": run_send, "listen": run_listen}
    run = Run(reactor, settings, user, password, signup, outcome)
    try:
        outcome.code = await runners[settings.mode](run)
    except Exception as e:
        if not isinstance(e, Fatal):
            log.failure("chatapp failed")
        fatal = explain(e, settings, user)
        outcome.code, outcome.message = fatal.code, str(fatal)


def main(argv: list[str] | None = None) -> int:
    """Run ``chatapp`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = parse_args(args)
    except UsageError as e:
        print(f"chatapp: {e} (chatapp --help)", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    term = Terminal()
    interactive = settings.mode == "chat" and term.interactive() and sys.stdout.isatty()
    try:
        user, password, signup = credentials(settings, term)
    except UsageError as e:
        print(f"chatapp: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Fatal as e:
        print(f"chatapp: {e}", file=sys.stderr)
        return e.code
    except (EOFError, KeyboardInterrupt):
        print("", file=sys.stderr)
        return EXIT_USAGE
    settings.interactive = interactive
    start_logging(settings, interactive)
    outcome = Outcome()
    try:
        task.react(lambda reactor: defer.ensureDeferred(_main(reactor, settings, user, password, signup, outcome)))
    except SystemExit:
        pass
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        from .terminal import restore_terminal

        restore_terminal()
        _blocking_again()
    if outcome.message:
        print(f"chatapp: {outcome.message}", file=sys.stderr)
    return outcome.code


def _blocking_again() -> None:
    """StandardIO leaves stdin/stdout non-blocking (shared with the shell's terminal); undo that."""
    for fd in (0, 1, 2):
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass
