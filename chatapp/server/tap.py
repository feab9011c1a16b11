"""``twistd chatserver``: command-line options and the service they build."""

from __future__ import annotations

import atexit
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from chatapp.runner import ReactorPool, ThreadRunner
from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.server.passwords import PasswordHasher
from chatapp.server.store import Store, is_postgres_url, store_for
from chatapp.tls.contexts import ServerLinkServerTLS
from chatapp.tls.identity import BadIdentityFile, Identity, load_identity, load_or_create_identity
from chatapp.tls.paths import server_certificate_path
from chatapp.tls.records import GatheringTLSFactory

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


# Descriptors kept back from --max-connections' default: the database, its journal, log files,
# the listening sockets, the threads' pipes.
RESERVED_DESCRIPTORS = 64


def default_max_connections() -> int:
    """As many connections as the descriptor limit leaves room for (at least 16)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1000
    if soft == resource.RLIM_INFINITY or soft > 1_000_000:
        soft = 1_000_000
    return max(16, soft - RESERVED_DESCRIPTORS)


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
        ["no-tls", None, "serve plain TCP (behind a TLS-terminating proxy, or for debugging by hand)"],
    ]
    optParameters: list[list[Any]] = [
        ["listen", None, "tcp:8750", "Twisted server endpoint to listen on (tcp:, unix:, systemd:); TLS is added"],
        [
            "db",
            None,
            "chatserver.sqlite3",
            "SQLite database file (created on first start), or a postgresql:// URL (schema created at start)",
        ],
        [
            "registry",
            None,
            None,
            "redis://host:port/N: presence, tokens and lockout counters shared with other server processes "
            "(default: this process's memory)",
        ],
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
        [
            "max-connections",
            None,
            None,
            "connections open at once in all (default: the descriptor limit less 64)",
            _positive_int(1),
        ],
        ["signups-per-hour", None, 5, "accounts one address may create per hour", _positive_int(1)],
        [
            "tls-cert",
            None,
            None,
            "PEM file: certificate, chain, private key (default: chatserver-tls.pem next to --db, made on first start)",
        ],
    ]

    def postOptions(self) -> None:
        from twisted.internet import reactor

        if self["listen"].split(":", 1)[0].strip().lower() in ("ssl", "tls"):
            raise usage.UsageError(
                f"--listen {self['listen']}: give a plain endpoint (tcp:, unix:, systemd:); the server adds "
                "TLS itself, with the certificate of --tls-cert PATH"
            )
        if self["tls-cert"] is not None and self["no-tls"]:
            raise usage.UsageError("--tls-cert and --no-tls contradict each other")
        if self["tls-cert"] is not None and not os.path.isfile(self["tls-cert"]):
            raise usage.UsageError(f"--tls-cert {self['tls-cert']}: no such file")
        try:
            endpoint = serverFromString(reactor, self["listen"])
        except IndexError:
            raise usage.UsageError(
                f"--listen {self['listen']}: no such inherited socket (is the server socket-activated?)"
            ) from None
        except (ValueError, TypeError, KeyError) as e:
            raise usage.UsageError(f"--listen {self['listen']}: not a valid server endpoint ({e})") from None
        _check_adopted_family(endpoint, self["listen"])
        if self["registry"] is not None:
            from chatapp.server.registry.redis import BadRedisURL, parse_redis_url

            try:
                parse_redis_url(self["registry"])
            except BadRedisURL as e:
                raise usage.UsageError(f"--registry {e}") from None
        # Checked here as well as when the store opens: a daemonizing twistd reports only
        # errors raised before it forks, and a missing folder is the usual typo.
        if is_postgres_url(self["db"]):
            return  # reachable or not is known only when the store opens: one line then
        folder = os.path.dirname(os.path.abspath(self["db"]))
        if not os.path.isdir(folder):
            raise usage.UsageError(f"--db {self['db']}: directory {folder} does not exist")

    def config(self) -> ServerConfig:
        return ServerConfig(
            max_attempts=self["max-attempts"],
            block_time=self["block-time"],
            login_timeout=self["login-timeout"],
            idle_timeout=self["idle-timeout"],
            max_connections_per_address=self["max-connections-per-address"],
            max_connections=self["max-connections"] or default_max_connections(),
            tls=not self["no-tls"],
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


class ServerCertificate:
    """Where the server's TLS identity comes from: ``--tls-cert`` (read only) or its own file (made once)."""

    def __init__(self, path: str | os.PathLike[str], given: bool) -> None:
        self.path = path
        self.given = given

    def load(self) -> Identity:
        """Blocking file I/O (and key generation on first start): before the reactor runs, or in a thread."""
        try:
            if self.given:
                return load_identity(self.path)
            identity, made = load_or_create_identity(Path(self.path), "chatserver")
        except (OSError, BadIdentityFile) as e:
            raise StartupError(f"chatserver: TLS certificate {os.fspath(self.path)}: {e}") from None
        if made:
            log.info("chatserver made a new TLS certificate in {path}", path=os.fspath(self.path))
        return identity


