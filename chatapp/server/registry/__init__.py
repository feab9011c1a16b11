"""Who is online, where each one listens, and the single-use tokens that broker peer connections.

``base`` is the interface; ``memory`` the default (one process); ``redis`` the
shared one for several server processes (``--registry redis://…``).
"""

from chatapp.server.registry.base import (
    TOKEN_LIFETIME,
    TOKENS_PER_REQUESTER,
    Issued,
    Presence,
    Registry,
    Ticket,
    TokenWait,
)
from chatapp.server.registry.memory import MemoryRegistry, TokenBook

__all__ = [
    "TOKENS_PER_REQUESTER",
    "TOKEN_LIFETIME",
    "Issued",
    "MemoryRegistry",
    "Presence",
    "Registry",
    "Ticket",
    "TokenBook",
    "TokenWait",
]
