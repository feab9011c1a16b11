"""The session and transfer state machines allow their moves and refuse the rest."""

from __future__ import annotations

import pytest

from chatapp.peer.errors import IllegalTransition
from chatapp.peer.states import SessionState, TransferState, session_move, transfer_move

T = TransferState


@pytest.mark.parametrize(
    "path",
    [
        [T.OFFERED, T.ACCEPTED, T.SENDING, T.ENDED, T.DONE],
        [T.OFFERED, T.ACCEPTED, T.RECEIVING, T.ENDED, T.FAILED],
        [T.OFFERED, T.ACCEPTED, T.ENDED, T.DONE],
        [T.OFFERED, T.REJECTED],
        [T.OFFERED, T.ACCEPTED, T.SENDING, T.CANCELLED],
        [T.OFFERED, T.ACCEPTED, T.RECEIVING, T.REJECTED],
    ],
)
def test_legal_paths(path: list[TransferState]) -> None:
    state = path[0]
    for new in path[1:]:
        state = transfer_move(state, new)
    assert state is path[-1] and state.final


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (T.OFFERED, T.SENDING),
        (T.OFFERED, T.DONE),
        (T.SENDING, T.RECEIVING),
        (T.DONE, T.CANCELLED),
        (T.REJECTED, T.ACCEPTED),
        (T.CANCELLED, T.CANCELLED),
        (T.RECEIVING, T.DONE),
    ],
)
def test_illegal_moves_raise(current: TransferState, new: TransferState) -> None:
    with pytest.raises(IllegalTransition):
        transfer_move(current, new)


def test_session_moves() -> None:
    assert session_move(SessionState.HANDSHAKING, SessionState.OPEN) is SessionState.OPEN
    assert session_move(SessionState.OPEN, SessionState.CLOSED) is SessionState.CLOSED
    with pytest.raises(IllegalTransition):
        session_move(SessionState.CLOSED, SessionState.OPEN)
    with pytest.raises(IllegalTransition):
        session_move(SessionState.OPEN, SessionState.HANDSHAKING)
