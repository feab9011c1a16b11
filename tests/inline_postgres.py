"""PostgresStore's own SQL, run at once on the calling thread: for synchronous tests, as InlineRunner is for SQLite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from twisted.internet import defer
from twisted.python.failure import Failure

from chatapp.server.store import postgres
from chatapp.server.store.base import StoreError

T = TypeVar("T")


class InlinePostgresStore(postgres.PostgresStore):
    """Each call is one transaction on one connection of its own, committed before the (fired) Deferred returns."""

    def __init__(self, url: str) -> None:
        super().__init__(url, reactor=None)
        self._conn: psycopg.Connection[Any] | None = None

    def open(self) -> defer.Deferred[None]:
        self._conn = psycopg.connect(self.url, autocommit=True)
        return self._run(postgres.migrate, self.where, translate=False)

    def close(self) -> defer.Deferred[None]:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return defer.succeed(None)

    def _run(self, interaction: Callable[..., T], *args: Any, translate: bool = True) -> defer.Deferred[T]:
        if self._conn is None:
            return defer.fail(StoreError("database is closed"))
        try:
            with self._conn.transaction():
                result = interaction(self._conn.cursor(), *args)
        except Exception:
            failure = Failure()
            return defer.fail(self._translate(failure) if translate else failure)
        return defer.succeed(result)
