"""How a ``chatapp`` run ends: the exit codes, :class:`Fatal`, and errors said in one safe line.

Nothing the user did wrong and nothing the network did ends in a traceback:
:func:`explain` turns an error into an exit code of its own (the table is
:data:`EXIT_CODES`, documented in docs/console.md) and one line, and
:func:`format_error` makes that line safe for a terminal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twisted.internet.error import CannotListenError

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
from chatapp.client.errors import ServerNotTrusted
from chatapp.peer.errors import HandshakeFailed
from chatapp.wire import escape_for_terminal

from .options import Settings

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
EXIT_REPLACED = 10  # this user logged in elsewhere: the server closed this session (one-shots)
EXIT_UNTRUSTED = 11  # the server's TLS key is unknown and was not confirmed, or it changed (issue 12)
EXIT_OUTPUT = 12  # stdout was not read: more output waited than chatapp holds (script mode, send, listen)
EXIT_KEY_CHANGED = 13  # send: the recipient's key is not the one remembered (--accept-changed-keys)
EXIT_INTERRUPTED = 130  # Ctrl-C (or SIGTERM) while logging in: the shell's code for SIGINT

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
    EXIT_REPLACED: "you logged in elsewhere and the server closed this session (send, listen)",
    EXIT_UNTRUSTED: "the server's key is not trusted: unknown and not confirmed, or changed since it was pinned",
    EXIT_OUTPUT: "stdout was not read and too much output waited (script mode, send, listen)",
    EXIT_KEY_CHANGED: "the recipient's key changed since the last chat (send; --accept-changed-keys)",
    EXIT_INTERRUPTED: "stopped (Ctrl-C, SIGTERM) before logging in, at a question or while connecting",
}


@dataclass
class Outcome:
    """How the run ended: the exit code, and the one line to print on stderr (if any)."""

    code: int = EXIT_OK
    message: str | None = None


class Fatal(Exception):
    """Ends the program with ``code`` after printing ``str()`` (through :func:`format_error`) on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def format_error(message: str) -> str:
    """``message`` as one line a terminal shows as text: controls, line separators and bidi controls escaped."""
    return escape_for_terminal(message)


def minutes(seconds: int | None) -> str:
    """How long, as a person says it: ``45 more seconds``, ``5 more minutes``."""
    if seconds is None:
        return "a while"
    if seconds < 120:
        return f"{max(1, seconds)} more second" + ("" if seconds == 1 else "s")
    m = max(1, math.ceil(seconds / 60))
    return f"{m} more minute" + ("" if m == 1 else "s")


def blocked_text(seconds: int | None, name: str) -> str:
    """``ERR 429 blocked`` or ``* BLOCKED``: what is blocked (this address), what may be locked (the account)."""
    account = f"the account {name}" if name else "the account"
    return (
        f"too many failed logins: this address is blocked for {minutes(seconds)} (no account can log in from it); "
        f"{account} may be locked as long (from every address)"
    )


def locked_text(seconds: int | None, name: str) -> str:
    """``ERR 429 locked``: the account is locked; this address is not blocked."""
    account = f"the account {name}" if name else "the account"
    return (
        f"{account} is locked for {minutes(seconds)} after failed logins (from every address); "
        "this address is not blocked: other accounts can log in from here"
    )


def credentials_text(error: BadCredentials) -> str:
    """``ERR 401 bad-credentials <tries-left>``: wrong, and how many wrong passwords this address has left."""
    left = error.tries_left
    if left is None:
        return "wrong user name or password; after a few more failures your address is blocked for a while"
    if left <= 1:
        return "wrong user name or password; 1 try left: one more wrong password blocks this address"
    return f"wrong user name or password; {left} tries left before this address is blocked"


def explain(error: BaseException, settings: Settings, user: str | None = None) -> Fatal:
    """The exit code and the line (unescaped: see :func:`format_error`) for an error while starting or running."""
    name = user or settings.user or ""
    if isinstance(error, Fatal):
        return error
    if isinstance(error, HandshakeFailed) and error.reason in ("key-changed", "bad-key"):
        we_refused = error.reason == "key-changed" and error.expected is not None  # their key changed, not ours
        hint = " (if the contact confirms the new key: --accept-changed-keys)" if we_refused else ""
        text = str(error)
        if settings.send_to:  # say whose key: the one-line message may be all a script's log keeps
            text = text.replace("the contact's key", f"the key of {settings.send_to}", 1)
            text = text.replace("the contact refused", f"{settings.send_to} refused", 1)
        return Fatal(EXIT_KEY_CHANGED, f"refused: {text}{hint}")
    if isinstance(error, HandshakeFailed):  # the chat with the recipient did not open: say why, in words
        whom = f" with {settings.send_to}" if settings.send_to else ""
        return Fatal(EXIT_FAILED, f"could not open the chat{whom}: {error}")
    if isinstance(error, Blocked):
        return Fatal(EXIT_BLOCKED, blocked_text(error.seconds, name))
    if isinstance(error, Locked):
        return Fatal(EXIT_LOCKED, locked_text(error.seconds, name))
    if isinstance(error, BadCredentials):
        return Fatal(EXIT_CREDENTIALS, credentials_text(error))
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
    if isinstance(error, ServerNotTrusted):  # before ConnectionClosed: the refusal says it all
        return Fatal(EXIT_UNTRUSTED, str(error))
    if isinstance(error, (NotConnected, ConnectionClosed)):
        text = str(error)
        if settings.server not in text:
            text = f"{text} (server {settings.server})"
        return Fatal(EXIT_UNREACHABLE, text)
    if isinstance(error, CannotListenError):
        return Fatal(EXIT_FAILED, f"cannot listen for chats on {settings.listen}: {error.socketError}")
    if isinstance(error, ChatClientError):
        return Fatal(EXIT_FAILED, str(error))
    if isinstance(error, (ValueError, OSError)):
        return Fatal(EXIT_FAILED, f"{type(error).__name__}: {error}")
    return Fatal(EXIT_FAILED, f"unexpected error: {type(error).__name__}: {error}")
