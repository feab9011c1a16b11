"""What all server connections share: configuration, store, registry, limits and the connection table."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from chatapp.addresses import normalize_host
from chatapp.server.limits import ConnectionCap, LimitLog, MemorySignups, SignupLimiter, Signups
from chatapp.server.lockout import Lockout, LoginLockout, MemoryLockout
from chatapp.server.passwords import PasswordHasher
from chatapp.server.protocol import ServerProtocol
from chatapp.server.registry import TOKENS_PER_REQUESTER, MemoryRegistry, Registry
from chatapp.server.store import Store

log = Logger()


@dataclass(frozen=True)
class ServerConfig:
    max_attempts: int = 3
    block_time: float = 300.0
    login_timeout: float = 60.0
    idle_timeout: float = 300.0
    max_connections_per_address: int = 20
    max_connections: int = 1000  # in all; twistd's default is sized to the descriptor limit (tap.py)
    signups_per_hour: int = 5
    allow_advertised_hosts: bool = False
    # Connections arrive inside TLS (tap.py wraps the factory): greet only once the handshake is done.
    tls: bool = False


def address_of(peer: IAddress) -> str:
    """The client's IP address, normalized (local sockets count as loopback)."""
    host = getattr(peer, "host", None)
    if isinstance(host, str):
        try:
            return normalize_host(host)
        except ValueError:
            pass
    return "127.0.0.1"


class ServerFactory(Factory):
    protocol = ServerProtocol  # type: ignore[assignment]
    noisy = False  # the service logs where it listens; "Starting factory" adds nothing

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        hasher: PasswordHasher,
        clock: IReactorTime,
        registry: Registry[ServerProtocol] | None = None,
        lockout: Lockout | None = None,
        signups: Signups | None = None,
    ) -> None:
        """``registry``, ``lockout`` and ``signups`` default to this process's memory; pass the Redis
        ones (chatapp.server.registry.redis) to share them with other server processes."""
        self.config = config
        self.store = store
        self.hasher = hasher
        self.clock = clock
        if registry is None:
            # Tokens outlive their requester's login: bounded in all by what the connections could hold.
            registry = MemoryRegistry(TOKENS_PER_REQUESTER, TOKENS_PER_REQUESTER * config.max_connections)
        self.registry: Registry[ServerProtocol] = registry
        self.lockout: Lockout = lockout or MemoryLockout(LoginLockout(clock, config.max_attempts, config.block_time))
        self.signups: Signups = signups or MemorySignups(SignupLimiter(config.signups_per_hour))
        self.connection_cap = ConnectionCap(config.max_connections_per_address)
        self.limit_log = LimitLog()
        self.connections: set[ServerProtocol] = set()
        # the connections not logged in yet, oldest first (a dict keeps the order): whom a full server
        # closes for a newcomer, found without a scan of every connection
        self._not_logged_in: dict[ServerProtocol, None] = {}
        self._all_closed: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> ServerProtocol:  # type: ignore[override]
        # The override narrows the return type; Twisted's stub promises only "a protocol".
        return ServerProtocol(self, address_of(addr) if addr is not None else "127.0.0.1")

    def connection_opened(self, connection: ServerProtocol) -> bool:
        """Count a new connection; False if the server, or its address, already holds the most it may.

        When the server is full, the connection that has waited longest without logging in (and is not
        in the middle of a command) is closed for the newcomer: strangers that connect and say nothing
        cannot keep everyone out for the login timeout; logged-in users are never pushed out.
        """
        if not self.connection_cap.take(connection.address_key):
            if self.limit_log.first("max-connections-per-address", self.clock.seconds()):
                log.info("refusing connections from {address}: it holds the most it may", address=connection.address)
            return False
        if len(self.connections) >= self.config.max_connections and not self._displace_one():
            self.connection_cap.give_back(connection.address_key)
            if self.limit_log.first("max-connections", self.clock.seconds()):
                log.warn("refusing connections: {count} are open (--max-connections)", count=len(self.connections))
            return False
        self.connections.add(connection)
        self._not_logged_in[connection] = None
        return True

    def logged_in(self, connection: ServerProtocol) -> None:
        self._not_logged_in.pop(connection, None)

    def _displace_one(self) -> bool:
        # the oldest first; those running a command (a LOGIN in its password check, at most the
        # hasher's queue of them) are passed over
        oldest = next((c for c in self._not_logged_in if c.waiting_to_log_in), None)
        if oldest is None:
            return False
        if self.limit_log.first("max-connections-displaced", self.clock.seconds()):
            log.warn("the server is full (--max-connections): closing connections that have not logged in")
        self.connections.discard(oldest)  # its slot is the newcomer's now, while it closes
        self._not_logged_in.pop(oldest, None)
        self.connection_cap.give_back(oldest.address_key)
        oldest.kick("too-many-connections")
        return True

    def connection_closed(self, connection: ServerProtocol) -> None:
        self._not_logged_in.pop(connection, None)
        if connection in self.connections:
            self.connections.discard(connection)
            self.connection_cap.give_back(connection.address_key)
        if connection.user is not None:
            leaving = self.registry.logout(connection.user, connection)
            leaving.addErrback(lambda failure: log.failure("logging out {user} failed", failure, user=connection.user))
        if not self.connections:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def shut_down(self) -> defer.Deferred[None]:
        """Say ``* BYE shutdown`` to every connection and fire once all have closed."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._all_closed.append(d)
        for connection in list(self.connections):
            connection.kick("shutdown")
        return d

    def abort_all(self) -> None:
        """Cut every connection now (those that did not take their BYE in time)."""
        for connection in list(self.connections):
            abort = getattr(connection.transport, "abortConnection", None)
            if abort is not None:
                abort()
