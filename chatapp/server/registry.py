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
# Unexpired, unredeemed tokens one requester account may hold (PROTOCOL.md 2.3, CONNECT): each
# costs memory for a minute and sends the target a "* REQUEST", so CONNECT cannot be a flood.
TOKENS_PER_REQUESTER = 16

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
    fingerprint: str = ""  # the key the requester had published when it asked CONNECT (PROTOCOL.md 4.2)


class Registry(Protocol[C]):
    def login(self, name: str, connection: C) -> C | None: ...

    def logout(self, name: str, connection: C) -> None: ...

    def get(self, name: str) -> Presence[C] | None: ...

    def listen(self, name: str, host: str, port: int) -> None: ...

    def unlisten(self, name: str) -> None: ...

    def online(self) -> list[Presence[C]]: ...

    def token_wait(self, requester: str, now: float) -> float | None: ...

    def holds_token(self, requester: str, target: str, now: float) -> bool: ...

    def issue(self, requester: str, target: str, now: float, fingerprint: str = "") -> tuple[str, str]: ...

    def redeem(self, token: str, asker: str, now: float) -> Ticket | None: ...


class MemoryRegistry(Generic[C]):
    """``max_tokens`` bounds the tokens held by all requesters together (each one holds at most
    ``per_requester``); tokens outlive their requester's login, so the accounts online alone do not."""

    def __init__(self, per_requester: int = TOKENS_PER_REQUESTER, max_tokens: int = 16 * 4096) -> None:
        self.per_requester = per_requester
        self.max_tokens = max_tokens
        self._presence: dict[str, Presence[C]] = {}
        self._tickets: dict[str, Ticket] = {}
        # Every ticket lives equally long, so they expire in the order issued: a queue
        # finds the stale ones without scanning all of them on every CONNECT and VERIFY.
        self._expiries: deque[tuple[float, str]] = deque()
        # The unredeemed tokens of each requester (case-folded), oldest first; and how many
        # each (requester, target) pair holds, so a target hears one "* REQUEST" per burst.
        self._by_requester: dict[str, deque[tuple[float, str]]] = {}
        self._pairs: dict[tuple[str, str], int] = {}

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

    def token_wait(self, requester: str, now: float) -> float | None:
        """Seconds until ``requester`` may be issued a token, or None if it may now."""
        self._expire(now)
        held = self._by_requester.get(requester.lower())
        if held is not None and len(held) >= self.per_requester:
            return held[0][0] - now
        if len(self._tickets) >= self.max_tokens:
            return self._expiries[0][0] - now
        return None

    def holds_token(self, requester: str, target: str, now: float) -> bool:
        """True if ``requester`` holds an unexpired, unredeemed token for ``target``."""
        self._expire(now)
        return (requester.lower(), target.lower()) in self._pairs

    def issue(self, requester: str, target: str, now: float, fingerprint: str = "") -> tuple[str, str]:
        """A fresh (token, proof) pair bound to (requester, target), valid for 60 s.

        ``fingerprint`` is the requester's published key, kept with the token for ``VERIFY``.

        The caller asks :meth:`token_wait` first; issuing past a limit is a bug.
        """
        if self.token_wait(requester, now) is not None:
            raise RuntimeError(f"{requester} may hold no more tokens now")
        token = secrets.token_urlsafe(16)
        proof = secrets.token_urlsafe(16)
        expires = now + TOKEN_LIFETIME
        self._tickets[token] = Ticket(requester, target, proof, expires, fingerprint)
        self._expiries.append((expires, token))
        self._by_requester.setdefault(requester.lower(), deque()).append((expires, token))
        pair = (requester.lower(), target.lower())
        self._pairs[pair] = self._pairs.get(pair, 0) + 1
        return token, proof

    def redeem(self, token: str, asker: str, now: float) -> Ticket | None:
        """The ticket for ``token`` if ``asker`` is its target (consuming it); else None, token kept."""
        self._expire(now)
        ticket = self._tickets.get(token)
        if ticket is None or ticket.target.lower() != asker.lower():
            return None
        self._forget(token)
        held = self._by_requester[ticket.requester.lower()]
        held.remove((ticket.expires, token))  # at most per_requester entries
        if not held:
            del self._by_requester[ticket.requester.lower()]
        if len(self._expiries) > 2 * len(self._tickets) + 64:
            # Redeemed tokens wait in the queue until they would have expired: CONNECT and VERIFY
            # in a loop would grow it for a minute. Rebuilt now and then, it stays near the live ones.
            self._expiries = deque(entry for entry in self._expiries if entry[1] in self._tickets)
        return ticket

    def _forget(self, token: str) -> Ticket:
        ticket = self._tickets.pop(token)
        pair = (ticket.requester.lower(), ticket.target.lower())
        left = self._pairs.pop(pair) - 1
        if left:
            self._pairs[pair] = left
        return ticket

    def _expire(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, token = expiries.popleft()
            if token not in self._tickets:
                continue  # redeemed already
            ticket = self._forget(token)
            held = self._by_requester[ticket.requester.lower()]
            held.popleft()  # a requester's tokens expire in the order issued, too
            if not held:
                del self._by_requester[ticket.requester.lower()]
