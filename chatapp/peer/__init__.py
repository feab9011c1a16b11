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
        max_file_size=64 * 2**30,       # larger offers get REJECT too-large
        auto_accept=False,              # or True (scripts), or a function Transfer -> bool
        chunk_size=256 * 1024,          # 1 .. 1 MiB per DATA
        max_open_offers=16,             # per session; more get REJECT busy
        max_partial_bytes=16 * 2**30,   # kept partials beyond this are deleted, oldest first
    )
    port = await factory.listen("tcp:0")            # Deferred[IListeningPort]; then LISTEN <port> to the server
    session = await factory.connect("bob", host, port, token, proof)   # after OK CONNECT bob host port token proof
    # or factory.connect_endpoint(clientFromString(reactor, "tls:..."), "bob", token, proof)
    ...
    await factory.stop()                            # stop listening, BYE to every session

``connect`` fails with :class:`HandshakeFailed` (``.reason``: ``bad-token``,
``server-unavailable``, ``bad-welcome``, ``handshake-timeout``, ...) or a
Twisted connection error. Incoming sessions just appear: ``events.peer_joined``.

``verify`` must fail with :class:`VerifyRejected` when the server answers
``ERR 403 bad-token`` and with anything else (e.g. :class:`ServerUnavailable`)
when the server cannot be asked; the listener then answers the peer
``ERR 403 bad-token`` or ``ERR 503 server-unavailable``.

A session (:class:`PeerSession`) is in ``factory.sessions`` (key: the
case-folded peer name; ``factory.session_for(name)``) once open. Its API:

- ``session.peer_name``, ``session.state`` (:class:`SessionState`), ``session.role``
- ``session.send_message(text) -> int`` (split into MSG lines), ``session.ping()``
- ``session.send_file(path, name=None) -> Transfer`` (raises OSError if unreadable)
- ``session.accept(t)``, ``session.reject(t, reason="declined")``,
  ``session.cancel(t)`` (either direction), where ``t`` is a Transfer or its id;
  ids are chosen by each sender, so one id may name a transfer each way: pass
  the Transfer (a bare id in ``cancel`` means ours if we send one by that id)
- ``session.close()`` (BYE), ``session.when_open() -> Deferred[PeerSession]``
- ``session.transfers``, ``session.incoming[id]``, ``session.outgoing[id]``

Events (:class:`PeerEvents`, all on the reactor thread): ``peer_joined(session)``,
``peer_left(session, reason)``, ``message(session, text)``,
``offer(session, transfer)`` (answer with accept/reject, now or later),
``transfer_progress(transfer)`` (at most 10/s per transfer),
``transfer_ended(transfer)`` and ``notice(session, text)`` (e.g. disk full).
Names and texts arrive raw: escape them (``wire.escape_for_terminal``) to show them.

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
