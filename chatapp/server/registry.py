"""Who is online, where each one listens, and the single-use tokens that broker peer connections.

The registry lives in memory: it describes live connections, which end with
the process.  :class:`Registry` is the interface the protocol uses, so a
shared registry (for several server processes) could replace it.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

TOKEN_LIFETIME = 60.0

C = TypeVar("C")


@dataclass
class Presence(Generic[C]):
    name: str  # as signed up
    connection: C
    listening: tuple[str, int] | None = None


@dataclass(frozen=True)
class Ticket:
    requester: str  # names as signed up
    target: str
    proof: str
    expires: float


class Registry(Protocol[C]):
    def login(self, name: str, connection: C) -> C | None: ...

    def logout(self, name: str, connection: C) -> None: ...

    def get(self, name: str) -> Presence[C] | None: ...

    def listen(self, name: str, host: str, port: int) -> None: ...

    def unlisten(self, name: str) -> None: ...

    def online(self) -> list[Presence[C]]: ...

    def issue(self, requester: str, target: str, now: float) -> tuple[str, str]: ...

    def redeem(self, token: str, asker: str, now: float) -> Ticket | None: ...


class MemoryRegistry(Generic[C]):
    def __init__(self) -> None:
        self._presence: dict[str, Presence[C]] = {}
        self._tickets: dict[str, Ticket] = {}
        # Every ticket lives equally long, so they expire in the order issued: a queue
        # finds the stale ones without scanning all of them on every CONNECT and VERIFY.
        self._expiries: deque[tuple[float, str]] = deque()

    def login(self, name: str, connection: C) -> C | None:
        """Register ``connection`` for ``name``; return the connection it replaces, if any."""
        old = self._presence.get(name.lower())
        self._presence[name.lower()] = Presence(name, connection)
        return old.connection if old is not None and old.connection is not connection else None

    def logout(self, name: str, connection: C) -> None:
        current = self._presence.get(name.lower())
        if current is not None and current.connection is connection:
            del self._presence[name.lower()]

    def get(self, name: str) -> Presence[C] | None:
        return self._presence.get(name.lower())

    def listen(self, name: str, host: str, port: int) -> None:
        self._presence[name.lower()].listening = (host, port)

    def unlisten(self, name: str) -> None:
        presence = self._presence.get(name.lower())
        if presence is not None:
            presence.listening = None

    def online(self) -> list[Presence[C]]:
        return list(self._presence.values())

    def issue(self, requester: str, target: str, now: float) -> tuple[str, str]:
        """A fresh (token, proof) pair bound to (requester, target), valid for 60 s."""
        self._expire(now)
        token = secrets.token_urlsafe(16)
        proof = secrets.token_urlsafe(16)
        self._tickets[token] = Ticket(requester, target, proof, now + TOKEN_LIFETIME)
        self._expiries.append((now + TOKEN_LIFETIME, token))
        return token, proof

    def redeem(self, token: str, asker: str, now: float) -> Ticket | None:
        """The ticket for ``token`` if ``asker`` is its target (consuming it); else None, token kept."""
        self._expire(now)
        ticket = self._tickets.get(token)
        if ticket is None or ticket.target.lower() != asker.lower():
            return None
        del self._tickets[token]
        return ticket

    def _expire(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, token = expiries.popleft()
            self._tickets.pop(token, None)  # gone already if it was redeemed
