"""Who logs in and how: the prompts, the credentials, and starting a :class:`~chatapp.app.ChatClient`."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from twisted.internet import defer
from twisted.logger import Logger

from chatapp.app import ChatClient
from chatapp.client import BadCredentials, InvalidArgument
from chatapp.events import EventSink
from chatapp.wire import valid_password, valid_username

from .asking import ask_in_thread
from .errors import EXIT_BAD_INPUT, EXIT_USAGE, Fatal, credentials_text, explain
from .options import Settings, UsageError
from .trust import TerminalTrust, server_options

log = Logger()


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
    settings: Settings, term: Terminal, environ: Mapping[str, str] = os.environ, ask_later: bool = False
) -> tuple[str, str | None, bool]:
    """(user, password, signup), asked on the terminal for what the command line left open.

    With ``ask_later`` the password is not asked here: it is None when it must
    be asked, and :func:`login` asks it once the server said HELLO (an
    unreachable or blocking server is reported before anyone types a password).
    """
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
        if not ask_later:
            password = ask_password(term, confirm=signup)
    return user, password, signup


def password_from(settings: Settings, environ: Mapping[str, str] = os.environ) -> str | None:
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


def make_client(reactor: Any, settings: Settings, emit: EventSink, question: TerminalTrust | None = None) -> ChatClient:
    try:
        return ChatClient(
            reactor,
            settings.server,
            emit,
            downloads=settings.downloads,
            listen=settings.listen,
            max_file_size=settings.max_file_size,
            auto_accept=settings.accept_files,
            server_options=server_options(reactor, settings, question),  # issue 12: the server link's TLS
            accept_changed_keys=settings.accept_changed_keys,
        )
    except InvalidArgument as e:
        raise Fatal(EXIT_USAGE, str(e)) from None


PasswordSource = Callable[[], defer.Deferred[str]]


def asked_in_a_thread(reactor: Any, ask: Callable[[], str]) -> PasswordSource:
    """``ask`` (a blocking prompt) run in a daemon thread when the password is needed (:mod:`.asking`)."""

    def source() -> defer.Deferred[str]:
        return ask_in_thread(reactor, ask, name="password prompt")

    return source


async def login(
    client: ChatClient,
    settings: Settings,
    user: str,
    password: str | PasswordSource,
    signup: bool,
    say: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Start the client; (name as signed up, password); every failure becomes a :class:`Fatal` (client stopped).

    ``password`` is the password, or where to ask it once the server greeted us; then, given ``say``, a
    wrong one is said and asked again, as long as the server allows (it blocks the address at its limit).
    """
    try:
        if isinstance(password, str):
            return await client.start(user, password, signup=signup), password
        source = password
        await client.server.open()  # unreachable, busy or `* BLOCKED`: said before any prompt
        while True:
            try:
                typed = await source()
            except (EOFError, KeyboardInterrupt):
                raise Fatal(EXIT_USAGE, "no password given") from None
            try:
                return await client.start(user, typed, signup=signup), typed
            except BadCredentials as e:
                if say is None or signup or not e.tries_left:
                    raise
                say(credentials_text(e))
    except Exception as e:
        log.failure("start failed")
        try:
            await client.stop()
        except Exception:
            log.failure("stop after a failed start")
        raise explain(e, settings, user) from None
