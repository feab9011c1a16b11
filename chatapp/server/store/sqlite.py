"""The default store: one SQLite file.

:class:`SQLiteStore` keeps one connection, used only from one thread of its
runner (WAL journal; each write is committed before its Deferred fires, so a
reply sent after it survives ``kill -9``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer

from chatapp.runner import Runner
from chatapp.server.store.base import SCHEMA_VERSION, Account, StoreError, UserExists

T = TypeVar("T")


def _migrate_to_1(db: sqlite3.Connection) -> None:
    # Statement by statement: executescript() would commit the migration's transaction early.
    db.execute(
        """
        CREATE TABLE users (
            name_folded TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            password_hash BLOB NOT NULL,
            created REAL NOT NULL,
            last_login REAL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE blocks (
            kind TEXT NOT NULL CHECK (kind IN ('address', 'name')),
            key TEXT NOT NULL,
            until REAL NOT NULL,
            PRIMARY KEY (kind, key)
        )
        """
    )


# MIGRATIONS[n] takes a database at version n to version n + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_1]
assert len(MIGRATIONS) == SCHEMA_VERSION


def connect(path: str, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database; raise StoreError with one readable line."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StoreError(f"cannot open database {path!r}: directory {folder!r} does not exist")
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open database {path!r}: {e}") from None
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {path!r} has schema version {version}, newer than this chatapp "
                f"understands ({SCHEMA_VERSION})"
            )
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        while version < SCHEMA_VERSION:
            db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[version](db)
                version += 1
                db.execute(f"PRAGMA user_version = {version}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        _check_tables(db)
        # Take the write lock once: a read-only file or folder fails here, at startup, not at the first signup.
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except StoreError:
        db.close()
        raise
    except sqlite3.Error as e:
        db.close()
        raise StoreError(f"cannot use database {path!r}: {e}") from None
    return db


def _check_tables(db: sqlite3.Connection) -> None:
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = {"users", "blocks"} - names
    if missing:
        raise StoreError(f"database is not a chatapp database (missing tables: {', '.join(sorted(missing))})")


class SQLiteStore:
    """The SQLite implementation of :class:`Store`; ``runner`` must run one call at a time."""

    def __init__(self, path: str, runner: Runner) -> None:
        self.path = path
        self._runner = runner
        self._db: sqlite3.Connection | None = None
        self._closed = False

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("database is closed")
        return self._db

    def open(self) -> defer.Deferred[None]:
        self._closed = False
        self._runner.start()

        def _open() -> None:
            self._db = connect(self.path)

        return self._runner.run(_open)

    def close(self) -> defer.Deferred[None]:
        """Fires once the connection is closed and the runner stopped; closing again does nothing."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True

        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def _stop(result: object) -> object:
            self._runner.stop()
            return result

        d = self._runner.run(_close)
        d.addBoth(_stop)
        return d

    def _run(self, func: Callable[[], T]) -> defer.Deferred[T]:
        # A stopped thread pool would queue the call for ever: fail it now instead.
        if self._closed:
            return defer.fail(StoreError("database is closed"))
        return self._runner.run(func)

    def get_account(self, name: str) -> defer.Deferred[Account | None]:
        def _get() -> Account | None:
            row = (
                self._conn()
                .execute(
                    "SELECT name, password_hash, created, last_login FROM users WHERE name_folded = ?",
                    (name.lower(),),
                )
                .fetchone()
            )
            return Account(row[0], bytes(row[1]), row[2], row[3]) if row else None

        return self._run(_get)

    def create_account(self, name: str, password_hash: bytes, now: float) -> defer.Deferred[Account]:
        def _create() -> Account:
            try:
                self._conn().execute(
                    # SIGNUP logs the new user in: that is their first login (chatapp-admin users shows it)
                    "INSERT INTO users (name_folded, name, password_hash, created, last_login) VALUES (?, ?, ?, ?, ?)",
                    (name.lower(), name, password_hash, now, now),
                )
            except sqlite3.IntegrityError:
                raise UserExists(name) from None
            return Account(name, password_hash, now, now)

        return self._run(_create)

    def set_password(self, name: str, password_hash: bytes) -> defer.Deferred[bool]:
        def _set() -> bool:
            cursor = self._conn().execute(
                "UPDATE users SET password_hash = ? WHERE name_folded = ?", (password_hash, name.lower())
            )
            return cursor.rowcount == 1

        return self._run(_set)

    def record_login(self, name: str, now: float) -> defer.Deferred[None]:
        def _record() -> None:
            self._conn().execute("UPDATE users SET last_login = ? WHERE name_folded = ?", (now, name.lower()))

        return self._run(_record)

    def set_block(self, kind: str, key: str, until: float, now: float | None = None) -> defer.Deferred[None]:
        def _set() -> None:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                if now is not None:
                    # Fake names locked once would otherwise keep their rows until looked up again:
                    # pruned here, the table holds no more than the blocks still running.
                    db.execute("DELETE FROM blocks WHERE until <= ?", (now,))
                db.execute(
                    "INSERT INTO blocks (kind, key, until) VALUES (?, ?, ?) "
                    "ON CONFLICT (kind, key) DO UPDATE SET until = excluded.until",
                    (kind, key, until),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return self._run(_set)

    def block_until(self, kind: str, key: str, now: float) -> defer.Deferred[float | None]:
        def _get() -> float | None:
            db = self._conn()
            row = db.execute("SELECT until FROM blocks WHERE kind = ? AND key = ?", (kind, key)).fetchone()
            if row is None:
                return None
            if row[0] <= now:
                db.execute("DELETE FROM blocks WHERE kind = ? AND key = ? AND until <= ?", (kind, key, now))
                return None
            return float(row[0])

        return self._run(_get)