class ChatServerService(Service):
    """Listens on an endpoint with a :class:`ServerFactory`; owns the store and the bcrypt pool.

    Starting takes time (the listen may not be done at once, the store opens
    in its thread): :meth:`whenStarted` says when it is done, or why it failed
    in one line. A failed start is also logged, and ``on_failed_start`` (for
    twistd: stop the process) is called with that line.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        factory: ServerFactory,
        reactor: Any,
        on_failed_start: Callable[[str], None] | None = None,
        certificate: ServerCertificate | None = None,
    ) -> None:
        """``certificate`` None serves plain TCP (``--no-tls``); otherwise every connection is TLS 1.3."""
        self.endpoint = endpoint
        self.certificate = certificate
        self.fingerprint: str | None = None  # of the TLS certificate, once loaded
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self._on_failed_start = on_failed_start
        self._listening: defer.Deferred[IListeningPort] | None = None
        self._starting: defer.Deferred[None] | None = None
        self._start_result: Failure | bool | None = False  # False: not started yet; None: started
        self._start_waiters: list[defer.Deferred[None]] = []

    def privilegedStartService(self) -> None:
        # Bind first (a privileged port may need root); the store opens in startService.
        super().privilegedStartService()
        if self.certificate is None:
            self._listening = self.endpoint.listen(self.factory)
        elif not getattr(self.reactor, "running", False):
            # twistd starts services before its reactor runs: blocking file I/O here delays nobody.
            self._listening = self._listen_tls(self.certificate.load())
        else:
            # Started inside a running reactor (tests, embedding): read or make the file in a thread,
            # and listen only once it is there, so no connection ever waits for a certificate.
            loading = ReactorPool(self.reactor).run(self.certificate.load)
            self._listening = loading.addCallback(self._listen_tls)
        self._listening.addErrback(self._listen_failed)
        if self._listening.called:
            failed_now: list[Failure] = []
            self._listening.addErrback(failed_now.append)
            if failed_now:
                # The usual case for a port in use: raise now, so that even a
                # daemonizing twistd shows the line before it reports a start.
                failed_now[0].raiseException()

    def _listen_tls(self, identity: Identity) -> defer.Deferred[IListeningPort]:
        # Wrapping the factory, not choosing an ssl: endpoint, gives systemd: and unix: sockets TLS too.
        creator = ServerLinkServerTLS(identity)
        self.fingerprint = creator.fingerprint
        wrapped = GatheringTLSFactory(creator, False, self.factory)
        wrapped.noisy = False
        return self.endpoint.listen(wrapped)

    def _listen_failure_line(self, failure: Failure) -> str:
        return f"chatserver: {failure.getErrorMessage()} (--listen {self.description})"

    def _listen_failed(self, failure: Failure) -> Failure:
        if failure.check(defer.CancelledError, StartupError):  # stopped while listening / said already
            return failure
        return Failure(StartupError(self._listen_failure_line(failure)))

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        super().startService()
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(self._failed_to_start)
        self._starting.addErrback(lambda failure: log.failure("stopping after a failed start failed", failure))

    async def _start(self) -> None:
        assert self._listening is not None
        opening = self.factory.store.open()  # in its thread, while the listen completes
        opening.addErrback(lambda failure: Failure(StartupError(f"chatserver: {failure.getErrorMessage()}")))
        try:
            self.port = await self._listening
        except BaseException:
            opening.addErrback(lambda _: None)  # the listen's reason is the one to tell
            raise
        await opening
        try:
            await self.factory.registry.open()
        except StartupError:
            raise
        except Exception as e:
            raise StartupError(f"chatserver: registry: {e}") from None
        await self.factory.hasher.start()
        if self.fingerprint is not None:
            log.info("chatserver TLS fingerprint {fingerprint}", fingerprint=self.fingerprint)
        else:
            log.warn("chatserver serves plain TCP (--no-tls): passwords cross the network in clear text")
        # Said only now: whoever waits for this line may connect and be served.
        log.info("chatserver listening on {address}", address=self.port.getHost())
        self._conclude_start(None)

    def _failed_to_start(self, failure: Failure) -> None:
        if not self.running and failure.check(defer.CancelledError):
            return
        if failure.check(StartupError):
            line = str(failure.value)
        else:
            line = f"chatserver: cannot start: {failure.getErrorMessage()}"
        log.critical("{line}", line=line)
        self._conclude_start(Failure(StartupError(line)))
        if self._on_failed_start is not None:
            self._on_failed_start(line)

    def _conclude_start(self, result: Failure | None) -> None:
        self._start_result = result
        waiting, self._start_waiters = self._start_waiters, []
        for d in waiting:
            if result is None:
                d.callback(None)
            else:
                d.errback(result)

    def whenStarted(self) -> defer.Deferred[None]:
        """Fires when the server listens and its store is open; fails with a :class:`StartupError`."""
        if self._start_result is None:
            return defer.succeed(None)
        if isinstance(self._start_result, Failure):
            return defer.fail(self._start_result)
        d: defer.Deferred[None] = defer.Deferred()
        self._start_waiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        """Fires once every connection is closed and the store is closed."""
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
        closed = self.factory.shut_down()
        # Clients get SHUTDOWN_GRACE seconds to take their BYE; then they are cut.
        cut = self.reactor.callLater(SHUTDOWN_GRACE, self.factory.abort_all)
        try:
            await closed
        finally:
            if cut.active():
                cut.cancel()
        self.factory.hasher.stop()
        await self.factory.registry.close()
        await self.factory.store.close()
        log.info("chatserver stopped")


def _stop_the_process(reactor: Any) -> Callable[[str], None]:
    """What twistd does when the server cannot start: stop, then exit with status 1."""

    def stop(line: str) -> None:
        # twistd exits 0 whenever its reactor stops without a signal, and a reactor swallows
        # every exception: the status is set after twistd has cleaned up (pidfile, logs).
        atexit.register(_exit_status_1)
        reactor.callWhenRunning(reactor.stop)

    return stop


def _exit_status_1() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def build_service(
    options: Options, reactor: Any, on_failed_start: Callable[[str], None] | None = None
) -> ChatServerService:
    """The service for parsed ``options``; nothing is opened until it starts."""
    threads = max(1, os.cpu_count() or 1)
    # Enough queue for a burst of logins (about 8 s of work at the default cost), bounded all the same.
    hasher = PasswordHasher(ThreadRunner(reactor, threads, "chatapp-bcrypt"), options["bcrypt-rounds"], threads * 32)
    store = store_for(options["db"], reactor)
    factory = _factory(options, store, hasher, reactor)
    endpoint = serverFromString(reactor, options["listen"])
    return ChatServerService(endpoint, options["listen"], factory, reactor, on_failed_start, certificate_of(options))


def _factory(options: Options, store: Store, hasher: PasswordHasher, reactor: Any) -> ServerFactory:
    config = options.config()
    if options["registry"] is None:
        return ServerFactory(config, store, hasher, reactor)
    from chatapp.server.registry.redis import RedisLink, RedisLockout, RedisRegistry, RedisSignups, parse_redis_url

    link = RedisLink(parse_redis_url(options["registry"]), reactor, reactor)
    return ServerFactory(
        config,
        store,
        hasher,
        reactor,
        RedisRegistry(link),
        RedisLockout(link, config.max_attempts, config.block_time),
        RedisSignups(link, config.signups_per_hour),
    )


def certificate_of(options: Options) -> ServerCertificate | None:
    """The certificate ``options`` ask for: None with ``--no-tls``."""
    if options["no-tls"]:
        return None
    if options["tls-cert"] is not None:
        return ServerCertificate(options["tls-cert"], given=True)
    if is_postgres_url(options["db"]):
        # no database file to sit beside: the working directory (several processes share one
        # database, so they should share one certificate too: --tls-cert)
        return ServerCertificate(server_certificate_path(os.path.join(os.getcwd(), "-")), given=False)
    return ServerCertificate(server_certificate_path(options["db"]), given=False)


def makeService(options: Options) -> ChatServerService:
    from twisted.internet import reactor

    return build_service(options, reactor, _stop_the_process(reactor))
