"""Shared fixtures: a server factory on a real SQLite file with bcrypt at its cheapest cost."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted
from logged_errors import LoggedErrors
from reactor_leaks import reactor_state
from services import Postgres, Redis, ServiceError
from twisted.internet import task
from twisted.internet.task import Clock

from chatapp.runner import InlineRunner
from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.server.passwords import PasswordHasher
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


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the whole run, started the first time a test asks for it."""
    service = Postgres()
    try:
        service.start()
    except ServiceError as e:
        service.stop()
        pytest.fail(f"PostgreSQL could not be started for the tests: {e}", pytrace=False)
    yield service
    service.stop()


@pytest.fixture
def postgres_url(postgres_service: Postgres) -> str:
    """The URL of a fresh, empty PostgreSQL database of this test's own."""
    return postgres_service.create_database()


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Redis]:
    """One redis-server for the whole run, started the first time a test asks for it."""
    service = Redis()
    try:
        service.start()
    except ServiceError as e:
        pytest.fail(f"Redis could not be started for the tests: {e}", pytrace=False)
    yield service
    service.stop()


@pytest.fixture
def redis_url(redis_service: Redis) -> str:
    """The URL of an empty Redis (flushed before each test that asks for it)."""
    redis_service.flush()
    return redis_service.url()


def pytest_collection_finish(session: pytest.Session) -> None:
    # logged_errors collects garbage after every test. Without this, each collection walks every
    # object the imports made too (about 20 ms, some 15 s of CPU per run); frozen, they are
    # skipped, and what a test makes is still collected.
    gc.freeze()


# Closing a socket takes the reactor one turn; a few more allow for a close that waits on another.
_REACTOR_TURNS = 5


@pytest.fixture(autouse=True)
def logged_errors() -> Iterator[LoggedErrors]:
    """Fail a test after which an error was logged that the test did not flush.

    A test that provokes an error on purpose asks for this fixture and flushes
    what it expects: `[event] = logged_errors.flush(ConnectionLost)`.
    """
    with LoggedErrors().observing() as errors:
        yield errors
        # check() collects garbage first: a failed Deferred this test dropped logs its
        # error now, and fails this test rather than whichever test the collector next runs in.
        errors.check()


@pytest_twisted.async_yield_fixture(autouse=True)
async def nothing_left_on_the_reactor(
    request: pytest.FixtureRequest, logged_errors: LoggedErrors
) -> AsyncIterator[None]:
    """Fail a test that leaves timers or sockets behind on the global reactor.

    pytest-twisted runs every test on one reactor: a leaked timer or port fires
    or holds a socket during some later, unrelated test. This fixture asks for
    logged_errors so that the errors logged during the reactor turns below are
    checked after them.
    """
    from twisted.internet import reactor

    before = reactor_state()
    yield
    if "no_reactor_check" in request.keywords:
        return
    # Aborted connections and stopped ports close on a later reactor turn. The reactor
    # runs them while this coroutine waits; turning it from here (reactor.iterate)
    # would re-enter the loop pytest-twisted's greenlet is suspended in.
    leaked = reactor_state().left_since(before)
    for _ in range(_REACTOR_TURNS):
        if leaked.empty():
            break
        await task.deferLater(reactor, 0, lambda: None)
        leaked = reactor_state().left_since(before)
    assert not leaked.calls, f"timers left on the reactor: {leaked.calls}"
    assert not leaked.sockets, f"sockets left open on the reactor: {leaked.sockets}"
