"""What the console itself has to say, next to the library's events (:mod:`chatapp.events`).

One frozen dataclass per kind of line: the renderers (:mod:`chatapp.cli.render`)
turn each into a script line (docs/console.md) or a human line.  Names and
texts are stored as they came; the renderers escape them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chatapp.events import ChatEvent
from chatapp.peer import Transfer

# -- lines of their own -------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """Logged in (the first line): ``listening`` is (host, port) as the server published it, or None."""

    user: str
    listening: tuple[str, int] | None


@dataclass(frozen=True)
class CommandFailed:
    """``ERROR``: a command failed or could not be read; ``text`` says which and why."""

    text: str


@dataclass(frozen=True)
class HelpLine:
    """One line of ``/help``."""

    text: str


@dataclass(frozen=True)
class WhoRow:
    """One user of ``/who``; ``state`` is ``online`` or ``listening``."""

    name: str
    state: str


@dataclass(frozen=True)
class TransferRow:
    """One transfer of ``/transfers``."""

    transfer: Transfer


# -- a command succeeded (``OK <command> ...``) --------------------------------------------


@dataclass(frozen=True)
class WhoListed:
    count: int


@dataclass(frozen=True)
class ChatOpened:
    user: str


@dataclass(frozen=True)
class MessageSent:
    to: str
    me: str
    text: str


@dataclass(frozen=True)
class ActiveChat:
    """Where plain lines go now (``/to``); None: nowhere."""

    user: str | None


@dataclass(frozen=True)
class FileOfferSent:
    handle: int
    to: str
    size: int
    name: str


@dataclass(frozen=True)
class TransferAnswered:
    """``/accept``, ``/reject`` or ``/cancel`` done."""

    verb: Literal["accept", "reject", "cancel"]
    handle: int


@dataclass(frozen=True)
class TransfersListed:
    count: int


@dataclass(frozen=True)
class ChatClosed:
    user: str


@dataclass(frozen=True)
class ListenState:
    """Accepting chats at (host, port) as the server published it, or not (None)."""

    listening: tuple[str, int] | None


@dataclass(frozen=True)
class PasswordChanged:
    pass


@dataclass(frozen=True)
class HelpShown:
    pass


@dataclass(frozen=True)
class Quitting:
    pass


CommandSucceeded = (
    WhoListed
    | ChatOpened
    | MessageSent
    | ActiveChat
    | FileOfferSent
    | TransferAnswered
    | TransfersListed
    | ChatClosed
    | ListenState
    | PasswordChanged
    | HelpShown
    | Quitting
)
ConsoleEvent = Ready | CommandFailed | HelpLine | WhoRow | TransferRow | CommandSucceeded
Shown = ChatEvent | ConsoleEvent  # everything a console front end renders
