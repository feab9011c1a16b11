"""The default registry: everything in this process's memory, which ends with the process.

:class:`TokenBook` keeps the tokens with plain methods (the rule, no I/O);
:class:`MemoryRegistry` is the :class:`~chatapp.server.registry.base.Registry`
interface over it, every Deferred already fired.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Generic

from twisted.internet import defer

from chatapp.server.registry.base import (
    TOKEN_LIFETIME,
    TOKENS_PER_REQUESTER,
    C,
    Connection,
    Issued,
    Presence,
    Ticket,
    TokenWait,
)


class TokenBook:
    """``max_tokens`` bounds the tokens held by all requesters together (each one holds at most
    ``per_requester``); tokens outlive their requester's login, so the accounts online alone do not."""

    def __init__(self, per_requester: int = TOKENS_PER_REQUESTER, max_tokens: int = 16 * 4096) -> None:
        self.per_requester = per_requester
        self.max_tokens = max_tokens
        self._tickets: dict[str, Ticket] = {}
        # Every ticket lives equally long, so they expire in the order issued: a queue
        # finds the stale ones without scanning all of them on every CONNECT and VERIFY.
        self._expiries: deque[tuple[float, str]] = deque()
        # The unredeemed tokens of each requester (case-folded), oldest first; and how many
        # each (requester, target) pair holds, so a target hears one "* REQUEST" per burst.
        self._by_requester: dict[str, deque[tuple[float, str]]] = {}
        self._pairs: dict[tuple[str, str], int] = {}

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


class MemoryRegistry(Generic[C]):
    """Presence and tokens of one process. ``max_tokens`` bounds the tokens of all requesters together."""

    def __init__(self, per_requester: int = TOKENS_PER_REQUESTER, max_tokens: int = 16 * 4096) -> None:
        self.tokens = TokenBook(per_requester, max_tokens)
        self._presence: dict[str, Presence[C]] = {}

    def login(self, name: str, connection: C) -> defer.Deferred[None]:
        old = self._presence.get(name.lower())
        self._presence[name.lower()] = Presence(name, connection)
        if old is not None and old.connection is not connection and old.connection is not None:
            _as_connection(old.connection).kick("replaced")
        return defer.succeed(None)

    def logout(self, name: str, connection: C) -> defer.Deferred[None]:
        current = self._presence.get(name.lower())
        if current is not None and current.connection is connection:
            del self._presence[name.lower()]
        return defer.succeed(None)

    def get(self, name: str) -> defer.Deferred[Presence[C] | None]:
        return defer.succeed(self._presence.get(name.lower()))

    def _current(self, name: str, connection: C) -> Presence[C] | None:
        presence = self._presence.get(name.lower())
        return presence if presence is not None and presence.connection is connection else None

    def set_key(self, name: str, connection: C, key: str) -> defer.Deferred[None]:
        presence = self._current(name, connection)
        if presence is not None:
            presence.key = key
        return defer.succeed(None)

    def listen(self, name: str, connection: C, host: str, port: int) -> defer.Deferred[None]:
        presence = self._current(name, connection)
        if presence is not None:
            presence.listening = (host, port)
        return defer.succeed(None)

    def unlisten(self, name: str, connection: C) -> defer.Deferred[None]:
        presence = self._current(name, connection)
        if presence is not None:
            presence.listening = None
        return defer.succeed(None)

    def online(self) -> defer.Deferred[list[Presence[C]]]:
        return defer.succeed(list(self._presence.values()))

    def token_wait(self, requester: str, now: float) -> defer.Deferred[float | None]:
        return defer.succeed(self.tokens.token_wait(requester, now))

    def issue(
        self, requester: str, target: str, now: float, fingerprint: str = ""
    ) -> defer.Deferred[Issued | TokenWait]:
        wait = self.tokens.token_wait(requester, now)
        if wait is not None:
            return defer.succeed(TokenWait(wait))
        first = not self.tokens.holds_token(requester, target, now)
        token, proof = self.tokens.issue(requester, target, now, fingerprint)
        return defer.succeed(Issued(token, proof, first))

    def redeem(self, token: str, asker: str, now: float) -> defer.Deferred[Ticket | None]:
        return defer.succeed(self.tokens.redeem(token, asker, now))

    def tell(self, name: str, *event: str) -> defer.Deferred[None]:
        presence = self._presence.get(name.lower())
        if presence is not None and presence.connection is not None:
            _as_connection(presence.connection).event(*event)
        return defer.succeed(None)

    def open(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


def _as_connection(connection: object) -> Connection:
    # The registry is generic in what it keeps; what the server keeps is a ServerProtocol.
    return connection  # type: ignore[return-value]
