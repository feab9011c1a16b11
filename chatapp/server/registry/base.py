"""What the protocol asks of a registry: presence, tokens, and events to a user wherever it is logged in.

Every method returns a Deferred, so a shared registry (Redis, for several
server processes) can stand in for the in-memory one. Each rule that counts
is one step of the implementation — a check and the act it allows are never
split by an await — so two processes cannot both pass a check that only one
of them may pass (the token cap, a token's single use, who replaces whom).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from twisted.internet import defer

TOKEN_LIFETIME = 60.0
# Unexpired, unredeemed tokens one requester account may hold (PROTOCOL.md 2.3, CONNECT): each
# costs memory for a minute and sends the target a "* REQUEST", so CONNECT cannot be a flood.
TOKENS_PER_REQUESTER = 16

C = TypeVar("C")


class Connection(Protocol):
    """What a registry needs of a logged-in connection: to end it, and to tell it an event."""

    def kick(self, reason: str) -> None: ...

    def event(self, *parts: str) -> None: ...


@dataclass
class Presence(Generic[C]):
    name: str  # as signed up
    # The connection itself when it is held by this process; None when another process holds it.
    connection: C | None
    listening: tuple[str, int] | None = None
    key: str | None = None  # the fingerprint published with KEY for this login (PROTOCOL.md 4.2)


@dataclass(frozen=True)
class Ticket:
    requester: str  # names as signed up
    target: str
    proof: str
    expires: float
    fingerprint: str = ""  # the key the requester had published when it asked CONNECT (PROTOCOL.md 4.2)


@dataclass(frozen=True)
class Issued:
    token: str
    proof: str
    # False if the requester already held an unredeemed token for this target: the target
    # was told of this burst already, so it hears one "* REQUEST" per burst.
    first: bool


@dataclass(frozen=True)
class TokenWait:
    """No token now: the requester (or everyone together) holds all it may for ``seconds``."""

    seconds: float


class Registry(Protocol[C]):
    def login(self, name: str, connection: C) -> defer.Deferred[None]:
        """Register ``connection`` for ``name``; an older login of the name, here or in another process,
        is ended with ``* BYE replaced``."""

    def logout(self, name: str, connection: C) -> defer.Deferred[None]:
        """Forget ``connection``'s login, if it is still the current one."""

    def get(self, name: str) -> defer.Deferred[Presence[C] | None]: ...

    def set_key(self, name: str, connection: C, key: str) -> defer.Deferred[None]: ...

    def listen(self, name: str, connection: C, host: str, port: int) -> defer.Deferred[None]: ...

    def unlisten(self, name: str, connection: C) -> defer.Deferred[None]: ...

    def online(self) -> defer.Deferred[list[Presence[C]]]: ...

    def token_wait(self, requester: str, now: float) -> defer.Deferred[float | None]:
        """Seconds until ``requester`` may be issued a token, or None if it may now (``issue`` checks again)."""

    def issue(
        self, requester: str, target: str, now: float, fingerprint: str = ""
    ) -> defer.Deferred[Issued | TokenWait]:
        """A fresh (token, proof) bound to (requester, target) for TOKEN_LIFETIME seconds, or how long to wait."""

    def redeem(self, token: str, asker: str, now: float) -> defer.Deferred[Ticket | None]:
        """The ticket for ``token`` if ``asker`` is its target (consuming it, once in all); else None, token kept."""

    def tell(self, name: str, *event: str) -> defer.Deferred[None]:
        """Send ``* <event>`` to ``name``'s current login, in whichever process holds it."""

    def open(self) -> defer.Deferred[None]:
        """Be ready to serve (connect to Redis, announce this process); before the server takes connections."""

    def close(self) -> defer.Deferred[None]:
        """Let go of whatever the registry holds (connections to Redis, timers); its users leave WHO."""
