"""The peer factory: what all peer sessions share, listening for peers and calling them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from chatapp.peer.downloads import DownloadDir
from chatapp.peer.events import PeerEvents
from chatapp.peer.receiver import IncomingTransfer
from chatapp.peer.sender import DEFAULT_CHUNK, MAX_CHUNK
from chatapp.peer.session import PeerSession, Role
from chatapp.peer.states import SessionState
from chatapp.peer.transfer import Transfer
from chatapp.wire import fold_name, valid_urlsafe, valid_username

log = Logger()

Verify = Callable[[str], "defer.Deferred[tuple[str, str]] | tuple[str, str]"]

HANDSHAKE_TIMEOUT = 30.0
# A DATA chunk (at most 1 MiB) must arrive whole within this time: about 17 KiB/s at the largest chunk.
DATA_TIMEOUT = 60.0
MAX_HANDSHAKES = 8
GiB = 1024**3


class PeerFactory(ServerFactory):
    """Builds :class:`PeerSession` for both roles and keeps the open ones in ``sessions``.

    ``auto_accept`` is ``False`` (the user decides every offer with
    ``session.accept`` / ``session.reject``), ``True`` (scripts), or a function
    of the offered :class:`Transfer` returning whether to accept it at once.

    ``verify(token)`` asks our server ``VERIFY <token>``: it returns (or fires
    with) ``(requester_name, proof)``, or fails with ``VerifyRejected`` (the
    server said no) or anything else (the server could not be asked).
    """

    def __init__(
        self,
        me: str,
        verify: Verify,
        downloads_dir: str,
        events: PeerEvents,
        reactor: Any,
        *,
        max_file_size: int = 64 * GiB,
        auto_accept: bool | Callable[[Transfer], bool] = False,
        chunk_size: int = DEFAULT_CHUNK,
        max_open_offers: int = 16,
        max_partial_bytes: int = 16 * GiB,
        max_handshakes: int = MAX_HANDSHAKES,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        data_timeout: float = DATA_TIMEOUT,
    ) -> None:
        if not valid_username(me):
            raise ValueError("not a user name")
        if not 1 <= chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK}")
        self.me = me
        self.verify = verify
        self.downloads = DownloadDir(downloads_dir, max_partial_bytes)
        self.events = events
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.max_file_size = max_file_size
        self.auto_accept = auto_accept
        self.chunk_size = chunk_size
        self.max_open_offers = max_open_offers
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self.data_timeout = data_timeout
        self.sessions: dict[str, PeerSession] = {}  # open sessions, by case-folded peer name
        self.ports: list[IListeningPort] = []
        self._handshaking: set[PeerSession] = set()  # listener sessions before WELCOME
        self._live: set[PeerSession] = set()  # every connected session, any role and state

    # -- listening and calling ------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> PeerSession:  # type: ignore[override]
        return PeerSession(self, Role.LISTENER)

    def listen(self, endpoint: str = "tcp:0") -> defer.Deferred[IListeningPort]:
        """Listen for peers on a server endpoint string (default: any free TCP port, all interfaces)."""
        d: defer.Deferred[IListeningPort] = serverFromString(self.reactor, endpoint).listen(self)

        def listening(port: IListeningPort) -> IListeningPort:
            self.ports.append(port)
            return port

        d.addCallback(listening)
        return d

    def connect(
        self, target: str, host: str, port: int, token: str, proof: str, timeout: float = HANDSHAKE_TIMEOUT
    ) -> defer.Deferred[PeerSession]:
        """Call ``target`` at host:port with the token and proof of ``OK CONNECT``.

        Fires with the open session, or fails with ``HandshakeFailed`` (the
        peer refused or did not prove to be ``target``) or a connection error.
        """
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=timeout)
        return self.connect_endpoint(endpoint, target, token, proof)

    def connect_endpoint(
        self, endpoint: IStreamClientEndpoint, target: str, token: str, proof: str
    ) -> defer.Deferred[PeerSession]:
        """Like :meth:`connect` over any client endpoint (e.g. ``clientFromString``, TLS, or a test double)."""
        if not valid_username(target) or not valid_urlsafe(token) or not valid_urlsafe(proof):
            raise ValueError("target, token or proof is malformed")
        session = PeerSession(self, Role.CONNECTOR, target, token, proof)
        d = connectProtocol(endpoint, session)
        d.addCallback(lambda _: session.when_open())
        return d

    def stop(self) -> defer.Deferred[None]:
        """Stop listening and close every session (BYE to the open ones)."""
        for session in list(self._live):
            session.close()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports]).addCallback(lambda _: None)

    @property
    def connections(self) -> frozenset[PeerSession]:
        """Every connected session, handshaking ones included (``sessions`` holds only the open ones)."""
        return frozenset(self._live)

    def session_for(self, name: str) -> PeerSession | None:
        """The open session with user ``name`` (any case), if there is one."""
        return self.sessions.get(fold_name(name))

    # -- called by sessions -----------------------------------------------------

    def should_accept(self, transfer: Transfer) -> bool:
        """The auto-accept policy: ``True``/``False`` for all offers, or a function of the offer."""
        policy = self.auto_accept
        if callable(policy):
            try:
                return bool(policy(transfer))
            except Exception:
                log.failure("the auto-accept policy failed")
                return False
        return bool(policy)

    def session_connected(self, session: PeerSession) -> None:
        self._live.add(session)

    def handshake_started(self, session: PeerSession) -> bool:
        if len(self._handshaking) >= self.max_handshakes:
            return False
        self._handshaking.add(session)
        return True

    def session_opened(self, session: PeerSession) -> None:
        self._handshaking.discard(session)
        assert session.peer_name is not None
        key = fold_name(session.peer_name)
        session.opened_at = self.clock.seconds()
        old = self.sessions.get(key)
        if old is not None and old is not session and self._keep_old_on_crossing(old, session):
            log.info("both sides dialled at once: keeping the connection the other side keeps too")
            session.replace()
            return
        self.sessions[key] = session
        if old is not None and old is not session:
            log.info("a new session replaces the one with the same peer")
            old.replace()
            return  # the chat goes on: the user sees no leave and no second join
        self._emit("peer_joined", session)

    def _keep_old_on_crossing(self, old: PeerSession, new: PeerSession) -> bool:
        """True when two users dialled each other at once and ``old`` is the one both sides keep.

        Each side then holds one connection it dialled and one it accepted.
        Replacing the older on both sides would close both; instead both keep
        the one dialled by the smaller (case-folded) name.
        """
        if old.role is new.role or old.opened_at is None:
            return False
        if self.clock.seconds() - old.opened_at > self.handshake_timeout:
            return False  # not a crossing: a peer calling again after a drop we did not notice

        def dialler(session: PeerSession) -> str:
            assert session.peer_name is not None
            return fold_name(self.me if session.role is Role.CONNECTOR else session.peer_name)

        return dialler(old) < dialler(new)

    def session_closed(self, session: PeerSession, was: SessionState) -> None:
        self._handshaking.discard(session)
        self._live.discard(session)
        if was is SessionState.OPEN:
            assert session.peer_name is not None
            key = fold_name(session.peer_name)
            if self.sessions.get(key) is session:  # not one replaced by a newer session
                del self.sessions[key]
                self._emit("peer_left", session, session.close_reason)

    def partial_in_use(self, path: str) -> bool:
        for session in self.sessions.values():
            for transfer in session.incoming.values():
                if transfer.partial == path and not transfer.finished:
                    return True
        return False

    def prune_partials(self) -> None:
        in_use = {
            t.partial
            for s in self.sessions.values()
            for t in s.incoming.values()
            if isinstance(t, IncomingTransfer) and not t.finished
        }
        self.downloads.prune(in_use)

    def _emit(self, name: str, *args: Any) -> None:
        try:
            getattr(self.events, name)(*args)
        except Exception:
            log.failure("event handler {name} failed", name=name)
