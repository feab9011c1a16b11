"""How much of a file a chat line can queue behind in the kernel while the file streams.

A line written to a session that carries a file queues behind every file byte
already handed to the kernel. Linux grows a send buffer on its own (here up to
4 MiB), so a line could wait behind megabytes. ``TCP_NOTSENT_LOWAT`` keeps at
most :data:`UNSENT_LIMIT` bytes unsent in our send buffer; bytes already in
flight are not counted, so a long, fast path still fills its window.

On loopback it costs throughput: with the unsent part kept small the receiver
catches up and sleeps, and the sender's kernel time (waking it) triples in some
transfers. Without it a chat line behind a 1 GiB file took 15-47 ms at the 99th
percentile, with it 3-7 ms (BENCHMARKS.md, TLS section); on a slow real link the
difference is seconds.

The receive buffer is left to the kernel. Capping it (``SO_RCVBUF`` 1 MiB) would
also bound what waits unread on a fast link, but it caps the window of a slow
one, and on loopback it halved the transfer rate in two runs of three
(BENCHMARKS.md, TLS section).

An option the platform lacks is skipped: it bounds latency, not memory or safety.
"""

from __future__ import annotations

import socket as socket_module
from typing import Any

UNSENT_LIMIT = 128 * 1024


def bound_queues(transport: Any) -> None:
    """Apply the limit to the socket of a TCP transport (anything else is left alone)."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return
    sock = get_handle()
    if not isinstance(sock, socket_module.socket) or sock.family not in (socket_module.AF_INET, socket_module.AF_INET6):
        return
    unsent = getattr(socket_module, "TCP_NOTSENT_LOWAT", None)
    if unsent is None:
        return
    try:
        sock.setsockopt(socket_module.IPPROTO_TCP, unsent, UNSENT_LIMIT)
    except OSError:
        pass  # refused by this system: the defaults stand
