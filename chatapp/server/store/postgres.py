"""Accounts, blocks and locks in PostgreSQL, shared by every server process that uses the same database.

Through :mod:`twisted.enterprise.adbapi` with psycopg 3: each call is one
transaction in a pool thread, committed before its Deferred fires. Nothing
is checked and then written in two steps: a signup is one INSERT whose
unique-key violation is :class:`UserExists`, so two processes signing up one
name at once leave exactly one account.

The schema is created or migrated at :meth:`PostgresStore.open`, under an
advisory lock so that processes starting together migrate once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.server.store.base import SCHEMA_VERSION, Account, StoreError, UserExists, one_line

log = Logger()

T = TypeVar("T")

URL_SCHEMES = ("postgresql://", "postgres://")

# Connections (and pool threads) one server process holds open to PostgreSQL. Store calls
# beyond it wait in the pool's queue; the server bounds those by bounding connections and logins.
POOL_CONNECTIONS = 4
# Seconds libpq waits for a server that does not answer (unless the URL says connect_timeout=).
CONNECT_TIMEOUT = 10
# Any number: processes that start together take this lock while they create or migrate the schema.
_MIGRATION_LOCK = 0x63686174  # "chat"


def is_postgres_url(db: str) -> bool:
    return db.startswith(URL_SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@", 1)[-1]
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _ddl_1(cursor: Any) -> None:
    cursor.execute(
        """
        CREATE TABLE users (
            name_folded TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            password_hash BYTEA NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            last_login DOUBLE PRECISION
        )
        """
    )
    cursor.execute(
        """
        CREATE TABLE blocks (
            kind TEXT NOT NULL CHECK (kind IN ('address', 'name')),
            key TEXT NOT NULL,
            until DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (kind, key)
        )
        """
    )
    # Expired rows are pruned on every new block: find them without reading the table.
    cursor.execute("CREATE INDEX blocks_until ON blocks (until)")


# MIGRATIONS[n] takes a database at version n to version n + 1 (inside the one transaction of open()).
MIGRATIONS: list[Callable[[Any], None]] = [_ddl_1]
assert len(MIGRATIONS) == SCHEMA_VERSION


def migrate(cursor: Any, where: str) -> None:
    """Create or migrate the schema; the caller's transaction commits it (PostgreSQL DDL is transactional)."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    cursor.execute("CREATE TABLE IF NOT EXISTS chatapp_schema (version INTEGER NOT NULL)")
    cursor.execute("SELECT version FROM chatapp_schema")
    rows = cursor.fetchall()
    if len(rows) > 1:
        raise StoreError(f"database {where} is not a chatapp database (chatapp_schema has {len(rows)} rows)")
    if not rows:
        cursor.execute("INSERT INTO chatapp_schema (version) VALUES (0)")
    version = int(rows[0][0]) if rows else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database {where} has schema version {version}, newer than this chatapp understands ({SCHEMA_VERSION})"
        )
    while version < SCHEMA_VERSION:
        MIGRATIONS[version](cursor)
        version += 1
    cursor.execute("UPDATE chatapp_schema SET version = %s", (version,))
    cursor.execute("SELECT to_regclass('users') IS NOT NULL AND to_regclass('blocks') IS NOT NULL")
    if not cursor.fetchone()[0]:
        raise StoreError(f"database {where} is not a chatapp database (missing the users or blocks table)")


def connect_options(url: str) -> dict[str, Any]:
    """psycopg.connect() keywords for ``url``: our timeout and name unless the URL sets its own."""
    import psycopg.conninfo

    given = psycopg.conninfo.conninfo_to_dict(url)
    extra: dict[str, Any] = {}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given:
        extra["application_name"] = "chatserver"
    return extra


