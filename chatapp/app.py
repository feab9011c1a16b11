"""The client core in one object: a server connection and a peer factory, glued as a user needs them.

:class:`ChatClient` logs in, listens for peers and tells the server where,
opens chats (``CONNECT`` on the server, then the peer handshake), and finds
transfers by their handles (``/accept 3``).  It has no user interface: it
hands one ``emit`` (:data:`chatapp.events.EventSink`) to both halves, and
every event arrives there as a :mod:`chatapp.events` object; the console
(``chatapp.cli``) and the tests are two such sinks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.client import (
    BadToken,
    ChatClientError,
    ServerConnection,
    WhoEntry,
)
from chatapp.events import (
    EventSink,
    ignore,
)
from chatapp.peer import (
    Direction,
    Partial,
    PeerFactory,
    PeerSession,
    ServerUnavailable,
    Transfer,
    VerifyRejected,
)
from chatapp.peer.contacts import Contacts
from chatapp.runner import ReactorPool
from chatapp.tls.identity import Identity
from chatapp.tls.known_hosts import KnownPeers
from chatapp.tls.paths import known_peers_path

log = Logger()

GiB = 1024**3


class UnknownTransfer(ChatClientError):
    """No transfer has that number."""


class NotChatting(ChatClientError):
    """There is no open chat with that user."""


class ChatClient:
    """One logged-in user: their server connection, their peer listener and sessions, their transfers."""

    def __init__(
        self,
        reactor: Any,
        server: str,
        emit: EventSink = ignore,
        *,
        downloads: str = os.path.join("~", "Downloads", "chatapp"),
        listen: str | None = "tcp:0",
        max_file_size: int = 64 * GiB,
        auto_accept: bool = False,
        reconnect_delay: float = 1.0,
        chunk_size: int | None = None,
        accept_changed_keys: bool = False,
        server_options: dict[str, Any] | None = None,
    ) -> None:
        """``server_options`` go to :class:`ServerConnection` (the server link's TLS: ``server_fingerprint``,
        ``trust_on_first_use``, ``confirm``, ``no_tls``, ...)."""
        self.reactor = reactor
        self.emit = emit
        self.downloads = os.path.expanduser(downloads)
        self.listen_endpoint = listen
        self.max_file_size = max_file_size
        self.auto_accept = auto_accept
        self.chunk_size = chunk_size
        self.accept_changed_keys = accept_changed_keys
        self.contacts: Contacts | None = None
        self.server = ServerConnection(reactor, server, emit, initial_delay=reconnect_delay, **(server_options or {}))
        self.peers: PeerFactory | None = None
        self.port: IListeningPort | None = None
        self.published: tuple[str, int] | None = None  # where the server tells others we listen
        self.user: str | None = None
        self.signed_up = False  # start() made the account (a signup)
        self._dialing: dict[str, list[defer.Deferred[PeerSession]]] = {}  # callers waiting on a dial

    # -- life -----------------------------------------------------------------

    async def start(self, user: str, password: str, signup: bool = False) -> str:
        """Connect, sign up or log in, and listen for peers if configured; returns the name as signed up."""
        await self.server.open()
        if signup:
            name = await self.server.signup(user, password)
        else:
            name = await self.server.login(user, password)
        self.user = name
        self.signed_up = signup  # a new account: nobody has chatted with its key yet
        os.makedirs(self.downloads, exist_ok=True)
        identity = self.server.identity
        assert identity is not None  # the server link made or loaded it at login, before KEY
        # The known-peers file (flock, rewrite, fsync) goes to the reactor's own thread pool: it
        # stops with the reactor, so a client nobody stopped never keeps the process alive.
        runner = ReactorPool(self.reactor)
        known = KnownPeers(known_peers_path())
        self.contacts = Contacts(
            known, self.server.files_host, self.server.files_port, runner, accept_changed=self.accept_changed_keys
        )
        await self.contacts.load()
        options: dict[str, Any] = {"max_file_size": self.max_file_size, "auto_accept": self.auto_accept}
        if self.chunk_size is not None:
            options["chunk_size"] = self.chunk_size
        self.peers = PeerFactory(
            name,
            self._verify,
            self.downloads,
            self.emit,
            self.reactor,
            identity=identity,
            contacts=self.contacts,
            **options,
        )
        if self.listen_endpoint is not None:
            await self.set_listening(True)
        return name

    async def relogin(self, password: str) -> tuple[str, tuple[str, int] | None]:
        """Log in again as the same user after the server let us go (logged in elsewhere, gave up).

        Chats and transfers with peers are untouched; the listening port is
        published again.  Returns (name, where the server says we listen).
        """
        if self.user is None:
            raise ChatClientError("not logged in yet")
        if self.server.logged_in:
            raise ChatClientError("already logged in to the server")
        name = await self.server.login(self.user, password)
        listening = None
        if self.port is not None:
            port_number: int = self.port.getHost().port  # type: ignore[attr-defined]
            listening = self.published = await self.server.listen(port_number)
        return name, listening

    def stop(self) -> defer.Deferred[None]:
        """BYE to every peer, stop listening and leave the server (QUIT); fires when all of that is done."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.peers is not None:
            await self.peers.stop()
            self.port = None
        if self.server.connected:
            try:
                await self.server.close()
            except ChatClientError:
                pass

    @property
    def listening(self) -> bool:
        return self.port is not None

    async def set_listening(self, on: bool) -> tuple[str, int] | None:
        """Start or stop accepting chats; returns (host, port) as the server published it."""
        peers = self._peers()
        if on:
            if self.port is None:
                self.port = await peers.listen(self.listen_endpoint or "tcp:0")
            port_number: int = self.port.getHost().port  # type: ignore[attr-defined]
            self.published = await self.server.listen(port_number)
            return self.published
        self.published = None
        if self.port is not None:
            port, self.port = self.port, None
            if port in peers.ports:
                peers.ports.remove(port)
            await defer.maybeDeferred(port.stopListening)
        await self.server.unlisten()
        return None

    # -- asking the server ------------------------------------------------------

    async def who(self) -> list[WhoEntry]:
        return await self.server.who()

    async def passwd(self, current_password: str, new_password: str) -> None:
        await self.server.passwd(current_password, new_password)

    # -- chats ------------------------------------------------------------------

    def session(self, user: str) -> PeerSession | None:
        return self.peers.session_for(user) if self.peers is not None else None

    def sessions(self) -> list[PeerSession]:
        return list(self.peers.sessions.values()) if self.peers is not None else []

    async def chat(self, user: str) -> PeerSession:
        """The open chat with ``user``, opening it (server CONNECT, then the peer handshake) if needed."""
        peers = self._peers()
        existing = peers.session_for(user)
        if existing is not None:
            return existing
        key = user.lower()
        waiter: defer.Deferred[PeerSession] = defer.Deferred()
        waiting = self._dialing.get(key)
        if waiting is not None:  # a dial to this user is under way: share its outcome
            waiting.append(waiter)
            return await waiter
        self._dialing[key] = [waiter]

        def done(result: PeerSession | Failure) -> None:
            for each in self._dialing.pop(key, []):
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        dial = defer.ensureDeferred(self._dial(peers, user)).addBoth(done)
        dial.addErrback(lambda failure: log.failure("answering the callers of the dial to {user}", failure, user=user))
        return await waiter

    async def _dial(self, peers: PeerFactory, user: str) -> PeerSession:
        ticket = await self.server.connect(user)
        t = ticket
        return await peers.connect(t.user, t.host, t.port, t.token, t.proof, t.fingerprint)

    async def send_message(self, user: str, text: str) -> PeerSession:
        session = await self.chat(user)
        session.send_message(text)
        return session

    def close_chat(self, user: str) -> None:
        session = self.session(user)
        if session is None:
            raise NotChatting(f"no open chat with {user}")
        session.close()

    # -- keys -------------------------------------------------------------------

    @property
    def identity(self) -> Identity | None:
        """This account's identity on this server (made at the first login), for the peer link's TLS."""
        return self.server.identity

    @property
    def identity_made(self) -> Path | None:
        """The file of the identity key a login of this run made (the account's first on this server), else None.

        Contacts who chatted with this account before, from another installation, will see a changed key.
        """
        return self.server.identity_made

    def fingerprint(self, user: str | None = None) -> str | None:
        """Our own fingerprint (``user`` None), or the key remembered for contact ``user`` (None if none)."""
        if user is None:
            return self.identity.fingerprint if self.identity is not None else None
        return self.contacts.remembered(user) if self.contacts is not None else None

    def changed_key(self, user: str) -> tuple[str, str] | None:
        """``(remembered, offered)`` of the changed key last refused for ``user`` in this run, if any."""
        return self.contacts.refused(user) if self.contacts is not None else None

    async def trust(self, user: str) -> str:
        """Accept the changed key last refused for ``user`` (after the user compared it); returns it.

        Raises ``NothingToTrust`` (a ChatClientError) if no changed key of ``user`` was refused in this run.
        """
        if self.contacts is None:
            raise ChatClientError("not logged in yet")
        return await self.contacts.trust(user)

    # -- files ------------------------------------------------------------------

    async def send_file(self, user: str, path: str) -> int:
        """Offer ``path`` to ``user`` (opening the chat if needed); returns the transfer's handle."""
        session = await self.chat(user)
        transfer = session.send_file(path)
        return transfer.handle

    def transfer(self, handle: int) -> Transfer:
        try:
            return self._numbered()[handle]
        except KeyError:
            raise UnknownTransfer(f"no transfer number {handle} (see /transfers)") from None

    def transfers(self) -> list[Transfer]:
        """Every transfer of this run, by handle."""
        return [transfer for _, transfer in sorted(self._numbered().items())]

    def accept(self, handle: int) -> Transfer:
        transfer = self.transfer(handle)
        self._session_of(transfer).accept(transfer)
        return transfer

    def reject(self, handle: int) -> Transfer:
        transfer = self.transfer(handle)
        self._session_of(transfer).reject(transfer)
        return transfer

    def cancel(self, handle: int, discard: bool = False) -> int | None:
        """Stop transfer ``handle``; the bytes a receive keeps for a later resume (None: nothing kept).

        A receive's partial file stays unless ``discard``: the same offer
        again resumes from it.
        """
        transfer = self.transfer(handle)
        session = self._session_of(transfer)
        session.cancel(transfer, discard=discard)
        if transfer.direction is Direction.RECEIVE and not discard and transfer.bytes_done > 0:
            return transfer.bytes_done
        return None

    def partials(self) -> list[Partial]:
        """The partial files kept for a resume, oldest first."""
        return self._peers().partials()

    def discard_partials(self) -> int:
        """Delete every kept partial not in use; how many were deleted."""
        return self._peers().discard_partials()

    def open_transfers(self) -> list[Transfer]:
        return [t for t in self.transfers() if not t.finished]

    # -- inside -------------------------------------------------------------------

    def _numbered(self) -> dict[int, Transfer]:
        return self.peers.transfers if self.peers is not None else {}

    def _peers(self) -> PeerFactory:
        if self.peers is None:
            raise ChatClientError("not logged in yet")
        return self.peers

    def _session_of(self, transfer: Transfer) -> PeerSession:
        session = self.session(transfer.peer)
        if session is None:
            raise NotChatting(f"the chat with {transfer.peer} is closed")
        return session

    def _verify(self, token: str) -> defer.Deferred[tuple[str, str, str]]:
        d = self.server.verify(token)

        def translate(failure: Failure) -> Failure:
            if failure.check(BadToken):
                return Failure(VerifyRejected(str(failure.value)))
            return Failure(ServerUnavailable(str(failure.value)))

        return d.addErrback(translate)
