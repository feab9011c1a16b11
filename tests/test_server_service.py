"""ChatServerService start and stop on a Clock: a listen that completes later, a store that cannot open."""

from __future__ import annotations

from typing import Any

from server_harness import Conn
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from chatapp.runner import InlineRunner
from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.server.passwords import PasswordHasher
from chatapp.server.store import SQLiteStore
from chatapp.server.tap import ChatServerService, StartupError


class LaterEndpoint:
    """An endpoint whose listen completes when the test says so."""

    def __init__(self) -> None:
        self.listening: defer.Deferred[Any] = defer.Deferred()

    def listen(self, factory: object) -> defer.Deferred[Any]:
        return self.listening


class FakePort:
    def __init__(self) -> None:
        self.stopped = False

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8750)

    def stopListening(self) -> None:
        self.stopped = True


def service_on(factory: ServerFactory, clock: Clock, failed: list[str]) -> tuple[ChatServerService, LaterEndpoint]:
    endpoint = LaterEndpoint()
    service = ChatServerService(endpoint, "tcp:8750", factory, clock, failed.append)  # type: ignore[arg-type]
    service.privilegedStartService()
    service.startService()
    return service, endpoint


def test_start_waits_for_a_listen_that_completes_later(server_factory: ServerFactory, clock: Clock) -> None:
    failed: list[str] = []
    service, endpoint = service_on(server_factory, clock, failed)
    started = service.whenStarted()
    assert not started.called and service.port is None
    port = FakePort()
    endpoint.listening.callback(port)
    assert started.called and service.port is port and failed == []
    stopping = service.stopService()
    assert stopping.called and port.stopped


def test_a_listen_that_fails_later_is_one_line_and_stops(server_factory: ServerFactory, clock: Clock) -> None:
    failed: list[str] = []
    service, endpoint = service_on(server_factory, clock, failed)
    started = service.whenStarted()
    endpoint.listening.errback(CannotListenError("127.0.0.1", 8750, OSError(98, "Address already in use")))
    assert failed == [f"chatserver: {CannotListenError('127.0.0.1', 8750, OSError(98, 'Address already in use'))}"
                      " (--listen tcp:8750)"]  # fmt: skip
    assert "\n" not in failed[0]
    errors: list[Failure] = []
    started.addErrback(errors.append)
    assert errors[0].check(StartupError) and str(errors[0].value) == failed[0]
    assert service.stopService().called


def test_a_store_that_cannot_open_is_one_line_and_stops(tmp_path, clock: Clock) -> None:
    (tmp_path / "garbage.sqlite3").write_bytes(b"this is not sqlite" * 100)
    store = SQLiteStore(str(tmp_path / "garbage.sqlite3"), InlineRunner())
    factory = ServerFactory(ServerConfig(), store, PasswordHasher(InlineRunner(), rounds=4, max_pending=8), clock)
    failed: list[str] = []
    service, endpoint = service_on(factory, clock, failed)
    endpoint.listening.callback(FakePort())
    assert failed == ["chatserver: cannot use database " + repr(str(tmp_path / "garbage.sqlite3")) +
                      ": file is not a database"]  # fmt: skip
    started = service.whenStarted()
    assert started.called
    started.addErrback(lambda f: f.trap(StartupError))
    assert service.stopService().called


def test_stop_fires_only_when_every_connection_is_closed(server_factory: ServerFactory, clock: Clock) -> None:
    service, endpoint = service_on(server_factory, clock, [])
    endpoint.listening.callback(FakePort())
    polite, stuck = Conn(server_factory), Conn(server_factory, host="127.0.0.2")
    stopping = service.stopService()
    assert polite.lines()[-1] == "* BYE shutdown" and stuck.lines()[-1] == "* BYE shutdown"
    polite.drop()
    assert not stopping.called
    clock.advance(5)  # the grace is over: the one that did not go is cut
    assert stuck.transport.disconnected
    assert not stopping.called  # cut, but its connectionLost has not come yet
    stuck.drop()
    assert stopping.called
