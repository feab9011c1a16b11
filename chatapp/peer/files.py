"""The file side of a peer session's API: offering, answering and stopping transfers (section 3.3).

:class:`PeerSession` takes these methods from :class:`FileCommands`; the work is done by its
:class:`~chatapp.peer.sender.Sender` and :class:`~chatapp.peer.receiver.Receiver`.
"""

from __future__ import annotations

from chatapp.peer.errors import PeerError
from chatapp.peer.receiver import IncomingTransfer, Receiver
from chatapp.peer.sender import OutgoingTransfer, Sender
from chatapp.peer.states import SessionState
from chatapp.peer.transfer import Transfer


class FileCommands:
    """The file transfers of one session, both directions."""

    sender: Sender
    receiver: Receiver
    state: SessionState

    def _require_open(self) -> None:
        if self.state is not SessionState.OPEN:
            raise PeerError("the peer session is not open")

    @property
    def outgoing(self) -> dict[str, OutgoingTransfer]:
        """The files we send on this session, by id."""
        return self.sender.transfers

    @property
    def incoming(self) -> dict[str, IncomingTransfer]:
        """The files offered to us on this session, by the sender's id."""
        return self.receiver.transfers

    @property
    def transfers(self) -> list[Transfer]:
        """All transfers of this session, both directions, finished ones included."""
        return [*self.outgoing.values(), *self.incoming.values()]

    def send_file(self, path: str, name: str | None = None) -> OutgoingTransfer:
        """Offer the file at ``path`` (as ``name``, default its base name); sending starts on ACCEPT.

        Raises OSError if the file cannot be opened or is not a regular file.
        """
        self._require_open()
        return self.sender.offer(path, name)

    def accept(self, transfer: str | Transfer) -> None:
        """Accept an incoming offer (resuming from a kept partial copy if there is one)."""
        incoming = self.receiver.find(transfer)
        self._require_open()
        self.receiver.accept(incoming)

    def reject(self, transfer: str | Transfer, reason: str = "declined") -> None:
        """Refuse an incoming offer, or stop an incoming transfer under way; its partial file is deleted."""
        self.receiver.reject(self.receiver.find(transfer), reason)

    def cancel(self, transfer: str | Transfer, reason: str = "cancelled", discard: bool = False) -> None:
        """Stop a transfer: ``CANCEL`` for one we send, ``REJECT <id> cancelled`` for one we receive.

        A received file's partial copy is kept for a later resume unless ``discard``
        (a send ignores it). Ids are chosen by each sender, so an id may name one
        transfer each way: pass the :class:`Transfer` to be exact; a bare id means
        ours if we send one by that id.
        """
        outgoing = self.sender.find(transfer)
        if outgoing is not None:
            self.sender.cancel(outgoing, reason)
        else:
            self.receiver.cancel(self.receiver.find(transfer), discard)

    def forget(self, transfer: Transfer) -> None:
        """The factory forgot a finished transfer: so does its side."""
        if isinstance(transfer, OutgoingTransfer):
            self.sender.forget(transfer)
        elif isinstance(transfer, IncomingTransfer):
            self.receiver.forget(transfer)
