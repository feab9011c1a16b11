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

from .rates import TransferSummary

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


@dataclass(frozen=True)
class TransferCancelled:
    """``/cancel`` done; ``kept``: bytes of a receive's partial kept for a resume (None: nothing kept)."""

    handle: int
    kept: int | None
    discarded: bool


@dataclass(frozen=True)
class PartialRow:
    """One kept partial file of ``/partials`` (``peer``, ``name`` as offered; ``size`` the whole file's)."""

    peer: str
    name: str
    kept: int
    size: int
    modified: float


@dataclass(frozen=True)
class PartialsListed:
    count: int


@dataclass(frozen=True)
class PartialsCleaned:
    """``/partials clean``: ``count`` partial files deleted."""

    count: int


@dataclass(frozen=True)
class LoggedInAgain:
    """``/reconnect`` done: logged in anew as ``user``; ``listening`` as the server published it."""

    user: str
    listening: tuple[str, int] | None


# -- news the console adds to the library's events -------------------------------------


@dataclass(frozen=True)
class TransferResuming:
    """A transfer starts from a kept partial: ``transfer.offset`` bytes were already there."""

    transfer: Transfer


@dataclass(frozen=True)
class Progress:
    """A progress line with the recent rate (bytes per second over the last seconds), not the average."""

    transfer: Transfer
    rate: float


@dataclass(frozen=True)
class TransferStalled:
    """No byte of a running transfer moved for ``seconds`` (said once per stall)."""

    transfer: Transfer
    seconds: float


@dataclass(frozen=True)
class OfferTimedOut:
    """Nobody answered our offer within ``seconds`` (``--offer-timeout``): it is cancelled."""

    transfer: Transfer
    seconds: float


@dataclass(frozen=True)
class SessionReplaced:
    """The server closed our session because we logged in elsewhere; ``/reconnect`` logs in again."""

    text: str


@dataclass(frozen=True)
class IdentityMade:
    """This login made the account's identity key on this server (its first login from this installation)."""

    user: str
    fingerprint: str
    path: str
    new_account: bool = False  # made at signup: no contact knows an older key


@dataclass(frozen=True)
class FingerprintShown:
    """``/fingerprint [USER]``: our own key (``user`` None), or the key remembered for USER (None: none yet)."""

    user: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class KeyTrusted:
    """``/trust USER``: the changed key ``offered`` replaces ``remembered`` for USER."""

    user: str
    remembered: str
    offered: str


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
    | TransferCancelled
    | PartialsListed
    | PartialsCleaned
    | LoggedInAgain
    | FingerprintShown
    | KeyTrusted
)
ConsoleNews = (
    TransferResuming | Progress | TransferStalled | TransferSummary | OfferTimedOut | SessionReplaced | IdentityMade
)
ConsoleEvent = Ready | CommandFailed | HelpLine | WhoRow | TransferRow | PartialRow | CommandSucceeded | ConsoleNews
Shown = ChatEvent | ConsoleEvent  # everything a console front end renders
