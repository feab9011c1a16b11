"""The peer side of the client core: chat and file transfer between two users (PROTOCOL.md section 3).

No user interface here: the application drives a :class:`PeerFactory` and
hears back through one ``emit`` callable that gets the dataclasses of
:mod:`chatapp.events`. Everything runs on the reactor thread, except the
disk work of received files (writes, fsync, placing), which a small thread
pool does while the reactor goes on.

Building it::

    factory = PeerFactory(
        me="alice",
        verify=verify,                  # token -> Deferred[(requester, proof)]; VERIFY on our server
        downloads_dir="~/Downloads/chatapp",
        emit=on_event,                  # EventSink: gets PeerJoined, MessageReceived... (chatapp.events.ignore)
        reactor=reactor,                # IReactorTime + IReactorTCP (+ IReactorThreads without a runner)
        runner=None,                    # disk work of received files; default 2 threads; InlineRunner in tests
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
    await factory.stop()                            # stop listening, BYE; fires once every connection is gone

``connect`` fails with :class:`HandshakeFailed` (``.reason``: ``bad-token``,
``server-unavailable``, ``bad-welcome``, ``handshake-timeout``, ...) or a
Twisted connection error. Incoming sessions just appear: ``PeerJoined(session)``.

``verify`` must fail with :class:`VerifyRejected` when the server answers
``ERR 403 bad-token`` and with anything else (e.g. :class:`ServerUnavailable`)
when the server cannot be asked; the listener then answers the peer
``ERR 403 bad-token`` or ``ERR 503 server-unavailable``.

A session (:class:`PeerSession`) is in ``factory.sessions`` (key: the
case-folded peer name; ``factory.session_for(name)``) once open. Its API:

- ``session.peer_name``, ``session.state`` (:class:`SessionState`: handshaking,
  verifying, open, closing, closed), ``session.role``
- ``session.send_message(text) -> int`` (split into MSG lines), ``session.ping()``
- ``session.send_file(path, name=None) -> Transfer`` (raises OSError if unreadable)
- ``session.accept(t)``, ``session.reject(t, reason="declined")``,
  ``session.cancel(t)`` (either direction), where ``t`` is a Transfer or its id;
  ids are chosen by each sender, so one id may name a transfer each way: pass
  the Transfer (a bare id in ``cancel`` means ours if we send one by that id)
- ``session.close()`` (BYE), ``session.when_open() -> Deferred[PeerSession]``,
  ``session.when_closed() -> Deferred[None]``
- ``session.transfers``, ``session.incoming[id]``, ``session.outgoing[id]``

Transfers of all sessions are numbered by the factory, from 1:
``factory.transfers`` (by handle) and ``factory.transfer(handle)`` (KeyError
if unknown); ``transfer.session.accept(transfer)`` and so on act on one.

Events (``emit``, all on the reactor thread): ``PeerJoined(session)``,
``PeerLeft(session, reason)``, ``MessageReceived(session, text)``,
``FileOffered(session, transfer)`` (answer with accept/reject, now or later),
``TransferProgress(transfer)`` (at most 10/s per transfer),
``TransferEnded(transfer)`` and ``PeerNotice(session, text)`` (e.g. disk full).
An ``emit`` that raises is logged and closes the session it was about.
Names and texts arrive raw: escape them (``wire.escape_for_terminal``) to show them.

A :class:`Transfer` has ``handle``, ``id``, ``name``, ``size``, ``direction``
(:class:`Direction`), ``state`` (:class:`TransferState`), ``reason``,
``bytes_done``, ``offset``, ``rate``, ``path``, ``sha256`` and
``when_done() -> Deferred[Transfer]`` (fails with :class:`TransferFailed`).

Received files go to ``downloads_dir`` under a cleaned name, never replacing
anything (``name (1).ext``...); partial copies live in
``downloads_dir/.chatapp-partial/`` and are resumed from when the same peer
offers the same name and size again. A received file is fsynced, and so is
its folder once it has its name, before ``DONE`` goes to the sender; while
more than a few MiB wait for the disk, that session stops reading its socket
(other sessions and chat on them go on).
"""

from chatapp.peer.errors import (
    HandshakeFailed,
    PeerError,
    ServerUnavailable,
    TransferFailed,
    VerifyRejected,
)
from chatapp.peer.factory import PeerFactory
from chatapp.peer.partials import Partial
from chatapp.peer.session import PeerSession
from chatapp.peer.states import Direction, Role, SessionState, TransferState
from chatapp.peer.transfer import Transfer

__all__ = [
    "Direction",
    "HandshakeFailed",
    "Partial",
    "PeerError",
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
