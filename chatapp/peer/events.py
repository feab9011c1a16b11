"""What the peer side tells the application: the :class:`PeerEvents` protocol and a do-nothing base."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from chatapp.peer.session import PeerSession
    from chatapp.peer.transfer import Transfer


class PeerEvents(Protocol):
    """Callbacks from the peer side; all run on the reactor thread and must not block.

    Texts and names are passed as received: escape them
    (``chatapp.wire.escape_for_terminal``) before showing them on a terminal.
    """

    def peer_joined(self, session: PeerSession) -> None:
        """A peer session finished its handshake (either role); ``session.peer_name`` says who."""

    def peer_left(self, session: PeerSession, reason: str) -> None:
        """An open session ended (``bye``, ``closed``, ``replaced``, ``connection-lost``, ``protocol-error``...)."""

    def message(self, session: PeerSession, text: str) -> None:
        """One ``MSG`` line arrived (never empty)."""

    def offer(self, session: PeerSession, transfer: Transfer) -> None:
        """The peer offers a file; answer later with ``session.accept(id)`` or ``session.reject(id)``."""

    def transfer_progress(self, transfer: Transfer) -> None:
        """Bytes moved (at most 10 calls a second per transfer, plus one at the last byte)."""

    def transfer_ended(self, transfer: Transfer) -> None:
        """A transfer reached a final state: see ``transfer.state`` and ``transfer.reason``."""

    def notice(self, session: PeerSession, text: str) -> None:
        """Something the user should know that is not a message (e.g. the disk is full)."""


class NoEvents:
    """Implements every :class:`PeerEvents` method as a no-op; subclass and override what you need."""

    def peer_joined(self, session: PeerSession) -> None:
        pass

    def peer_left(self, session: PeerSession, reason: str) -> None:
        pass

    def message(self, session: PeerSession, text: str) -> None:
        pass

    def offer(self, session: PeerSession, transfer: Transfer) -> None:
        pass

    def transfer_progress(self, transfer: Transfer) -> None:
        pass

    def transfer_ended(self, transfer: Transfer) -> None:
        pass

    def notice(self, session: PeerSession, text: str) -> None:
        pass
