"""The two state machines of the peer side (a session and a transfer), and a session's role.

Each is an enum plus one transition function that raises
:class:`~chatapp.peer.errors.IllegalTransition` on a move the table does not allow.
"""

from __future__ import annotations

import enum

from chatapp.peer.errors import IllegalTransition


class Role(enum.Enum):
    LISTENER = "listener"  # accepted the connection; verifies the token
    CONNECTOR = "connector"  # dialled out after OK CONNECT


class SessionState(enum.Enum):
    HANDSHAKING = "handshaking"  # connected: the connector sent HELLO, the listener waits for it
    VERIFYING = "verifying"  # listener only: HELLO arrived, our server is asked about its token
    OPEN = "open"
    CLOSING = "closing"  # we closed (BYE, refusal, error): waiting for the connection to go
    CLOSED = "closed"  # connectionLost ran


class TransferState(enum.Enum):
    OFFERED = "offered"
    PREPARING = "preparing"  # receiver: we accept, but first hash the kept partial to resume from
    ACCEPTED = "accepted"  # ACCEPT is sent; a sender hashes the prefix the receiver has before bytes move
    SENDING = "sending"
    RECEIVING = "receiving"
    ENDED = "ended"  # all bytes and END are through; waiting for (or computing) DONE / FAIL
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self in _FINAL


class Direction(enum.Enum):
    SEND = "send"
    RECEIVE = "receive"


_SESSION_MOVES: dict[SessionState, frozenset[SessionState]] = {
    SessionState.HANDSHAKING: frozenset(
        {SessionState.VERIFYING, SessionState.OPEN, SessionState.CLOSING, SessionState.CLOSED}
    ),
    SessionState.VERIFYING: frozenset({SessionState.OPEN, SessionState.CLOSING, SessionState.CLOSED}),
    SessionState.OPEN: frozenset({SessionState.CLOSING, SessionState.CLOSED}),
    SessionState.CLOSING: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}

_FINAL = frozenset({TransferState.DONE, TransferState.FAILED, TransferState.CANCELLED, TransferState.REJECTED})
_STOPPED = frozenset({TransferState.FAILED, TransferState.CANCELLED, TransferState.REJECTED})

_TRANSFER_MOVES: dict[TransferState, frozenset[TransferState]] = {
    TransferState.OFFERED: frozenset({TransferState.PREPARING, TransferState.ACCEPTED}) | _STOPPED,
    TransferState.PREPARING: frozenset({TransferState.ACCEPTED}) | _STOPPED,
    TransferState.ACCEPTED: frozenset({TransferState.SENDING, TransferState.RECEIVING, TransferState.ENDED})
    | _STOPPED,
    TransferState.SENDING: frozenset({TransferState.ENDED}) | _STOPPED,
    TransferState.RECEIVING: frozenset({TransferState.ENDED}) | _STOPPED,
    TransferState.ENDED: frozenset({TransferState.DONE}) | _STOPPED,
    TransferState.DONE: frozenset(),
    TransferState.FAILED: frozenset(),
    TransferState.CANCELLED: frozenset(),
    TransferState.REJECTED: frozenset(),
}


def session_move(current: SessionState, new: SessionState) -> SessionState:
    if new not in _SESSION_MOVES[current]:
        raise IllegalTransition(f"session: {current.value} -> {new.value}")
    return new


def transfer_move(current: TransferState, new: TransferState) -> TransferState:
    if new not in _TRANSFER_MOVES[current]:
        raise IllegalTransition(f"transfer: {current.value} -> {new.value}")
    return new
