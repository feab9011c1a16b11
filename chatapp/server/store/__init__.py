"""Durable state of the server: accounts, and the blocks and locks of the lockout rules.

:class:`Store` (in :mod:`.base`) is the whole interface the protocol code
sees. :func:`store_for` picks the implementation from ``--db``: a path is a
SQLite file (:mod:`.sqlite`, the default), a ``postgresql://`` or
``postgres://`` URL is a PostgreSQL database shared by any number of server
processes (:mod:`.postgres`).
"""

from __future__ import annotations

from typing import Any

from chatapp.runner import ThreadRunner
from chatapp.server.store.base import (
    ADDRESS,
    NAME,
    SCHEMA_VERSION,
    Account,
    Block,
    Store,
    StoreError,
    UserExists,
)
from chatapp.server.store.postgres import PostgresStore, is_postgres_url
from chatapp.server.store.sqlite import SQLiteStore

__all__ = [
    "ADDRESS",
    "NAME",
    "SCHEMA_VERSION",
    "Account",
    "Block",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "UserExists",
    "is_postgres_url",
    "store_for",
]


def store_for(db: str, reactor: Any) -> Store:
    """The store ``--db`` names; nothing is opened until its ``open()``."""
    if is_postgres_url(db):
        return PostgresStore(db, reactor)
    return SQLiteStore(db, ThreadRunner(reactor, 1, "chatapp-sqlite"))
