"""``twistd chatserver``: command-line options and the service they build."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.server.passwords import PasswordHasher
from chatapp.server.runner import ThreadRunner
from chatapp.server.store import SQLiteStore, StoreError, connect

log = Logger()

SHUTDOWN_GRACE = 5.0  # seconds to wait for clients to take their BYE before closing the database


class StartupError(SystemExit, Exception):
    """A one-line reason the server cannot start.

    It is a ``SystemExit`` so that ``twistd -n`` prints the line and exits 1
    without a traceback, and an ``Exception`` so that a daemonizing twistd
    passes it through its status pipe to the terminal that started it.
    """


# A daemonizing twistd shows only the first 100 characters of "module.Class: message";
# without the module path there is room for the reason itself.
StartupError.__module__ = "builtins"


def _positive_int(low: int, high: int | None = None):  # type: ignore[no-untyped-def]
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f"at least {low}"
            raise ValueError(f"{value} is out of range ({bound})")
        return value

    return convert


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 10**9:
        raise ValueError(f"{text!r} is out of range (more than 0 seconds)")
    return value


class Options(usage.Options):
    longdesc = (
        "The chatapp server: accounts, login lockout, who is online and where each one listens. "
        "It never carries a chat message or a file; clients connect to each other directly."
    )
    optFlags = [
        ["allow-advertised-hosts", None, "let LISTEN name a host other than the client's own address"],
    ]
    optParameters: list[list[Any]] = [
        ["listen", None, "tcp:8750", "Twisted server endpoint to listen on (tcp:, ssl:, unix:, systemd:)"],
        ["db", None, "chatserver.sqlite3", "SQLite database file (created on first start)"],
        [
            "max-attempts",
            None,
            3,
            "failed logins in a row before an address is blocked or a name locked",
            _positive_int(1),
        ],
        ["block-time", None, 300.0, "seconds a block or lock lasts", _seconds],
        ["bcrypt-rounds", None, 12, "bcrypt cost factor (4..31)", _positive_int(4, 31)],
        ["login-timeout", None, 60.0, "seconds a connection has to log in", _seconds],
        ["idle-timeout", None, 300.0, "seconds of silence before a logged-in connection is closed", _seconds],
        ["max-connections-per-address", None, 20, "connections one address may hold", _positive_int(1)],
        ["signups-per-hour", None, 5, "accounts one address may create per hour", _positive_int(1)],
    ]

    def postOptions(self) -> None:
        from twisted.internet import reactor

        try:
            endpoint = serverFromString(reactor, self["listen"])
        except IndexError:
            raise usage.UsageError(
                f"--listen {self['listen']}: no such inherited socket (is the server socket-activated?)"
            ) from None
        except (ValueError, TypeError, KeyError) as e:
            raise usage.UsageError(f"--listen {self['listen']}: not a valid server endpoint ({e})") from None
        _check_adopted_family(endpoint, self["listen"])

    def config(self) -> ServerConfig:
        return ServerConfig(
            max_attempts=self["max-attempts"],
            block_time=self["block-time"],
            login_timeout=self["login-timeout"],
            idle_timeout=self["idle-timeout"],
            max_connections_per_address=self["max-connections-per-address"],
            signups_per_hour=self["signups-per-hour"],
            allow_advertised_hosts=bool(self["allow-advertised-hosts"]),
        )


def _check_adopted_family(endpoint: object, description: str) -> None:
    """Refuse a ``systemd:`` socket whose real family differs from ``domain=``.

    Twisted trusts ``domain=``: an IPv6 socket adopted as INET yields garbage
    client addresses, which would break lockout and LISTEN.
    """
    fileno = getattr(endpoint, "fileno", None)
    family = getattr(endpoint, "addressFamily", None)
    if not isinstance(endpoint, AdoptedStreamServerEndpoint) or fileno is None:
        return
    with socket.socket(fileno=os.dup(fileno)) as inherited:
        actual = inherited.family
    if actual != family:
        wanted = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}.get(actual, str(actual))
        raise usage.UsageError(f"--listen {description}: the inherited socket is {wanted}; say domain={wanted}")


class ChatServerService(Service):
    """Listens on an endpoint with a :class:`ServerFactory`; owns the store and the bcrypt pool."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, factory: ServerFactory, reactor: Any) -> None:
        self.endpoint = endpoint
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Bind first (a privileged port may need root); connections wait for
        # the store, whose thread starts in startService.
        failures: list[Exception] = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            reason = getattr(failures[0], "value", failures[0])
            log.critical("cannot listen on {endpoint}: {reason}", endpoint=self.description, reason=reason)
            raise StartupError(f"chatserver: {reason} (--listen {self.description})")
        super().privilegedStartService()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info("chatserver listening on {address}", address=port.getHost())

    def startService(self) -> None:
        super().startService()
        d = self.factory.store.open()
        d.addCallback(lambda _: self.factory.hasher.start())
        d.addErrback(lambda f: log.failure("chatserver could not start its store or password pool", f))

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
        closed = self.factory.shut_down()
        closed.addTimeout(SHUTDOWN_GRACE, self.reactor, onTimeoutCancel=lambda *a: None)
        yield closed
        for connection in list(self.factory.connections):
            abort = getattr(connection.transport, "abortConnection", None)
            if abort is not None:
                abort()
        self.factory.hasher.stop()
        yield self.factory.store.close()
        log.info("chatserver stopped")


def build_service(options: Options, reactor: Any) -> ChatServerService:
    """The service for parsed ``options``; checks the database now so errors are one line."""
    path = options["db"]
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StartupError(f"chatserver: cannot open database {path!r}: directory {folder!r} does not exist")
    try:
        connect(path).close()
    except StoreError as e:
        raise StartupError(f"chatserver: {e}") from None
    threads = max(1, os.cpu_count() or 1)
    # Enough queue for a burst of logins (about 8 s of work at the default cost), bounded all the same.
    hasher = PasswordHasher(ThreadRunner(reactor, threads, "chatapp-bcrypt"), options["bcrypt-rounds"], threads * 32)
    store = SQLiteStore(path, ThreadRunner(reactor, 1, "chatapp-sqlite"))
    factory = ServerFactory(options.config(), store, hasher, reactor)
    return ChatServerService(serverFromString(reactor, options["listen"]), options["listen"], factory, reactor)


def makeService(options: Options) -> ChatServerService:
    from twisted.internet import reactor

    return build_service(options, reactor)
