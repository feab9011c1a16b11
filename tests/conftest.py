"""Shared fixtures: a server factory on a real SQLite file with bcrypt at its cheapest cost."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock

from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.server.passwords import PasswordHasher
from chatapp.server.runner import InlineRunner
from chatapp.server.store import SQLiteStore


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_000_000)  # a plausible epoch, so "until" times are never zero
    return c


def make_factory(db_path: str, clock: Clock, config: ServerConfig | None = None) -> ServerFactory:
    store = SQLiteStore(db_path, InlineRunner())
    store.open()
    hasher = PasswordHasher(InlineRunner(), rounds=4, max_pending=8)
    hasher.start()
    return ServerFactory(config or ServerConfig(), store, hasher, clock)


@pytest.fixture
def server_factory(tmp_path, clock) -> Iterator[ServerFactory]:
    # A long login deadline, so tests that move the clock by minutes keep their connections.
    factory = make_factory(str(tmp_path / "chat.sqlite3"), clock, ServerConfig(login_timeout=86400))
    yield factory
    factory.store.close()


@pytest.fixture(autouse=True)
def nothing_left_on_the_reactor(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves timers or sockets behind on the global reactor.

    pytest-twisted runs every test on one reactor: a leaked timer or port fires
    or holds a socket during some later, unrelated test.
    """
    from twisted.internet import reactor, tcp

    before_calls = set(reactor.getDelayedCalls())
    before_readers = set(reactor.getReaders())
    yield
    if "no_reactor_check" in request.keywords:
        return
    # give aborted connections and stopped ports their reactor turn to finish
    for _ in range(3):
        reactor.iterate(0)
    leaked_calls = [call for call in reactor.getDelayedCalls() if call not in before_calls and call.active()]
    leaked_readers = [
        r for r in reactor.getReaders() if r not in before_readers and isinstance(r, (tcp.Port, tcp.Connection))
    ]
    assert not leaked_calls, f"timers left on the reactor: {leaked_calls}"
    assert not leaked_readers, f"sockets left open on the reactor: {leaked_readers}"
