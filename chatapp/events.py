"""What the client library tells an application: one frozen dataclass per kind of event.

The peer side (:class:`~chatapp.peer.PeerFactory`) and the server link
(:class:`~chatapp.client.ServerConnection`) each take one ``emit`` callable
and call it with these objects, on the reactor thread; an application
(``chatapp.app.ChatClient``, the console, a test) reads their attributes.
Names and texts are stored as they arrived: escape them
(``chatapp.wire.escape_for_terminal``) before showing them on a terminal.

An ``emit`` that raises is a bug in the application; the library logs it and
closes the connection that was being served, as for any other bug.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatapp.peer.session import PeerSession
    from chatapp.peer.transfer import Transfer


# -- the peer side ------------------------------------------------------------------


@dataclass(frozen=True)
class PeerJoined:
    """A peer session finished its handshake (either role); ``session.peer_name`` says who."""

    session: PeerSession


@dataclass(frozen=True)
class PeerLeft:
    """An open session ended; ``reason``: ``bye``, ``closed``, ``replaced``, ``connection-lost``, ..."""

    session: PeerSession
    reason: str


@dataclass(frozen=True)
class MessageReceived:
    """One ``MSG`` line arrived (never empty)."""

    session: PeerSession
    text: str


@dataclass(frozen=True)
class FileOffered:
    """The peer offers a file; answer later by accepting or rejecting ``transfer.handle``."""

    session: PeerSession
    transfer: Transfer


@dataclass(frozen=True)
class TransferProgress:
    """Bytes moved (at most 10 a second per transfer, plus one at the last byte)."""

    transfer: Transfer


@dataclass(frozen=True)
class TransferEnded:
    """A transfer reached a final state: see ``transfer.state`` and ``transfer.reason``."""

    transfer: Transfer


@dataclass(frozen=True)
class PeerNotice:
    """Something the user should know about a chat that is not a message (the disk is full...)."""

    session: PeerSession
    text: str


@dataclass(frozen=True)
class KeyChanged:
    """The server vouched for a key of ``user`` that is not the one remembered from earlier chats.

    The chat was not opened. The contact may have a new device or installation, or someone may be
    intercepting: the user compares ``offered`` with the contact by another channel and, if it is
    theirs, accepts it (``ChatClient.trust(user)``, the console's ``/trust``).

    ``accepted``: the client was told to take changed keys (``--accept-changed-keys``): ``offered`` is
    remembered now and the chat went on.
    """

    user: str
    remembered: str
    offered: str
    accepted: bool = False


@dataclass(frozen=True)
class KeyRefused:
    """``user``'s client (proven by the key we remember for them) connected to us and closed before it
    said HELLO: most likely it refuses our key, which is not the one it remembers for us (we made a new
    identity key). The user shows ``user`` their fingerprint; ``user`` can accept it (``/trust``).

    Said at most once a minute per contact.
    """

    user: str


# -- the server link --------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequested:
    """``user`` asked the server to connect to us (``* REQUEST``); their peer connection follows."""

    user: str


@dataclass(frozen=True)
class ServerLost:
    """The logged-in server connection dropped without our asking; open chats go on.

    A reconnection follows unless :class:`GaveUp` does. (A connection that drops before it logged in
    is not a loss to tell of: the login under way fails with the reason.)
    """

    error: Exception


@dataclass(frozen=True)
class Reconnecting:
    """The next try to reach the server starts in ``delay`` seconds."""

    delay: float
    attempt: int


@dataclass(frozen=True)
class Reconnected:
    """Logged in again after a loss; ``listening`` is (host, port) as the server published it."""

    user: str
    listening: tuple[str, int] | None


@dataclass(frozen=True)
class GaveUp:
    """No more reconnection tries: ``error`` says why (wrong password, blocked, replaced...)."""

    error: Exception


PeerEvent = (
    PeerJoined
    | PeerLeft
    | MessageReceived
    | FileOffered
    | TransferProgress
    | TransferEnded
    | PeerNotice
    | KeyChanged
    | KeyRefused
)
ServerEvent = ChatRequested | ServerLost | Reconnecting | Reconnected | GaveUp
ChatEvent = PeerEvent | ServerEvent

EventSink = Callable[[ChatEvent], None]


def ignore(event: ChatEvent) -> None:
    """An ``emit`` for code that listens to nothing."""
