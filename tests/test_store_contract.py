"""One contract, every store: SQLite (the default) and PostgreSQL (a real server, from tests/services.py).

Each test runs against both. "Two stores" on one database stand for two
server processes: two SQLite connections on one file, or two connection pools
on one PostgreSQL database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer

from chatapp.runner import ThreadRunner
from chatapp.server.store import (
    ADDRESS,
    NAME,
    SCHEMA_VERSION,
    PostgresStore,
    SQLiteStore,
    Store,
    StoreError,
    UserExists,
)
from chatapp.server.store import postgres as postgres_store
from chatapp.server.store import sqlite as sqlite_store

HASH = b"$2b$04$" + b"x" * 53
T0 = 1_767_225_600.0
TIMEOUT = 20


def within(d: Awaitable[Any] | defer.Deferred[Any]) -> defer.Deferred[Any]:
    from twisted.internet import reactor

    return defer.ensureDeferred(_await(d)).addTimeout(TIMEOUT, reactor)


async def _await(d: Awaitable[Any]) -> Any:
    return await d


class Backend:
    """Makes stores on one database, and reads it behind their back (what another process would see)."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind = kind
        self.where = where
        self.stores: list[Store] = []

    def new(self, **kwargs: Any) -> Store:
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor

        store: Store
        if self.kind == "sqlite":
            store = SQLiteStore(self.where, ThreadRunner(reactor, 1, "test-sqlite"))
        else:
            store = PostgresStore(self.where, reactor, **kwargs)
        self.stores.append(store)
        return store

    async def opened(self, **kwargs: Any) -> Store:
        store = self.new(**kwargs)
        await within(store.open())
        return store

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run SQL (``?`` placeholders) on a connection of its own, committed."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.where) as db:
                return list(db.execute(sql, params).fetchall()) if sql.lstrip().upper().startswith("SELECT") else [
                    tuple(db.execute(sql, params).fetchall())
                ]
        with psycopg.connect(self.where, autocommit=True) as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return list(cursor.fetchall()) if cursor.description else []

    def block_rows(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM blocks")[0][0])


@pytest_twisted.async_yield_fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", str(tmp_path / "chat.sqlite3"))
    else:
        b = Backend("postgres", request.getfixturevalue("postgres_url"))
    yield b
    for store in b.stores:
        await within(store.close())


Open = Callable[..., Awaitable[Store]]


# -- accounts ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_account_round_trips_and_its_name_is_case_insensitive(backend: Backend) -> None:
    store = await backend.opened()
    assert await within(store.get_account("alice")) is None
    created = await within(store.create_account("Alice", HASH, T0))
    assert (created.name, created.password_hash, created.created, created.last_login) == ("Alice", HASH, T0, T0)
    for spelling in ("alice", "ALICE", "Alice"):
        assert await within(store.get_account(spelling)) == created
    with pytest.raises(UserExists):
        await within(store.create_account("aLiCe", HASH, T0 + 1))
    assert (await within(store.get_account("alice"))).created == T0  # the loser changed nothing


@pytest_twisted.ensureDeferred
async def test_every_write_is_committed_before_its_deferred_fires(backend: Backend) -> None:
    store = await backend.opened()
    await within(store.create_account("Alice", HASH, T0))
    assert backend.query("SELECT name, created FROM users WHERE name_folded = ?", "alice") == [("Alice", T0)]
    await within(store.record_login("ALICE", T0 + 60))
    assert backend.query("SELECT last_login FROM users") == [(T0 + 60,)]
    assert await within(store.set_password("alice", b"new-hash")) is True
    assert bytes(backend.query("SELECT password_hash FROM users")[0][0]) == b"new-hash"
    await within(store.set_block(ADDRESS, "10.0.0.1", T0 + 300))
    assert backend.query("SELECT kind, key, until FROM blocks") == [(ADDRESS, "10.0.0.1", T0 + 300)]


@pytest_twisted.ensureDeferred
async def test_set_password_and_record_login_on_a_missing_account(backend: Backend) -> None:
    store = await backend.opened()
    assert await within(store.set_password("nobody", HASH)) is False
    await within(store.record_login("nobody", T0))  # nothing to record; no row appears
    assert backend.query("SELECT COUNT(*) FROM users") == [(0,)]


@pytest_twisted.ensureDeferred
async def test_two_processes_signing_up_the_same_names_at_once_make_one_account_each(backend: Backend) -> None:
    first, second = await backend.opened(), await backend.opened()
    names = [f"user{i}" for i in range(20)]
    attempts = []
    for name in names:
        # Each name raced by both "processes", in both orders and spellings.
        attempts.append(first.create_account(name, b"first", T0))
        attempts.append(second.create_account(name.upper(), b"second", T0))
    results = await within(defer.DeferredList(attempts, consumeErrors=True))
    for i, name in enumerate(names):
        outcomes = [results[2 * i], results[2 * i + 1]]
        won = [value for ok, value in outcomes if ok]
        lost = [value for ok, value in outcomes if not ok]
        assert len(won) == 1 and len(lost) == 1, (name, outcomes)
        assert lost[0].check(UserExists)
        assert (await within(first.get_account(name))).password_hash == won[0].password_hash
    assert backend.query("SELECT COUNT(*) FROM users") == [(20,)]


@pytest_twisted.ensureDeferred
async def test_accounts_and_blocks_survive_a_reopen(backend: Backend) -> None:
    store = await backend.opened()
    await within(store.create_account("alice", HASH, T0))
    await within(store.set_block(NAME, "alice", T0 + 300))
    await within(store.close())
    again = await backend.opened()  # the schema is there already: opening migrates nothing
    assert (await within(again.get_account("alice"))).password_hash == HASH
    assert await within(again.block_until(NAME, "alice", T0)) == T0 + 300


# -- blocks and locks ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_block_runs_until_its_time_then_its_row_goes(backend: Backend) -> None:
    store = await backend.opened()
    await within(store.set_block(ADDRESS, "10.0.0.1", T0 + 300))
    assert await within(store.block_until(ADDRESS, "10.0.0.1", T0)) == T0 + 300
    assert await within(store.block_until(NAME, "10.0.0.1", T0)) is None  # kinds are apart
    assert await within(store.block_until(ADDRESS, "10.0.0.1", T0 + 300)) is None
    assert backend.block_rows() == 0


@pytest_twisted.ensureDeferred
async def test_setting_a_block_again_replaces_its_time(backend: Backend) -> None:
    store = await backend.opened()
    await within(store.set_block(NAME, "alice", T0 + 300))
    await within(store.set_block(NAME, "alice", T0 + 60))
    assert await within(store.block_until(NAME, "alice", T0)) == T0 + 60
    assert backend.block_rows() == 1


@pytest_twisted.ensureDeferred
async def test_expired_rows_are_pruned_when_a_block_is_set(backend: Backend) -> None:
    store = await backend.opened()
    for i in range(50):
        await within(store.set_block(NAME, f"fake{i}", T0 + 300))
    await within(store.set_block(ADDRESS, "10.0.0.9", T0 + 900))
    assert backend.block_rows() == 51
    await within(store.set_block(ADDRESS, "10.0.0.1", T0 + 1000, now=T0 + 301))
    # Bounded by the blocks still running, however many names were locked once.
    assert backend.block_rows() == 2


@pytest_twisted.ensureDeferred
async def test_a_block_set_by_one_process_holds_in_another(backend: Backend) -> None:
    first, second = await backend.opened(), await backend.opened()
    await within(first.set_block(ADDRESS, "10.0.0.1", T0 + 300))
    assert await within(second.block_until(ADDRESS, "10.0.0.1", T0)) == T0 + 300
    await within(second.set_block(ADDRESS, "10.0.0.1", T0 + 900))
    assert await within(first.block_until(ADDRESS, "10.0.0.1", T0)) == T0 + 900


# -- errors ----------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_closed_store_fails_with_store_error(backend: Backend) -> None:
    store = await backend.opened()
    await within(store.close())
    with pytest.raises(StoreError):
        await within(store.get_account("alice"))


@pytest_twisted.ensureDeferred
async def test_a_newer_schema_is_refused_in_one_line(backend: Backend) -> None:
    await within((await backend.opened()).close())
    if backend.kind == "sqlite":
        backend.query(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        backend.query("UPDATE chatapp_schema SET version = ?", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError) as raised:
        await within(backend.new().open())
    message = str(raised.value)
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this chatapp understands" in message
    assert "\n" not in message


def test_both_backends_migrate_to_the_one_schema_version() -> None:
    assert len(sqlite_store.MIGRATIONS) == len(postgres_store.MIGRATIONS) == SCHEMA_VERSION


# -- PostgreSQL only: many processes, a network between ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_processes_starting_together_on_an_empty_database_migrate_it_once(postgres_url: str) -> None:
    backend = Backend("postgres", postgres_url)
    try:
        stores = [backend.new() for _ in range(4)]
        await within(defer.gatherResults([store.open() for store in stores]))
        assert backend.query("SELECT version FROM chatapp_schema") == [(SCHEMA_VERSION,)]
    finally:
        for store in backend.stores:
            await within(store.close())


@pytest_twisted.ensureDeferred
async def test_an_unreachable_database_is_one_line_without_the_password(postgres_service: Any) -> None:
    from services import free_port
    from twisted.internet import reactor

    url = f"postgresql://chatapp:s3cret@127.0.0.1:{free_port()}/chat"
    store = PostgresStore(url, reactor)
    with pytest.raises(StoreError) as raised:
        await within(store.open())
    await within(store.close())
    message = str(raised.value)
    assert message.startswith(f"cannot open database postgresql://chatapp:***@127.0.0.1:{url.split(':')[3]}")
    assert "Connection refused" in message
    assert "\n" not in message and "s3cret" not in message


@pytest_twisted.ensureDeferred
async def test_a_connection_the_database_drops_fails_one_call_and_the_next_reconnects(postgres_url: str) -> None:
    backend = Backend("postgres", postgres_url)
    store = await backend.opened(connections=1)
    try:
        await within(store.create_account("alice", HASH, T0))
        [(killed,)] = backend.query(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'chatserver'"
        )
        assert killed == 1
        with pytest.raises(StoreError) as raised:
            await within(store.get_account("alice"))
        assert "\n" not in str(raised.value)
        assert (await within(store.get_account("alice"))).name == "alice"
        assert backend.query("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'chatserver'") == [(1,)]
    finally:
        await within(store.close())


@pytest_twisted.ensureDeferred
async def test_close_waits_for_calls_in_flight_and_closes_every_connection(postgres_url: str) -> None:
    backend = Backend("postgres", postgres_url)
    store = await backend.opened(connections=3)
    calls = [store.create_account(f"user{i}", HASH, T0) for i in range(30)]
    closing = store.close()
    await within(closing)
    assert all(d.called for d in calls)  # every call ended (and was committed) before the close fired
    assert backend.query("SELECT COUNT(*) FROM users") == [(30,)]
    assert backend.query("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'chatserver'") == [(0,)]
