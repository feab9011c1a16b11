"""Exceptions of the peer side; each docstring is the text a user interface may show."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatapp.peer.transfer import Transfer


class PeerError(Exception):
    """Something went wrong with a peer connection."""


class VerifyRejected(PeerError):
    """The server did not vouch for this token (unknown, expired or not for us)."""


class ServerUnavailable(PeerError):
    """Our server could not be asked to verify the token."""


class HandshakeFailed(PeerError):
    """The peer connection could not be opened.

    ``reason`` is a short word (``bad-token``, ``handshake-timeout``...). For the two key refusals
    ``expected`` and ``offered`` are both fingerprints: ``bad-key`` (the peer's TLS key is not the
    one the server vouched for: ``expected`` is the vouched key) and ``key-changed`` (the server
    vouched for a key that is not the one remembered for this contact: ``expected`` is the
    remembered one).
    """

    def __init__(self, reason: str, expected: str | None = None, offered: str | None = None) -> None:
        super().__init__(_explain(reason, expected, offered))
        self.reason = reason
        self.expected = expected
        self.offered = offered


def _explain(reason: str, expected: str | None, offered: str | None) -> str:
    if reason == "bad-key" and expected and offered:
        return (
            "the peer's key is not the one the server vouched for: someone may be intercepting"
            f" (vouched {expected}, offered {offered})"
        )
    if reason == "key-changed" and expected and offered:
        return f"the contact's key changed (remembered {expected}, now {offered})"
    if reason == "key-changed":  # ERR 403 key-changed: the contact refused ours
        return (
            "the contact refused the chat: the key they remember for you is not your current one"
            " (a new identity key?); once they have compared your /fingerprint they can accept it"
            " (/trust, or --accept-changed-keys)"
        )
    if reason == "bad-key":  # ERR 403 bad-key: the contact saw a key the server did not vouch for
        return "the contact refused the chat: the key it saw is not the one the server vouched for"
    known = _REASONS.get(reason)
    if known is not None:
        return known
    # Any other word came from the peer (its ERR): said as its words, never as ours.
    return f"the peer refused the chat (it said: {reason})"


_REASONS = {
    # the peer's refusals (PROTOCOL.md 3.2)
    "bad-token": "the peer refused the chat: the server did not confirm our introduction (bad-token); try again",
    "server-unavailable": "the peer could not reach its chat server to check who we are; try again later",
    "unsupported-version": "the peer runs another version of the chat protocol",
    "not-authenticated": "the peer refused the chat before it knew who we are (not-authenticated)",
    "refused": "the peer refused the chat",
    # our own reasons for giving up
    "connection-lost": "the connection to the peer was lost before the chat opened",
    "handshake-timeout": "the peer did not finish opening the chat in time",
    "hello-timeout": "the peer did not finish opening the chat in time",
    "bad-welcome": "the peer did not answer as a chatapp client should (bad-welcome)",
    "closed": "the chat was closed before it opened",
    "replaced": "the chat was replaced by a newer one with the same peer",
    "too-many-sessions": "too many chats are open",
    "too-many-handshakes": "too many chats are being opened at once",
    "internal-error": "an internal error closed the chat (see the log)",
    "line-too-long": "the peer sent a line longer than the protocol allows: closed",
    "protocol-error": "the peer broke the chat protocol: closed",
    "data-timeout": "the peer stopped in the middle of a file: closed",
    "idle-timeout": "the peer was silent for too long: closed",
    "bye": "the peer closed the chat",
}


class IllegalTransition(PeerError):
    """A state machine was asked for a move it does not allow (a bug, not a peer's fault)."""


class ProtocolError(PeerError):
    """The peer broke the protocol; the connection is closed with ``ERR 400 protocol-error``."""

    def __init__(self, text: str, transfer_id: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.transfer_id = transfer_id


class TransferFailed(PeerError):
    """A file transfer ended without the file arriving (rejected, cancelled or failed)."""

    def __init__(self, transfer: Transfer) -> None:
        super().__init__(f"transfer {transfer.id} {transfer.state.value}: {transfer.reason}")
        self.transfer = transfer
        self.state = transfer.state
        self.reason = transfer.reason
