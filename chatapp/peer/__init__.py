"""The peer side of the client core: chat and file transfer between two users (PROTOCOL.md section 3).

No user interface here: the application drives a :class:`PeerFactory` and
hears back through a :class:`PeerEvents` object. Everything runs on the
reactor thread.

Building it::

    factory = PeerFactory(
        me="alice",
        verify=verify,                  # token -> Deferred[(requester, proof)]; VERIFY on our server
        downloads_dir="~/Downloads/chatapp",
        events=my_events,               # a PeerEvents (subclass NoEvents to pick callbacks)
        reactor=reactor,                # IReactorTime + IReactorTCP (a task.Clock in unit tests)
        max_file_size=64 * 2**30, auto_accept=False, chunk_size=256 * 1024,
    )
    port = await factory.listen("tcp:0")            # Deferred[IListeningPort]; then LISTEN <port> to the server
    session = await factory.connect("bob", host, port, token, proof)   # after OK CONNECT bob host port token proof

``verify`` must fail with :class:`VerifyRejected` when the server answers
``ERR 403 bad-token`` and with anything else (e.g. :class:`ServerUnavailable`)
when the server cannot be asked; the listener then answers the peer
``ERR 403 bad-token`` or ``ERR 503 server-unavailable``.

A session (:class:`PeerSession`) is in ``factory.sessions`` (key: the
case-folded peer name; ``factory.session_for(name)``) once open. Its API:

- ``session.peer_name``, ``session.state`` (:class:`SessionState`), ``session.role``
- ``session.send_message(text) -> int`` (split into MSG lines), ``session.ping()``
- ``session.send_file(path, name=None) -> Transfer`` (raises OSError if unreadable)
- ``session.accept(id)``, ``session.reject(id, reason="declined")``,
  ``session.cancel(id)`` (either direction), ``session.close()`` (BYE)
- ``session.transfers``, ``session.incoming[id]``, ``session.outgoing[id]``

A :class:`Transfer` has ``id``, ``name``, ``size``, ``direction``
(:class:`Direction`), ``state`` (:class:`TransferState`), ``reason``,
``bytes_done``, ``offset``, ``rate``, ``path``, ``sha256`` and
``when_done() -> Deferred[Transfer]`` (fails with :class:`TransferFailed`).

Received files go to ``downloads_dir`` under a cleaned name, never replacing
anything (``name (1).ext``...); partial copies live in
``downloads_dir/.chatapp-partial/`` and are resumed from when the same peer
offers the same name and size again.
"""

from chatapp.peer.errors import (
    HandshakeFailed,
    PeerError,
    ServerUnavailable,
    TransferFailed,
    VerifyRejected,
)
from chatapp.peer.events import NoEvents, PeerEvents
from chatapp.peer.factory import PeerFactory
from chatapp.peer.session import PeerSession, Role
from chatapp.peer.states import Direction, SessionState, TransferState
from chatapp.peer.transfer import Transfer

__all__ = [
    "Direction",
    "HandshakeFailed",
    "NoEvents",
    "PeerError",
    "PeerEvents",
    "PeerFactory",
    "PeerSession",
    "Role",
    "ServerUnavailable",
    "SessionState",
    "Transfer",
    "TransferFailed",
    "TransferState",
    "VerifyRejected",
]
