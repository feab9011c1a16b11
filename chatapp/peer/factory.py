"""The peer factory: what all peer sessions share, listening for peers and calling them."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.events import EventSink, KeyRefused, PeerJoined, PeerLeft
from chatapp.peer.backlog import LIMIT, DiskBacklog
from chatapp.peer.contacts import Contacts
from chatapp.peer.downloads import DownloadDir
from chatapp.peer.hashing import hash_file_prefix
from chatapp.peer.partials import Partial
from chatapp.peer.receiver import MIN_PROGRESS, PROGRESS_WINDOW
from chatapp.peer.sender import DEFAULT_CHUNK, MAX_CHUNK
from chatapp.peer.session import WORK_BUDGET, PeerSession
from chatapp.peer.states import Role, SessionState, TransferState
from chatapp.peer.transfer import Transfer
from chatapp.runner import Runner, ThreadRunner
from chatapp.tls.contexts import PeerConnectorTLS, PeerListenerTLS
from chatapp.tls.identity import Identity
from chatapp.tls.records import GatheringTLSFactory
from chatapp.tls.transports import peer_fingerprint
from chatapp.wire import fold_name, valid_urlsafe, valid_username

log = Logger()

# verify(token) -> (requester, proof, the requester's fingerprint as the server vouched for it)
Verify = Callable[[str], "defer.Deferred[tuple[str, str, str]] | tuple[str, str, str]"]

HANDSHAKE_TIMEOUT = 30.0
# A listener's peer must complete TLS and send HELLO within this: a silent connection frees its slot soon.
HELLO_TIMEOUT = 10.0
# A DATA chunk (at most 1 MiB) must arrive whole within this time: about 17 KiB/s at the largest chunk.
DATA_TIMEOUT = 60.0
MAX_HANDSHAKES = 8
# a contact that left before HELLO (most likely refusing our key) is said at most this often, for this many
UNHEARD_QUIET = 60.0
MAX_UNHEARD_TOLD = 64
# handshakes in progress from one source address: one stranger cannot take every slot
MAX_HANDSHAKES_PER_ADDRESS = 2
# incoming connections in total (any state); beyond it one idle for IDLE_DISPLACE is displaced, else the new is closed
MAX_SESSIONS = 64
# incoming connections from one source address (any state): a few accounts cannot take every slot
MAX_SESSIONS_PER_ADDRESS = 4
# our own calls (outgoing), counted apart: strangers filling the incoming slots never stop us calling out
MAX_OUTGOING = 64
# an open incoming session with no chat or file traffic (PING/PONG aside) for this long may be displaced
IDLE_DISPLACE = 300.0
# every this often an open session that heard nothing sends PING (a live peer answers PONG) ...
KEEPALIVE_INTERVAL = 300.0
# ... and one that heard nothing at all for this long is closed with BYE
SESSION_IDLE_TIMEOUT = 1800.0
# received files being written (accepted, not finished) across all sessions: each may hold a descriptor
MAX_OPEN_FILES = 64
# kept partial files (besides their total size): the oldest are deleted first
MAX_PARTIALS = 64
# finished transfers remembered (by handle, and per session by id); older ones are forgotten
MAX_FINISHED = 256
# stop() waits this long for sessions to close after BYE, then aborts their connections.
STOP_TIMEOUT = 5.0
DISK_THREADS = 2
# received bytes waiting for the disk across all transfers: past it, sessions taking more stop reading
DISK_BACKLOG_LIMIT = LIMIT
# kept partials' prefixes hashed at once, all peers (each peer: one at a time)
MAX_PREFIX_HASHES = 2
GiB = 1024**3


def peer_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """Where a peer listens, as ``OK CONNECT`` said: an IP address (the usual case) is dialled at once;
    only a name is resolved (``HostnameEndpoint`` asks getaddrinfo in a thread even for an address, a
    thread hop on every chat opened)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


