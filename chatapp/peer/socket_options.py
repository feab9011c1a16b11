"""How much a peer connection's kernel buffers may hold: what a chat line waits behind while a file streams.

A line written to a session that carries a file queues behind every file byte
already handed to the kernel: the unsent part of our send buffer, and the
unread part of the peer's receive buffer. Linux grows both on its own (here up
to 4 and 32 MiB), so a line could wait behind tens of megabytes.

- ``TCP_NOTSENT_LOWAT`` keeps at most :data:`UNSENT_LIMIT` bytes unsent in our
  send buffer; bytes already in flight are not counted, so a long, fast path
  still fills its window.
- ``SO_RCVBUF`` caps the receive buffer at :data:`RECEIVE_BUFFER` (the kernel
  doubles it and offers part of that as the window). That also caps what the
  peer may have in flight: a transfer tops out near 20-35 MB/s at a 50 ms round
  trip, traded for chat lines that are not held up behind a file on a fast link.

Options the platform lacks are skipped: they bound latency, not memory or safety.
"""

from __future__ import annotations

import socket as socket_module
from typing import Any

UNSENT_LIMIT = 128 * 1024
RECEIVE_BUFFER = 1024 * 1024


def bound_queues(transport: Any) -> None:
    """Apply both limits to the socket of a TCP transport (anything else is left alone)."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return
    sock = get_handle()
    if not isinstance(sock, socket_module.socket) or sock.family not in (socket_module.AF_INET, socket_module.AF_INET6):
        return
    unsent = getattr(socket_module, "TCP_NOTSENT_LOWAT", None)
    try:
        if unsent is not None:
            sock.setsockopt(socket_module.IPPROTO_TCP, unsent, UNSENT_LIMIT)
        sock.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:
        pass  # refused by this system: the defaults stand
