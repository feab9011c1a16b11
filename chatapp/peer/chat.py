"""Chat on a peer session (PROTOCOL.md section 3.2): cutting text into ``MSG`` lines, and the chat verbs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatapp.events import MessageReceived
from chatapp.wire import PEER_MAX_LINE, fields, format_line

if TYPE_CHECKING:
    from chatapp.peer.session import PeerSession

_MSG_ROOM = PEER_MAX_LINE - len("MSG ")


def split_message(text: str) -> list[str]:
    """Split chat text into MSG payloads: one per line, each at most one peer line long, empties dropped."""
    pieces: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        while line:
            head = line.encode("utf-8")[:_MSG_ROOM].decode("utf-8", errors="ignore")
            pieces.append(head)
            line = line[len(head) :]
    return pieces


def on_msg(session: PeerSession, args: str | None) -> None:
    if args:
        session.emit(MessageReceived(session, args))


def on_ping(session: PeerSession, args: str | None) -> None:
    fields(args, 0)
    session.send(format_line("PONG"))


def on_pong(session: PeerSession, args: str | None) -> None:
    pass


def on_bye(session: PeerSession, args: str | None) -> None:
    session.lose("bye")
