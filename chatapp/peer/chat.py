"""Chat text on a peer session: how a message is cut into ``MSG`` lines (PROTOCOL.md section 3.2)."""

from __future__ import annotations

from chatapp.wire import PEER_MAX_LINE

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
