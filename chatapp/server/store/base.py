"""What every store is: the records, the errors, and the :class:`Store` interface the protocol code sees.

Every method returns a Deferred, and every write is committed before its
Deferred fires: the reply that announces it is sent only after that, so a
reply survives ``kill -9`` of the server (and, for a networked database, of
the database client).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer

ADDRESS = "address"
NAME = "name"

# The one schema version both backends share: SQLite keeps it in PRAGMA user_version,
# PostgreSQL in the chatapp_schema table. chatapp-admin refuses any other.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Account:
    name: str
    password_hash: bytes
    created: float
    last_login: float | None


@dataclass(frozen=True)
class Block:
    kind: str  # ADDRESS or NAME
    key: str  # an IP address, or a case-folded user name
    until: float


class UserExists(Exception):
    """An account with this name (case-insensitively) exists already."""


class StoreError(Exception):
    """The database cannot be opened or used; the message is one readable line."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """A database driver's message (libpq's span several lines) as one bounded line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Store(Protocol):
    def open(self) -> defer.Deferred[None]: ...

    def close(self) -> defer.Deferred[None]: ...

    def get_account(self, name: str) -> defer.Deferred[Account | None]: ...

    def create_account(self, name: str, password_hash: bytes, now: float) -> defer.Deferred[Account]:
        """Create the account, or fail with :class:`UserExists`; atomic even across processes."""
        ...

    def set_password(self, name: str, password_hash: bytes) -> defer.Deferred[bool]: ...

    def record_login(self, name: str, now: float) -> defer.Deferred[None]: ...

    def set_block(self, kind: str, key: str, until: float, now: float | None = None) -> defer.Deferred[None]:
        """Store a block or lock; with ``now``, also drop every row that expired by then."""
        ...

    def block_until(self, kind: str, key: str, now: float) -> defer.Deferred[float | None]: ...