class PeerFactory(ServerFactory):
    """Builds :class:`PeerSession` for both roles and keeps the open ones in ``sessions``.

    ``auto_accept`` is ``False`` (the user decides every offer with
    ``session.accept`` / ``session.reject``), ``True`` (scripts), or a function
    of the offered :class:`Transfer` returning whether to accept it at once.

    Every peer link is TLS 1.3 (PROTOCOL.md 4.3): ``identity`` is our key and
    certificate for this server and account; ``contacts`` remembers the keys of
    the users we chatted with (None: remember nothing, as in tests of other
    things).

    ``verify(token)`` asks our server ``VERIFY <token>``: it returns (or fires
    with) ``(requester_name, proof, fingerprint)``, or fails with ``VerifyRejected`` (the
    server said no) or anything else (the server could not be asked).

    ``emit`` gets every event (:mod:`chatapp.events`) on the reactor thread;
    if it raises, the session it was about is logged and closed. ``runner``
    runs the blocking disk work of received files (writes, fsync, placing);
    by default a pool of two threads of ``reactor``, stopped by :meth:`stop`.
    Tests pass ``chatapp.runner.InlineRunner()``.
    """

    def __init__(
        self,
        me: str,
        verify: Verify,
        downloads_dir: str,
        emit: EventSink,
        reactor: Any,
        *,
        identity: Identity,
        contacts: Contacts | None = None,
        runner: Runner | None = None,
        max_file_size: int = 64 * GiB,
        auto_accept: bool | Callable[[Transfer], bool] = False,
        chunk_size: int = DEFAULT_CHUNK,
        max_open_offers: int = 16,
        max_partial_bytes: int = 16 * GiB,
        max_handshakes: int = MAX_HANDSHAKES,
        max_handshakes_per_address: int = MAX_HANDSHAKES_PER_ADDRESS,
        max_sessions: int = MAX_SESSIONS,
        max_sessions_per_address: int = MAX_SESSIONS_PER_ADDRESS,
        max_outgoing: int = MAX_OUTGOING,
        idle_displace: float = IDLE_DISPLACE,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        session_idle_timeout: float = SESSION_IDLE_TIMEOUT,
        work_budget: int = WORK_BUDGET,
        max_open_files: int = MAX_OPEN_FILES,
        max_partials: int = MAX_PARTIALS,
        max_finished: int = MAX_FINISHED,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        hello_timeout: float = HELLO_TIMEOUT,
        data_timeout: float = DATA_TIMEOUT,
        progress_window: float = PROGRESS_WINDOW,
        min_progress: int = MIN_PROGRESS,
        max_open_files_per_peer: int | None = None,
        disk_backlog_limit: int = DISK_BACKLOG_LIMIT,
    ) -> None:
        if not valid_username(me):
            raise ValueError("not a user name")
        if not 1 <= chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK}")
        self.me = me
        self.verify = verify
        self.identity = identity
        self.contacts = contacts
        # Both OpenSSL contexts are built once here and never changed (pyOpenSSL refuses changes after use).
        self._listener_tls = PeerListenerTLS(identity)
        self._connector_tls = PeerConnectorTLS(identity)
        # The peer's key after the TLS handshake; unit tests of the line protocol without TLS replace it.
        self.peer_key: Callable[[PeerSession], str] = _tls_peer_key
        self.downloads = DownloadDir(downloads_dir, max_partial_bytes, max_partials)
        self.emit = emit
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.max_file_size = max_file_size
        self.auto_accept = auto_accept
        self.chunk_size = chunk_size
        self.max_open_offers = max_open_offers
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        self.max_sessions = max_sessions
        self.max_sessions_per_address = max_sessions_per_address
        self.max_outgoing = max_outgoing
        self.idle_displace = idle_displace
        self.keepalive_interval = keepalive_interval
        self.session_idle_timeout = session_idle_timeout
        self.work_budget = work_budget
        self.max_open_files = max_open_files
        self.max_finished = max_finished
        self.handshake_timeout = handshake_timeout
        self.hello_timeout = hello_timeout
        self.data_timeout = data_timeout
        self.progress_window = progress_window
        self.min_progress = min_progress
        # one peer's share of the open files: a quarter of them by default, so others still get theirs
        self.max_open_files_per_peer = max_open_files_per_peer or max(1, max_open_files // 4)
        self.stop_timeout = STOP_TIMEOUT
        # received bytes waiting for the disk, all transfers together (each also has its own mark)
        self.disk_backlog = DiskBacklog(disk_backlog_limit, on_over=self._disk_backlog_over)
        self._runner = runner
        self._own_runner: ThreadRunner | None = None  # made on first use when no runner was given
        # transfers of every session by handle: all unfinished ones and the last max_finished finished
        self.transfers: dict[int, Transfer] = {}
        self._finished: deque[int] = deque()  # handles of finished transfers, oldest first
        self.receiving: dict[str, Transfer] = {}  # partial path -> the unfinished transfer that writes it
        # partial path -> fires when the writer of a stopped transfer closed it (one per open file at most)
        self.closing_partials: dict[str, defer.Deferred[None]] = {}
        self._partial_offers: dict[str, tuple[str, str, int]] = {}  # partial path -> (peer, name, size), bounded
        self.limits_hit: dict[str, int] = {}  # limit name -> times hit (keys are ours, not an outsider's)
        self._handles = itertools.count(1)
        # partial path -> ((size, mtime_ns), SHA-256 of its bytes): a repeated offer costs no hashing; bounded
        self._prefixes: dict[str, tuple[tuple[int, int], Any]] = {}
        # hashes of kept partials under way, by (path, (size, mtime), length): who waits for each
        self._prefix_jobs: dict[tuple[str, tuple[int, int], int], list[defer.Deferred[Any]]] = {}
        self._hashing = defer.DeferredSemaphore(MAX_PREFIX_HASHES)
        self.sessions: dict[str, PeerSession] = {}  # open sessions, by case-folded peer name
        self.ports: list[IListeningPort] = []
        # listener sessions before WELCOME, oldest first (a dict keeps the order: the oldest is displaced first)
        self._handshaking: dict[PeerSession, None] = {}
        self._unheard_told: dict[str, float] = {}  # contact -> when we last said it left before HELLO
        self._handshakes_from: dict[str, int] = {}  # source address -> handshakes in progress (<= max_handshakes)
        self._live: set[PeerSession] = set()  # every connected session, any role and state

    # -- listening and calling ------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> PeerSession:  # type: ignore[override]
        return PeerSession(self, Role.LISTENER)

    def listen(self, endpoint: str = "tcp:0") -> defer.Deferred[IListeningPort]:
        """Listen for peers on a plain server endpoint string (default: any free TCP port, all interfaces).

        Every connection is TLS from its first byte, a client certificate required: the endpoint's
        factory is wrapped, so any endpoint kind works.
        """
        tls = GatheringTLSFactory(self._listener_tls, False, self, self.reactor)
        d: defer.Deferred[IListeningPort] = serverFromString(self.reactor, endpoint).listen(tls)

        def listening(port: IListeningPort) -> IListeningPort:
            self.ports.append(port)
            return port

        d.addCallback(listening)
        return d

    def connect(
        self,
        target: str,
        host: str,
        port: int,
        token: str,
        proof: str,
        fingerprint: str | None,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> defer.Deferred[PeerSession]:
        """Call ``target`` at host:port with the token, proof and fingerprint of ``OK CONNECT``.

        Fires with the open session, or fails with ``HandshakeFailed`` (the
        peer refused, did not prove to be ``target``, or showed another key
        than ``fingerprint``: ``bad-key``, or than the one remembered:
        ``key-changed``) or a connection error.
        """
        endpoint = peer_endpoint(self.reactor, host, port, timeout)
        return self.connect_endpoint(endpoint, target, token, proof, fingerprint)

    def connect_endpoint(
        self, endpoint: IStreamClientEndpoint, target: str, token: str, proof: str, fingerprint: str | None
    ) -> defer.Deferred[PeerSession]:
        """Like :meth:`connect` over any plain client endpoint; TLS is added here."""
        if not valid_username(target) or not valid_urlsafe(token) or not valid_urlsafe(proof):
            raise ValueError("target, token or proof is malformed")
        session = PeerSession(self, Role.CONNECTOR, target, token, proof, fingerprint)
        tls = GatheringTLSFactory(self._connector_tls, True, _Only(session), self.reactor)
        connected: defer.Deferred[Any] = endpoint.connect(tls)
        return connected.addCallback(lambda _: session.when_open())

    def stop(self) -> defer.Deferred[None]:
        """Stop listening and close every session (BYE to the open ones).

        Fires when every port has stopped and every connection is gone; a
        connection still there after ``stop_timeout`` seconds is aborted.
        """
        sessions = list(self._live)
        closed = [session.when_closed() for session in sessions]
        for session in sessions:
            session.close()
        ports, self.ports = self.ports, []
        stopped = [defer.maybeDeferred(p.stopListening) for p in ports]
        abort = self.clock.callLater(self.stop_timeout, self._abort, sessions) if closed else None

        def all_closed(result: object) -> None:
            if abort is not None and abort.active():
                abort.cancel()
            if self._own_runner is not None:
                runner, self._own_runner = self._own_runner, None
                runner.stop()  # waits for a write in flight: files are closed whole

        waits: list[defer.Deferred[Any]] = [*stopped, *closed]
        return defer.gatherResults(waits, consumeErrors=True).addCallback(all_closed)

    def _abort(self, sessions: list[PeerSession]) -> None:
        for session in sessions:
            transport: Any = session.transport  # TCP and TLS transports are ITCPTransport: they abort
            if transport is not None and session.state is not SessionState.CLOSED:
                log.info("a peer connection did not close in time: aborting it")
                transport.abortConnection()

    def transfer(self, handle: int) -> Transfer:
        """The transfer numbered ``handle`` (any session, either direction); raises KeyError."""
        return self.transfers[handle]

    def new_handle(self) -> int:
        return next(self._handles)

    def disk(self) -> Runner:
        """Where received files are written: the given runner, or our own thread pool."""
        if self._runner is not None:
            return self._runner
        if self._own_runner is None:
            self._own_runner = ThreadRunner(self.reactor, DISK_THREADS, "chatapp-peer-disk")
            self._own_runner.start()
        return self._own_runner

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

    def _disk_backlog_over(self) -> None:
        self.limit_hit(
            "peer-disk-backlog",
            f"received files wait for the disk: over {self.disk_backlog.limit // 2**20} MiB in all;"
            " sessions taking more stop reading until it falls",
        )

    def limit_hit(self, name: str, text: str) -> None:
        """A bound held something off: log it the first time only (an attacker must not fill the log)."""
        count = self.limits_hit.get(name, 0)
        self.limits_hit[name] = count + 1
        if count == 0:
            log.warn("limit {limit} reached: {text} (logged once; counted in limits_hit)", limit=name, text=text)

    def session_connected(self, session: PeerSession, address: str) -> bool:
        """Count a new connection from ``address``; False if it must be closed.

        Our own calls count against ``max_outgoing`` only. Incoming ones are
        bounded per address and in total; when the total is full, the open
        incoming session idle the longest is displaced if it has been idle for
        ``idle_displace`` seconds, else the new connection is refused.
        """
        if session.role is Role.CONNECTOR:
            if sum(1 for s in self._live if s.role is Role.CONNECTOR) >= self.max_outgoing:
                self.limit_hit("peer-outgoing", "too many calls of ours at once: refusing new ones")
                return False
            self._live.add(session)
            return True
        incoming = [s for s in self._live if s.role is Role.LISTENER and s.live]
        if sum(1 for s in incoming if s.source_key == address) >= self.max_sessions_per_address:
            self.limit_hit("peer-sessions-per-address", "too many peer connections from one address: refusing")
            return False
        if len(incoming) >= self.max_sessions and not self._displace_idle(incoming):
            self.limit_hit("peer-sessions", "too many peer connections: refusing new ones")
            return False
        self._live.add(session)
        return True

    def _displace_idle(self, incoming: list[PeerSession]) -> bool:
        """Close the open incoming session idle the longest, if idle for ``idle_displace``; False if none."""
        idle = [s for s in incoming if s.state is SessionState.OPEN]
        if not idle:
            return False
        oldest = min(idle, key=lambda s: s.last_active)
        if self.clock.seconds() - oldest.last_active < self.idle_displace:
            return False
        self.limit_hit("peer-sessions-displaced", "peer sessions full: the one idle the longest is displaced")
        oldest.close("displaced")
        return True

    def handshake_started(self, session: PeerSession, address: str) -> bool:
        """Take a handshake slot for a listener session from ``address``; False if none can be had.

        When the slots (in total, or of this address) are full, the oldest connection that has not
        sent HELLO yet (TLS unfinished, or silent) is displaced: idle sockets cannot hold the slots
        against a real peer. One already waiting for our server's VERIFY answer is never displaced.
        """
        if self._handshakes_from.get(address, 0) >= self.max_handshakes_per_address:
            if not self._displace_handshake(address):
                self.limit_hit("peer-handshakes-per-address", "too many handshakes from one address: refusing new ones")
                return False
        if len(self._handshaking) >= self.max_handshakes and not self._displace_handshake(None):
            self.limit_hit("peer-handshakes", "too many peer handshakes in progress: refusing new ones")
            return False
        self._handshaking[session] = None
        session.handshake_key = address
        self._handshakes_from[address] = self._handshakes_from.get(address, 0) + 1
        return True

    def _displace_handshake(self, address: str | None) -> bool:
        """Close the oldest listener handshake before HELLO (from ``address``, or any); False if none.

        One still in its TLS handshake goes first: a real peer says HELLO moments after its TLS handshake,
        while a flood of half handshakes from many addresses never gets that far, and would otherwise
        push out a real peer in the few milliseconds between its TLS handshake and its HELLO.
        """
        silent = [
            old
            for old in self._handshaking
            if old.state is SessionState.HANDSHAKING and (address is None or old.handshake_key == address)
        ]
        if not silent:
            return False
        old = next((session for session in silent if not session.tls_done), silent[0])
        self.limit_hit("peer-handshakes-displaced", "handshake slots full: the oldest silent one is displaced")
        old.lose("displaced", abort=True)
        return True

    def left_unheard(self, session: PeerSession) -> None:
        """A caller that finished TLS closed before HELLO. If its key is a contact's, that contact's client
        most likely refuses our key (v2 has it close without a word): tell the user, once a minute at most.
        Only the contact can cause it: the TLS handshake proved it holds that key."""
        if self.contacts is None or session.tls_key is None:
            return
        user = self.contacts.holder(session.tls_key)
        if user is None:
            return
        now = self.clock.seconds()
        last = self._unheard_told.get(user)
        if last is not None and now - last < UNHEARD_QUIET:
            return
        self._unheard_told.pop(user, None)
        self._unheard_told[user] = now
        while len(self._unheard_told) > MAX_UNHEARD_TOLD:
            del self._unheard_told[next(iter(self._unheard_told))]
        log.info("{user} connected and left before HELLO: most likely it refuses our key", user=user)
        try:
            self.emit(KeyRefused(user))
        except Exception:
            log.failure("the application failed on KeyRefused")

    def session_closing(self, session: PeerSession) -> None:
        """We close ``session`` (a refusal, BYE, displaced): it holds no handshake slot from now on, however
        long its connection takes to go (the TLS layer aborts it after ``records.CLOSE_WAIT`` at most)."""
        self._handshake_ended(session)

    def _handshake_ended(self, session: PeerSession) -> None:
        if session not in self._handshaking:
            return
        del self._handshaking[session]
        address = session.handshake_key
        left = self._handshakes_from.get(address, 0) - 1
        if left > 0:
            self._handshakes_from[address] = left
        else:
            self._handshakes_from.pop(address, None)

    def add_transfer(self, transfer: Transfer) -> None:
        self.transfers[transfer.handle] = transfer

    def transfer_finished(self, transfer: Transfer) -> None:
        """Remember the last ``max_finished`` finished transfers; forget older ones (here and in their session)."""
        partial = getattr(transfer, "partial", None)
        if partial is not None and self.receiving.get(partial) is transfer:
            del self.receiving[partial]
        self._finished.append(transfer.handle)
        while len(self._finished) > self.max_finished:
            old = self.transfers.pop(self._finished.popleft(), None)
            if old is not None:
                old.session.forget(old)

    def session_opened(self, session: PeerSession) -> None:
        self._handshake_ended(session)
        assert session.peer_name is not None
        key = fold_name(session.peer_name)
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
        session.emit(PeerJoined(session))

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

    def session_closed(self, session: PeerSession) -> None:
        self._handshake_ended(session)
        self._live.discard(session)
        key = fold_name(session.peer_name or "")
        if self.sessions.get(key) is session:  # it was open, and not replaced by a newer session
            del self.sessions[key]
            try:
                self.emit(PeerLeft(session, session.close_reason))
            except Exception:
                log.failure("the application failed on PeerLeft")

    def files_of(self, peer: str | None) -> int:
        """Transfers from ``peer`` (any of its sessions) that hold or may hold an open file."""
        folded = fold_name(peer or "")
        return sum(1 for t in self.receiving.values() if fold_name(t.session.peer_name or "") == folded)

    def files_from(self, source_key: str) -> int:
        """Transfers over connections from ``source_key`` (an address, or an IPv6 /64; any account) that
        hold or may hold an open file."""
        return sum(1 for t in self.receiving.values() if t.session.source_key == source_key)

    def hash_source(self, source: IO[bytes], length: int) -> defer.Deferred[Any]:
        """The SHA-256 object of the first ``length`` bytes of ``source``, a file we send (a resume).

        Read through a duplicate descriptor on the disk runner, under the same bound as
        :meth:`prefix_hash`; ``source`` is then positioned at ``length``. Fails with ``ShortFile`` or the
        ``OSError`` of a read (``ValueError`` if ``source`` was closed meanwhile). Cancelling before the
        read starts reads nothing; after, the read runs to its end and is dropped.
        """

        if length == 0:
            return defer.succeed(hashlib.sha256())  # a send from the start: nothing to read

        def run() -> defer.Deferred[Any]:
            fd = os.dup(source.fileno())
            os.lseek(fd, 0, os.SEEK_SET)
            return self.disk().run(hash_file_prefix, fd, length)

        def positioned(hasher: Any) -> Any:
            source.seek(length)  # the descriptor's offset moved under the file object: set both
            return hasher

        return self._hashing.run(run).addCallback(positioned)

    def prefix_hash(self, path: str, length: int) -> defer.Deferred[Any]:
        """The SHA-256 (a hash object, to go on updating) of the first ``length`` bytes of the kept partial.

        Hashed on the disk runner (never the reactor thread), at most MAX_PREFIX_HASHES at once, and
        remembered by (size, mtime_ns): any append changes both, so a stale entry is never used; a kept
        partial is not written, so the same offer again costs nothing.
        Fails with the OSError of opening or reading it.

        One hash of a partial (as it is now) runs at a time, whoever asks; cancelling the Deferred
        returned here only stops waiting for it. The hash itself runs to its end, holds its slot until
        then, and is remembered: an offer cancelled at once, again and again, cannot start hash after
        hash, nor free the slot while the read goes on in its thread.
        """
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError as e:
            return defer.fail(e)
        stamp = (info.st_size, info.st_mtime_ns)
        cached = self._prefixes.get(path)
        if cached is not None and cached[0] == stamp and info.st_size == length:
            return defer.succeed(cached[1].copy())
        key = (path, stamp, length)
        mine: defer.Deferred[Any] = defer.Deferred()
        waiters = self._prefix_jobs.get(key)
        if waiters is not None:
            waiters[:] = [w for w in waiters if not w.called]  # those who stopped waiting are dropped
            waiters.append(mine)
        else:
            waiters = self._prefix_jobs[key] = [mine]  # before the job starts: an inline runner ends it at once

            def run() -> defer.Deferred[Any]:
                fd = self.downloads.open_read(path)
                return self.disk().run(hash_file_prefix, fd, length)

            def finished(result: Any) -> None:
                done = self._prefix_jobs.pop(key, [])
                if not isinstance(result, Failure) and info.st_size == length:
                    self._remember_prefix(path, stamp, result)
                for waiter in done:
                    if waiter.called:
                        continue
                    if isinstance(result, Failure):
                        waiter.errback(result)
                    else:
                        waiter.callback(result.copy())

            self._hashing.run(run).addBoth(finished)
        return mine

    def remember_prefix(self, path: str, hasher: Any) -> None:
        """``hasher`` covers every byte of the closed partial at ``path``: the next :meth:`prefix_hash` of it
        is free."""
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError:
            return  # gone already: nothing to resume
        self._remember_prefix(path, (info.st_size, info.st_mtime_ns), hasher)

    def _remember_prefix(self, path: str, stamp: tuple[int, int], hasher: Any) -> None:
        self._prefixes.pop(path, None)
        self._prefixes[path] = (stamp, hasher.copy())
        if len(self._prefixes) > self.downloads.max_partials:
            # entries of partials deleted since go first: else partials made and deleted on purpose
            # would push out a large one's entry, and the next offer of it would read it all again
            for gone in [p for p in self._prefixes if not os.path.lexists(p)]:
                del self._prefixes[gone]
        while len(self._prefixes) > self.downloads.max_partials + self.max_open_files:
            del self._prefixes[next(iter(self._prefixes))]

    def partial_in_use(self, path: str) -> bool:
        return path in self.receiving

    def _writing(self, path: str) -> bool:
        """A transfer is taking (or about to take) bytes into the partial at ``path``; an offer that waits
        for an answer is not: the partial there was kept from an earlier try."""
        transfer = self.receiving.get(path)
        return transfer is not None and transfer.state is not TransferState.OFFERED

    def partials(self) -> list[Partial]:
        """The kept partial copies (not those being written now), oldest first."""
        found = []
        for path, kept, modified in self.downloads.listing():
            if self._writing(path):
                continue
            peer, name, size = self._partial_offers.get(path, ("", "", 0))
            found.append(Partial(peer, name, size, kept, modified, path))
        return sorted(found, key=lambda p: p.modified)

    def discard_partials(self, which: Iterable[Partial] | None = None) -> int:
        """Delete kept partials (``None``: all of them, those being written excepted); return how many."""
        chosen = self.partials() if which is None else list(which)
        removed = 0
        for partial in chosen:
            if self._writing(partial.path) or os.path.dirname(partial.path) != self.downloads.partial_root:
                continue
            if self.downloads.remove(partial.path):
                removed += 1
            self._partial_offers.pop(partial.path, None)
        return removed

    def remember_offer(self, path: str, peer: str, name: str, size: int) -> None:
        """What offer a partial belongs to (its file name is a hash), for :meth:`partials`; bounded."""
        self._partial_offers.pop(path, None)
        self._partial_offers[path] = (peer, name, size)
        while len(self._partial_offers) > 4 * self.downloads.max_partials + self.max_open_files:
            del self._partial_offers[next(iter(self._partial_offers))]

    def partial_closing(self, path: str, closed: defer.Deferred[None]) -> None:
        """A stopped transfer's writer still writes ``path``: a resume of it waits for ``closed``."""
        self.closing_partials[path] = closed

        def forget(result: object) -> object:
            if self.closing_partials.get(path) is closed:
                del self.closing_partials[path]
            return result

        closed.addBoth(forget)

    def prune_partials(self) -> None:
        self.downloads.prune(set(self.receiving))


class _Only(Factory):
    """The factory of one connection we make: it builds the session made for that call."""

    def __init__(self, session: PeerSession) -> None:
        self.session = session

    def buildProtocol(self, addr: IAddress) -> PeerSession:  # type: ignore[override]
        return self.session


def _tls_peer_key(session: PeerSession) -> str:
    return peer_fingerprint(session.transport)