class _Connection(adbapi.Connection):
    """adbapi's connection, but a broken one is dropped quietly.

    adbapi's own rollback logs a traceback twice for each connection the
    database drops; here the call fails with the database's reason (as a
    :class:`StoreError`) and the next call in that thread connects afresh.
    """

    def rollback(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            connection.rollback()
        except Exception as e:
            log.warn("dropping a broken PostgreSQL connection: {reason}", reason=one_line(e))
            self._pool.disconnect(connection)


class PostgresStore:
    """The PostgreSQL implementation of :class:`~chatapp.server.store.base.Store`."""

    def __init__(self, url: str, reactor: Any, connections: int = POOL_CONNECTIONS) -> None:
        self.url = url
        self.where = redacted(url)
        self._reactor = reactor
        self._connections = connections
        self._pool: adbapi.ConnectionPool | None = None
        self._in_flight: set[object] = set()
        self._idle_waiters: list[defer.Deferred[None]] = []

    def open(self) -> defer.Deferred[None]:
        try:
            import psycopg  # noqa: F401 (a missing driver is one line at start, not a traceback)

            extra = connect_options(self.url)
        except ImportError:
            return defer.fail(StoreError("PostgreSQL needs psycopg: pip install 'chatapp[postgres]'"))
        except Exception as e:  # psycopg.ProgrammingError for a URL libpq cannot parse
            return defer.fail(StoreError(f"--db {self.where}: not a PostgreSQL URL ({one_line(e)})"))
        pool = adbapi.ConnectionPool(
            "psycopg",
            self.url,
            cp_min=1,
            cp_max=self._connections,
            cp_reconnect=True,
            cp_reactor=self._reactor,
            **extra,
        )
        pool.connectionFactory = _Connection
        pool.start()
        self._pool = pool

        def cannot_open(failure: Failure) -> Failure:
            if failure.check(StoreError):
                return failure
            return Failure(StoreError(f"cannot open database {self.where}: {one_line(failure.value or Exception())}"))

        d = self._run(migrate, self.where, translate=False)
        d.addErrback(cannot_open)
        return d

    def close(self) -> defer.Deferred[None]:
        """Fires when the calls in flight have ended and every connection is closed."""
        pool, self._pool = self._pool, None
        idle: defer.Deferred[None] = defer.Deferred()
        if self._in_flight:
            self._idle_waiters.append(idle)
        else:
            idle.callback(None)

        def _close(_: object) -> None:
            if pool is not None:
                pool.close()  # its threads are idle now: joining them does not block

        return idle.addCallback(_close)

    def _run(self, interaction: Callable[..., T], *args: Any, translate: bool = True) -> defer.Deferred[T]:
        if self._pool is None:
            return defer.fail(StoreError("database is closed"))
        d: defer.Deferred[T] = self._pool.runInteraction(interaction, *args)
        if translate:
            d.addErrback(self._translate)
        token = object()
        self._in_flight.add(token)

        def _done(result: object) -> object:
            self._in_flight.discard(token)
            if not self._in_flight:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        d.addBoth(_done)
        return d

    def _translate(self, failure: Failure) -> Failure:
        if failure.check(StoreError, UserExists):
            return failure
        return Failure(StoreError(f"database {self.where}: {one_line(failure.value or Exception())}"))

    def get_account(self, name: str) -> defer.Deferred[Account | None]:
        def _get(cursor: Any) -> Account | None:
            cursor.execute(
                "SELECT name, password_hash, created, last_login FROM users WHERE name_folded = %s", (name.lower(),)
            )
            row = cursor.fetchone()
            return Account(row[0], bytes(row[1]), row[2], row[3]) if row else None

        return self._run(_get)

    def create_account(self, name: str, password_hash: bytes, now: float) -> defer.Deferred[Account]:
        def _create(cursor: Any) -> Account:
            import psycopg.errors

            try:
                # SIGNUP logs the new user in: that is their first login (chatapp-admin users shows it)
                cursor.execute(
                    "INSERT INTO users (name_folded, name, password_hash, created, last_login) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (name.lower(), name, password_hash, now, now),
                )
            except psycopg.errors.UniqueViolation:
                raise UserExists(name) from None
            return Account(name, password_hash, now, now)

        return self._run(_create)

    def set_password(self, name: str, password_hash: bytes) -> defer.Deferred[bool]:
        def _set(cursor: Any) -> bool:
            cursor.execute("UPDATE users SET password_hash = %s WHERE name_folded = %s", (password_hash, name.lower()))
            return bool(cursor.rowcount == 1)

        return self._run(_set)

    def record_login(self, name: str, now: float) -> defer.Deferred[None]:
        def _record(cursor: Any) -> None:
            cursor.execute("UPDATE users SET last_login = %s WHERE name_folded = %s", (now, name.lower()))

        return self._run(_record)

    def set_block(self, kind: str, key: str, until: float, now: float | None = None) -> defer.Deferred[None]:
        def _set(cursor: Any) -> None:
            if now is not None:
                # As in SQLite: names locked once would otherwise keep their rows until looked up again.
                cursor.execute("DELETE FROM blocks WHERE until <= %s", (now,))
            cursor.execute(
                "INSERT INTO blocks (kind, key, until) VALUES (%s, %s, %s) "
                "ON CONFLICT (kind, key) DO UPDATE SET until = EXCLUDED.until",
                (kind, key, until),
            )

        return self._run(_set)

    def block_until(self, kind: str, key: str, now: float) -> defer.Deferred[float | None]:
        def _get(cursor: Any) -> float | None:
            cursor.execute("SELECT until FROM blocks WHERE kind = %s AND key = %s", (kind, key))
            row = cursor.fetchone()
            if row is None:
                return None
            if row[0] <= now:
                cursor.execute("DELETE FROM blocks WHERE kind = %s AND key = %s AND until <= %s", (kind, key, now))
                return None
            return float(row[0])

        return self._run(_get)
